"""Models that leave the repository: a SavedModel for TF Serving and TensorFlow 2, TFLite and ONNX files.

docs/serving.md describes each one: its signatures or input and output, its side files, its pixel
limit. The graphs are built with the toolkit's own code (`AlexNet`, preprocessing.py's decode, resize
and normalisation), so a served model sees exactly the input that training and predict.py give it.
tf2onnx, onnx and ai_edge_litert are deploy-time packages (requirements-deploy.txt), imported only
where they are used (`deploy_module`). Each writer creates the output's missing folders, writes
beside the final name and renames into place, with the manifest of its files (manifests.py).
"""
import collections
import contextlib
import importlib
import json
import os
import random
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow.compat.v1 as tf
from tensorflow.python.framework import convert_to_constants

import datagenerator
from alexnet import INPUT_SIZE, AlexNet
from finetune_alexnet import image_header
from finetune_alexnet import model_info
from finetune_alexnet import preprocessing
from finetune_alexnet import tf_setup
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.infer import manifests

SERVE_TAG = 'serve'
SERVING_SIGNATURE = 'serving_default'
IMAGES_SIGNATURE = 'predict_images'
LABELS_FILE = 'labels.txt'
TOP_K = 5
FLOAT16 = 'float16'
INT8 = 'int8'
WRITTEN_BY = manifests.WRITTEN_BY
# Opset 13 is the oldest with today's definitions of every op the graph uses (Softmax over the last
# axis alone, Split's sizes as an input): ONNX Runtime 1.6 and later, TensorRT 8, OpenVINO, and
# ONNX Runtime Web load it.
ONNX_OPSET = 13
ONNX_INPUT = 'images'
ONNX_OUTPUT = 'probabilities'
DEPLOY_REQUIREMENTS = 'requirements-deploy.txt'

# layers: {layer: {'weights', 'biases'}}; center_crop: inference takes the centre crop of a 256 resize
# (--augment); max_pixels: a served image's most (its header's count, every frame); use_gpu: --device.
ExportedModel = collections.namedtuple('ExportedModel', 'layers class_names center_crop max_pixels '
                                       'use_gpu', defaults=(image_header.DEFAULT_MAX_PIXELS, False))


def _normalized_each(to_model_size, elements):
    """preprocessing.normalize of the uint8 [227, 227, 3] images `to_model_size` makes of each element."""
    resized = tf.map_fn(to_model_size, elements, back_prop=False,
                        fn_output_signature=tf.TensorSpec([INPUT_SIZE, INPUT_SIZE, 3], tf.uint8))
    return preprocessing.normalize(resized, compiled=False)


