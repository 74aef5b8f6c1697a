"""One layer's outputs for every input image, on disk: what `predict.py --features LAYER` writes.

The file is an `.npz` written by np.savez (plain arrays, no pickles):

    features  float32 [n, ...]: the layer's output, one row per image (pool5: [n, 6, 6, 256]).
              conv1-conv5, fc6 and fc7 are taken after their ReLU (no negative value; fc7 often
              half zeros), as the next layer sees them; `fc7_preact` and the like are the same
              layers before it (x W + b), what some tools call "fc7 features".
    paths     str [n]: the images, in input order (unreadable ones left out with --skip_bad_images)
    labels    int64 [n]: the list files' labels, -1 for images given directly (only when a list
              file is among the inputs)
    layer     str: the layer's name
"""
import numpy as np

from alexnet import ARCHITECTURE
from finetune_alexnet import run_folder

BEFORE_RELU = '_preact'
# Every layer's output, and the layers with a ReLU once more before it.
FEATURE_LAYERS = tuple(layer.name for layer in ARCHITECTURE) + tuple(
    layer.name + BEFORE_RELU for layer in ARCHITECTURE if layer.kind in ('conv', 'fc') and layer.relu)
NO_LABEL = -1


def feature_arrays(features, paths, labels, layer):
    """The file's arrays for `features` [n, ...] of `paths` with `labels` (None: no label)."""
    content = {'features': features, 'paths': np.array(paths, dtype=str), 'layer': np.array(layer)}
    if any(label is not None for label in labels):
        content['labels'] = np.array([NO_LABEL if label is None else label for label in labels],
                                     np.int64)
    return content


def write_features(path, features, paths, labels, layer):
    """Write the features file; returns its arrays."""
    content = feature_arrays(features, paths, labels, layer)
    with run_folder.replaced_atomically(path) as partial, open(partial, 'wb') as stream:
        np.savez(stream, **content)
    return content
