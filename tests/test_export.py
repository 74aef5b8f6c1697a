"""export.py and model_info.py: the checkpoint contract, checkpoint -> weights file round trip, and the
SavedModel and TFLite exports, checked in a fresh TensorFlow 2 process against predict.py."""
import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import bvlc_fixture
import export
import finetune
import image_files
from finetune_alexnet import demo_data
from finetune_alexnet import model_info
from finetune_alexnet.infer import serving
from finetune_alexnet.cli import run as run_main
from finetune_alexnet import preprocessing
from finetune_alexnet import weight_files
from alexnet import TRAINABLE_LAYERS, AlexNet
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.infer.classifier import Classifier, decode_predictions
from test_datagenerator import prediction_inputs
from test_predict import REPO, error_line, make_checkpoint


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('export') / 'run')
    layers = bvlc_fixture.random_weights(num_classes=2, seed=7)
    return make_checkpoint(folder, layers, class_names=['cat', 'dog'], center_crop=True)


# --- export --------------------------------------------------------------------------------------

def test_export_then_load_is_bit_exact(checkpoint, tmp_path, capsys):
    output = str(tmp_path / 'exported.npz')
    assert export.main(['--checkpoint', os.path.dirname(checkpoint), '--output', output]) == 0
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
    assert export.main(['--checkpoint', checkpoint, '--output', output]) == 0
    assert set(weight_files.load_weights(output)) == set(TRAINABLE_LAYERS)


def test_export_errors_name_the_problem(checkpoint, tmp_path):
    with pytest.raises(ToolkitError, match='--output .*is in a folder that does not exist .*nowhere'):
        export.main(['--checkpoint', checkpoint, '--output', str(tmp_path / 'nowhere' / 'out.npz')])
    # model_info.json claiming another class count: the shape check names the variable.
    folder = tmp_path / 'wrong_classes'
    folder.mkdir()
    for suffix in ('.index', '.data-00000-of-00001'):
        os.link(checkpoint + suffix, str(folder / 'best.ckpt') + suffix)
    model_info.write_model_info(str(folder), 5, None, center_crop=False)
    with pytest.raises(ToolkitError, match=r'fc8/weights has shape \(4096, 2\), expected \(4096, 5\)'):
        export.main(['--checkpoint', str(folder), '--output', str(tmp_path / 'out.npz')])
    assert not os.path.exists(tmp_path / 'out.npz')


def test_a_checkpoint_of_something_else_is_refused(tmp_path):
    with tf.Graph().as_default():
        tf.get_variable('conv1/weights', shape=[3, 3, 3, 4])
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            tf.train.Saver().save(session, str(tmp_path / 'best.ckpt'), write_meta_graph=False)
    model_info.write_model_info(str(tmp_path), 2, None, center_crop=False)
    with pytest.raises(ToolkitError, match=r'conv1/weights has shape \(3, 3, 3, 4\)'):
        export.main(['--checkpoint', str(tmp_path), '--output', str(tmp_path / 'out.npz')])


@pytest.mark.slow
def test_export_command_line_missing_checkpoint_exits_2(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'export.py'), '--checkpoint',
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


# --- SavedModel and TFLite: a short fine-tune, exported, against predict.py ------------------------

# Run in a fresh interpreter with `python -I` (no current folder, no PYTHONPATH on sys.path) from a
# folder outside the repository: plain TensorFlow 2 and the exported folder, nothing of ours. The
# project may be installed (pip install -e .), so its modules are refused outright.
LOAD_SAVED_MODEL = r'''
import sys
OURS = ('finetune_alexnet', 'alexnet', 'datagenerator', 'caffe_classes')


class RefuseOurs:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in OURS:
            raise ImportError(f'{name}: the SavedModel must load without the project')


sys.meta_path.insert(0, RefuseOurs())
import numpy as np
import tensorflow as tf
model_dir, files_list, decoded_npz, output = sys.argv[1:]
model = tf.saved_model.load(model_dir)
files = [open(path, 'rb').read() for path in open(files_list).read().splitlines()]
results = {}
served = model.signatures['serving_default'](image_bytes=tf.constant(files))
for key, value in served.items():
    results['files_' + key] = value.numpy()
decoded = np.load(decoded_npz)
for name in decoded.files:
    outputs = model.signatures['predict_images'](images=tf.constant(decoded[name][np.newaxis]))
    for key, value in outputs.items():
        results[f'images_{name}_{key}'] = value.numpy()
results['signatures'] = np.array(sorted(model.signatures))
assert not [name for name in sys.modules if name.split('.')[0] in OURS]
np.savez(output, **results)
'''


