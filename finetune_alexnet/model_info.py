"""What a fine-tuned checkpoint carries besides its weights: `model_info.json`.

finetune.py writes it beside its checkpoints; predict.py and export.py read it, so a fine-tuned model
needs no other flag: its class count, class names and pre-processing (docs/run-folder.md), and
`"ema": true` when the checkpoint holds moving averages of the weights, which are then read instead.

    {"format": 1, "num_classes": 2, "class_names": ["cat", "dog"] or null,
     "preprocessing": {"input_size": 227, "resize_size": 256, "mean_rgb": [123.68, 116.779, 103.939],
                       "channel_order": "BGR", "center_crop": true}}

What is read back is checked as strictly as a flag, in one line naming the file and field
(docs/resume-and-failures.md): a checkpoint made with other pre-processing than preprocessing.py's
is refused rather than fed inputs it never saw.
"""
import glob
import json
import math
import os
import re

import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import checkpoints
from finetune_alexnet import image_lists
from finetune_alexnet import preprocessing
from finetune_alexnet import run_folder
from finetune_alexnet.errors import ToolkitError

MODEL_INFO = 'model_info.json'
EMA_SUFFIX = 'ExponentialMovingAverage'  # TensorFlow's name for a variable's moving average
CLASS_NAMES_FILE = 'classes.txt'
# Labels become one-hot vectors of depth num_classes, an int32 in TensorFlow.
MAX_CLASSES = 2**31 - 1
FORMAT = 1
# Room for a million class names; a larger file is not one of ours, and is not read into memory.
MAX_FILE_BYTES = 64 * 2**20
_FIELDS = ('format', 'num_classes', 'class_names', 'preprocessing')
_OPTIONAL_FIELDS = ('ema',)  # written only when true (stored_names)
_PREPROCESSING_FIELDS = ('input_size', 'resize_size', 'mean_rgb', 'channel_order', 'center_crop')


