"""What a run shows in TensorBoard beyond its training curves (docs/run-folder.md): one sub-folder
per run, the HParams dashboard, per-epoch pictures from the validation pass (worst mistakes,
confusion matrix, per-class precision/recall and PR curves), and the projector's fc7 embedding.
All computed from what the validation pass already fetches: no second pass over the data.
"""
import contextlib
import datetime
import os
import re

import cv2
import numpy as np
import tensorflow.compat.v1 as tf
from tensorboard.plugins.hparams import api_pb2 as hparams_api_pb2
from tensorboard.plugins.hparams import summary as hparams_v1_summary
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.pr_curve import summary as pr_curve_summary
from tensorboard.plugins.projector import projector_config_pb2
from google.protobuf import text_format

from finetune_alexnet import metrics
from finetune_alexnet import model_info

from alexnet import TRAINABLE_LAYERS

MISTAKES_SHOWN = 16
THUMBNAIL_SIZE = 64
PROJECTOR_MAX_IMAGES = 2000
PROJECTOR_TENSOR = 'fc7_embedding'
PROJECTOR_CONFIG = 'projector_config.pbtxt'
PR_CURVE_THRESHOLDS = 101

# The HParams dashboard's columns: hyper-parameters, and the metrics each run logs as scalars.
HPARAMS = ('learning_rate', 'optimizer', 'momentum', 'weight_decay', 'batch_size', 'train_layers',
           'skip_layers', 'augment', 'dropout_rate', 'seed', 'class_weights', 'lr_mult', 'num_epochs',
           'label_smoothing', 'ema_decay', 'lr_schedule', 'warmup_epochs', 'mixup', 'cutmix',
           'unfreeze_at', 'unfreeze_layers')
METRICS = (('hparams/best_val_accuracy', 'best validation accuracy'),
           ('hparams/best_val_loss', 'lowest validation loss'),
           ('validation/accuracy', 'final validation accuracy'),
           ('validation/cross_entropy', 'final validation loss'),
           ('phase', 'training phase (--unfreeze_at)'))
# A run name is its date-time and at most this many changed settings, in RUN_NAME_ORDER's order,
# kept to about RUN_NAME_LENGTH characters so that TensorBoard's panels show it whole.
RUN_NAME_PARTS = 3
RUN_NAME_LENGTH = 40


def _layers_text(layers):
    """'all-layers', 'fc6-fc8' for a run of consecutive layers, else 'conv1+fc8'."""
    if tuple(layers) == TRAINABLE_LAYERS:
        return 'all-layers'
    if not layers:
        return 'none'
    positions = sorted(TRAINABLE_LAYERS.index(layer) for layer in layers)
    if len(positions) > 1 and positions == list(range(positions[0], positions[-1] + 1)):
        return f'{TRAINABLE_LAYERS[positions[0]]}-{TRAINABLE_LAYERS[positions[-1]]}'
    return '+'.join(TRAINABLE_LAYERS[position] for position in positions)


def _skip_text(layers):
    return 'scratch' if tuple(layers) == TRAINABLE_LAYERS else f'skip-{_layers_text(layers)}'


# Each setting a run name may show, and how it is shown.
RUN_NAME_ORDER = (
    ('learning_rate', lambda v: f'lr{v:g}'), ('train_layers', _layers_text),
    ('skip_layers', _skip_text), ('init_checkpoint', lambda v: 'warm'),
    ('unfreeze_at', lambda v: f'unfreeze{v}'), ('lr_schedule', str),
    ('label_smoothing', lambda v: f'ls{v:g}'), ('ema_decay', lambda v: f'ema{v:g}'),
    ('mixup', lambda v: f'mixup{v:g}'), ('cutmix', lambda v: f'cutmix{v:g}'),
    ('warmup_epochs', lambda v: f'wu{v:g}'), ('unfreeze_layers', lambda v: 'then-' + _layers_text(v)),
    ('optimizer', str), ('batch_size', lambda v: f'bs{v}'), ('num_epochs', lambda v: f'ep{v}'),
    ('augment', lambda v: 'aug' if v else 'no-aug'), ('weight_decay', lambda v: f'wd{v:g}'),
    ('dropout_rate', lambda v: f'drop{v:g}'),
    ('class_weights', lambda v: v if isinstance(v, str) else 'cw' + ','.join(f'{w:g}' for w in v)),
    ('lr_mult', lambda v: 'lrmult'), ('lr_decay_epochs', lambda v: f'decay{v}'),
    ('momentum', lambda v: f'mom{v:g}'), ('seed', lambda v: f'seed{v}'))


def short_run_name(settings, now=None):
    """The date-time and up to three changed settings, e.g. `2026-12-05_2029_lr0.01_all-layers`."""
    name = (now or datetime.datetime.now()).strftime('%Y-%m-%d_%H%M')
    if settings.demo:
        name += '_demo'
    parts = 0
    for setting, text in RUN_NAME_ORDER:
        if setting not in settings.changed_settings or parts == RUN_NAME_PARTS:
            continue
        part = text(getattr(settings, setting))
        if len(name) + 1 + len(part) > RUN_NAME_LENGTH:
            continue
        name, parts = f'{name}_{part}', parts + 1
    return safe_run_name(name)


