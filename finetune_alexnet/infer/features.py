"""One layer's outputs for every input image, on disk: what `predict.py --features LAYER` writes.

An `.npz` (np.savez, no pickles) of `features` float32 [n, ...], `paths` str [n], `labels` int64 [n]
(only when a list file is among the inputs; NO_LABEL for the other images) and `layer`:
docs/serving.md#features-on-disk.
"""
import numpy as np

from alexnet import ARCHITECTURE
from finetune_alexnet import run_folder

BEFORE_RELU = '_preact'
# Every layer's output, and the layers with a ReLU once more before it.
FEATURE_LAYERS = tuple(layer.name for layer in ARCHITECTURE) + tuple(
    layer.name + BEFORE_RELU for layer in ARCHITECTURE if layer.kind in ('conv', 'fc') and layer.relu)
NO_LABEL = -1


def write_features(path, features, paths, labels, layer):
    """Write the features file of `features` [n, ...] of `paths` with `labels` (None: no label);
    returns its arrays."""
    content = {'features': features, 'paths': np.array(paths, dtype=str), 'layer': np.array(layer)}
    if any(label is not None for label in labels):
        content['labels'] = np.array([NO_LABEL if label is None else label for label in labels],
                                     np.int64)
    with run_folder.replaced_atomically(path) as partial, open(partial, 'wb') as stream:
        np.savez(stream, **content)
    return content
