"""predict.py and the inference engine behind it (finetune_alexnet/infer/): probabilities against the
model's own forward pass, inputs, outputs, evaluation, errors."""
import csv
import json
import os
import types

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import bvlc_fixture
from finetune_alexnet import cli
from finetune_alexnet import metrics
from finetune_alexnet import model_info
import predict
from finetune_alexnet import weight_files
from alexnet import TRAINABLE_LAYERS, AlexNet
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.infer.classifier import Classifier, decode_predictions
from test_datagenerator import prediction_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FC8_SCALE = 0.01


# --- helpers shared with test_export.py and test_visualize.py ------------------------------------

def make_checkpoint(directory, layers, class_names=None, center_crop=False, prefix_name='best.ckpt',
                    extra_variables=True):
    """A fine-tuned checkpoint as finetune.py leaves it: `layers` in the model's variables, plus a step
    counter and optimizer slots that prediction must ignore, and model_info.json beside it."""
    num_classes = layers['fc8']['biases'].shape[0]
    os.makedirs(directory, exist_ok=True)
    with tf.Graph().as_default():
        model = AlexNet(tf.placeholder(tf.float32, [None, 227, 227, 3]), 1.0, num_classes, [])
        if extra_variables:
            tf.train.get_or_create_global_step()
            with tf.variable_scope('fc8/weights'):
                tf.get_variable('Momentum', shape=[4096, num_classes], initializer=tf.ones_initializer())
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            for layer in TRAINABLE_LAYERS:
                for kind, variable in model.variables[layer].items():
                    variable.load(layers[layer][kind], session)
            prefix = tf.train.Saver().save(session, os.path.join(directory, prefix_name),
                                           write_meta_graph=False)
    model_info.write_model_info(directory, num_classes, class_names, center_crop)
    return prefix


def write_solid(path, rgb, size=(40, 50)):
    """A one-colour image (PNG: no compression artefacts), written the way cv2 writes: BGR."""
    image = np.zeros(size + (3,), np.uint8)
    image[:] = rgb[::-1]
    assert cv2.imwrite(str(path), image)
    return str(path)


def write_noise(path, seed, size=(60, 80)):
    image = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return str(path)


def forward_pass(paths, num_classes, weights_path, center_crop=False, logits=False):
    """Softmax (and `logits`) of AlexNet's own graph, fed the prediction pipeline's pre-processed arrays."""
    images = prediction_inputs(paths, center_crop=center_crop)
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 227, 227, 3])
        model = AlexNet(x, 1.0, num_classes, [], weights_path)
        probabilities = tf.nn.softmax(model.fc8)
        with tf.Session() as session:
            model.load_initial_weights(session)
            fc8, probs = session.run([model.fc8, probabilities], {x: images})
    return (fc8, probs) if logits else probs


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def two_class(tmp_path_factory):
    """A random two-class model: its layers, a checkpoint of them, and the same as a weights file."""
    folder = tmp_path_factory.mktemp('two_class')
    layers = bvlc_fixture.random_weights(num_classes=2, seed=1)
    # Random fc8 weights give logits hundreds apart, probabilities of exactly 0 and 1 that would
    # hide any difference; scaled down, the probabilities are moderate and every digit is compared.
    layers['fc8']['weights'] *= np.float32(FC8_SCALE)
    prefix = make_checkpoint(str(folder / 'run'), layers, class_names=['cat', 'dog'])
    npz = str(folder / 'two_class.npz')
    weight_files.save_weights(npz, layers)
    return {'layers': layers, 'prefix': prefix, 'dir': os.path.dirname(prefix), 'npz': npz}


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    (folder / 'nested').mkdir()
    return [write_noise(folder / 'a.png', 1), write_noise(folder / 'b.jpg', 2),
            write_noise(folder / 'nested' / 'c.png', 3)]