def preprocess_encoded(image_bytes, center_crop, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """Model input from a batch of encoded files: preprocessing's decode, resize, normalisation. Each
    file's header is checked against `max_pixels` before it is decoded (InvalidArgumentError)."""
    def one(elements):
        data, index = elements
        what = tf.strings.join(['image_bytes[', tf.strings.as_string(index), ']'])
        image = preprocessing.decode_rgb(data, max_pixels=max_pixels, what=what)
        return preprocessing.resize_for_model(image, augment=center_crop)
    return _normalized_each(one, (image_bytes, tf.range(tf.size(image_bytes))))


def preprocess_decoded(images_rgb, center_crop, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """Model input from a batch of decoded uint8 RGB images: preprocessing's resize and normalisation.
    The caller decoded them, but the limit holds here too: images over `max_pixels` fail the call."""
    shape = tf.shape(images_rgb, out_type=tf.int64)
    check = tf.debugging.Assert(shape[1] * shape[2] <= max_pixels, [tf.strings.join([
        'images: ', tf.strings.as_string(shape[2]), 'x', tf.strings.as_string(shape[1]),
        f' pixels each, over max_pixels {max_pixels}'])])
    with tf.control_dependencies([check]):
        images_rgb = tf.identity(images_rgb)
    return _normalized_each(lambda image: preprocessing.resize_for_model(image, augment=center_crop),
                            images_rgb)


def _classifier(inputs, class_names):
    """(model, {'probabilities', 'classes', 'scores'}) of AlexNet on pre-processed `inputs`, dropout off.
    Several inputs share one set of variables, resource variables: TF 2's loader warns about TF 1's
    reference variables, one line per variable."""
    num_classes = len(class_names)
    with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE, use_resource=True):
        model = AlexNet(inputs, 1.0, num_classes, skip_layer=[])
    probabilities = tf.nn.softmax(model.fc8, name='probabilities')
    # top_k puts the lower index first among equal scores, as predict.decode_predictions does.
    scores, indices = tf.nn.top_k(probabilities, k=min(TOP_K, num_classes), sorted=True)
    classes = tf.gather(tf.constant(list(class_names), tf.string), indices, name='classes')
    return model, {'probabilities': probabilities, 'classes': classes,
                   'scores': tf.identity(scores, name='scores')}


def _write_side_files(folder, class_names, center_crop):
    """labels.txt (one name a line, in label order) and model_info.json; returns their paths."""
    labels = os.path.join(folder, LABELS_FILE)
    with open(labels, 'w', encoding='utf-8', newline='\n') as stream:
        stream.writelines(f'{name}\n' for name in class_names)
    return labels, model_info.write_model_info(folder, len(class_names), class_names, center_crop)


def _partial_path(output):
    """A fresh temporary name beside `output`, so the result appears whole or not at all; the
    folder of `output` is created when missing."""
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    return tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(output)) + '.partial-', dir=folder)


def _replace_folder(model, output, partial):
    """Move the finished folder `model` to `output`. An empty folder is replaced in one rename; a
    previous SavedModel is first moved into `partial` (removed by the caller), so that a crash
    between the two renames leaves it there, whole, never half-deleted."""
    if os.path.islink(output):
        os.remove(output)  # the link goes; what it points at stays
    elif os.path.isdir(output) and os.listdir(output):
        manifests.check_folder(output)  # checked before the work too; a library caller is refused too
        previous = os.path.join(partial, 'previous')
        os.rename(output, previous)
        try:
            os.rename(model, output)
        except OSError:
            os.rename(previous, output)
            raise
        return
    os.replace(model, output)


def write_saved_model(output, exported):
    """Write `exported` as a SavedModel folder at `output`; returns {signature name: SignatureDef}.
    What is at `output` must be absent, an empty folder or what its manifest lists, unchanged
    (ToolkitError otherwise); it is replaced only once the new model is complete."""
    output = os.path.abspath(output)
    partial = _partial_path(output)
    try:
        model = os.path.join(partial, 'model')
        signatures = _build_saved_model(model, exported)
        _replace_folder(model, output, partial)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return signatures


def _build_saved_model(path, exported):
    names = list(exported.class_names)
    with tf.Graph().as_default() as graph:
        image_bytes = tf.placeholder(tf.string, [None], name='image_bytes')
        images = tf.placeholder(tf.uint8, [None, None, None, 3], name='images')
        with tf.name_scope('from_files'):
            model, from_files = _classifier(
                preprocess_encoded(image_bytes, exported.center_crop, exported.max_pixels), names)
        with tf.name_scope('from_images'):
            _, from_images = _classifier(
                preprocess_decoded(images, exported.center_crop, exported.max_pixels), names)
        build = tf.saved_model.signature_def_utils.predict_signature_def
        signatures = {SERVING_SIGNATURE: build({'image_bytes': image_bytes}, from_files),
                      IMAGES_SIGNATURE: build({'images': images}, from_images)}
        side_files = tempfile.mkdtemp(prefix='assets-', dir=os.path.dirname(path))
        assets = _write_side_files(side_files, names, exported.center_crop)
        for asset in assets:
            # Registered as assets: the builder copies them into assets/ and lists them in the graph.
            graph.add_to_collection(tf.GraphKeys.ASSET_FILEPATHS, tf.constant(asset, name='asset_path'))
        with tf.Session(graph=graph, config=tf_setup.session_config(exported.use_gpu)) as session:
            model.load_initial_weights(session, exported.layers)
            builder = tf.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                session, [SERVE_TAG], signature_def_map=signatures,
                assets_collection=graph.get_collection(tf.GraphKeys.ASSET_FILEPATHS),
                strip_default_attrs=True)
            builder.save()
    manifests.write_folder_manifest(path, max_pixels=int(exported.max_pixels))
    return signatures


