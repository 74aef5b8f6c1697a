"""Models that leave the repository: a SavedModel for TF Serving and TensorFlow 2, and TFLite files.

The graphs are built with the toolkit's own code: `AlexNet` for the network and preprocessing.py's
functions for decoding, resizing and normalising, so a served model sees exactly the input that
training and predict.py give it. The weights are fed into the variables' initializers (never graph
constants), so a SavedModel holds them once, in its `variables/` folder.

SavedModel (TF 1 SavedModelBuilder format, tag `serve`; TF Serving serves it, and TF 2's
`tf.saved_model.load` loads it with its `signatures`):

    serving_default  image_bytes: string [None], encoded JPEG/PNG/BMP/GIF files of any size
    predict_images   images: uint8 [None, None, None, 3], decoded RGB pictures of one size
    both return      probabilities: float32 [None, num_classes]
                     classes: string [None, k], class names, best first (k = min(5, num_classes))
                     scores: float32 [None, k], their probabilities
    assets           labels.txt (one class name a line, in label order) and model_info.json

TFLite has no image decoder op, so a `.tflite` takes what the network takes: float32
[None, 227, 227, 3], pre-processed (resized, BGR, ImageNet mean subtracted), and returns the
probabilities; its labels and model_info.json are written beside it.
"""
import collections
import os
import shutil
import tempfile

import tensorflow.compat.v1 as tf

from alexnet import INPUT_SIZE, TRAINABLE_LAYERS, AlexNet
from finetune_alexnet import model_info
from finetune_alexnet import preprocessing

SERVE_TAG = 'serve'
SERVING_SIGNATURE = 'serving_default'
IMAGES_SIGNATURE = 'predict_images'
LABELS_FILE = 'labels.txt'
TOP_K = 5
FLOAT16 = 'float16'

# The exported model's contents: its weights {layer: {'weights', 'biases'}}, class names (one per
# class) and whether inference takes the centre crop of a 256 resize (a model trained with --augment).
ExportedModel = collections.namedtuple('ExportedModel', 'layers class_names center_crop')


def _resize_each(images, center_crop):
    """float32 [n, 227, 227, 3] RGB from a batch of decoded images, one `resize_for_model` each."""
    return tf.map_fn(lambda image: preprocessing.resize_for_model(image, augment=center_crop), images,
                     fn_output_signature=tf.TensorSpec([INPUT_SIZE, INPUT_SIZE, 3], tf.float32),
                     back_prop=False)


def preprocess_encoded(image_bytes, center_crop):
    """Model input from a batch of encoded files: preprocessing's decode, resize, normalisation."""
    decoded_and_resized = tf.map_fn(
        lambda data: preprocessing.resize_for_model(preprocessing.decode_rgb(data), augment=center_crop),
        image_bytes, fn_output_signature=tf.TensorSpec([INPUT_SIZE, INPUT_SIZE, 3], tf.float32),
        back_prop=False)
    return preprocessing.normalize(decoded_and_resized, compiled=False)


def preprocess_decoded(images_rgb, center_crop):
    """Model input from a batch of decoded uint8 RGB images: preprocessing's resize and normalisation."""
    return preprocessing.normalize(_resize_each(images_rgb, center_crop), compiled=False)


def _classifier(inputs, class_names):
    """(model, {'probabilities', 'classes', 'scores'}) of AlexNet on pre-processed `inputs`, dropout off.

    Variables are shared between calls (AUTO_REUSE), so several inputs use one set of weights. They
    are resource variables, which TF 2's loader turns into tf.Variables (it only warns about TF 1's
    reference variables, one line per variable).
    """
    num_classes = len(class_names)
    with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE, use_resource=True):
        model = AlexNet(inputs, 1.0, num_classes, skip_layer=[])
    probabilities = tf.nn.softmax(model.fc8, name='probabilities')
    # top_k puts the lower index first among equal scores, as predict.decode_predictions does.
    scores, indices = tf.nn.top_k(probabilities, k=min(TOP_K, num_classes), sorted=True)
    classes = tf.gather(tf.constant(list(class_names), tf.string), indices, name='classes')
    return model, {'probabilities': probabilities, 'classes': classes,
                   'scores': tf.identity(scores, name='scores')}


def _load_weights(session, model, layers):
    """Feed `layers` into the model's variable initializers: the arrays never become graph constants."""
    feeds, initializers = {}, []
    for layer in TRAINABLE_LAYERS:
        for kind, variable in model.variables[layer].items():
            feeds[variable.initial_value] = layers[layer][kind]
            initializers.append(variable.initializer)
    session.run(initializers, feed_dict=feeds)


def _write_side_files(folder, class_names, center_crop, stem=''):
    """labels.txt (one name a line, in label order) and model_info.json; returns their paths."""
    labels = os.path.join(folder, stem + LABELS_FILE)
    with open(labels, 'w', encoding='utf-8', newline='\n') as stream:
        stream.writelines(f'{name}\n' for name in class_names)
    info = model_info.write_model_info(folder, len(class_names), class_names, center_crop)
    if stem:
        renamed = os.path.join(folder, stem + model_info.MODEL_INFO)
        os.replace(info, renamed)
        info = renamed
    return labels, info