def run_fresh_tensorflow(model_dir, paths, decoded, folder):
    """The SavedModel's outputs, computed by plain TF 2 in a subprocess: {name: array}."""
    folder.mkdir(exist_ok=True)
    (folder / 'files.txt').write_text('\n'.join(paths) + '\n')
    np.savez(folder / 'decoded.npz', **decoded)
    environment = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    result = subprocess.run([sys.executable, '-I', '-c', LOAD_SAVED_MODEL, model_dir,
                             str(folder / 'files.txt'), str(folder / 'decoded.npz'),
                             str(folder / 'out.npz')],
                            cwd=str(folder), env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(folder / 'out.npz', allow_pickle=True) as outputs:
        return {name: outputs[name] for name in outputs.files}


@pytest.fixture(scope='module')
def fine_tuned(tmp_path_factory):
    """A run folder from a short fine-tune (one epoch of fc7-fc8, with --augment: centre-crop inference).

    Its pretrained fixture's fc7 is scaled down: with random conv and fc6 weights the demo's flat
    colours give fc7 outputs in the hundreds, logits far apart and probabilities of exactly 0 and 1,
    which would hide any difference; scaled, the probabilities are moderate and every digit counts.
    """
    folder = tmp_path_factory.mktemp('fine_tune')
    layers = bvlc_fixture.random_weights(num_classes=1000, seed=4)
    layers['fc7'] = {kind: value * np.float32(1e-4) for kind, value in layers['fc7'].items()}
    pretrained = str(folder / 'pretrained.npz')
    weight_files.save_weights(pretrained, layers)
    del layers
    demo_data.make_demo_images(str(folder / 'images'), images_per_class=4, seed=5)
    lines = [f'images/{name}/{file} {label}' for label, name in enumerate(demo_data.CLASS_NAMES)
             for file in sorted(os.listdir(folder / 'images' / name))]
    (folder / 'train.txt').write_text('\n'.join(lines[::2]) + '\n')
    (folder / 'val.txt').write_text('\n'.join(lines[1::2]) + '\n')
    (folder / 'classes.txt').write_text('0 disk\n1 square\n')
    status = run_main(finetune.main, [
        '--train_file', str(folder / 'train.txt'), '--val_file', str(folder / 'val.txt'),
        '--num_classes', '2', '--batch_size', '4', '--num_epochs', '1', '--augment', '--seed', '3',
        '--train_layers', 'fc8,fc7', '--skip_layers', 'fc8', '--learning_rate', '0.0001',
        '--weights_path', pretrained, '--checkpoint_path', str(folder / 'run'),
        '--filewriter_path', str(folder / 'tensorboard')])
    assert status == 0
    return str(folder / 'run')


@pytest.fixture(scope='module')
def pictures(tmp_path_factory):
    """A JPEG, a grey PNG, an RGBA PNG, a BMP and a GIF of several sizes, and their RGB pixels."""
    folder = tmp_path_factory.mktemp('pictures')
    rgb = image_files.random_rgb(90, 120, seed=11)
    smooth = cv2.GaussianBlur(image_files.random_rgb(300, 260, seed=12), (0, 0), 6)
    grey = image_files.random_rgb(70, 64, seed=13)[..., 0]
    rgba = np.dstack([image_files.random_rgb(50, 80, seed=14), np.full((50, 80), 128, np.uint8)])
    gif = image_files.flat_rgb(40, 30, (200, 30, 60))
    gif[10:30] = (10, 200, 90)
    paths = [image_files.write_jpeg(folder / 'photo.jpg', smooth),
             image_files.write_png(folder / 'grey.png', grey),
             image_files.write_png(folder / 'alpha.png', rgba),
             image_files.write_bmp(folder / 'noise.bmp', rgb),
             image_files.write(folder / 'two.gif', image_files.gif_bytes([gif]))]
    # What a client that decodes the files itself sends to predict_images (lossless ones: exact).
    decoded = {'grey': np.repeat(grey[..., np.newaxis], 3, axis=2), 'alpha': rgba[..., :3],
               'noise': rgb, 'two': gif}
    return paths, decoded


def classify_with_predict(checkpoint, paths):
    with Classifier(checkpoint=checkpoint) as classifier:
        result = classifier.run(paths)
        return result.probabilities, classifier.class_names


@pytest.fixture(scope='module')
def saved_model(fine_tuned, pictures, tmp_path_factory):
    """The fine-tuned model exported as a SavedModel, and its outputs computed by a fresh TF 2."""
    folder = tmp_path_factory.mktemp('serving')
    output = str(folder / 'models' / 'demo' / '1')
    printed = _capture_main(['--checkpoint', fine_tuned, '--format', 'savedmodel', '--output', output])
    outputs = run_fresh_tensorflow(output, pictures[0], pictures[1], folder / 'client')
    return output, printed, outputs


def _capture_main(argv):
    stream = io.StringIO()  # capsys cannot serve module-scoped fixtures
    with contextlib.redirect_stdout(stream):
        assert run_main(export.main, argv) == 0
    return stream.getvalue()


@pytest.mark.slow
def test_saved_model_equals_predict_in_a_fresh_tensorflow(saved_model, fine_tuned, pictures):
    _, _, outputs = saved_model
    expected, names = classify_with_predict(fine_tuned, pictures[0])
    assert names == ['disk', 'square']
    assert list(outputs['signatures']) == ['predict_images', 'serving_default']
    probabilities = outputs['files_probabilities']
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(pictures[0]), 2)
    # Moderate probabilities, so the comparison sees every digit rather than saturated 0s and 1s.
    assert np.all((probabilities > 1e-4) & (probabilities < 1 - 1e-4)), probabilities
    np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)
    top = [[entry[1] for entry in row] for row in decode_predictions(expected, names, top=5)]
    classes = [[name.decode() for name in row] for row in outputs['files_classes']]
    assert [row[0] for row in classes] == [row[0] for row in top]
    assert classes == top  # k = min(5, 2) = 2, best first
    scores = [[entry[2] for entry in row] for row in decode_predictions(expected, names, top=5)]
    np.testing.assert_allclose(outputs['files_scores'], scores, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_predict_images_equals_serving_default(saved_model, pictures):
    _, _, outputs = saved_model
    paths, decoded = pictures
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    for name in decoded:  # named after the files
        row = stems.index(name)
        np.testing.assert_allclose(outputs[f'images_{name}_probabilities'][0],
                                   outputs['files_probabilities'][row], atol=1e-6, rtol=0)
        assert list(outputs[f'images_{name}_classes'][0]) == list(outputs['files_classes'][row])


@pytest.mark.slow
def test_saved_model_assets_printout_and_saved_model_cli(saved_model, fine_tuned):
    output, printed, _ = saved_model
    assert (open(os.path.join(output, 'assets', 'labels.txt')).read() == 'disk\nsquare\n')
    with open(os.path.join(output, 'assets', 'model_info.json')) as stream:
        info = json.load(stream)
    with open(os.path.join(fine_tuned, 'model_info.json')) as stream:
        trained = json.load(stream)
    assert info['preprocessing'] == trained['preprocessing'] and info['preprocessing']['center_crop']
    assert info['class_names'] == ['disk', 'square']
    assert sorted(os.listdir(output)) == ['assets', 'saved_model.pb', 'variables']
    # Only the finished folder is left: no partial or temporary folders beside it.
    assert os.listdir(os.path.dirname(output)) == ['1']
    assert f'wrote {output} (SavedModel, ' in printed
    assert ('signature serving_default: inputs image_bytes string [-1]; outputs classes string [-1, 2], '
            'probabilities float32 [-1, 2], scores float32 [-1, 2]') in printed
    assert 'signature predict_images: inputs images uint8 [-1, -1, -1, 3]' in printed
    assert "tf.saved_model.load(" in printed
    cli_run = subprocess.run([sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli', 'show',
                              '--dir', output, '--all'], capture_output=True, text=True, timeout=300)
    assert cli_run.returncode == 0, cli_run.stderr[-2000:]
    shown = cli_run.stdout
    assert "signature_def['serving_default']" in shown and "signature_def['predict_images']" in shown
    assert 'inputs[\'image_bytes\'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)' in shown
    assert 'Method name is: tensorflow/serving/predict' in shown


@pytest.mark.slow
def test_imagenet_export_carries_caffe_class_names_and_weights_once(bvlc_npy, pictures, tmp_path):
    from caffe_classes import class_names
    output = str(tmp_path / 'alexnet' / '1')
    _capture_main(['--weights_path', bvlc_npy, '--format', 'savedmodel', '--output', output])
    size = serving.folder_size(output)
    weights_bytes = sum(value.nbytes for layer in weight_files.load_weights(bvlc_npy).values()
                        for value in layer.values())
    assert weights_bytes < size < 250e6  # 233 MB of weights, once
    labels = open(os.path.join(output, 'assets', 'labels.txt'), encoding='utf-8').read().splitlines()
    assert labels == list(class_names)
    outputs = run_fresh_tensorflow(output, pictures[0][:1], {}, tmp_path / 'client')
    probabilities = outputs['files_probabilities']
    assert probabilities.shape == (1, 1000)
    order = np.argsort(-probabilities[0], kind='stable')[:5]
    assert [name.decode() for name in outputs['files_classes'][0]] == [class_names[i] for i in order]


def _run_tflite(path, inputs):
    interpreter = tf.lite.Interpreter(model_path=path)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail['index'], list(inputs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail['index'], inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


@pytest.mark.slow
def test_tflite_float32_and_float16_equal_predict(fine_tuned, pictures, tmp_path):
    paths = pictures[0]
    expected, _ = classify_with_predict(fine_tuned, paths)
    inputs = prediction_inputs(paths, center_crop=True)  # the model was trained with --augment
    sizes = {}
    for quantize, tolerance in ((None, 1e-4), ('float16', 1e-2)):
        output = str(tmp_path / f'demo_{quantize or "float32"}.tflite')
        printed = _capture_main(['--checkpoint', fine_tuned, '--format', 'tflite', '--output', output]
                                + (['--quantize', quantize] if quantize else []))
        assert 'TFLite has no JPEG decoder op' in printed
        np.testing.assert_allclose(_run_tflite(output, inputs), expected, atol=tolerance, rtol=0)
        stem = output[:-len('.tflite')]
        assert open(stem + '.labels.txt').read() == 'disk\nsquare\n'
        with open(stem + '.model_info.json') as stream:
            assert json.load(stream)['preprocessing']['center_crop'] is True
        sizes[quantize] = os.path.getsize(output)
    assert 0.45 < sizes['float16'] / sizes[None] < 0.55


# --- export errors ---------------------------------------------------------------------------------

def _error_of(argv, capsys):
    assert run_main(export.main, argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), captured.err
    return lines[0]


def test_export_refuses_unknown_format_and_quantize_without_one(checkpoint, tmp_path, capsys):
    base = ['--checkpoint', checkpoint, '--output', str(tmp_path / 'out')]
    assert "invalid choice: 'onnx'" in _error_of(base + ['--format', 'onnx'], capsys)
    assert ('--quantize float16 applies to --format tflite, not savedmodel'
            in _error_of(base + ['--format', 'savedmodel', '--quantize', 'float16'], capsys))
    assert '--quantize float16 applies to --format tflite, not npz' in _error_of(
        base + ['--quantize', 'float16'], capsys)
    assert 'invalid choice' in _error_of(base + ['--format', 'tflite', '--quantize', 'int4'], capsys)
    assert not os.path.exists(tmp_path / 'out')


def test_export_refuses_a_non_empty_output_unless_overwrite(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'models' / '1'
    folder.mkdir(parents=True)
    (folder / 'saved_model.pb').write_bytes(b'old')
    argv = ['--checkpoint', checkpoint, '--format', 'savedmodel', '--output', str(folder)]
    assert f'{folder}: folder exists and is not empty' in _error_of(argv, capsys)
    assert (folder / 'saved_model.pb').read_bytes() == b'old'
    npz = tmp_path / 'model.npz'
    npz.write_bytes(b'old')
    assert f'{npz}: exists (pass --overwrite' in _error_of(['--checkpoint', checkpoint, '--output',
                                                             str(npz)], capsys)
    assert run_main(export.main, argv + ['--overwrite']) == 0
    assert sorted(os.listdir(folder)) == ['assets', 'saved_model.pb', 'variables']
    assert os.listdir(folder.parent) == ['1']


def test_export_refuses_missing_and_foreign_checkpoints_before_writing(tmp_path, capsys):
    output = str(tmp_path / 'models' / '1')
    argv = ['--format', 'savedmodel', '--output', output]
    assert 'none.ckpt: checkpoint not found' in _error_of(
        ['--checkpoint', str(tmp_path / 'none.ckpt')] + argv, capsys)
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    with tf.Graph().as_default():
        tf.get_variable('dense/kernel', shape=[3, 4])
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            tf.train.Saver().save(session, str(foreign / 'best.ckpt'), write_meta_graph=False)
    model_info.write_model_info(str(foreign), 2, None, center_crop=False)
    assert 'conv1/weights is not in it' in _error_of(['--checkpoint', str(foreign)] + argv,
                                                                   capsys)
    assert 'missing.npy' in _error_of(['--weights_path', str(tmp_path / 'missing.npy')] + argv, capsys)
    assert not os.path.exists(tmp_path / 'models')


@pytest.mark.slow
def test_export_command_line_unknown_format_exits_2(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'export.py'), '--checkpoint',
                             str(tmp_path), '--format', 'onnx', '--output', str(tmp_path / 'x')],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "argument --format: invalid choice: 'onnx'" in error_line(result)
