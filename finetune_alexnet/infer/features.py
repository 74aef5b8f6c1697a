"""One layer's outputs for every input image, on disk: what `predict.py --features LAYER` writes.

The file is an `.npz` written by np.savez (plain arrays, no pickles):

    features  float32 [n, ...]: the layer's output, one row per image (pool5: [n, 6, 6, 256])
    paths     str [n]: the images, in input order (unreadable ones left out with --skip_bad_images)
    labels    int64 [n]: the list files' labels, -1 for images given directly (only when a list
              file is among the inputs)
    layer     str: the layer's name
"""
import numpy as np

from alexnet import ARCHITECTURE

FEATURE_LAYERS = tuple(layer.name for layer in ARCHITECTURE)
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
    np.savez(path, **content)
    return content
