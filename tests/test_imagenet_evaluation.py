"""Evaluating as Caffe and the paper did: ten crops, --resize, 95% intervals, the published figures.

Ten-crop probabilities are checked against the mean of the ten crops computed one by one here (NumPy
resize, slicing, mirroring, one forward pass per crop); the Wilson intervals against the roots of
the quadratic that defines them.
"""
import json

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import bvlc_fixture
import datagenerator
import ilsvrc_fixture
import image_files
import make_lists
import predict
from alexnet import AlexNet
from finetune_alexnet import cli, metrics, preprocessing, weight_files
from finetune_alexnet.infer.classifier import Classifier
from test_preprocessing import levels_of, reference_pixels

MEAN_BGR = np.array([103.939, 116.779, 123.68])
NUM_CLASSES = 10
Z_95 = 1.959963984540054


def corner_and_centre_offsets(resize):
    far = resize - 227
    return [(0, 0), (0, far), (far, 0), (far, far), (far // 2, far // 2)]


def reference_crops(image_rgb, resize=256):
    """The ten crops of one image, built one at a time: corners and centre, then each mirrored."""
    resized = reference_pixels(image_rgb, resize, resize)
    crops = [resized[top:top + 227, left:left + 227] for top, left in corner_and_centre_offsets(resize)]
    return crops + [crop[:, ::-1] for crop in crops]


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def ten_crop_reference(paths, weights_path):
    """[n, classes]: per image, the mean of its ten crops' softmax rows, crops made one by one here."""
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 227, 227, 3])
        model = AlexNet(x, 1.0, NUM_CLASSES, [], weights_path)
        probabilities = tf.nn.softmax(model.fc8)
        with tf.Session() as session:
            model.load_initial_weights(session)
            means = []
            for path in paths:
                crops = np.stack([(crop - MEAN_BGR[::-1])[..., ::-1]
                                  for crop in reference_crops(read_rgb(path))])
                means.append(session.run(probabilities, {x: crops}).mean(axis=0))
    return np.array(means)