def colour_layers():
    """Weights that decide the class by colour: class 0 'red' = mean red, class 1 'blue' = mean blue.

    conv1 filter 0 averages the (mean-subtracted) red channel, filter 1 the blue one; every later layer
    passes channel 0 and 1 on through its centre tap, fc6 averages them over pool5's 6x6 positions,
    and fc8 scales them into logits. Everything else is zero, so the logits are known in advance:
    a red photo gives [positive, 0], a blue one [0, positive], stronger colours more confidently.
    """
    shapes = dict(bvlc_fixture.LAYER_SHAPES, fc8=(4096, 2))
    layers = {name: {'weights': np.zeros(shape, np.float32), 'biases': np.zeros(shape[-1:], np.float32)}
              for name, shape in shapes.items()}
    blue, red = 0, 2  # channel order of the network's input: BGR
    layers['conv1']['weights'][:, :, red, 0] = 1 / 121
    layers['conv1']['weights'][:, :, blue, 1] = 1 / 121
    for name in ('conv2', 'conv3', 'conv4', 'conv5'):
        centre = shapes[name][0] // 2
        layers[name]['weights'][centre, centre, 0, 0] = 1
        layers[name]['weights'][centre, centre, 1, 1] = 1
    for position in range(36):  # flattened pool5 is (row, column, channel)
        layers['fc6']['weights'][position * 256 + 0, 0] = 1 / 36
        layers['fc6']['weights'][position * 256 + 1, 1] = 1 / 36
    layers['fc7']['weights'][0, 0] = layers['fc7']['weights'][1, 1] = 1
    layers['fc8']['weights'][0, 0] = layers['fc8']['weights'][1, 1] = 0.05
    return layers


@pytest.fixture(scope='module')
def colour_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp('colour')
    prefix = make_checkpoint(str(folder / 'run'), colour_layers(), class_names=['red', 'blue'],
                             extra_variables=False)
    return os.path.dirname(prefix)


# --- the class-name decoder ----------------------------------------------------------------------

def test_decode_predictions_orders_by_probability_and_keeps_ties_in_index_order():
    probs = np.array([[0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.4, 0.1]])
    decoded = decode_predictions(probs, ['a', 'b', 'c', 'd'], top=3)
    assert decoded == [[(1, 'b', 0.5), (3, 'd', 0.3), (0, 'a', 0.1)],
                       [(2, 'c', 0.4), (0, 'a', 0.25), (1, 'b', 0.25)]]
    assert decode_predictions(probs[:1], None, top=10)[0][0] == (1, 'class 1', 0.5)
    assert len(decode_predictions(probs[:1], None, top=10)[0]) == 4
    with pytest.raises(ToolkitError, match='3 class names for 4 classes'):
        decode_predictions(probs, ['a', 'b', 'c'])


# --- prediction against the model's own forward pass ---------------------------------------------

def test_checkpoint_probabilities_equal_the_models_forward_pass(two_class, photos):
    with Classifier(checkpoint=two_class['dir'], batch_size=2) as classifier:
        assert (classifier.num_classes, classifier.class_names) == (2, ['cat', 'dog'])
        assert classifier.prefix == two_class['prefix']
        result = classifier.run(photos, layers=['conv1'])
    probs, outputs = result.probabilities, result.outputs
    assert list(result.positions) == [0, 1, 2]
    expected = forward_pass(photos, 2, two_class['npz'])
    assert probs.shape == (3, 2) and outputs['conv1'].shape == (3, 55, 55, 96)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert expected.min() > 1e-3, 'probabilities should be moderate, not saturated'


@pytest.mark.slow
def test_a_centre_crop_model_predicts_on_the_centre_crop(tmp_path, two_class, photos):
    make_checkpoint(str(tmp_path), two_class['layers'], center_crop=True, extra_variables=False)
    with Classifier(checkpoint=str(tmp_path)) as classifier:
        assert classifier.class_names == ['class 0', 'class 1']
        probs = classifier.run(photos).probabilities
    np.testing.assert_allclose(probs, forward_pass(photos, 2, two_class['npz'], center_crop=True),
                               atol=1e-5)
    assert not np.allclose(probs, forward_pass(photos, 2, two_class['npz']), atol=1e-5)