def _shown(value, limit=60):
    """repr(value), cut short: a message stays one short line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_small_text(path, what):
    """The text of `path`, a regular UTF-8 file of at most MAX_FILE_BYTES; ToolkitError naming it.
    A FIFO (opening it waits for a writer), a device or an oversized file is refused unread."""
    kind = image_lists.not_a_regular_file(path) if os.path.lexists(path) else None
    if kind and not kind.startswith('unreadable'):
        raise ToolkitError(f'{path}: not a {what} ({kind})')
    try:
        with open(path, 'rb') as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ToolkitError(f'{path}: unreadable {what} ({error.strerror})') from None
    if len(raw) > MAX_FILE_BYTES:
        raise ToolkitError(f'{path}: larger than {MAX_FILE_BYTES // 2**20} MiB: not a {what}')
    try:
        return raw.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b'\n') + 1
        raise ToolkitError(f'{path}:{line}: unreadable {what} (not UTF-8 text)') from None


def _preprocessing_fields(center_crop):
    return {'input_size': preprocessing.INPUT_SIZE, 'resize_size': preprocessing.RESIZE_SIZE,
            'mean_rgb': [float(value) for value in preprocessing.IMAGENET_MEAN_RGB],
            'channel_order': 'BGR', 'center_crop': bool(center_crop)}


def write_model_info(ckpt_dir, num_classes, class_names, center_crop, ema=False):
    """Write `<ckpt_dir>/model_info.json`, replaced atomically; returns its path. Refuses what
    read_model_info would refuse, so that what is written always reads back."""
    content = model_info_content(num_classes, class_names, center_crop, ema)
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, MODEL_INFO)
    run_folder.write_json_atomically(path, content)
    return path


def model_info_content(num_classes, class_names, center_crop, ema=False):
    """The JSON object model_info.json holds (write_model_info); ToolkitError for what
    read_model_info would refuse."""
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if len(class_names) != num_classes:
            raise ToolkitError(f"{len(class_names)} class names for {num_classes} classes")
        for label, name in enumerate(class_names):
            problem = image_lists.class_name_problem(name)
            if problem:
                raise ToolkitError(f'class name {_shown(name)} of label {label} {problem}')
    content = {'format': FORMAT, 'num_classes': int(num_classes), 'class_names': class_names,
               'preprocessing': _preprocessing_fields(center_crop)}
    if ema:
        content['ema'] = True
    return content


def resolve_checkpoint(checkpoint):
    """The checkpoint prefix that `checkpoint` (a prefix, one of its files, or a folder) names."""
    checkpoint = os.fspath(checkpoint)
    if os.path.isdir(checkpoint):
        if os.path.exists(os.path.join(checkpoint, checkpoints.BEST + '.index')):
            return os.path.join(checkpoint, checkpoints.BEST)
        state_file = os.path.join(checkpoint, 'checkpoint')
        kind = image_lists.not_a_regular_file(state_file) if os.path.lexists(state_file) else None
        if kind:  # TensorFlow would open a FIFO and wait for a writer forever
            raise ToolkitError(f'{state_file}: not a checkpoint state file ({kind})')
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest:
            # The state file may name any path (absolute, or '../other/x.ckpt'): only this folder's.
            inside = os.path.realpath(os.path.dirname(os.path.join(checkpoint, latest)))
            if inside != os.path.realpath(checkpoint):
                raise ToolkitError(f'{state_file}: names {latest}, outside {checkpoint}; pass the '
                                   'checkpoint prefix itself')
            return latest
        # No `checkpoint` state file (it is optional): the highest-numbered epoch is the latest.
        index_files = glob.glob(os.path.join(checkpoint, 'model_epoch*.ckpt.index'))
        epochs = sorted((path[:-len('.index')] for path in index_files),
                        key=lambda prefix: checkpoints.checkpoint_epoch(os.path.basename(prefix)))
        if epochs:
            return epochs[-1]
        raise ToolkitError(f"{checkpoint}: no checkpoint in this folder (expected best.ckpt.index or "
                           "model_epoch<N>.ckpt.index, as finetune.py writes)")
    # Users often paste one of the checkpoint's files instead of its prefix.
    prefix = re.sub(r'\.(index|meta|data-\d+-of-\d+)$', '', checkpoint)
    if not os.path.exists(prefix + '.index'):
        raise ToolkitError(f"{checkpoint}: checkpoint not found (no {prefix}.index); pass a checkpoint "
                           "prefix such as runs/x/best.ckpt or its folder")
    return prefix


def _check_preprocessing(path, found):
    if not isinstance(found, dict):
        raise ToolkitError(f"{path}: 'preprocessing' should be an object, found {_shown(found)}")
    unknown = sorted(set(found) - set(_PREPROCESSING_FIELDS), key=str)
    if unknown:
        raise ToolkitError(f'{path}: unknown field preprocessing.{_shown(unknown[0])}')
    if not isinstance(found.get('center_crop'), bool):
        raise ToolkitError(f"{path}: preprocessing.center_crop should be true or false, "
                           f"found {_shown(found.get('center_crop'))}")
    for key, value in _preprocessing_fields(found['center_crop']).items():
        if key not in found:
            raise ToolkitError(f"{path}: preprocessing.{key} is missing")
        given = found[key]
        if key == 'mean_rgb':
            well_typed = isinstance(given, list) and len(given) == 3 and all(map(_is_number, given))
        else:
            well_typed = type(given) is type(value)  # JSON's true is no integer here
        if not well_typed:
            raise ToolkitError(f'{path}: preprocessing.{key} should be like {value!r}, found '
                               f'{_shown(given)}')
        if not (np.allclose(given, value) if key == 'mean_rgb' else given == value):
            raise ToolkitError(f"{path}: the model was trained with preprocessing.{key} = "
                               f"{_shown(given)}, but this toolkit's pre-processing uses {value!r}")


def _check_model_info(path, info):
    if not isinstance(info, dict) or not _is_int(info.get('format')) or info.get('format') != FORMAT:
        found = info.get('format') if isinstance(info, dict) else type(info).__name__
        raise ToolkitError(f"{path}: unsupported model info (format {_shown(found)}, expected {FORMAT})")
    unknown = sorted(set(info) - set(_FIELDS) - set(_OPTIONAL_FIELDS), key=str)
    if unknown:
        raise ToolkitError(f'{path}: unknown field {_shown(unknown[0])} (written by another tool?)')
    for key in _FIELDS:
        if key not in info:
            raise ToolkitError(f'{path}: the field {key!r} is missing')
    num_classes = info['num_classes']
    if not _is_int(num_classes) or num_classes < 2:
        raise ToolkitError(f"{path}: num_classes should be a positive integer (2 or more), "
                           f"found {_shown(num_classes)}")
    names = info['class_names']
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ToolkitError(f"{path}: class_names should be a list of strings or null")
        if len(names) != num_classes:
            raise ToolkitError(f"{path}: {len(names)} class_names for num_classes {num_classes}")
        for label, name in enumerate(names):
            problem = image_lists.class_name_problem(name)
            if problem:
                raise ToolkitError(f'{path}: class_names[{label}] {_shown(name)} {problem}')
    _check_preprocessing(path, info['preprocessing'])
    if not isinstance(info.get('ema', False), bool):
        raise ToolkitError(f"{path}: ema should be true or false, found {_shown(info['ema'])}")


def _check_fits_checkpoint(path, info, prefix):
    """num_classes must be the width of the checkpoint's fc8: the model is built from it."""
    try:
        shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError):
        return  # check_intact has read it; the shape check of whoever restores it will say more
    found = shapes.get('fc8/weights')
    if found and found[-1] != info['num_classes']:
        expected = tuple(found[:-1]) + (info['num_classes'],)
        raise ToolkitError(f"{path}: num_classes {info['num_classes']} does not fit checkpoint "
                           f"{prefix} (fc8/weights has shape {tuple(found)}, expected {expected})")


