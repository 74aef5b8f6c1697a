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
import datagenerator
import export
import finetune
import image_files
from finetune_alexnet import cli
from finetune_alexnet import demo_data
from finetune_alexnet import digests
from finetune_alexnet import model_info
from finetune_alexnet.infer import exports
from finetune_alexnet.infer import manifests
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


def test_export_creates_a_missing_folder_and_names_problems(checkpoint, tmp_path):
    # Every format creates the folders of --output (tests/test_export_runtimes.py: tflite, onnx).
    created = tmp_path / 'new' / 'nested' / 'out.npz'
    assert export.main(['--checkpoint', checkpoint, '--output', str(created)]) == 0
    assert set(weight_files.load_weights(str(created))) == set(TRAINABLE_LAYERS)
    blocked = tmp_path / 'a_file'
    blocked.write_text('not a folder')
    with pytest.raises(ToolkitError, match='a_file: the folder of --output .*is a file, not a folder'):
        export.main(['--checkpoint', checkpoint, '--output', str(blocked / 'out.npz')])
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
model_dir, files_list, decoded_npz, output, refused = sys.argv[1:]
model = tf.saved_model.load(model_dir)
files = [open(path, 'rb').read() for path in open(files_list).read().splitlines()]
results = {}
try:  # an image over the model's pixel limit fails its own request; the next one is served
    model.signatures['serving_default'](image_bytes=tf.constant([files[0], open(refused, 'rb').read()]))
    results['refused'] = np.array('not refused')
except tf.errors.InvalidArgumentError as error:
    results['refused'] = np.array(error.message)
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
    huge = image_files.huge_png(folder / 'huge.png', 15000, bit_depth=1)
    environment = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    result = subprocess.run([sys.executable, '-I', '-c', LOAD_SAVED_MODEL, model_dir,
                             str(folder / 'files.txt'), str(folder / 'decoded.npz'),
                             str(folder / 'out.npz'), str(huge)],
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
    # Served after a request refused by the pixel limit (in the same process): the limit's message.
    assert ('image_bytes[1]: its header announces 225000000 pixels (every frame counted), over '
            'max_pixels 100000000; refused before decoding') in str(outputs['refused'])
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
    assert sorted(os.listdir(os.path.join(output, 'assets'))) == [
        'finetune_alexnet.json', 'labels.txt', 'model_info.json']
    assert manifests.read(manifests.folder_manifest(output))['max_pixels'] == 100000000
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
    assert 'over max_pixels 100000000' in str(outputs['refused'])
    probabilities = outputs['files_probabilities']
    assert probabilities.shape == (1, 1000)
    order = np.argsort(-probabilities[0], kind='stable')[:5]
    assert [name.decode() for name in outputs['files_classes'][0]] == [class_names[i] for i in order]


def _run_tflite(path, inputs):
    from ai_edge_litert.interpreter import Interpreter  # LiteRT, as docs/serving.md runs the file
    interpreter = Interpreter(model_path=path)
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
        assert ('centre crop of a 256 resize, in float32; BGR; ImageNet mean subtracted: '
                'docs/serving.md has the exact steps); output probabilities float32 [n, 2]') in printed
        assert "from ai_edge_litert.interpreter import Interpreter; interpreter = Interpreter(" in printed
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
    assert "invalid choice: 'coreml'" in _error_of(base + ['--format', 'coreml'], capsys)
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
    # A saved_model.pb alone is not a SavedModel export.py wrote: even --overwrite leaves it.
    assert _error_of(argv + ['--overwrite'], capsys) == (
        f'error: {folder}: {NO_MANIFEST}')
    assert (folder / 'saved_model.pb').read_bytes() == b'old'
    (folder / 'saved_model.pb').unlink()  # an empty folder is written into
    assert run_main(export.main, argv) == 0
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
                             str(tmp_path), '--format', 'coreml', '--output', str(tmp_path / 'x')],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "argument --format: invalid choice: 'coreml'" in error_line(result)


# --- --overwrite replaces only what export.py wrote (issue 21) ----------------------------------------

