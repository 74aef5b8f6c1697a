"""What export.py reads and where it may write: a checkpoint's or weights file's layers, shapes
checked, and the output checks that refuse to replace anything export.py did not write (manifests)."""
import os

import tensorflow.compat.v1 as tf

from alexnet import TRAINABLE_LAYERS, variable_shapes
from finetune_alexnet import checkpoints
from finetune_alexnet import model_info
from finetune_alexnet import run_folder
from finetune_alexnet import weight_files
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.infer import manifests
from finetune_alexnet.infer import serving


def read_checkpoint_layers(checkpoint):
    """(prefix, info, {layer: {'weights', 'biases'}}) of a fine-tuned checkpoint, shapes checked."""
    prefix, info = model_info.read_model_info(checkpoint)
    shapes = {f'{layer}/{kind}': shape for layer, kinds in variable_shapes(info['num_classes']).items()
              for kind, shape in kinds.items()}
    checkpoints.check_fits(prefix, shapes, 'an AlexNet of this model_info.json',
                           'is it a checkpoint written by finetune.py?')
    reader = tf.train.load_checkpoint(prefix)
    # A run with --ema_decay: the weights' moving averages, which model_info.json says it kept.
    stored = {name: stored for stored, name in model_info.stored_names(prefix, info, shapes).items()}
    layers = {layer: {kind: reader.get_tensor(stored[f'{layer}/{kind}'])
                      for kind in weight_files.WEIGHT_KINDS} for layer in TRAINABLE_LAYERS}
    return prefix, info, layers


def read_weights_file(path):
    """{layer: {'weights', 'biases'}} of a weights file holding every layer, shapes checked."""
    layers = weight_files.load_weights(path)
    weight_files.check_shapes(path, layers, variable_shapes(weight_files.class_count(layers)))
    return layers


def check_output(output, export_format, overwrite):
    """Refuse, before any work, an output that would clobber something: anything there without
    `overwrite`; with it, anything that the manifest of an earlier export there does not list
    unchanged (manifests.py)."""
    if export_format == 'savedmodel':
        if os.path.lexists(output) and not os.path.isdir(output):
            raise ToolkitError(f"{output}: is a file; a SavedModel is a folder (e.g. models/name/1)")
        folder = os.path.realpath(output)
        if os.path.commonpath([os.path.realpath(os.getcwd()), folder]) == folder:
            raise ToolkitError(f"{output}: is the current folder or holds it; run export.py from "
                               "elsewhere, or choose another --output")
        if os.path.isdir(output) and os.listdir(output):
            if not overwrite:
                raise ToolkitError(f"{output}: folder exists and is not empty (pass --overwrite to "
                                   "replace it, or give a new version number)")
            manifests.check_folder(output)
    elif os.path.isdir(output):
        raise ToolkitError(f'{output}: --output (--format {export_format} writes a file) is a folder; '
                           'give a file name')
    # Written beside it and renamed into place (a missing folder is created): its parent folder is
    # what must be writable.
    run_folder.check_output_folder(os.path.dirname(os.path.abspath(output)),
                                   f'the folder of --output {output}')
    if export_format == 'savedmodel':
        return
    if os.path.exists(output) and not os.access(output, os.W_OK):
        raise ToolkitError(f'{output}: --output is not writable')
    targets = [output, *(serving.side_files(output) if export_format in MODEL_FILE_FORMATS else []),
               manifests.file_manifest(output)]
    existing = [path for path in targets if os.path.lexists(path)]
    if existing and not overwrite:
        raise ToolkitError(f"{existing[0]}: exists (pass --overwrite to replace it)")
    manifests.check_files(manifests.file_manifest(output), targets)


# The formats written as one model file with its labels and model_info.json beside it.
MODEL_FILE_FORMATS = {'tflite': 'a TFLite model', 'onnx': 'an ONNX model'}