def side_files(output):
    """[labels, model_info.json] beside the model file `output`: `models/cats.tflite` (or cats.onnx)
    has cats.labels.txt and cats.model_info.json."""
    stem = os.path.splitext(os.path.abspath(output))[0] + '.'
    return [stem + LABELS_FILE, stem + model_info.MODEL_INFO]


@contextlib.contextmanager
def _float_input_session(exported):
    """(session, input, probabilities) of the classifier on float32 [None, 227, 227, 3]
    pre-processed images, its weights loaded: what the TFLite and ONNX files are made from."""
    with tf.Graph().as_default() as graph:
        inputs = tf.placeholder(tf.float32, [None, INPUT_SIZE, INPUT_SIZE, 3], name=ONNX_INPUT)
        model, outputs = _classifier(inputs, list(exported.class_names))
        with tf.Session(graph=graph, config=tf_setup.session_config(exported.use_gpu)) as session:
            model.load_initial_weights(session, exported.layers)
            yield session, inputs, outputs['probabilities']


def convert_tflite(exported, quantizations=(None,), representative=None):
    """{quantize: TFLite flatbuffer (bytes)} of `exported`, one per entry of `quantizations`: None
    (float32), 'float16' (float16 weights) or 'int8' (int8 weights and activations, calibrated on
    `representative`, float32 [n, 227, 227, 3] pre-processed images; float32 input and output)."""
    flatbuffers = {}
    with _float_input_session(exported) as (session, inputs, probabilities):
        for quantize in quantizations:
            converter = tf.lite.TFLiteConverter.from_session(session, [inputs], [probabilities])
            if quantize == FLOAT16:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif quantize == INT8:
                if representative is None or not len(representative):
                    raise ValueError('an int8 export needs representative images')
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                # One image a step, as the calibrator runs them; it records each tensor's range.
                converter.representative_dataset = lambda: ([image[np.newaxis]]
                                                            for image in representative)
                # int8 kernels throughout. An op TFLite has no int8 kernel for would still be
                # kept in float32 between a dequantize and a quantize, without a word: alexnet.py
                # builds none (its LRN avoids SQUARE), and tests/test_export.py checks.
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            flatbuffers[quantize] = converter.convert()
    return flatbuffers


def write_tflite(output, exported, quantize=None, flatbuffer=None):
    """Write `exported` as a TFLite flatbuffer at `output` (convert_tflite's for `quantize`, or
    `flatbuffer`, one it already made), with its labels and model_info.json beside it; returns their paths."""
    if flatbuffer is None:
        flatbuffer = convert_tflite(exported, (quantize,))[quantize]
    return _write_model_file(output, exported, flatbuffer)


