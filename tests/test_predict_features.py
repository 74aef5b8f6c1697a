"""predict.py --features: a layer's outputs on disk, equal to the model's own layer, with paths and labels."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import bvlc_fixture
import image_files
import predict
from alexnet import AlexNet
from finetune_alexnet import weight_files
from finetune_alexnet.cli import run as run_main
from test_datagenerator import prediction_inputs
from test_predict import REPO, error_line


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('features') / 'three_class.npz')
    weight_files.save_weights(path, bvlc_fixture.random_weights(num_classes=3, seed=21))
    return path


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """Two images given directly and a list file of two more (labels 2 and 0)."""
    folder = tmp_path_factory.mktemp('feature_images')
    direct = [image_files.write_jpeg(folder / 'a.jpg', image_files.random_rgb(80, 100, seed=1)),
              image_files.write_png(folder / 'b.png', image_files.random_rgb(240, 200, seed=2))]
    (folder / 'listed').mkdir()
    listed = [image_files.write_bmp(folder / 'listed' / 'c.bmp', image_files.random_rgb(50, 60, seed=3)),
              image_files.write_png(folder / 'listed' / 'd.png', image_files.random_rgb(227, 227, seed=4))]
    list_file = folder / 'list.txt'
    list_file.write_text('listed/c.bmp 2\nlisted/d.png 0\n')
    return direct, listed, str(list_file)


def own_layers(paths, weights_path, layers):
    """The layers' outputs of AlexNet's own graph, fed the prediction pipeline's pre-processed arrays."""
    images = prediction_inputs(paths)
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 227, 227, 3])
        model = AlexNet(x, 1.0, 3, [], weights_path)
        with tf.Session() as session:
            model.load_initial_weights(session)
            return session.run({layer: model.end_points[layer] for layer in layers}, {x: images})


@pytest.mark.slow
def test_features_equal_the_models_own_layers(weights, inputs, tmp_path, capsys):
    direct, listed, list_file = inputs
    paths = direct + listed
    expected = own_layers(paths, weights, ['fc7', 'pool5'])
    for layer, shape in (('fc7', (4, 4096)), ('pool5', (4, 6, 6, 256))):
        output = str(tmp_path / f'{layer}.npz')
        # One batch, as the reference computes it: with another batch size, oneDNN blocks the matrix
        # products differently and fc7's values (around 50) move by about 1e-3.
        argv = ['--weights_path', weights, '--features', layer, '--output', output, *direct, list_file]
        assert run_main(predict.main, argv) == 0
        assert f'wrote {output}: {layer} features {list(shape)} of 4 images, with labels' in \
            capsys.readouterr().out
        with np.load(output, allow_pickle=False) as saved:  # no pickles: plain arrays only
            assert sorted(saved.files) == ['features', 'labels', 'layer', 'paths']
            assert saved['features'].dtype == np.float32 and saved['features'].shape == shape
            np.testing.assert_allclose(saved['features'], expected[layer], atol=1e-6, rtol=0)
            assert list(saved['paths']) == [os.path.abspath(path) if path in listed else path
                                            for path in paths]
            assert list(saved['labels']) == [-1, -1, 2, 0]
            assert str(saved['layer']) == layer
    # The values are real activations, not zeros: fc7 after ReLU has some positive units per image.
    assert np.all((expected['fc7'] > 0).sum(axis=1) > 100)


@pytest.mark.slow
def test_features_of_images_alone_have_no_labels_and_skip_bad_images(weights, inputs, tmp_path, capsys):
    direct, _, _ = inputs
    broken = image_files.write(tmp_path / 'broken.jpg', b'\xff\xd8\xff not a jpeg')
    output = str(tmp_path / 'fc6.npz')
    argv = ['--weights_path', weights, '--features', 'fc6', '--output', output, '--skip_bad_images',
            direct[0], broken, direct[1]]
    assert run_main(predict.main, argv) == 0
    assert 'skipped 1 unreadable image(s): ' + broken in capsys.readouterr().err
    with np.load(output, allow_pickle=False) as saved:
        assert sorted(saved.files) == ['features', 'layer', 'paths']
        assert list(saved['paths']) == direct
        np.testing.assert_allclose(saved['features'], own_layers(direct, weights, ['fc6'])['fc6'],
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize('extra, message', [
    (['--features', 'fc9', '--output', 'x.npz'], '--features fc9: unknown layer; valid: conv1, norm1'),
    (['--features', 'fc7'], '--features needs --output FILE.npz'),
    (['--features', 'fc7', '--output', 'feats.txt'], '--output feats.txt: the features file should end'),
    (['--features', 'fc7', '--output', 'x.npz', '--csv', 'a.csv'], '--features writes features only'),
    (['--features', 'fc7', '--output', '/nowhere/x.npz'], '--output is in a folder that does not exist (/nowhere)'),
    (['--features', 'fc7', '--output', 'x.npz', '--ten_crop'], '--features takes one view per image'),
])
def test_feature_flag_mistakes_are_one_line(weights, inputs, extra, message, capsys):
    assert run_main(predict.main, ['--weights_path', weights, *extra, inputs[0][0]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], err


@pytest.mark.slow
def test_feature_flags_from_the_shell(weights, inputs, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'predict.py'), '--weights_path', weights,
                             '--features', 'fc10', '--output', str(tmp_path / 'f.npz'), inputs[0][0]],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert '--features fc10: unknown layer' in error_line(result)
    assert not os.path.exists(tmp_path / 'f.npz')


@pytest.mark.slow
def test_features_are_after_the_relu_and_preact_before_it(weights, inputs, tmp_path, capsys):
    """`fc7` is what fc8 sees (after the ReLU: no negative value); `fc7_preact` is x W + b, computed
    here by hand from fc6 and the weights file, and its ReLU is `fc7`."""
    direct, _, _ = inputs
    saved = {}
    for layer in ('fc6', 'fc7', 'fc7_preact'):
        output = str(tmp_path / f'{layer}.npz')
        assert run_main(predict.main, ['--weights_path', weights, '--features', layer, '--output',
                                       output, *direct]) == 0
        with np.load(output) as content:
            saved[layer] = content['features']
    fc7_weights = weight_files.load_weights(weights)['fc7']
    by_hand = saved['fc6'].astype(np.float64) @ fc7_weights['weights'] + fc7_weights['biases']
    np.testing.assert_allclose(saved['fc7_preact'], by_hand, rtol=1e-4, atol=1e-3)
    assert (saved['fc7_preact'] < 0).any() and (saved['fc7'] >= 0).all()
    np.testing.assert_allclose(saved['fc7'], np.maximum(saved['fc7_preact'], 0), rtol=1e-6, atol=1e-6)
    assert 'after their ReLU, LAYER_preact before it' in ' '.join(
        predict.get_args_parser().format_help().split())
    capsys.readouterr()
