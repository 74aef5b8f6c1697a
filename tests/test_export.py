"""export_weights.py and model_info.py: the checkpoint contract, and checkpoint -> weights file round trip."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import bvlc_fixture
import export_weights
from finetune_alexnet import model_info
from finetune_alexnet import preprocessing
from finetune_alexnet import weight_files
from alexnet import TRAINABLE_LAYERS, AlexNet
from finetune_alexnet.errors import ToolkitError
from test_predict import REPO, error_line, make_checkpoint


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('export') / 'run')
    layers = bvlc_fixture.random_weights(num_classes=2, seed=7)
    return make_checkpoint(folder, layers, class_names=['cat', 'dog'], center_crop=True)


# --- export --------------------------------------------------------------------------------------

def test_export_then_load_is_bit_exact(checkpoint, tmp_path, capsys):
    output = str(tmp_path / 'exported.npz')
    assert export_weights.main(['--checkpoint', os.path.dirname(checkpoint), '--output', output]) == 0
    assert 'cat, dog' in capsys.readouterr().out
    # Pickle-free: every entry is a plain array, named like the graph's variables.
    with zipfile.ZipFile(output) as archive:
        assert sorted(archive.namelist()) == sorted(f'{layer}/{kind}.npy' for layer in TRAINABLE_LAYERS
                                                    for kind in ('weights', 'biases'))
    with np.load(output, allow_pickle=False) as archive:
        assert all(archive[name].dtype == np.float32 for name in archive.files)

    reader = tf.train.load_checkpoint(checkpoint)
    with tf.Graph().as_default():
        model = AlexNet(tf.placeholder(tf.float32, [None, 227, 227, 3]), 1.0, 2, skip_layer=[],
                        weights_path=output)
        with tf.Session() as session:
            model.load_initial_weights(session)  # skips nothing: every variable comes from the file
            loaded = session.run(model.variables)
    for layer in TRAINABLE_LAYERS:
        for kind in ('weights', 'biases'):
            expected = reader.get_tensor(f'{layer}/{kind}')
            assert loaded[layer][kind].dtype == expected.dtype
            assert loaded[layer][kind].tobytes() == expected.tobytes(), f'{layer}/{kind}'


def test_export_leaves_the_step_counter_and_optimizer_slots_behind(checkpoint, tmp_path):
    names = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    assert 'global_step' in names and 'fc8/weights/Momentum' in names
    output = str(tmp_path / 'out.npz')
    export_weights.export_checkpoint(checkpoint, output)
    assert set(weight_files.load_weights(output)) == set(TRAINABLE_LAYERS)


def test_export_errors_name_the_problem(checkpoint, tmp_path):
    with pytest.raises(ToolkitError, match='folder .*nowhere does not exist'):
        export_weights.export_checkpoint(checkpoint, str(tmp_path / 'nowhere' / 'out.npz'))
    # model_info.json claiming another class count: the shape check names the variable.
    folder = tmp_path / 'wrong_classes'
    folder.mkdir()
    for suffix in ('.index', '.data-00000-of-00001'):
        os.link(checkpoint + suffix, str(folder / 'best.ckpt') + suffix)
    model_info.write_model_info(str(folder), 5, None, center_crop=False)
    with pytest.raises(ToolkitError, match=r'fc8/weights has shape \(4096, 2\), expected \(4096, 5\)'):
        export_weights.export_checkpoint(str(folder), str(tmp_path / 'out.npz'))
    assert not os.path.exists(tmp_path / 'out.npz')


def test_a_checkpoint_of_something_else_is_refused(tmp_path):
    with tf.Graph().as_default():
        tf.get_variable('conv1/weights', shape=[3, 3, 3, 4])
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            tf.train.Saver().save(session, str(tmp_path / 'best.ckpt'), write_meta_graph=False)
    model_info.write_model_info(str(tmp_path), 2, None, center_crop=False)
    with pytest.raises(ToolkitError, match=r'conv1/weights has shape \(3, 3, 3, 4\)'):
        export_weights.export_checkpoint(str(tmp_path), str(tmp_path / 'out.npz'))


def test_export_command_line_missing_checkpoint_exits_2(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'export_weights.py'), '--checkpoint',
                             str(tmp_path / 'none.ckpt'), '--output', str(tmp_path / 'out.npz')],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert 'none.ckpt: checkpoint not found' in error_line(result)


# --- model_info.json -----------------------------------------------------------------------------

def test_write_model_info_follows_the_contract_and_the_shared_preprocessing(tmp_path):
    path = model_info.write_model_info(str(tmp_path / 'new'), 3, ['a', 'b', 'c'], center_crop=True)
    with open(path) as stream:
        content = json.load(stream)
    assert content == {'format': 1, 'num_classes': 3, 'class_names': ['a', 'b', 'c'],
                       'preprocessing': {'input_size': 227, 'resize_size': 256,
                                         'mean_rgb': [123.68, 116.779, 103.939],
                                         'channel_order': 'BGR', 'center_crop': True}}
    assert content['preprocessing']['mean_rgb'] == list(preprocessing.IMAGENET_MEAN_RGB)
    with pytest.raises(ToolkitError, match='2 class names for 3 classes'):
        model_info.write_model_info(str(tmp_path), 3, ['a', 'b'], center_crop=False)


def test_a_checkpoint_folder_means_best_else_the_latest(checkpoint, tmp_path):
    folder = os.path.dirname(checkpoint)
    assert model_info.read_model_info(folder) == (checkpoint, model_info.read_model_info(checkpoint)[1])
    assert model_info.resolve_checkpoint(checkpoint + '.index') == checkpoint
    assert model_info.resolve_checkpoint(checkpoint + '.data-00000-of-00001') == checkpoint
    # No best.ckpt and no `checkpoint` state file: the highest epoch number wins (10 after 9).
    for epoch in (9, 10, 2):
        for suffix in ('.index', '.data-00000-of-00001'):
            os.link(checkpoint + suffix, str(tmp_path / f'model_epoch{epoch}.ckpt') + suffix)
    assert model_info.resolve_checkpoint(str(tmp_path)) == str(tmp_path / 'model_epoch10.ckpt')
    # A `checkpoint` state file (tf.train.Saver writes one) names the latest.
    (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "model_epoch2.ckpt"\n')
    assert model_info.resolve_checkpoint(str(tmp_path)) == str(tmp_path / 'model_epoch2.ckpt')


@pytest.mark.parametrize('change, message', [
    (lambda info: info.update(format=2), 'unsupported model info'),
    (lambda info: info.update(num_classes='2'), 'num_classes should be a positive integer'),
    (lambda info: info.update(class_names=['only one']), '1 class_names for num_classes 2'),
    (lambda info: info['preprocessing'].update(mean_rgb=[104, 117, 124]),
     r'trained with preprocessing.mean_rgb = \[104, 117, 124\]'),
    (lambda info: info['preprocessing'].update(channel_order='RGB'), 'preprocessing.channel_order'),
    (lambda info: info['preprocessing'].pop('center_crop'), 'center_crop should be true or false'),
    (lambda info: info['preprocessing'].pop('input_size'), 'preprocessing.input_size is missing'),
])
def test_bad_model_info_is_named(checkpoint, tmp_path, change, message):
    for suffix in ('.index', '.data-00000-of-00001'):
        os.link(checkpoint + suffix, str(tmp_path / 'best.ckpt') + suffix)
    with open(os.path.join(os.path.dirname(checkpoint), model_info.MODEL_INFO)) as stream:
        info = json.load(stream)
    change(info)
    (tmp_path / model_info.MODEL_INFO).write_text(json.dumps(info))
    with pytest.raises(ToolkitError, match=f'model_info.json: .*{message}'):
        model_info.read_model_info(str(tmp_path))


def test_unreadable_model_info_is_named(checkpoint, tmp_path):
    for suffix in ('.index', '.data-00000-of-00001'):
        os.link(checkpoint + suffix, str(tmp_path / 'best.ckpt') + suffix)
    (tmp_path / model_info.MODEL_INFO).write_text('{"format": 1,')
    with pytest.raises(ToolkitError, match='model_info.json: unreadable model info'):
        model_info.read_model_info(str(tmp_path / 'best.ckpt'))


def test_class_names_file(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_text('# label name\n1 dog\n0 cat with spaces\n\n')
    assert model_info.read_class_names_file(str(path), 2) == ['cat with spaces', 'dog']
    path.write_text('zero cat\n')
    with pytest.raises(ToolkitError, match='classes.txt:1: expected "label name"'):
        model_info.read_class_names_file(str(path), 1)