def _write_model_file(output, exported, content):
    """Write `content` at `output` and the side files beside it, each renamed into place once whole
    (the model last); returns the side files' paths."""
    partial = _partial_path(output)
    try:
        written = os.path.join(partial, 'model')
        with open(written, 'wb') as stream:
            stream.write(content)
        written_side_files = _write_side_files(partial, list(exported.class_names),
                                               exported.center_crop)
        for side_file, target in zip(written_side_files, side_files(output)):
            os.replace(side_file, target)
        os.replace(written, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    manifests.write_file_manifest(output, [output, *side_files(output)])
    return side_files(output)


def deploy_module(name, needed_for):
    """The deploy-time package `name` imported, or ToolkitError naming the command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ToolkitError(f"{needed_for} needs the Python package {name.split('.')[0]}, one of the "
                           f"deploy-time packages: pip install -r {DEPLOY_REQUIREMENTS}") from None


def convert_onnx(exported):
    """The ONNX model (a ModelProto) of `exported`: float32 [None, 227, 227, 3] pre-processed images
    in, probabilities out, as the float32 TFLite file; the class names and model_info.json content
    in its metadata_props ('class_names': one a line; 'model_info': JSON)."""
    tf2onnx = deploy_module('tf2onnx', '--format onnx')
    numpy_helper = deploy_module('onnx.numpy_helper', '--format onnx')
    with _float_input_session(exported) as (session, _, _):
        frozen = convert_to_constants.convert_variables_to_constants_from_session_graph(
            session, session.graph.as_graph_def(), [ONNX_OUTPUT])
    # tf2onnx copies every constant at each of its optimizer passes (a minute and 11 GB for AlexNet's
    # 228 MB): it converts the graph with the large constants held out as inputs instead, and they
    # go back in below as initializers.
    held_out = {}
    for node in frozen.node:
        if node.op == 'Const' and len(node.attr['value'].tensor.tensor_content) > 4096:
            value = held_out[node.name + ':0'] = tf.make_ndarray(node.attr['value'].tensor)
            node.op = 'Placeholder'
            del node.attr['value']
            node.attr['shape'].shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
    with warnings.catch_warnings():  # tf2onnx's own deprecation notices are not the user's business
        warnings.simplefilter('ignore')
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen, input_names=[ONNX_INPUT + ':0', *held_out], output_names=[ONNX_OUTPUT + ':0'],
            opset=ONNX_OPSET, tensors_to_rename={ONNX_INPUT + ':0': ONNX_INPUT,
                                                 ONNX_OUTPUT + ':0': ONNX_OUTPUT})
    inputs = [tensor for tensor in proto.graph.input if tensor.name not in held_out]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    _fold_weight_layouts(proto.graph, held_out, numpy_helper)
    proto.producer_name, proto.producer_version = WRITTEN_BY, f'tf2onnx {tf2onnx.__version__}'
    for tensor in (*proto.graph.input, *proto.graph.output):  # tf2onnx calls it unk__<number>
        tensor.type.tensor_type.shape.dim[0].dim_param = 'n'
    info = model_info.model_info_content(len(exported.class_names), list(exported.class_names),
                                         exported.center_crop)
    del proto.metadata_props[:]
    for key, value in (('class_names', '\n'.join(exported.class_names)),
                       ('model_info', json.dumps(info))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def _fold_weight_layouts(graph, weights, numpy_helper):
    """Store `weights` ({name: array}) as initializers of the ONNX `graph`, with the Transpose (TF's
    HWIO kernels to ONNX's OIHW) and Split (the two groups) nodes that read only initializers done
    here, as tf2onnx's constant folding would have: the file then holds each kernel once, in the
    layout its Conv reads, for runtimes that fold nothing at load."""
    values = dict(weights, **{tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer})
    kept = []
    for node in graph.node:
        attributes = {attribute.name: attribute for attribute in node.attribute}
        if node.op_type in ('Transpose', 'Split') and all(name in values for name in node.input):
            data = values[node.input[0]]
            if node.op_type == 'Transpose':
                perm = list(attributes['perm'].ints) if 'perm' in attributes else None  # None: reversed
                values[node.output[0]] = np.transpose(data, perm)
            else:
                axis = attributes['axis'].i if 'axis' in attributes else 0
                sizes = values[node.input[1]] if len(node.input) > 1 else \
                    [data.shape[axis] // len(node.output)] * len(node.output)
                for name, part in zip(node.output, np.split(data, np.cumsum(sizes)[:-1], axis=axis)):
                    values[name] = part
        else:
            kept.append(node)
    needed = {name for node in kept for name in node.input} | {tensor.name for tensor in graph.output}
    del graph.node[:], graph.initializer[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(value), name)
                             for name, value in values.items() if name in needed)


def write_onnx(output, exported):
    """Write `exported` as an ONNX file at `output` (convert_onnx), with its labels and
    model_info.json beside it; returns their paths."""
    return _write_model_file(output, exported, convert_onnx(exported).SerializeToString())


def representative_sample(paths, size, seed):
    """At most `size` of `paths`, drawn without replacement with `seed`, in their list order: the
    images that calibrate an int8 model."""
    chosen = random.Random(seed).sample(range(len(paths)), min(size, len(paths)))
    return [paths[index] for index in sorted(chosen)]


def preprocessed_batches(paths, center_crop, list_file=None):
    """float32 [b, 227, 227, 3] batches of the image files `paths`, in order, pre-processed as
    predict.py does (datagenerator.images_dataset): what a TFLite model takes. An image that does
    not decode raises ToolkitError naming it (and `list_file`, the list it came from)."""
    graph = tf.Graph()
    with graph.as_default():  # left before the first yield: the caller's default graph is its own
        dataset = datagenerator.images_dataset(list(paths), 32, center_crop=center_crop)
        next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
    session = tf.Session(graph=graph, config=tf_setup.session_config())
    try:
        while True:
            try:
                images, _ = session.run(next_batch)
            except tf.errors.OutOfRangeError:
                return
            except datagenerator.IMAGE_ERRORS:
                raise datagenerator.unreadable_images_error(list(paths), list_file=list_file) from None
            yield images
    finally:
        session.close()


def tflite_interpreter(flatbuffer):
    """A LiteRT interpreter (ai_edge_litert, the successor of TensorFlow's own) of
    `flatbuffer`, on every core."""
    litert = deploy_module('ai_edge_litert.interpreter', 'running a TFLite model')
    return litert.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count() or 1)


def run_tflite(interpreter, images):
    """Probabilities [n, num_classes] of a TFLite classifier for a float32 [n, 227, 227, 3] batch."""
    detail = interpreter.get_input_details()[0]
    if list(detail['shape']) != list(images.shape):
        interpreter.resize_tensor_input(detail['index'], list(images.shape))
        interpreter.allocate_tensors()
    interpreter.set_tensor(detail['index'], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]['index']).copy()


# How a quantized TFLite model answers next to the float32 one, on labelled images (tflite_agreement).
Agreement = collections.namedtuple('Agreement', 'images same_top1 float_correct quantized_correct '
                                   'max_difference')


def tflite_agreement(quantized, reference, batches, labels):
    """Agreement of the TFLite flatbuffers `quantized` and `reference` (float32) over `batches` of
    pre-processed images (preprocessed_batches) whose labels are `labels`, in order."""
    interpreters = tflite_interpreter(quantized), tflite_interpreter(reference)
    for interpreter in interpreters:
        interpreter.allocate_tensors()
    labels = np.asarray(labels)
    same = float_correct = quantized_correct = seen = 0
    largest = 0.0
    for images in batches:
        ours, theirs = (run_tflite(interpreter, images) for interpreter in interpreters)
        truth = labels[seen:seen + len(images)]
        seen += len(images)
        # argmax takes the lower index among equal scores, as top_k and decode_predictions do.
        ours_top, theirs_top = ours.argmax(axis=1), theirs.argmax(axis=1)
        same += int(np.sum(ours_top == theirs_top))
        quantized_correct += int(np.sum(ours_top == truth))
        float_correct += int(np.sum(theirs_top == truth))
        largest = max(largest, float(np.max(np.abs(ours - theirs))))
    return Agreement(seen, same, float_correct, quantized_correct, largest)


def describe_signature(name, signature):
    """`name: inputs image_bytes string [-1]; outputs classes string [-1, 2], ...`, one line."""
    def tensors(mapping):
        return ', '.join(f'{key} {tf.as_dtype(info.dtype).name} {[dim.size for dim in info.tensor_shape.dim]}'
                         for key, info in sorted(mapping.items()))
    return f'{name}: inputs {tensors(signature.inputs)}; outputs {tensors(signature.outputs)}'


def folder_size(path):
    """Bytes of every file under `path` (or of `path` itself when it is a file)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)
