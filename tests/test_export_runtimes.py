"""The exported files in today's runtimes: the ONNX file in ONNX Runtime and the .tflite files in LiteRT
agree with predict.py on the sample images, and the input snippet of docs/serving.md, run as written,
gives predict.py's probabilities."""
import glob
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

import bvlc_fixture
import export
from finetune_alexnet import digests
from finetune_alexnet import weight_files
from finetune_alexnet.cli import run as run_main
from finetune_alexnet.infer import exports
from finetune_alexnet.infer import manifests
from finetune_alexnet.infer.classifier import Classifier
from test_datagenerator import prediction_inputs
from test_predict import REPO, make_checkpoint

SAMPLES = sorted(glob.glob(os.path.join(REPO, 'images', '*.jpg')))
NAMES = ['cat', 'coffee', 'rocket']
# The int8 file against predict.py: the largest difference of a probability allowed (measured: 0.005).
INT8_BOUND = 0.05


def _sample_classifier(folder):
    """A checkpoint (centre-crop inference) that tells the three sample images apart, with moderate
    probabilities: fc8 scores each class by the distance of the fc7 features to its sample's,
    -|f - f_k|^2 / 2 (weights f_k - mean, biases to match), scaled so the median image's best two
    logits lie 2 apart. (A random fc8 gives every image the same class and near-equal
    probabilities, which would hide a wrong top-1 or a miscalibrated int8 model.)"""
    layers = bvlc_fixture.random_weights(num_classes=3, seed=7)
    layers['fc7'] = {kind: value * np.float32(1e-4) for kind, value in layers['fc7'].items()}
    weights = str(folder / 'random.npz')
    weight_files.save_weights(weights, layers)
    with Classifier(weights_path=weights, center_crop=True) as classifier:
        features = classifier.run(SAMPLES, layers=('fc7',)).outputs['fc7'].astype(np.float64)
    mean = features.mean(axis=0)
    centred = features - mean  # [3, 4096]: f . c_k - m . c_k - |c_k|^2 / 2 = -|f - f_k|^2 / 2 + const
    biases = -centred @ mean - 0.5 * np.sum(centred ** 2, axis=1)
    ordered = np.sort(features @ centred.T + biases, axis=1)
    scale = 2 / np.median(ordered[:, -1] - ordered[:, -2])
    layers['fc8'] = {'weights': (centred.T * scale).astype(np.float32),
                     'biases': (biases * scale).astype(np.float32)}
    return make_checkpoint(str(folder / 'run'), layers, class_names=NAMES, center_crop=True)


