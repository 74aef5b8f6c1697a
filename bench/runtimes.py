"""How fast each runtime classifies with the exported model: images/s at batch 1 and batch 32.

    python bench/runtimes.py                 # every runtime, 8 seconds each batch size
    python bench/runtimes.py --seconds 2     # a quick look

One process exports a 1000-class AlexNet with random weights (speed does not depend on them) with
export.py's own writers, into a temporary folder, then times, one after the other on the same
machine: TensorFlow running the SavedModel (its `predict_images` signature, fed uint8 227x227 RGB
images, so its resize is to the same size and its normalisation is the only pre-processing), ONNX
Runtime running the .onnx file, and LiteRT running the float32 and int8 .tflite files (fed the
pre-processed float32 batch). Every runtime uses every core. Figures go in bench/RESULTS.md, with
the CPU model this prints.
"""
import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from finetune_alexnet import tf_setup  # noqa: E402

tf_setup.quiet_python_logging(False)
import tensorflow.compat.v1 as tf  # noqa: E402

from alexnet import INPUT_SIZE, variable_shapes  # noqa: E402
from finetune_alexnet import preprocessing  # noqa: E402
from finetune_alexnet.infer import serving  # noqa: E402

BATCHES = (1, 32)
NUM_CLASSES = 1000
CALIBRATION_IMAGES = 8


def random_model():
    """serving.ExportedModel of random weights in the BVLC layout (He-scaled, so activations stay finite)."""
    rng = np.random.default_rng(0)
    layers = {}
    for layer, kinds in variable_shapes(NUM_CLASSES).items():
        fan_in = int(np.prod(kinds['weights'][:-1]))
        layers[layer] = {'weights': rng.normal(0, np.sqrt(2 / fan_in), kinds['weights']).astype(np.float32),
                         'biases': np.zeros(kinds['biases'], np.float32)}
    return serving.ExportedModel(layers, [f'class {i}' for i in range(NUM_CLASSES)], False)


def images(count, seed):
    """(uint8 RGB [count, 227, 227, 3], the same pre-processed as the .tflite/.onnx files take them)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    mean_bgr = np.float32(preprocessing.IMAGENET_MEAN_RGB[::-1])
    return pixels, pixels[..., ::-1].astype(np.float32) - mean_bgr


def export_all(folder, exported):
    """{runtime: path}, written by export.py's writers."""
    paths = {'savedmodel': os.path.join(folder, 'savedmodel', '1'),
             'onnx': os.path.join(folder, 'alexnet.onnx'),
             'float32': os.path.join(folder, 'float32', 'alexnet.tflite'),
             'int8': os.path.join(folder, 'int8', 'alexnet.tflite')}
    serving.write_saved_model(paths['savedmodel'], exported)
    serving.write_onnx(paths['onnx'], exported)
    flatbuffers = serving.convert_tflite(exported, (None, serving.INT8), images(CALIBRATION_IMAGES, 1)[1])
    serving.write_tflite(paths['float32'], exported, flatbuffer=flatbuffers[None])
    serving.write_tflite(paths['int8'], exported, quantize=serving.INT8, flatbuffer=flatbuffers[serving.INT8])
    return paths


def saved_model_runner(path):
    graph = tf.Graph()
    session = tf.Session(graph=graph, config=tf_setup.session_config())
    with graph.as_default():
        signature = tf.saved_model.loader.load(session, [serving.SERVE_TAG], path).signature_def[
            serving.IMAGES_SIGNATURE]
    feed, fetch = signature.inputs['images'].name, signature.outputs['probabilities'].name
    return lambda pixels, _: session.run(fetch, {feed: pixels})


def onnx_runner(path):
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    return lambda _, inputs: session.run(None, {serving.ONNX_INPUT: inputs})[0]


def litert_runner(path):
    with open(path, 'rb') as stream:
        interpreter = serving.tflite_interpreter(stream.read())
    interpreter.allocate_tensors()
    return lambda _, inputs: serving.run_tflite(interpreter, inputs)


def images_per_second(run, batch, seconds):
    pixels, inputs = images(batch, 2)
    run(pixels, inputs)  # warm-up: first-call allocation and kernel selection
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(pixels, inputs)
        count += batch
    return count / (time.perf_counter() - start)


def machine():
    """bench.py's heading (the CPU's model name, family and model; core count; versions), with the
    runtimes' versions."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench
    versions = ', '.join(f'{name} {importlib.metadata.version(name)}'
                         for name in ('tf2onnx', 'onnxruntime', 'ai-edge-litert'))
    return f'{bench.machine()}, {versions}'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=8.0, help='timing window per row')
    args = parser.parse_args(argv)
    tf.disable_v2_behavior()
    folder = tempfile.mkdtemp(prefix='bench-runtimes-')
    try:
        paths = export_all(folder, random_model())
        rows = (('TensorFlow, SavedModel (predict_images)', saved_model_runner, 'savedmodel'),
                ('ONNX Runtime, .onnx', onnx_runner, 'onnx'),
                ('LiteRT, float32 .tflite', litert_runner, 'float32'),
                ('LiteRT, int8 .tflite', litert_runner, 'int8'))
        print(f'{machine()}; load average at the start '
              f'{os.getloadavg()[0]:.2f}; {args.seconds:g} s a row')
        print('| runtime | batch 1 images/s | batch 32 images/s |')
        print('| --- | --- | --- |')
        for name, make_runner, key in rows:
            run = make_runner(paths[key])
            figures = [images_per_second(run, batch, args.seconds) for batch in BATCHES]
            print(f'| {name} | ' + ' | '.join(f'{figure:.1f}' for figure in figures) + ' |', flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