def safe_run_name(name):
    """`name` as one folder name: path separators and other odd characters become '-'."""
    return re.sub(r'[^\w.,=+-]', '-', name).strip('.') or 'run'


def new_run_folder(root, name):
    """`root/name`, or `root/name_2`, `_3`... when an earlier run has that name already."""
    candidate, number = name, 1
    while os.path.exists(os.path.join(root, candidate)):
        number += 1
        candidate = f'{name}_{number}'
    return candidate


def _hparam_value(value):
    """A setting as HParams shows it: None as 'none', a list as one text ('none', 'fc8,fc7', '1,3.5'
    or 'fc8=10,fc7=2'), anything else as it is."""
    if not isinstance(value, (list, tuple)):
        return 'none' if value is None else value
    return ','.join(f'{v[0]}={v[1]:g}' if isinstance(v, tuple) else f'{v:g}' if isinstance(v, float)
                    else str(v) for v in value) or 'none'


def as_tf_summary(proto):
    """A TensorBoard-package Summary protobuf as the `tf.Summary` a FileWriter accepts."""
    return tf.Summary.FromString(proto.SerializeToString())


def hparam_values(args, class_weight_values=None):
    """The run's hyper-parameters as the plain values (numbers, strings, booleans) HParams shows;
    `class_weight_values` are the loss weights the run uses (what 'balanced' came to)."""
    values = {name: _hparam_value(getattr(args, name, None)) for name in HPARAMS}
    if not getattr(args, 'unfreeze_at', 0):
        values['unfreeze_layers'] = 'none'  # no second phase
    values['class_weight_values'] = (','.join(f'{weight:.4g}' for weight in class_weight_values)
                                     if class_weight_values is not None else 'none')
    return values


def hparams_summaries(args, run_name, class_weight_values=None):
    """The experiment's columns and this run's values, as two `tf.Summary` protos for its writer.
    Every run writes the whole experiment's columns, so any subset of runs shows the whole table."""
    values = hparam_values(args, class_weight_values)
    config = hparams_summary.hparams_config_pb(
        hparams=[hparams_summary.HParam(name) for name in values],
        metrics=[hparams_summary.Metric(tag, display_name=title) for tag, title in METRICS])
    session = hparams_summary.hparams_pb(values, trial_id=run_name)
    return [as_tf_summary(config), as_tf_summary(session)]


def hparams_end_summary():
    """Marks the run's session as finished in the HParams dashboard."""
    return as_tf_summary(hparams_v1_summary.session_end_pb(hparams_api_pb2.STATUS_SUCCESS))