def _tree(folder):
    """{relative path: bytes or None for folders} of everything under `folder`."""
    tree = {}
    for root, folders, files in os.walk(folder):
        for name in folders:
            tree[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            tree[os.path.relpath(path, folder)] = open(path, 'rb').read()
    return tree


NO_MANIFEST = ('holds no manifest assets/finetune_alexnet.json of export.py, so nothing in it is known '
               'to be an export; choose another --output (an export made before manifests existed: '
               'remove it first)')


def _fake_saved_model(folder, manifest=True, data=b'data'):
    """The layout export.py writes (saved_model.pb, variables/, assets/), with made-up contents and,
    with `manifest`, the manifest listing them."""
    (folder / 'variables').mkdir(parents=True)
    (folder / 'assets').mkdir()
    (folder / 'saved_model.pb').write_bytes(b'graph')
    (folder / 'variables' / 'variables.index').write_bytes(b'index')
    (folder / 'variables' / 'variables.data-00000-of-00001').write_bytes(data)
    (folder / 'assets' / 'labels.txt').write_text('cat\ndog\n')
    model_info.write_model_info(str(folder / 'assets'), 2, ['cat', 'dog'], center_crop=False)
    if manifest:
        manifests.write_folder_manifest(str(folder), max_pixels=1000)
    return folder


def test_overwrite_refuses_a_parent_folder_of_versions_and_notes(checkpoint, tmp_path, capsys):
    models = tmp_path / 'models'
    _fake_saved_model(models / '1')
    _fake_saved_model(models / '2')
    (models / 'notes.txt').write_text('version 2 is the good one')
    before = _tree(models)
    argv = ['--checkpoint', checkpoint, '--format', 'savedmodel', '--output', str(models), '--overwrite']
    assert _error_of(argv, capsys) == f'error: {models}: {NO_MANIFEST}'
    assert _tree(models) == before
    assert sorted(os.listdir(tmp_path)) == ['models']  # no partial folder beside it either


def test_overwrite_refuses_the_current_folder_and_a_home_like_folder(checkpoint, tmp_path, capsys,
                                                                       monkeypatch):
    home = tmp_path / 'home'
    (home / '.ssh').mkdir(parents=True)
    (home / '.bashrc').write_text('alias ll="ls -l"\n')
    before = _tree(home)
    base = ['--checkpoint', checkpoint, '--format', 'savedmodel', '--overwrite', '--output']
    assert _error_of(base + [str(home)], capsys) == f'error: {home}: {NO_MANIFEST}'
    monkeypatch.chdir(home)
    assert _error_of(base + ['.'], capsys) == (
        'error: .: is the current folder or holds it; run export.py from elsewhere, or choose '
        'another --output')
    (home / 'empty').mkdir()
    monkeypatch.chdir(home / 'empty')  # even empty: renaming onto it would pull it from under the shell
    assert 'is the current folder or holds it' in _error_of(base + ['.'], capsys)
    assert 'is the current folder or holds it' in _error_of(base + [str(home)], capsys)
    assert _tree(home) == dict(before, empty=None)


def _not_ours(path, manifest):
    return (f'error: {path}: not written by export.py (missing from the manifest {manifest}); choose '
            f'another --output, or remove {path}')


def test_overwrite_names_what_was_added_to_an_exported_folder(checkpoint, tmp_path, capsys):
    folder = _fake_saved_model(tmp_path / 'models' / '1')
    manifest = folder / 'assets' / 'finetune_alexnet.json'
    (folder / 'README.md').write_text('how to call it')
    (folder / 'assets' / 'vocabulary.txt').write_text('mine')
    (folder / 'variables' / 'backup').mkdir()
    before = _tree(folder)
    argv = ['--checkpoint', checkpoint, '--format', 'savedmodel', '--output', str(folder), '--overwrite']
    # Each in turn, in name order: the first one left is named, and nothing is touched.
    for added in (folder / 'README.md', folder / 'assets' / 'vocabulary.txt',
                  folder / 'variables' / 'backup'):
        assert _error_of(argv, capsys) == _not_ours(added, manifest)
        assert _tree(folder) == before
        del before[os.path.relpath(added, folder)]
        if added.is_dir():
            added.rmdir()
        else:
            added.unlink()
    (folder / 'assets' / 'labels.txt').write_text('dog\ncat\n')  # the same size, edited
    labels = folder / 'assets' / 'labels.txt'
    assert _error_of(argv, capsys) == (
        f'error: {labels}: changed since export.py wrote it (its size or SHA-256 differs from the '
        f'manifest {manifest}); choose another --output, or remove {labels}')


def test_only_a_manifest_of_export_py_listing_every_file_unchanged_makes_a_folder_ours(tmp_path):
    ours = _fake_saved_model(tmp_path / 'ours')
    manifests.check_folder(str(ours))  # nothing raised: it may be replaced
    written = manifests.read(manifests.folder_manifest(str(ours)))
    assert written == {'format': 2, 'written_by': 'finetune_alexnet export.py', 'max_pixels': 1000,
                       'files': {name: {'size': len(content), 'sha256': digests.file_sha256(ours / name)}
                                 for name, content in _tree(ours).items()
                                 if content is not None and name != 'assets/finetune_alexnet.json'}}
    assert sorted(written['files']) == [
        'assets/labels.txt', 'assets/model_info.json', 'saved_model.pb',
        'variables/variables.data-00000-of-00001', 'variables/variables.index']
    # An export made before manifests listed files: its format-1 marker makes it no export of ours.
    earlier = _fake_saved_model(tmp_path / 'earlier', manifest=False)
    marker = earlier / 'assets' / 'finetune_alexnet.json'
    marker.write_text(json.dumps({'format': 1, 'written_by': 'finetune_alexnet export.py',
                                  'max_pixels': 1000}))
    with pytest.raises(ToolkitError) as raised:
        manifests.check_folder(str(earlier))
    assert str(raised.value) == f'{earlier}: {NO_MANIFEST}'
    # Someone else's file of the manifest's name, or one that is not JSON: no manifest either.
    for content in (json.dumps({'format': 2, 'written_by': 'someone else', 'files': {}}), 'not json'):
        marker.write_text(content)
        with pytest.raises(ToolkitError, match='holds no manifest assets/finetune_alexnet.json'):
            manifests.check_folder(str(earlier))
    # A listed file turned into a link to a copy of itself is not the file export.py wrote.
    index = ours / 'variables' / 'variables.index'
    (tmp_path / 'copy').write_bytes(index.read_bytes())
    index.unlink()
    index.symlink_to(tmp_path / 'copy')
    with pytest.raises(ToolkitError, match='variables.index: changed since export.py wrote it'):
        manifests.check_folder(str(ours))
    empty = tmp_path / 'empty'
    empty.mkdir()
    exports.check_output(str(empty), 'savedmodel', overwrite=False)  # an empty folder is written into


class _Stop(Exception):
    pass


def test_a_replacement_is_written_beside_and_renamed_in_whole(tmp_path, monkeypatch):
    """The old SavedModel stays whole until the new one is complete, and a failure at either rename
    leaves the old one in place."""
    output = _fake_saved_model(tmp_path / 'models' / '1')
    old = _tree(output)

    def build(path, exported):
        _fake_saved_model(tmp_path / 'new')
        os.rename(tmp_path / 'new', path)
        (tmp_path / 'models' / '1' / 'saved_model.pb').read_bytes()  # the old one is still there
        return {}
    monkeypatch.setattr(serving, '_build_saved_model', build)

    def failing_build(path, exported):
        os.makedirs(path)
        (tmp_path / 'models' / '1' / 'saved_model.pb').read_bytes()
        raise _Stop  # a full disk, a signal: the half-written model must go, the old one stay
    monkeypatch.setattr(serving, '_build_saved_model', failing_build)
    with pytest.raises(_Stop):
        serving.write_saved_model(str(output), None)
    assert _tree(output) == old and os.listdir(output.parent) == ['1']

    monkeypatch.setattr(serving, '_build_saved_model', build)
    renames = []
    real_rename = os.rename

    def rename_failing_second(source, target):
        renames.append((source, target))
        if len(renames) == 2:
            raise OSError(5, 'Input/output error')
        return real_rename(source, target)
    monkeypatch.setattr(serving.os, 'rename', rename_failing_second)
    with pytest.raises(OSError):
        serving.write_saved_model(str(output), None)
    assert _tree(output) == old and os.listdir(output.parent) == ['1']
    monkeypatch.setattr(serving.os, 'rename', real_rename)

    def build_new(path, exported):
        _fake_saved_model(tmp_path / 'new', data=b'new data')
        os.rename(tmp_path / 'new', path)
        return {}
    monkeypatch.setattr(serving, '_build_saved_model', build_new)
    serving.write_saved_model(str(output), None)
    assert _tree(output)['variables/variables.data-00000-of-00001'] == b'new data'
    assert os.listdir(output.parent) == ['1']
    # What a library caller cannot replace either: the refusal is in the writer too.
    (output / 'notes.txt').write_text('mine')
    with pytest.raises(ToolkitError, match=r'notes.txt: not written by export.py \(missing from the '
                       r'manifest .*finetune_alexnet.json\); choose another --output, or remove '):
        serving.write_saved_model(str(output), None)
    assert (output / 'notes.txt').read_text() == 'mine'
    os.remove(output / 'notes.txt')
    (output / 'variables' / 'variables.data-00000-of-00001').write_bytes(b'old data')  # changed
    with pytest.raises(ToolkitError, match='variables.data-00000-of-00001: changed since export.py'):
        serving.write_saved_model(str(output), None)
    assert _tree(output)['variables/variables.data-00000-of-00001'] == b'old data'


def test_overwrite_of_a_file_replaces_only_what_its_manifest_lists(checkpoint, tmp_path, capsys):
    def npz_error(path, *flags):
        return _error_of(['--checkpoint', checkpoint, '--output', str(path), *flags], capsys)

    def no_manifest(path, beside):
        return (f'error: {path}: exists, and no manifest {beside}.export.json of export.py lists it (an '
                f'export made before manifests has none); choose another --output, or remove {path}')
    notes = tmp_path / 'notes.npz'
    notes.write_text('my notes')
    assert npz_error(notes, '--overwrite') == no_manifest(notes, notes)
    features = tmp_path / 'features.npz'  # a file of ours, but another kind (predict.py --features)
    np.savez(features, features=np.zeros((2, 3)), paths=np.array(['a', 'b']))
    assert npz_error(features, '--overwrite') == no_manifest(features, features)
    assert notes.read_text() == 'my notes'

    ours = tmp_path / 'ours.npz'
    manifest = tmp_path / 'ours.npz.export.json'
    assert run_main(export.main, ['--checkpoint', checkpoint, '--output', str(ours)]) == 0
    assert manifests.read(str(manifest)) == {'format': 2, 'written_by': 'finetune_alexnet export.py',
                                             'files': {'ours.npz': {'size': ours.stat().st_size,
                                                                    'sha256': digests.file_sha256(ours)}}}
    assert npz_error(ours) == f'error: {ours}: exists (pass --overwrite to replace it)'
    os.remove(ours)
    assert npz_error(ours) == f'error: {manifest}: exists (pass --overwrite to replace it)'
    assert run_main(export.main, ['--checkpoint', checkpoint, '--output', str(ours), '--overwrite']) == 0
    assert run_main(export.main, ['--checkpoint', checkpoint, '--output', str(ours), '--overwrite']) == 0
    assert sorted(os.listdir(tmp_path)) == ['features.npz', 'notes.npz', 'ours.npz', 'ours.npz.export.json']
    with open(ours, 'r+b') as stream:  # one byte changed, the size kept: the digest tells
        stream.seek(1000)
        stream.write(b'\xff' if stream.read(1) != b'\xff' else b'\x00')
    changed = ours.read_bytes()
    assert npz_error(ours, '--overwrite') == (
        f'error: {ours}: changed since export.py wrote it (its size or SHA-256 differs from the manifest '
        f'{manifest}); choose another --output, or remove {ours}')
    os.remove(manifest)  # as an export made before manifests: refused, the fix named
    assert npz_error(ours, '--overwrite') == no_manifest(ours, ours)
    assert ours.read_bytes() == changed

    model = tmp_path / 'model.tflite'
    model.write_bytes(b'\x1c\x00\x00\x00TFL3' + bytes(24))
    labels, info = serving.side_files(str(model))
    model_info.write_model_info(str(tmp_path), 2, ['cat', 'dog'], center_crop=False)
    os.replace(tmp_path / 'model_info.json', info)
    with open(labels, 'w') as stream:
        stream.write('cat\ndog\n')
    manifests.write_file_manifest(str(model), [str(model), labels, info])
    exports.check_output(str(model), 'tflite', overwrite=True)  # nothing raised: ours, unchanged
    model_manifest = str(model) + '.export.json'
    with open(labels, 'w') as stream:
        stream.write('my shopping list\n')
    argv = ['--checkpoint', checkpoint, '--format', 'tflite', '--output', str(model), '--overwrite']
    assert _error_of(argv, capsys) == (
        f'error: {labels}: changed since export.py wrote it (its size or SHA-256 differs from the '
        f'manifest {model_manifest}); choose another --output, or remove {labels}')
    os.remove(labels)
    exports.check_output(str(model), 'tflite', overwrite=True)  # a side file gone: the rest is ours
    model.write_text('a text file named .tflite')
    assert _error_of(argv, capsys) == (
        f'error: {model}: changed since export.py wrote it (its size or SHA-256 differs from the '
        f'manifest {model_manifest}); choose another --output, or remove {model}')
    assert model.read_text() == 'a text file named .tflite'
    os.remove(model)
    with open(model_manifest, 'w') as stream:  # someone else's file of the manifest's name
        stream.write('{"written_by": "someone else"}')
    assert _error_of(argv, capsys) == (
        f'error: {info}: exists, and no manifest {model_manifest} of export.py lists it (an export '
        f'made before manifests has none); choose another --output, or remove {info}')


def test_max_pixels_flag_is_checked(checkpoint, tmp_path, capsys):
    base = ['--checkpoint', checkpoint, '--output', str(tmp_path / 'out')]
    assert _error_of(base + ['--format', 'savedmodel', '--max_pixels', '0'], capsys).startswith(
        'error: --max_pixels must be between 1 and ')
    assert _error_of(base + ['--format', 'tflite', '--max_pixels', '10'], capsys).startswith(
        'error: --max_pixels applies to --format savedmodel, not tflite (a TFLite model takes decoded '
        'images: the caller decodes)')
    assert '--max_pixels applies to --format savedmodel, not npz' in _error_of(
        base + ['--max_pixels', '10'], capsys)
    assert not os.path.exists(tmp_path / 'out')


# --- the pixel limit inside the served graph -----------------------------------------------------------

@pytest.fixture(scope='module')
def hostile_images(tmp_path_factory):
    """{name: bytes}: a 15000x15000 PNG of about 30 KB, and frames that add up or hide behind a
    small screen, each over 100 megapixels."""
    folder = tmp_path_factory.mktemp('hostile')
    return {'png': image_files.huge_png(folder / 'huge.png', 15000, bit_depth=1).read_bytes(),
            'gif': image_files.gif_with_frames((1, 1), [(12000, 12000)]),
            'apng': image_files.apng_with_frames((8000, 8000), [(8000, 8000)] * 2),
            'webp': image_files.webp_animation((8000, 8000), [(8000, 8000)] * 2)}


def test_the_serving_graph_refuses_each_oversized_request_and_serves_the_next(hostile_images):
    small = image_files.encode(image_files.random_rgb(40, 50, seed=3), '.png')
    with tf.Graph().as_default():
        image_bytes = tf.placeholder(tf.string, [None])
        inputs = serving.preprocess_encoded(image_bytes, center_crop=False)
        with tf.Session() as session:
            expected = session.run(inputs, {image_bytes: [small]})
            assert len(hostile_images['png']) < 60_000
            for name, pixels in (('png', 225000000), ('gif', 144000000), ('apng', 128000000),
                                 ('webp', 128000000)):
                with pytest.raises(tf.errors.InvalidArgumentError) as raised:
                    session.run(inputs, {image_bytes: [small, hostile_images[name]]})
                assert (f'image_bytes[1]: its header announces {pixels} pixels (every frame counted), '
                        'over max_pixels 100000000; refused before decoding') in raised.value.message
                np.testing.assert_array_equal(session.run(inputs, {image_bytes: [small]}), expected)


def test_the_decoded_images_signature_has_the_limit_too():
    with tf.Graph().as_default():
        images = tf.placeholder(tf.uint8, [None, None, None, 3])
        inputs = serving.preprocess_decoded(images, center_crop=False, max_pixels=1000)
        with tf.Session() as session:
            assert session.run(inputs, {images: np.zeros((1, 25, 40, 3), np.uint8)}).shape == (1, 227,
                                                                                            227, 3)
            with pytest.raises(tf.errors.InvalidArgumentError, match='images: 41x25 pixels each, over '
                               'max_pixels 1000'):
                session.run(inputs, {images: np.zeros((1, 25, 41, 3), np.uint8)})


@pytest.mark.slow
def test_an_exported_model_refuses_oversized_images_and_records_its_limit(checkpoint, hostile_images,
                                                                          tmp_path, capsys):
    output = tmp_path / 'models' / '1'
    argv = ['--checkpoint', checkpoint, '--format', 'savedmodel', '--output', str(output),
            '--max_pixels', '5000']
    assert run_main(export.main, argv) == 0
    assert 'at most 5000 pixels an image' in capsys.readouterr().out
    written = manifests.read(manifests.folder_manifest(str(output)))
    assert written == {'format': 2, 'written_by': 'finetune_alexnet export.py', 'max_pixels': 5000,
                       'files': written['files']}
    files = {name for name, content in _tree(output).items() if content is not None}
    assert set(written['files']) == files - {'assets/finetune_alexnet.json'}
    assert {'saved_model.pb', 'variables/variables.index', 'assets/labels.txt'} <= files
    for name, entry in written['files'].items():
        assert entry == {'size': os.path.getsize(output / name), 'sha256': digests.file_sha256(output / name)}
    manifests.check_folder(str(output))  # nothing raised: it may be replaced
    small = image_files.encode(image_files.random_rgb(50, 100, seed=3), '.jpg')
    large = image_files.encode(image_files.random_rgb(50, 101, seed=3), '.jpg')
    with tf.Graph().as_default(), tf.Session() as session:
        signature = tf.saved_model.loader.load(session, ['serve'], str(output)).signature_def[
            serving.SERVING_SIGNATURE]
        feed, fetch = signature.inputs['image_bytes'].name, signature.outputs['probabilities'].name
        expected = session.run(fetch, {feed: [small]})
        for refused in (large, hostile_images['png'], hostile_images['gif']):
            with pytest.raises(tf.errors.InvalidArgumentError, match=r'image_bytes\[0\]: its header '
                               r'announces \d+ pixels \(every frame counted\), over max_pixels 5000'):
                session.run(fetch, {feed: [refused]})
            np.testing.assert_array_equal(session.run(fetch, {feed: [small]}), expected)
    # Exported again over itself: ours, so replaced, with the new limit.
    assert run_main(export.main, argv[:-1] + ['7000', '--overwrite']) == 0
    assert manifests.read(manifests.folder_manifest(str(output)))['max_pixels'] == 7000
    assert os.listdir(output.parent) == ['1']


# --- TFLite int8: full-integer quantization, calibrated on the training list ---------------------------

def _write_list(path, entries):
    path.write_text(''.join(f'{image} {label}\n' for image, label in entries))
    return str(path)


@pytest.fixture(scope='module')
def warm_and_cool(tmp_path_factory):
    """(weights file, train.txt, val.txt): a model that tells warm pictures from cool ones, near 100%
    on its validation list, whose probabilities are not saturated, so that an int8 error shows.

    Its fc8 is fine-tuned on a random network's features; random conv weights keep little of the
    demo's small shapes, so the classes are the whole picture's colour: warm (red over blue) or cool
    (blue over red), under a noisy tint. The fine-tuned fc8 is then scaled down until the median
    validation image's two logits lie 3 apart: the same answers, with probabilities between 0 and 1
    (saturated ones would hide a miscalibrated int8 model behind the same 0s and 1s).
    """
    folder = tmp_path_factory.mktemp('warm_and_cool')
    rng = np.random.default_rng(5)
    entries = {0: [], 1: []}
    for label, name in enumerate(('warm', 'cool')):
        (folder / name).mkdir()
        for index in range(45):
            high, middle, low = rng.uniform(150, 255), rng.uniform(40, 160), rng.uniform(0, 90)
            rgb = (high, middle, low) if label == 0 else (low, middle, high)
            pixels = np.clip(np.array(rgb) + rng.normal(0, 30, (120, 160, 3)), 0, 255).astype(np.uint8)
            entries[label].append((image_files.write_jpeg(folder / name / f'{index:02d}.jpg', pixels),
                                   label))
    train = _write_list(folder / 'train.txt', entries[0][:20] + entries[1][:20])
    val = _write_list(folder / 'val.txt', entries[0][20:] + entries[1][20:])
    layers = bvlc_fixture.random_weights(num_classes=1000, seed=4)
    pretrained = str(folder / 'pretrained.npz')
    weight_files.save_weights(pretrained, layers)
    del layers
    # fc8 alone, from the cached pool5 features: a fraction of a second an epoch.
    status = run_main(finetune.main, [
        '--train_file', train, '--val_file', val, '--num_classes', '2', '--batch_size', '10',
        '--num_epochs', '12', '--seed', '3', '--train_layers', 'fc8', '--skip_layers', 'fc8',
        '--optimizer', 'momentum', '--learning_rate', '1e-6', '--dropout_rate', '0',
        '--weights_path', pretrained, '--checkpoint_path', str(folder / 'run'),
        '--filewriter_path', str(folder / 'tensorboard'), '--cache_dir', 'none'])
    assert status == 0
    fine_tuned = str(folder / 'fine_tuned.npz')
    _capture_main(['--checkpoint', str(folder / 'run'), '--output', fine_tuned])
    with Classifier(weights_path=fine_tuned) as classifier:
        logits = classifier.run(datagenerator.read_list(val)[0], layers=('fc8',)).outputs['fc8']
    layers = weight_files.load_weights(fine_tuned)
    scale = np.float32(3 / np.median(np.abs(logits[:, 0] - logits[:, 1])))
    layers['fc8'] = {kind: value * scale for kind, value in layers['fc8'].items()}
    moderate = str(folder / 'moderate.npz')
    weight_files.save_weights(moderate, layers)
    return moderate, train, val


def _float32_tensors(path):
    with open(path, 'rb') as stream:
        interpreter = serving.tflite_interpreter(stream.read())
    return sorted(detail['name'] for detail in interpreter.get_tensor_details()
                  if detail['dtype'] == np.float32)


@pytest.mark.slow
def test_tflite_int8_agrees_with_float32_at_a_quarter_of_its_size(warm_and_cool, tmp_path):
    weights, train, val = warm_and_cool
    float_path, int8_path = str(tmp_path / 'float32.tflite'), str(tmp_path / 'int8.tflite')
    _capture_main(['--weights_path', weights, '--format', 'tflite', '--output', float_path])
    printed = _capture_main(['--weights_path', weights, '--format', 'tflite', '--quantize', 'int8',
                             '--output', int8_path, '--train_file', train, '--representative_size',
                             '30', '--seed', '2', '--val_file', val])
    assert f'calibrated on 30 of the 40 images of {train} (drawn with --seed 2)' in printed

    # Both files run on what predict.py's pipeline makes of the validation images.
    paths, labels = datagenerator.read_list(val)
    inputs = prediction_inputs(paths)
    reference, quantized = _run_tflite(float_path, inputs), _run_tflite(int8_path, inputs)
    assert quantized.dtype == np.float32 and quantized.shape == (50, 2)
    # A model that answers right, with probabilities that are not all 0 and 1: agreeing is not
    # the same guess twice, and an error in the int8 model shows in the probabilities.
    assert np.mean(reference.argmax(axis=1) == labels) >= 0.95
    assert 0.6 < np.median(reference.max(axis=1)) < 0.99
    same = int(np.sum(quantized.argmax(axis=1) == reference.argmax(axis=1)))
    assert same / len(paths) >= 0.98
    # Calibrated on images pre-processed otherwise (a tenth of the contrast, say), it is off by 0.3.
    assert np.max(np.abs(quantized - reference)) < 0.1
    assert (f'int8 and float32 agree on the top-1 class of {same} of 50 images of {val} '
            f'({100 * same / 50:.1f}%)') in printed
    # Every op computes in int8: float32 only at the input and the output.
    assert len(_float32_tensors(int8_path)) == 2
    ratio = os.path.getsize(int8_path) / os.path.getsize(float_path)
    assert 0.2 < ratio < 0.35
    assert f'float32 {os.path.getsize(float_path) / 1e6:.1f} MB ({ratio:.2f} of it)' in printed
    assert f'wrote {int8_path} (TFLite, int8, ' in printed
    assert open(int8_path[:-len('.tflite')] + '.labels.txt').read() == 'class 0\nclass 1\n'


def test_representative_sample_is_a_seeded_subset_in_list_order():
    paths = [f'/data/{index:03d}.jpg' for index in range(200)]
    first = serving.representative_sample(paths, 20, seed=0)
    assert len(first) == 20 and len(set(first)) == 20 and first == sorted(first)
    assert set(first) <= set(paths)
    assert serving.representative_sample(paths, 20, seed=0) == first
    assert serving.representative_sample(paths, 20, seed=1) != first
    assert serving.representative_sample(paths, 200, seed=0) == paths
    assert serving.representative_sample(paths[:5], 20, seed=3) == paths[:5]


def test_int8_flags_are_checked_before_anything_is_read(checkpoint, tmp_path, capsys):
    output = str(tmp_path / 'model.tflite')
    base = ['--checkpoint', checkpoint, '--format', 'tflite', '--output', output]
    listed = _write_list(tmp_path / 'train.txt', [])
    assert _error_of(base + ['--quantize', 'int8'], capsys).startswith(
        'error: --quantize int8 needs --train_file LIST')
    assert '--train_file applies to --quantize int8' in _error_of(base + ['--train_file', listed],
                                                                   capsys)
    assert '--val_file applies to --quantize int8' in _error_of(
        base + ['--quantize', 'float16', '--agreement_list', listed], capsys)
    assert '--representative_size applies to --quantize int8' in _error_of(
        base + ['--representative_size', '5'], capsys)
    int8 = base + ['--quantize', 'int8', '--representative_list', listed]
    for size in ('0', '1001'):
        assert '--representative_size must be between 1 and 1000' in _error_of(
            int8 + ['--representative_size', size], capsys)
    assert '--seed -1 is outside 0..4294967295' in _error_of(int8 + ['--seed', '-1'], capsys)
    assert '--quantize int8 applies to --format tflite, not savedmodel' in _error_of(
        ['--checkpoint', checkpoint, '--format', 'savedmodel', '--output', str(tmp_path / 'm'),
         '--quantize', 'int8'], capsys)
    assert sorted(os.listdir(tmp_path)) == ['train.txt']


def test_int8_refuses_bad_lists_and_unreadable_images_before_writing(checkpoint, tmp_path, capsys):
    images = [str(image_files.write_jpeg(tmp_path / f'{index}.jpg', image_files.random_rgb(40, 50, index)))
              for index in range(3)]
    output = tmp_path / 'model.tflite'
    base = ['--checkpoint', checkpoint, '--format', 'tflite', '--quantize', 'int8', '--output',
            str(output)]
    wrong_label = _write_list(tmp_path / 'labels.txt', [(images[0], 0), (images[1], 7)])
    assert f'{wrong_label}: 1 bad line: line 2: label 7 is outside 0..1' in _error_of(
        base + ['--train_file', wrong_label], capsys)
    train = _write_list(tmp_path / 'train.txt', [(path, 0) for path in images])
    missing = _write_list(tmp_path / 'val.txt', [(images[0], 0), (str(tmp_path / 'gone.jpg'), 1)])
    assert 'image not found' in _error_of(base + ['--train_file', train, '--val_file', missing], capsys)
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(open(images[2], 'rb').read()[:200])
    with_broken = _write_list(tmp_path / 'broken.txt', [(images[0], 0), (str(broken), 1)])
    line = _error_of(base + ['--train_file', with_broken], capsys)
    assert line.startswith(f'error: {with_broken}: 1 unreadable image: {broken}'), line
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['0.jpg', '1.jpg', '2.jpg', 'broken.jpg', 'labels.txt', 'train.txt', 'val.txt', 'broken.txt'])


def test_export_sessions_use_a_gpu_when_there_is_one_taking_memory_as_needed(checkpoint, tmp_path,
                                                                            monkeypatch, capsys):
    from finetune_alexnet import tf_setup
    from test_tf_setup import fake_gpus
    configs = []
    real = tf_setup.session_config
    monkeypatch.setattr(tf_setup, 'session_config',
                        lambda *args, **kwargs: configs.append(real(*args, **kwargs)) or configs[-1])
    fake_gpus(monkeypatch, 1)
    output = tmp_path / 'model'
    assert cli.run(export.main, ['--checkpoint_path', checkpoint, '--format', 'savedmodel',
                                 '--output', str(output)]) == 0
    assert configs and all('GPU' not in config.device_count and config.gpu_options.allow_growth
                           for config in configs)
    configs.clear()
    assert cli.run(export.main, ['--checkpoint_path', checkpoint, '--format', 'savedmodel',
                                 '--output', str(tmp_path / 'cpu'), '--device', 'cpu']) == 0
    assert configs and all(config.device_count['GPU'] == 0 for config in configs)
