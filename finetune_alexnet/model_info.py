"""What a fine-tuned checkpoint carries besides its weights: `model_info.json`.

finetune.py writes it beside its checkpoints; predict.py and export.py read it, so a
fine-tuned model needs no other flag: its class count, class names and pre-processing come with it.

    {"format": 1, "num_classes": 2, "class_names": ["cat", "dog"] or null,
     "preprocessing": {"input_size": 227, "resize_size": 256, "mean_rgb": [123.68, 116.779, 103.939],
                       "channel_order": "BGR", "center_crop": true}}

`center_crop` is true when the model was trained with augmentation (random crops of a 256 resize):
inference then takes the centre crop of the 256 resize, as validation did during training. The other
pre-processing fields are written from, and checked against, the one definition in preprocessing.py:
a checkpoint made with different pre-processing is refused rather than fed inputs it never saw.

A checkpoint is named by its prefix (`runs/x/best.ckpt`, `runs/x/model_epoch3.ckpt`) or by its folder:
then `best.ckpt` if there is one, else the latest checkpoint in it.
"""
import glob
import json
import os
import re

import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import checkpoints
from finetune_alexnet import preprocessing
from finetune_alexnet.errors import ToolkitError

MODEL_INFO = 'model_info.json'
CLASS_NAMES_FILE = 'classes.txt'
FORMAT = 1


def _preprocessing_fields(center_crop):
    return {'input_size': preprocessing.INPUT_SIZE, 'resize_size': preprocessing.RESIZE_SIZE,
            'mean_rgb': [float(value) for value in preprocessing.IMAGENET_MEAN_RGB],
            'channel_order': 'BGR', 'center_crop': bool(center_crop)}


def write_model_info(ckpt_dir, num_classes, class_names, center_crop):
    """Write `<ckpt_dir>/model_info.json`; returns its path. Replaced atomically, never half-written."""
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if len(class_names) != num_classes:
            raise ToolkitError(f"{len(class_names)} class names for {num_classes} classes")
    content = {'format': FORMAT, 'num_classes': int(num_classes), 'class_names': class_names,
               'preprocessing': _preprocessing_fields(center_crop)}
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, MODEL_INFO)
    checkpoints.write_json_atomically(path, content)
    return path


def _epoch_number(index_path):
    match = re.search(r'model_epoch(\d+)\.ckpt\.index$', index_path)
    return int(match.group(1)) if match else -1


def resolve_checkpoint(checkpoint):
    """The checkpoint prefix that `checkpoint` (a prefix, one of its files, or a folder) names."""
    checkpoint = os.fspath(checkpoint)
    if os.path.isdir(checkpoint):
        if os.path.exists(os.path.join(checkpoint, checkpoints.BEST + '.index')):
            return os.path.join(checkpoint, checkpoints.BEST)
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest:
            return latest
        # No `checkpoint` state file (it is optional): the highest-numbered epoch is the latest.
        epochs = sorted(glob.glob(os.path.join(checkpoint, 'model_epoch*.ckpt.index')), key=_epoch_number)
        if epochs:
            return epochs[-1][:-len('.index')]
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
        raise ToolkitError(f"{path}: 'preprocessing' should be an object, found {found!r}")
    if not isinstance(found.get('center_crop'), bool):
        raise ToolkitError(f"{path}: preprocessing.center_crop should be true or false, "
                           f"found {found.get('center_crop')!r}")
    expected = _preprocessing_fields(found['center_crop'])
    for key, value in expected.items():
        if key not in found:
            raise ToolkitError(f"{path}: preprocessing.{key} is missing")
        same = (np.allclose(found[key], value) if key == 'mean_rgb' and isinstance(found[key], list)
                and len(found[key]) == 3 else found[key] == value)
        if not same:
            raise ToolkitError(f"{path}: the model was trained with preprocessing.{key} = {found[key]!r}, "
                               f"but this toolkit's pre-processing uses {value!r}")


def _check_model_info(path, info):
    if not isinstance(info, dict) or info.get('format') != FORMAT:
        found = info.get('format') if isinstance(info, dict) else type(info).__name__
        raise ToolkitError(f"{path}: unsupported model info (format {found!r}, expected {FORMAT})")
    num_classes = info.get('num_classes')
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ToolkitError(f"{path}: num_classes should be a positive integer, found {num_classes!r}")
    names = info.get('class_names')
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ToolkitError(f"{path}: class_names should be a list of strings or null")
        if len(names) != num_classes:
            raise ToolkitError(f"{path}: {len(names)} class_names for num_classes {num_classes}")
    _check_preprocessing(path, info.get('preprocessing'))


def read_model_info(checkpoint):
    """(checkpoint prefix, the checked content of model_info.json beside it) for `checkpoint`.

    The checkpoint is verified first (every tensor against its recorded size and checksum).
    """
    prefix = resolve_checkpoint(checkpoint)
    checkpoints.check_intact(prefix)  # a damaged file fails here in one line, naming it
    path = os.path.join(os.path.dirname(prefix), MODEL_INFO)
    if not os.path.isfile(path):
        raise ToolkitError(f"{path}: not found beside checkpoint {prefix}; finetune.py writes it when "
                           "training starts, and prediction needs its class count and pre-processing")
    try:
        with open(path, encoding='utf-8') as stream:
            info = json.load(stream)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ToolkitError(f"{path}: unreadable model info ({error})") from None
    _check_model_info(path, info)
    return prefix, info


def read_class_names_file(path, num_classes):
    """Names from a classes.txt of "label name" lines (finetune.py's format), indexed by label."""
    names = {}
    try:
        with open(path, encoding='utf-8') as stream:
            lines = stream.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ToolkitError(f"{path}: unreadable class names file ({error})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        label, _, name = line.strip().partition(' ')
        if not label.isdigit() or not name.strip():
            raise ToolkitError(f'{path}:{number}: expected "label name", got {line.strip()!r}')
        names[int(label)] = name.strip()
    if sorted(names) != list(range(num_classes)):
        raise ToolkitError(f"{path}: names labels {sorted(names)}, expected 0..{num_classes - 1}")
    return [names[label] for label in range(num_classes)]


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