def read_model_info(checkpoint):
    """(checkpoint prefix, the checked content of model_info.json beside it) for `checkpoint`: the
    checkpoint verified first, then every field, and num_classes against the checkpoint's fc8."""
    prefix = resolve_checkpoint(checkpoint)
    checkpoints.check_intact(prefix)  # a damaged file fails here in one line, naming it
    path = os.path.join(os.path.dirname(prefix), MODEL_INFO)
    if not os.path.lexists(path):
        raise ToolkitError(f"{path}: not found beside checkpoint {prefix}; finetune.py writes it when "
                           "training starts, and prediction needs its class count and pre-processing")
    text = read_small_text(path, 'model info')
    try:
        info = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ToolkitError(f"{path}: unreadable model info ({_shown(str(error), 120)})") from None
    _check_model_info(path, info)
    _check_fits_checkpoint(path, info, prefix)
    return prefix, info


def stored_names(prefix, info, names):
    """{name in the checkpoint: name} for the model variables `names` ('fc8/weights', ...): with
    model_info's `ema`, each one's moving average ('fc8/weights/ExponentialMovingAverage') where
    the checkpoint holds one (a layer that never trained has none: its weights are their average)."""
    if not info.get('ema'):
        return {name: name for name in names}
    try:
        saved = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError):
        saved = {}  # unreadable: the caller's shape check names the file
    averaged = {name: f'{name}/{EMA_SUFFIX}' for name in names}
    return {averaged[name] if averaged[name] in saved else name: name for name in names}


def read_class_names_file(path, num_classes=None):
    """Names from a classes.txt of "label name" lines (finetune.py's format), indexed by label: each
    of 0..num_classes-1 (None: as many as the file names) exactly once, as class_name_problem allows."""
    names, line_of = {}, {}
    for number, line in enumerate(read_small_text(path, 'class names file').splitlines(), 1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        label, _, name = line.strip().partition(' ')
        if not re.fullmatch('[0-9]+', label) or not name.strip():
            raise ToolkitError(f'{path}:{number}: expected "label name", got {_shown(line.strip())}')
        name = name.strip()
        limit = num_classes or MAX_CLASSES
        # Only a short number is converted: int() of thousands of digits is slow, then refused.
        value = int(label) if len(label.lstrip('0')) <= 12 else limit
        if value >= limit:
            raise ToolkitError(f'{path}:{number}: label {label[:24]} is outside 0..{limit - 1}')
        if value in names:
            raise ToolkitError(f'{path}:{number}: label {value} is named twice (also on line '
                               f'{line_of[value]})')
        problem = image_lists.class_name_problem(name)
        if problem:
            raise ToolkitError(f'{path}:{number}: class name {_shown(name)} {problem}')
        names[value], line_of[value] = name, number
    expected = num_classes if num_classes is not None else max(names, default=-1) + 1
    if len(names) != expected or not names:
        named = sorted(names)
        shown = str(named) if len(named) <= 10 else str(named[:10])[:-1] + ', ...]'
        raise ToolkitError(f"{path}: names labels {shown}, expected 0..{expected - 1} (one line "
                           'for each label)')
    return [names[label] for label in range(expected)]


def placeholder_class_names(num_classes):
    """The names of classes nobody named: 'class 0', 'class 1', ..."""
    return [f'class {label}' for label in range(num_classes)]


def class_names_or_placeholders(class_names, num_classes):
    """`class_names` as a list when there are any, else placeholder_class_names(num_classes)."""
    return list(class_names) if class_names else placeholder_class_names(num_classes)


def class_names_of(prefix, info):
    """The checkpoint's class names: model_info's, else classes.txt beside it, else None."""
    if info['class_names'] is not None:
        return list(info['class_names'])
    path = os.path.join(os.path.dirname(prefix), CLASS_NAMES_FILE)
    if os.path.isfile(path):
        return read_class_names_file(path, info['num_classes'])
    return None