def _export_in_a_process(argv):
    """export.py as a user runs it: (stdout, stderr), the status checked."""
    result = subprocess.run([sys.executable, os.path.join(REPO, 'export.py')] + argv,
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


@pytest.fixture(scope='module')
def deployed(tmp_path_factory):
    """The sample classifier exported as ONNX, float32 and int8 TFLite, each into a folder that did
    not exist; predict.py's probabilities of the samples; what the exports printed."""
    folder = tmp_path_factory.mktemp('deploy')
    checkpoint = _sample_classifier(folder)
    with Classifier(checkpoint=checkpoint) as classifier:
        expected = classifier.run(SAMPLES).probabilities
    samples = folder / 'samples.txt'
    samples.write_text(''.join(f'{path} {label}\n' for label, path in enumerate(SAMPLES)))
    outputs = {'onnx': folder / 'onnx' / 'models' / 'cats_dogs.onnx',
               'float32': folder / 'float32' / 'cats_dogs.tflite',
               'int8': folder / 'int8' / 'cats_dogs.tflite'}
    printed = {'onnx': _export_in_a_process(['--checkpoint_path', checkpoint, '--format', 'onnx',
                                             '--output', str(outputs['onnx'])]),
               'int8': _export_in_a_process(['--checkpoint_path', checkpoint, '--format', 'tflite',
                                             '--quantize', 'int8', '--output', str(outputs['int8']),
                                             '--train_file', str(samples), '--val_file', str(samples)])}
    assert run_main(export.main, ['--checkpoint_path', checkpoint, '--format', 'tflite',
                                  '--output', str(outputs['float32'])]) == 0
    return {'checkpoint': checkpoint, 'expected': expected, 'outputs': outputs, 'printed': printed,
            'folder': folder}


def _onnx_session(path):
    import onnxruntime
    return onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def _litert(path, inputs):
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]['index']
    interpreter.resize_tensor_input(index, list(inputs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


@pytest.mark.slow
def test_the_fixture_is_a_model_worth_comparing(deployed):
    expected = deployed['expected']
    assert list(expected.argmax(axis=1)) == [0, 1, 2]  # each sample its own class
    assert np.all(expected.max(axis=1) < 0.95) and np.all(expected.max(axis=1) > 0.5), expected


@pytest.mark.slow
def test_onnx_in_onnxruntime_equals_predict_and_carries_the_class_names(deployed):
    path = deployed['outputs']['onnx']
    session = _onnx_session(path)
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape) == ('images', 'tensor(float)', ['n', 227, 227, 3])
    assert (returned.name, returned.type, returned.shape) == ('probabilities', 'tensor(float)', ['n', 3])
    probabilities = session.run(None, {'images': prediction_inputs(SAMPLES, center_crop=True)})[0]
    np.testing.assert_allclose(probabilities, deployed['expected'], atol=1e-5, rtol=0)
    assert list(probabilities.argmax(axis=1)) == list(deployed['expected'].argmax(axis=1))
    import onnx
    model = onnx.load(str(path))
    assert [entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx')] == [13]
    assert model.producer_name == 'finetune_alexnet export.py'
    # The weights held out of tf2onnx came back as initializers, each kernel once, in the OIHW layout
    # of the Conv that reads it (the two groups split): no Transpose or Split is left on a weight.
    stored = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    assert [tensor.name for tensor in model.graph.input] == ['images']
    assert not [node.op_type for node in model.graph.node if node.op_type in ('Transpose', 'Split')
                and node.input[0] in stored]
    kernels = sorted(stored[node.input[1]] for node in model.graph.node if node.op_type == 'Conv')
    assert kernels == sorted([[96, 3, 11, 11], *[[128, 48, 5, 5]] * 2, [384, 256, 3, 3],
                              *[[192, 192, 3, 3]] * 2, *[[128, 192, 3, 3]] * 2])
    shapes = dict(bvlc_fixture.LAYER_SHAPES, fc8=(4096, 3))
    # Kernels and biases, and the two LRNs' channel-window matrices (96 x 96, 256 x 256), each once;
    # the rest are a few scalars and shapes.
    weights = sum(np.prod(shape) + shape[-1] for shape in shapes.values()) + 96**2 + 256**2
    assert weights < sum(np.prod(dims) for dims in stored.values()) < weights + 100
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata['class_names'].split('\n') == NAMES
    beside = str(path)[:-len('.onnx')]
    assert open(beside + '.labels.txt').read() == 'cat\ncoffee\nrocket\n'
    with open(beside + '.model_info.json') as stream:
        info = json.load(stream)
    assert json.loads(metadata['model_info']) == info and info['preprocessing']['center_crop'] is True
    written = manifests.read(str(path) + '.export.json')['files']
    assert written == {os.path.basename(name): {'size': os.path.getsize(name),
                                                 'sha256': digests.file_sha256(name)}
                       for name in (str(path), beside + '.labels.txt', beside + '.model_info.json')}
    # What the export said: the opset, the side files, the way to load it.
    stdout, _ = deployed['printed']['onnx']
    assert f'wrote {path} (ONNX, opset 13, float32, ' in stdout
    assert f"onnxruntime.InferenceSession('{path}')" in stdout


@pytest.mark.slow
def test_tflite_float32_and_int8_in_litert_agree_with_predict(deployed):
    inputs = prediction_inputs(SAMPLES, center_crop=True)
    expected = deployed['expected']
    float32 = _litert(deployed['outputs']['float32'], inputs)
    np.testing.assert_allclose(float32, expected, atol=1e-5, rtol=0)
    int8 = _litert(deployed['outputs']['int8'], inputs)
    assert list(int8.argmax(axis=1)) == list(expected.argmax(axis=1))
    assert np.max(np.abs(int8 - expected)) < INT8_BOUND
    # export.py's own agreement check ran in LiteRT: both models, every sample.
    stdout, _ = deployed['printed']['int8']
    assert 'int8 and float32 agree on the top-1 class of 3 of 3 images' in stdout
    assert "from ai_edge_litert.interpreter import Interpreter; interpreter = Interpreter(" in stdout


@pytest.mark.slow
def test_exports_mention_no_deprecation_and_create_their_folders(deployed):
    for stdout, stderr in deployed['printed'].values():
        assert 'deprecat' not in (stdout + stderr).lower(), stdout + stderr
    for path in deployed['outputs'].values():
        assert path.is_file()  # every one's folder was missing
    assert sorted(os.listdir(deployed['outputs']['onnx'].parent)) == [
        'cats_dogs.labels.txt', 'cats_dogs.model_info.json', 'cats_dogs.onnx', 'cats_dogs.onnx.export.json']


def docs_snippet():
    """The Python block of docs/serving.md's section on the input of the .tflite and .onnx files."""
    with open(os.path.join(REPO, 'docs', 'serving.md'), encoding='utf-8') as stream:
        text = stream.read()
    section = text.split('## The input of the `.tflite` and `.onnx` files', 1)[1].split('\n## ', 1)[0]
    blocks = re.findall(r'```python\n(.*?)```', section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_the_docs_snippet_gives_predicts_probabilities(deployed, tmp_path, monkeypatch, capsys):
    outputs = deployed['outputs']
    client = tmp_path / 'client'
    client.mkdir()
    # The names the snippet uses: the ONNX file with its model_info.json, the float32 .tflite file.
    os.symlink(outputs['onnx'], client / 'cats_dogs.onnx')
    os.symlink(str(outputs['onnx'])[:-len('.onnx')] + '.model_info.json',
               client / 'cats_dogs.model_info.json')
    os.symlink(outputs['float32'], client / 'cats_dogs.tflite')
    os.symlink(SAMPLES[0], client / 'cat.jpg')
    os.symlink(SAMPLES[1], client / 'dog.jpg')
    monkeypatch.chdir(client)
    namespace = {'__name__': 'snippet'}
    exec(compile(docs_snippet(), 'docs/serving.md', 'exec'), namespace)
    expected = deployed['expected']
    np.testing.assert_allclose(namespace['probabilities'], expected[:2], atol=1e-5, rtol=0)
    np.testing.assert_allclose(namespace['litert_probabilities'], expected[:2], atol=1e-5, rtol=0)
    assert capsys.readouterr().out.splitlines()[0].startswith('cat.jpg cat 0.')
    # Its model_input on every sample, through ONNX Runtime and the int8 file.
    preprocessing = namespace['info']['preprocessing']
    batch = np.stack([namespace['model_input'](path, preprocessing) for path in SAMPLES])
    np.testing.assert_allclose(_onnx_session(outputs['onnx']).run(None, {'images': batch})[0], expected,
                               atol=1e-5, rtol=0)
    assert list(_litert(outputs['int8'], batch).argmax(axis=1)) == [0, 1, 2]
    # Without the centre crop: predict.py's whole-image resize. OpenCV's and TensorFlow's bilinear
    # arithmetic agree to their last few bits (1e-2 of 255), so rounded they give the same levels
    # but where they straddle a half: there one level apart (58 of 463,761 values here), which
    # moves the probabilities by 1.2e-5 (measured).
    whole = np.stack([namespace['model_input'](path, dict(preprocessing, center_crop=False))
                      for path in SAMPLES])
    reference = prediction_inputs(SAMPLES, center_crop=False)
    unrounded = np.stack([cv2.resize(cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                                     .astype(np.float32), (227, 227), interpolation=cv2.INTER_LINEAR)
                          for path in SAMPLES])
    apart = whole != reference
    assert apart.mean() < 1e-3
    np.testing.assert_allclose(np.abs(whole - reference)[apart], 1, atol=1e-4, rtol=0)
    assert np.all(np.abs(unrounded[apart] % 1 - 0.5) < 1e-2)
    session = _onnx_session(outputs['onnx'])
    np.testing.assert_allclose(session.run(None, {'images': whole})[0],
                               session.run(None, {'images': reference})[0], atol=3e-5, rtol=0)


# Spelled in two parts, so that this file is no hit either.
DEPRECATED_INTERPRETER = 'lite.' + 'Interpreter'


def test_no_tflite_interpreter_of_tensorflow_is_left():
    tracked = subprocess.run(['git', 'ls-files'], capture_output=True, text=True, cwd=REPO).stdout.split()
    if not tracked:
        pytest.skip('not a git checkout')
    found = [path for path in tracked if os.path.isfile(
        os.path.join(REPO, path)) and DEPRECATED_INTERPRETER in open(
            os.path.join(REPO, path), encoding='utf-8', errors='replace').read()]
    assert found == []


def _error_of(argv, capsys):
    assert run_main(export.main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    return lines[0]


def test_without_the_deploy_packages_the_export_names_the_install(tmp_path, capsys, monkeypatch):
    weights = tmp_path / 'missing.npz'  # never read: the check comes first
    listed = tmp_path / 'list.txt'
    listed.write_text('')
    monkeypatch.setitem(sys.modules, 'tf2onnx', None)  # an import of it raises ImportError
    assert _error_of(['--weights_path', str(weights), '--format', 'onnx', '--output',
                      str(tmp_path / 'out' / 'm.onnx')], capsys) == (
        'error: --format onnx needs the Python package tf2onnx, one of the deploy-time packages: '
        'pip install -r requirements-deploy.txt')
    monkeypatch.setitem(sys.modules, 'ai_edge_litert.interpreter', None)
    assert 'needs the Python package ai_edge_litert, one of the deploy-time packages: pip install -r ' \
        'requirements-deploy.txt' in _error_of(
            ['--weights_path', str(weights), '--format', 'tflite', '--quantize', 'int8', '--output',
             str(tmp_path / 'm.tflite'), '--train_file', str(listed), '--val_file', str(listed)], capsys)
    assert sorted(os.listdir(tmp_path)) == ['list.txt']


def test_onnx_overwrite_replaces_only_an_onnx_file_its_manifest_lists(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'other',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
    # Its producer's name makes no file ours (a copy, an export made before manifests): only a
    # manifest of export.py listing it, unchanged, does.
    theirs = tmp_path / 'theirs.onnx'
    onnx.save(helper.make_model(graph, producer_name='finetune_alexnet export.py'), str(theirs))
    ours = tmp_path / 'ours.onnx'
    onnx.save(helper.make_model(graph, producer_name='finetune_alexnet export.py'), str(ours))
    manifests.write_file_manifest(str(ours), [str(ours)])
    exports.check_output(str(ours), 'onnx', overwrite=True)  # nothing raised: it may be replaced
    before = theirs.read_bytes()
    assert _error_of(['--weights_path', str(tmp_path / 'w.npz'), '--format', 'onnx', '--output',
                      str(theirs), '--overwrite'], capsys) == (
        f'error: {theirs}: exists, and no manifest {theirs}.export.json of export.py lists it (an '
        f'export made before manifests has none); choose another --output, or remove {theirs}')
    assert f'{ours}: exists (pass --overwrite' in _error_of(
        ['--weights_path', str(tmp_path / 'w.npz'), '--format', 'onnx', '--output', str(ours)], capsys)
    assert theirs.read_bytes() == before
    assert '--max_pixels applies to --format savedmodel, not onnx (an ONNX model takes decoded ' \
        'images: the caller decodes)' in _error_of(['--weights_path', str(tmp_path / 'w.npz'), '--format',
                                                    'onnx', '--output', str(ours), '--max_pixels', '9'],
                                                   capsys)