def _partial_path(output):
    """A fresh temporary name beside `output`, so the result appears whole or not at all."""
    folder = os.path.dirname(os.path.abspath(output))
    return tempfile.mkdtemp(prefix=os.path.basename(output) + '.partial-', dir=folder)


def _replace(partial, output):
    """Move the finished `partial` to `output`, replacing what is there (the caller checked it may)."""
    if os.path.isdir(output) and not os.path.islink(output):
        shutil.rmtree(output)
    elif os.path.lexists(output):
        os.remove(output)
    os.replace(partial, output)


def write_saved_model(output, exported):
    """Write `exported` as a SavedModel folder at `output`; returns {signature name: SignatureDef}.

    TF Serving's layout is models/<name>/<version>: the model's folder is created when missing.
    """
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    partial = _partial_path(output)
    try:
        signatures = _build_saved_model(os.path.join(partial, 'model'), exported)
        _replace(os.path.join(partial, 'model'), output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return signatures


def _build_saved_model(path, exported):
    names = list(exported.class_names)
    with tf.Graph().as_default() as graph:
        image_bytes = tf.placeholder(tf.string, [None], name='image_bytes')
        images = tf.placeholder(tf.uint8, [None, None, None, 3], name='images')
        with tf.name_scope('from_files'):
            model, from_files = _classifier(preprocess_encoded(image_bytes, exported.center_crop), names)
        with tf.name_scope('from_images'):
            _, from_images = _classifier(preprocess_decoded(images, exported.center_crop), names)
        build = tf.saved_model.signature_def_utils.predict_signature_def
        signatures = {SERVING_SIGNATURE: build({'image_bytes': image_bytes}, from_files),
                      IMAGES_SIGNATURE: build({'images': images}, from_images)}
        side_files = tempfile.mkdtemp(prefix='assets-', dir=os.path.dirname(path))
        for asset in _write_side_files(side_files, names, exported.center_crop):
            # Registered as assets: the builder copies them into assets/ and lists them in the graph.
            graph.add_to_collection(tf.GraphKeys.ASSET_FILEPATHS, tf.constant(asset, name='asset_path'))
        with tf.Session(graph=graph) as session:
            _load_weights(session, model, exported.layers)
            builder = tf.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                session, [SERVE_TAG], signature_def_map=signatures,
                assets_collection=graph.get_collection(tf.GraphKeys.ASSET_FILEPATHS),
                strip_default_attrs=True)
            builder.save()
    return signatures


def tflite_side_file_stem(output):
    """`models/cats.tflite` -> `cats.`: its labels go to cats.labels.txt, its info to cats.model_info.json."""
    return os.path.splitext(os.path.basename(output))[0] + '.'


def tflite_side_files(output):
    folder, stem = os.path.dirname(os.path.abspath(output)), tflite_side_file_stem(output)
    return [os.path.join(folder, stem + LABELS_FILE), os.path.join(folder, stem + model_info.MODEL_INFO)]


def write_tflite(output, exported, quantize=None):
    """Write `exported` as a TFLite flatbuffer at `output` (float32, or float16 weights with
    `quantize='float16'`), with its labels and model_info.json beside it; returns their paths."""
    names = list(exported.class_names)
    with tf.Graph().as_default() as graph:
        inputs = tf.placeholder(tf.float32, [None, INPUT_SIZE, INPUT_SIZE, 3], name='images')
        model, outputs = _classifier(inputs, names)
        with tf.Session(graph=graph) as session:
            _load_weights(session, model, exported.layers)
            converter = tf.lite.TFLiteConverter.from_session(session, [inputs],
                                                              [outputs['probabilities']])
            if quantize == FLOAT16:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            flatbuffer = converter.convert()
    partial = _partial_path(output)
    try:
        written = os.path.join(partial, 'model.tflite')
        with open(written, 'wb') as stream:
            stream.write(flatbuffer)
        side_files = _write_side_files(partial, names, exported.center_crop,
                                       stem=tflite_side_file_stem(output))
        for side_file, target in zip(side_files, tflite_side_files(output)):
            _replace(side_file, target)
        _replace(written, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return tflite_side_files(output)


def describe_signature(name, signature):
    """`name: inputs image_bytes string [-1]; outputs classes string [-1, 2], ...`, one line."""
    def tensors(mapping):
        parts = []
        for key in sorted(mapping):
            info = mapping[key]
            shape = [dim.size for dim in info.tensor_shape.dim]
            parts.append(f'{key} {tf.as_dtype(info.dtype).name} {shape}')
        return ', '.join(parts)
    return f'{name}: inputs {tensors(signature.inputs)}; outputs {tensors(signature.outputs)}'


def folder_size(path):
    """Bytes of every file under `path` (or of `path` itself when it is a file)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)