def wilson_by_hand(successes, trials, z=Z_95):
    """The Wilson interval's ends: the p0 with (p - p0)^2 = z^2 p0 (1 - p0) / n, a quadratic in p0."""
    p, k = successes / trials, z * z / trials
    roots = np.roots([1 + k, -(2 * p + k), p * p]).real
    return sorted(float(np.clip(root, 0, 1)) for root in roots)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """A 10-class weights file whose probabilities are moderate (fc8 scaled down), so they differ."""
    layers = bvlc_fixture.random_weights(num_classes=NUM_CLASSES, seed=3)
    layers['fc8']['weights'] *= np.float32(0.01)
    path = str(tmp_path_factory.mktemp('ten_class') / 'ten_class.npz')
    weight_files.save_weights(path, layers)
    return path


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """PNGs (decoded the same by OpenCV and TensorFlow) of several sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp('photos')
    sizes = [(300, 280), (180, 260), (256, 256), (90, 120), (400, 230), (260, 310), (240, 240)]
    return [image_files.write_png(folder / f'photo{index}.png',
                                  image_files.random_rgb(height, width, seed=20 + index))
            for index, (height, width) in enumerate(sizes)]


# --- the crops -----------------------------------------------------------------------------------

@pytest.mark.parametrize('resize', [256, 300])
def test_ten_crops_are_the_corners_and_centre_and_their_mirrors(resize):
    image = image_files.random_rgb(70, 90, seed=4)
    with tf.Graph().as_default(), tf.Session() as session:
        crops = session.run(preprocessing.ten_crops(tf.constant(image), resize))
        centre = session.run(preprocessing.resize_for_model(tf.constant(image), augment=True,
                                                            resize_size=resize))
    assert crops.shape == (10, 227, 227, 3) and crops.dtype == np.uint8
    for ours, theirs in zip(crops, reference_crops(image, resize)):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(crops[4], centre)  # the centre crop of inference with --augment


def test_ten_crop_batches_hold_ten_rows_per_image_in_image_order(photos):
    with tf.Graph().as_default(), tf.Session() as session:
        dataset = datagenerator.images_dataset(photos[:3], batch_size=2, ten_crop=True)
        next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
        first, second = session.run(next_batch), session.run(next_batch)
        with pytest.raises(tf.errors.OutOfRangeError):
            session.run(next_batch)
    assert first[0].shape == (20, 227, 227, 3) and second[0].shape == (10, 227, 227, 3)
    assert first[1].tolist() == [0, 1] and second[1].tolist() == [2]
    for row, crop in enumerate(reference_crops(read_rgb(photos[1]))):
        np.testing.assert_array_equal(levels_of(first[0][10 + row]), crop)


def test_ten_crop_is_the_mean_of_the_ten_crops_computed_one_by_one(model, photos):
    paths = photos[:3]
    expected = ten_crop_reference(paths, model)
    with Classifier(weights_path=model, ten_crop=True, batch_size=2) as classifier:
        result = classifier.run(paths, layers=['fc8'])
        assert classifier.crop_mode == 'ten_crop'
    np.testing.assert_allclose(result.probabilities, expected, atol=2e-5)
    assert result.outputs['fc8'].shape == (3, 10, NUM_CLASSES)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    with Classifier(weights_path=model, center_crop=True) as classifier:
        centre = classifier.run(paths).probabilities
    # Not the centre crop alone: the other nine crops move the probabilities.
    assert np.abs(centre - expected).max() > 100 * 2e-5


# --- intervals -----------------------------------------------------------------------------------

@pytest.mark.parametrize('successes, trials', [(5, 7), (0, 10), (10, 10), (571, 1000), (40110, 50000)])
def test_wilson_interval_by_hand(successes, trials):
    low, high = metrics.wilson_interval(successes, trials)
    assert [low, high] == pytest.approx(wilson_by_hand(successes, trials), abs=1e-12)
    assert low <= successes / trials <= high


def test_wilson_interval_known_values():
    # None right of 10: from 0 to z^2 / (n + z^2); all right: from n / (n + z^2) to 1 exactly.
    assert metrics.wilson_interval(0, 10) == (0.0, pytest.approx(Z_95 ** 2 / (10 + Z_95 ** 2), abs=1e-15))
    assert metrics.wilson_interval(10, 10) == (pytest.approx(10 / (10 + Z_95 ** 2), abs=1e-15), 1.0)
    # 57.1% of ImageNet's 50,000 images is known to within 0.43 points either way (2 z sqrt(pq/n)).
    low, high = metrics.wilson_interval(28550, 50000)
    assert high - low == pytest.approx(2 * Z_95 * np.sqrt(0.571 * 0.429 / 50000), abs=1e-6)


def labelled_list(path, paths, probabilities, ranks):
    """A list file whose label for image i is its class of rank ranks[i] (0: the top-1)."""
    order = np.argsort(-probabilities, axis=1, kind='stable')
    with open(path, 'w') as stream:
        stream.writelines(f'{image} {order[i, rank]}\n' for i, (image, rank) in enumerate(zip(paths, ranks)))
    return str(path)


@pytest.mark.slow
def test_ten_crop_evaluation_reports_hand_computed_accuracy_and_intervals(model, photos, tmp_path, capsys):
    photos = photos[:5]
    with Classifier(weights_path=model, ten_crop=True) as classifier:
        expected = classifier.run(photos).probabilities
    # Ranks of the true class: three right, one in the top 5 only, one outside it.
    listing = labelled_list(tmp_path / 'val.txt', photos, expected, [0, 3, 0, 7, 0])
    json_path = tmp_path / 'eval.json'
    assert predict.main(['--weights_path', model, '--evaluate', listing, '--ten_crop', '--batch_size', '3',
                         '--json', str(json_path), '--confusion_matrix', str(tmp_path / 'c.png')]) == 0
    out = capsys.readouterr().out
    evaluation = json.loads(json_path.read_text())['evaluation']
    assert (evaluation['accuracy'], evaluation['top_k_accuracy']) == (3 / 5, 4 / 5)
    assert evaluation['accuracy_interval'] == pytest.approx(wilson_by_hand(3, 5), abs=1e-12)
    assert evaluation['top_k_accuracy_interval'] == pytest.approx(wilson_by_hand(4, 5), abs=1e-12)
    assert evaluation['crops'] == 'ten_crop' and evaluation['published'] is None
    low, high = wilson_by_hand(3, 5)
    assert f'top-1  {3 / 5:7.2%}  [{low:.2%}, {high:.2%}]' in out
    low, high = wilson_by_hand(4, 5)
    assert f'top-5  {4 / 5:7.2%}  [{low:.2%}, {high:.2%}]' in out
    assert '95% interval (Wilson score)' in out and 'published' not in out


# --- the ImageNet weights on a miniature validation set ------------------------------------------

@pytest.fixture(scope='module')
def imagenet_val_list(tmp_path_factory):
    root = tmp_path_factory.mktemp('ilsvrc')
    wnids = ilsvrc_fixture.class_order(per_class=2)
    ilsvrc_fixture.write_images(str(root / 'val'), wnids, foldered=True, size=64)
    solution = ilsvrc_fixture.write_kaggle_solution(str(root / 'LOC_val_solution.csv'), wnids)
    assert cli.run(make_lists.main, ['--imagenet_val', str(root / 'val'), '--labels', solution,
                                     '--out_dir', str(root / 'lists')]) == 0
    return str(root / 'lists' / 'val.txt')


@pytest.mark.slow
@pytest.mark.parametrize('flags, published', [
    (['--center_crop'], 'published (BVLC, centre crop):'),
    (['--ten_crop', '--resize', '256'], 'published (the paper, one CNN, ten crops):'),
    ([], 'published (BVLC, centre crop):'),
])
def test_imagenet_weights_show_the_published_figures(bvlc_npy, imagenet_val_list, tmp_path, capsys, flags,
                                                      published):
    json_path = tmp_path / 'eval.json'
    assert predict.main(['--weights_path', bvlc_npy, '--evaluate', imagenet_val_list, '--json',
                         str(json_path), '--confusion_matrix', str(tmp_path / 'c.png')] + flags) == 0
    out = capsys.readouterr().out
    evaluation = json.loads(json_path.read_text())['evaluation']
    figures = evaluation['published']
    assert published in out
    assert out.count(f"published {figures['top1']:.1%}") == 1 and f"published {figures['top5']:.1%}" in out
    if flags[:1] == ['--ten_crop']:
        assert (figures['top1'], figures['top5']) == (0.593, 0.818)
    else:
        assert (figures['top1'], figures['top5']) == (0.571, 0.802)
    # The whole-image default is not how the figures were measured, and says so.
    assert ('resized whole to 227x227' in out) == (flags == [])
    assert evaluation['images'] == 12


@pytest.mark.parametrize('args, message', [
    (['--center_crop', '--ten_crop'], 'give --center_crop or --ten_crop, not both'),
    (['--center_crop', '--resize', '200'], '--resize 200 is smaller than the 227x227 crop'),
    (['--resize', '300'], '--resize 300: nothing is cropped'),
])
def test_crop_flag_mistakes_are_one_line(model, photos, capsys, args, message):
    assert cli.run(predict.main, ['--weights_path', model, photos[0]] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1


def test_resize_sets_the_square_the_centre_crop_comes_from(model, photos):
    with Classifier(weights_path=model, center_crop=True, resize_size=300) as classifier:
        ours = classifier.run(photos[:1], layers=['conv1'])
    image = reference_pixels(read_rgb(photos[0]), 300, 300)[36:263, 36:263]
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [1, 227, 227, 3])
        network = AlexNet(x, 1.0, NUM_CLASSES, [], model)
        with tf.Session() as session:
            network.load_initial_weights(session)
            conv1 = session.run(network.end_points['conv1'], {x: ((image - MEAN_BGR[::-1])[..., ::-1])[None]})
    np.testing.assert_allclose(ours.outputs['conv1'], conv1, atol=1e-3 * np.abs(conv1).max())