def test_classes_txt_beside_the_checkpoint_names_the_classes(tmp_path, two_class, photos):
    make_checkpoint(str(tmp_path), two_class['layers'], class_names=None, extra_variables=False)
    (tmp_path / 'classes.txt').write_text('0 left\n1 right\n')
    with Classifier(checkpoint=str(tmp_path / 'best.ckpt')) as classifier:
        assert classifier.class_names == ['left', 'right']


@pytest.mark.slow
def test_imagenet_weights_table_csv_and_json(bvlc_npy, photos, tmp_path, capsys):
    from caffe_classes import class_names
    csv_path, json_path = str(tmp_path / 'p.csv'), str(tmp_path / 'p.json')
    assert predict.main(['--weights_path', bvlc_npy, '--top_k', '3', '--batch_size', '2',
                         '--csv', csv_path, '--json', json_path] + photos) == 0
    table = capsys.readouterr().out
    logits, expected = forward_pass(photos, 1000, bvlc_npy, logits=True)
    # The random 1000-class weights saturate the softmax, so compare the logits as well.
    with Classifier(weights_path=bvlc_npy) as classifier:
        assert classifier.class_names == list(class_names) and not classifier.center_crop
        np.testing.assert_allclose(classifier.run(photos, ['fc8']).outputs['fc8'], logits,
                                   rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    with open(json_path) as stream:
        content = json.load(stream)
    assert content['model'] == bvlc_npy
    assert [record['path'] for record in content['predictions']] == photos
    with open(csv_path, newline='') as stream:
        rows = list(csv.DictReader(stream))
    assert [row['path'] for row in rows] == photos
    for record, row, probs in zip(content['predictions'], rows, expected):
        order = np.argsort(-probs, kind='stable')[:3]
        assert [entry['index'] for entry in record['top']] == list(order)
        assert [entry['class'] for entry in record['top']] == [class_names[i] for i in order]
        np.testing.assert_allclose([entry['probability'] for entry in record['top']], probs[order],
                                   atol=1e-5)
        for rank, index in enumerate(order, 1):
            assert int(row[f'top{rank}_index']) == index
            assert row[f'top{rank}_class'] == class_names[index]
            assert abs(float(row[f'top{rank}_probability']) - probs[index]) < 1e-5
        assert class_names[order[0]] in table and record['path'] in table


def test_folders_and_list_files_are_expanded_in_order(two_class, photos, tmp_path, capsys):
    folder = os.path.dirname(photos[0])
    listing = tmp_path / 'list.txt'
    listing.write_text(f'{photos[2]} 1\n{photos[0]} 0\n')
    json_path = str(tmp_path / 'p.json')
    assert predict.main(['--checkpoint', two_class['dir'], folder, str(listing), '--json', json_path]) == 0
    with open(json_path) as stream:
        records = json.load(stream)['predictions']
    assert [record['path'] for record in records] == sorted(photos) + [photos[2], photos[0]]
    assert [record.get('label') for record in records] == [None, None, None, 1, 0]
    assert records[3]['label_class'] == 'dog'
    assert len(records[0]['top']) == 2  # top-5 of a two-class model
    out = capsys.readouterr().out
    assert 'dog' in out and 'cat' in out


# --- evaluation ----------------------------------------------------------------------------------

def test_evaluate_reports_hand_computed_numbers(colour_model, tmp_path, capsys):
    red, blue, pale_blue = (255, 0, 0), (0, 0, 255), (90, 90, 200)
    cases = [('red1', red, 0), ('red2', red, 0), ('red3', red, 0),
             ('blue_as_red', blue, 0), ('pale_blue_as_red', pale_blue, 0),
             ('blue1', blue, 1), ('blue2', blue, 1)]
    listing = tmp_path / 'val.txt'
    listing.write_text(''.join(f"{write_solid(tmp_path / (name + '.png'), rgb)} {label}\n"
                               for name, rgb, label in cases))
    confusion = str(tmp_path / 'confusion.png')
    json_path = str(tmp_path / 'eval.json')
    assert predict.main(['--checkpoint', colour_model, '--evaluate', str(listing),
                         '--confusion_matrix', confusion, '--json', json_path]) == 0
    out = capsys.readouterr().out
    with open(json_path) as stream:
        evaluation = json.load(stream)['evaluation']
    # Predictions: red -> red (0), the three blues -> blue (1). Confusion [[3, 2], [0, 2]].
    assert evaluation['confusion_matrix'] == [[3, 2], [0, 2]]
    assert evaluation['accuracy'] == pytest.approx(5 / 7)
    assert evaluation['top_k_accuracy'] == 1.0
    per_class = {row['class']: row for row in evaluation['per_class']}
    assert per_class['red']['precision'] == pytest.approx(3 / 3)
    assert per_class['red']['recall'] == pytest.approx(3 / 5)
    assert per_class['blue']['precision'] == pytest.approx(2 / 4)
    assert per_class['blue']['recall'] == pytest.approx(2 / 2)
    assert (per_class['red']['support'], per_class['blue']['predicted']) == (5, 4)
    # Both mistakes listed, the saturated blue (more confident) first.
    wrong = evaluation['mistakes']
    assert [os.path.basename(entry['path']) for entry in wrong] == ['blue_as_red.png',
                                                                      'pale_blue_as_red.png']
    assert wrong[0]['probability'] > wrong[1]['probability'] > 0.5
    assert 'accuracy 0.7143' in out
    assert out.index('blue_as_red.png') < out.index('pale_blue_as_red.png')
    image = cv2.imread(confusion)
    assert image is not None and image.shape[0] > 100 and image.shape[2] == 3


# --- bad input -----------------------------------------------------------------------------------

def run_predict(capsys, *args):
    """predict.py's main as the command runs it (exit status and stderr), in this process."""
    code = cli.run(predict.main, [str(arg) for arg in args])
    return types.SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def error_line(result):
    """The one line our error handling printed (in a subprocess, TensorFlow's C++ runtime may log
    start-up notices before it, whatever TF_CPP_MIN_LOG_LEVEL says)."""
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith('error: ') and sum(line.startswith('error') for line in lines) == 1
    return lines[-1]


def test_unreadable_images_are_named(two_class, photos, tmp_path, capsys):
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    with pytest.raises(ToolkitError, match='broken.jpg'):
        predict.main(['--checkpoint', two_class['dir'], photos[0], str(broken)])
    json_path = str(tmp_path / 'p.json')
    assert predict.main(['--checkpoint', two_class['dir'], photos[0], str(broken), '--skip_bad_images',
                         '--json', json_path]) == 0
    assert 'broken.jpg' in capsys.readouterr().err
    with open(json_path) as stream:
        assert [record['path'] for record in json.load(stream)['predictions']] == [photos[0]]


def test_bad_image_and_missing_weights_exit_2_with_one_line(two_class, tmp_path, capsys):
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    line = error_line(run_predict(capsys, '--checkpoint', two_class['dir'], str(broken)))
    assert f'{broken}: ' in line and '1 unreadable image' in line
    line = error_line(run_predict(capsys, '--weights_path', str(tmp_path / 'nowhere.npy'), str(broken)))
    assert line == f"error: {tmp_path / 'nowhere.npy'}: weights file not found; {weight_files.WHERE_TO_GET}"


@pytest.mark.parametrize('make, message', [
    (lambda tmp: [str(tmp / 'missing.jpg')], 'missing.jpg: no such image, folder or list file'),
    (lambda tmp: [str(tmp)], 'no images in this folder'),
])
def test_missing_inputs_are_named(two_class, tmp_path, make, message):
    with pytest.raises(ToolkitError, match=message):
        predict.main(['--checkpoint', two_class['dir']] + make(tmp_path))


def test_missing_checkpoint_and_model_info_are_clear(two_class, tmp_path):
    with pytest.raises(ToolkitError, match='checkpoint not found'):
        predict.main(['--checkpoint', str(tmp_path / 'none.ckpt'), 'x.jpg'])
    with pytest.raises(ToolkitError, match='no checkpoint in this folder'):
        predict.main(['--checkpoint', str(tmp_path), 'x.jpg'])
    for suffix in ('.index', '.data-00000-of-00001'):
        os.link(two_class['prefix'] + suffix, str(tmp_path / 'model_epoch1.ckpt') + suffix)
    with pytest.raises(ToolkitError, match='model_info.json: not found beside checkpoint'):
        predict.main(['--checkpoint', str(tmp_path), 'x.jpg'])


def test_class_names_file_overrides_and_is_checked(two_class, photos, tmp_path, capsys):
    names = tmp_path / 'names.txt'
    names.write_text('0 yes\n1 no\n')
    assert predict.main(['--weights_path', two_class['npz'], '--class_names', str(names), photos[0]]) == 0
    assert 'yes' in capsys.readouterr().out
    names.write_text('0 yes\n')
    with pytest.raises(ToolkitError, match=r'names labels \[0\], expected 0..1'):
        predict.main(['--weights_path', two_class['npz'], '--class_names', str(names), photos[0]])


def test_center_crop_flag_crops_a_weights_file_model(two_class, photos, tmp_path):
    json_path = tmp_path / 'out.json'
    assert predict.main(['--weights_path', two_class['npz'], '--center_crop', '--json', str(json_path),
                         '--top_k', '2'] + photos) == 0
    records = json.loads(json_path.read_text())['predictions']
    probabilities = np.array([[entry['probability'] for entry in sorted(record['top'],
                                                                        key=lambda e: e['index'])]
                              for record in records])
    np.testing.assert_allclose(probabilities, forward_pass(photos, 2, two_class['npz'], center_crop=True),
                               atol=1e-5)


def three_blue_as_red(folder):
    """A list of three blue images labelled red (class 0): three mistakes for the colour model."""
    blue = (0, 0, 255)
    listing = folder / 'val.txt'
    listing.write_text(''.join(f"{write_solid(folder / f'blue{index}.png', blue)} 0\n"
                               for index in range(3)))
    return listing


def test_max_mistakes_limits_the_listing_but_not_the_json(colour_model, tmp_path, capsys, monkeypatch):
    listing = three_blue_as_red(tmp_path)
    scratch = tmp_path / 'working_folder'
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    json_path = tmp_path / 'eval.json'
    assert predict.main(['--checkpoint_path', colour_model, '--evaluate', str(listing),
                         '--max_mistakes', '1', '--json', str(json_path)]) == 0
    out = capsys.readouterr().out
    assert '3 misclassified' in out and out.count('.png  (true: ') == 1
    assert '... and 2 more (all of them in --json)' in out
    assert len(json.loads(json_path.read_text())['evaluation']['mistakes']) == 3
    # The confusion matrix goes beside the JSON output, never into the working folder.
    beside = tmp_path / 'eval_confusion_matrix.png'
    assert f'confusion matrix: {beside}' in out
    assert cv2.imread(str(beside)) is not None
    assert os.listdir(scratch) == []


def test_the_confusion_matrix_goes_beside_the_csv_or_nowhere(colour_model, tmp_path, capsys, monkeypatch):
    listing = three_blue_as_red(tmp_path)
    scratch = tmp_path / 'working_folder'
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    assert predict.main(['--checkpoint_path', colour_model, '--evaluate', str(listing)]) == 0
    assert 'confusion matrix' not in capsys.readouterr().out
    assert os.listdir(scratch) == []
    csv_path = tmp_path / 'out' / 'eval.csv'
    csv_path.parent.mkdir()
    assert predict.main(['--checkpoint_path', colour_model, '--evaluate', str(listing),
                         '--csv', str(csv_path)]) == 0
    assert sorted(os.listdir(csv_path.parent)) == ['eval.csv', 'eval_confusion_matrix.png']
    assert f"confusion matrix: {csv_path.parent / 'eval_confusion_matrix.png'}" in capsys.readouterr().out
    assert os.listdir(scratch) == []


# --- special files in an input folder (issue 21: scanned without opening them) ---------------------

def test_a_fifo_or_socket_in_a_folder_is_skipped_with_a_note_not_opened(two_class, tmp_path, capsys):
    import socket
    from test_make_lists import time_limit
    folder = tmp_path / 'inputs'
    folder.mkdir()
    photo = str(folder / 'a.png')
    write_noise(photo, 4)
    os.mkfifo(folder / 'pipe.jpg')  # reading it would wait for a writer forever
    os.symlink(folder / 'pipe.jpg', folder / 'to pipe.png')
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / 's.jpg'))
    try:
        with time_limit(120):
            code = cli.run(predict.main, ['--weights_path', two_class['npz'], str(folder)])
    finally:
        server.close()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.splitlines() == [f"note: skipped {folder / 'pipe.jpg'} (a FIFO)",
                                         f"note: skipped {folder / 's.jpg'} (a socket)",
                                         f"note: skipped {folder / 'to pipe.png'} (a symlink to a FIFO)"]
    assert 'a.png' in captured.out and 'pipe.jpg' not in captured.out
    # Given by name, a special file is refused in one line.
    with time_limit(120):
        assert cli.run(predict.main, ['--weights_path', two_class['npz'], str(folder / 'pipe.jpg')]) == 2
    assert capsys.readouterr().err == (f"error: {folder / 'pipe.jpg'}: not an image, folder or list file "
                                       "(a FIFO)\n")