class NoWriter(contextlib.nullcontext):
    """A FileWriter that writes nothing (every method does nothing and returns None): what workers
    other than the chief summarise to."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class ValidationOutputs:
    """Collects what each validation batch fetched: class probabilities, true labels, fc7 rows."""

    def __init__(self, keep_features=0):
        self.keep_features = keep_features  # fc7 rows kept (the projector's first N images)
        self._probabilities, self._labels, self._features = [], [], []
        self._feature_rows = 0

    def add(self, probabilities, labels, features=None):
        self._probabilities.append(np.asarray(probabilities, np.float32))
        self._labels.append(np.asarray(labels, np.int64))
        if features is not None and self._feature_rows < self.keep_features:
            rows = np.asarray(features[:self.keep_features - self._feature_rows], np.float32)
            self._features.append(rows)
            self._feature_rows += len(rows)

    def replace_with(self, probabilities, labels):
        """Hold these alone (every worker's outputs, joined; no fc7 rows: the projector needs one
        machine)."""
        self.__init__()
        self.add(probabilities, labels)

    @property
    def wants_features(self):
        return self._feature_rows < self.keep_features

    @property
    def probabilities(self):
        return np.concatenate(self._probabilities) if self._probabilities else np.zeros((0, 0))

    @property
    def labels(self):
        return np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)

    @property
    def features(self):
        return np.concatenate(self._features) if self._features else None


def tag_name(name):
    return re.sub(r'[^\w.-]', '_', name)


def read_thumbnail(path, size=THUMBNAIL_SIZE):
    """An RGB thumbnail (size x size) of the image at `path`; grey when it cannot be read."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return np.full((size, size, 3), 128, np.uint8)
    return cv2.cvtColor(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def mistakes_grid(paths, probabilities, labels, class_names, count=MISTAKES_SHOWN, size=96):
    """An RGB grid of the worst mistakes, each captioned `true > predicted probability`; None if none."""
    indices = metrics.ranked_mistakes(probabilities, labels, count)
    if len(indices) == 0:
        return None
    columns = min(4, len(indices))
    rows = -(-len(indices) // columns)
    caption = 28
    grid = np.full((rows * (size + caption), columns * size, 3), 255, np.uint8)
    for slot, index in enumerate(indices):
        row, column = divmod(slot, columns)
        top, left = row * (size + caption), column * size
        grid[top:top + size, left:left + size] = read_thumbnail(paths[index], size)
        predicted = int(probabilities[index].argmax())
        lines = (f'{class_names[labels[index]]}'[:14],
                 f'>{class_names[predicted]}'[:10] + f' {probabilities[index, predicted]:.2f}')
        for number, text in enumerate(lines):
            cv2.putText(grid, text, (left + 2, top + size + 11 + 12 * number), cv2.FONT_HERSHEY_PLAIN,
                        0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return grid


def confusion_matrix_image(counts, class_names):
    """metrics.confusion_figure as an RGB array, at most 12 inches of 80 dpi: TensorBoard's size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    figure = metrics.confusion_figure(counts, class_names, max_inches=12)
    figure.set_dpi(80)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(rgb):
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return png.tobytes()


def image_value(tag, rgb):
    return tf.Summary.Value(tag=tag, image=tf.Summary.Image(
        height=rgb.shape[0], width=rgb.shape[1], colorspace=3, encoded_image_string=png_bytes(rgb)))


def validation_summary(outputs, paths, class_names, num_classes):
    """The epoch's pictures and per-class numbers as one `tf.Summary`; `paths` are the validation
    images in the order the (unshuffled) pass saw them."""
    probabilities, labels = outputs.probabilities, outputs.labels
    names = model_info.class_names_or_placeholders(class_names, num_classes)
    counts = metrics.confusion_matrix(labels, probabilities.argmax(axis=1), num_classes)
    precision, recall = metrics.precision_recall(counts)
    values = [image_value('validation/confusion_matrix', confusion_matrix_image(counts, names))]
    grid = mistakes_grid(paths, probabilities, labels, names)
    if grid is not None:
        values.append(image_value('validation/worst_mistakes', grid))
    for label, name in enumerate(names):
        for kind, numbers in (('precision', precision), ('recall', recall)):
            if np.isfinite(numbers[label]):
                values.append(tf.Summary.Value(tag=f'validation_{kind}/{tag_name(name)}',
                                               simple_value=float(numbers[label])))
        curve = pr_curve_summary.pb(f'pr_curve/{tag_name(name)}', labels == label,
                                    probabilities[:, label], num_thresholds=PR_CURVE_THRESHOLDS,
                                    display_name=f'{name} (PR curve)')
        value, = as_tf_summary(curve).value
        value.tag = f'pr_curve/{tag_name(name)}'  # the plugin would append '/pr_curves'
        values.append(value)
    return tf.Summary(value=values)


def sprite(paths, size):
    """The projector's sprite: thumbnails in row-major order on a square grid, as an RGB array."""
    columns = int(np.ceil(np.sqrt(len(paths))))
    image = np.full((columns * size, columns * size, 3), 255, np.uint8)
    for index, path in enumerate(paths):
        row, column = divmod(index, columns)
        image[row * size:(row + 1) * size, column * size:(column + 1) * size] = read_thumbnail(path, size)
    return image


def write_projector(log_dir, features, paths, labels, predicted, class_names, num_classes):
    """fc7 features of the first images (in a checkpoint of their own, which the projector reads), a
    sprite and metadata.tsv (each image's path, true and predicted class)."""
    count = len(features)
    paths, labels, predicted = list(paths[:count]), labels[:count], predicted[:count]
    names = model_info.class_names_or_placeholders(class_names, num_classes)
    folder = os.path.join(log_dir, 'projector')
    os.makedirs(folder, exist_ok=True)
    # Thumbnails shrink with the count: the sprite must stay within 8192 x 8192 pixels.
    size = int(min(THUMBNAIL_SIZE, 8192 // int(np.ceil(np.sqrt(count)))))
    with open(os.path.join(folder, 'sprite.png'), 'wb') as stream:
        stream.write(png_bytes(sprite(paths, size)))
    with open(os.path.join(folder, 'metadata.tsv'), 'w') as stream:
        stream.write('path\ttrue\tpredicted\n')
        for path, true, guess in zip(paths, labels, predicted):
            stream.write(f"{path.replace(chr(9), ' ')}\t{names[true]}\t{names[guess]}\n")
    prefix = os.path.join(folder, 'embedding.ckpt')
    with tf.Graph().as_default():
        value = tf.placeholder(tf.float32, features.shape)
        variable = tf.Variable(value, name=PROJECTOR_TENSOR)
        with tf.Session() as session:
            session.run(variable.initializer, {value: features})
            tf.train.Saver([variable]).save(session, prefix, write_meta_graph=False,
                                            write_state=False)
    config = projector_config_pb2.ProjectorConfig(model_checkpoint_path=prefix)
    embedding = config.embeddings.add(tensor_name=PROJECTOR_TENSOR,
                                      metadata_path=os.path.join('projector', 'metadata.tsv'))
    embedding.sprite.image_path = os.path.join('projector', 'sprite.png')
    embedding.sprite.single_image_dim.extend([size, size])
    with open(os.path.join(log_dir, PROJECTOR_CONFIG), 'w') as stream:
        stream.write(text_format.MessageToString(config))