def test_top_k_accuracy_is_shown_only_where_it_says_something():
    """With two classes, top-2 accuracy is 100% whatever the model: it is left out; with three
    classes top-2 is shown."""
    from finetune_alexnet.infer import reports
    labels = [0, 1, 1, 0]
    two = metrics.accuracy_report(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]), labels,
                                  ['cat', 'dog'])
    text = reports.format_evaluation(two, [], 20) + reports.format_accuracy(two)
    assert 'top-2' not in text and 'accuracy 0.5000' in text
    three = metrics.accuracy_report(np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]),
                                    [1, 2, 2], ['a', 'b', 'c'], top=2)
    text = reports.format_evaluation(three, [], 20)
    assert f'top-2 accuracy {2 / 3:.4f}' in text and f'top-2  {2 / 3:7.2%}' in text

def test_predict_runs_its_model_on_a_gpu_when_there_is_one(two_class, photos, monkeypatch, capsys):
    """--device auto with a GPU: the session may place the model there, taking memory as needed;
    --device gpu without one is one line."""
    from finetune_alexnet import tf_setup
    from test_tf_setup import fake_gpus
    configs = []
    real = tf_setup.session_config
    monkeypatch.setattr(tf_setup, 'session_config',
                        lambda *args, **kwargs: configs.append(real(*args, **kwargs)) or configs[-1])
    fake_gpus(monkeypatch, 1)  # soft placement runs it on this CPU all the same
    assert run_predict(capsys, '--weights_path', two_class['npz'], photos[0]).returncode == 0
    assert any('GPU' not in config.device_count for config in configs)  # the model's session
    assert all(config.gpu_options.allow_growth for config in configs)
    fake_gpus(monkeypatch, 0)
    result = run_predict(capsys, '--weights_path', two_class['npz'], '--device', 'gpu', photos[0])
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --device gpu asks for 1 GPU(s), TensorFlow sees 0'
