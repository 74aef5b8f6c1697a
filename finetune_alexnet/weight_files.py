"""Reading and writing AlexNet weight files: the one place that knows their layouts.

`bvlc_alexnet.npy` holds a Python 2 pickle, which we unpickle with an allow-list of numpy's array
rebuilders (docs/weights.md, "Safe loading"); our own format (`save_weights`) is a pickle-free `.npz`
with keys ``conv1/weights``, ``conv1/biases``, ...: the graph's variable names.
"""
import codecs
import io
import os
import pickle
import zipfile

import numpy as np

from finetune_alexnet import run_folder
from finetune_alexnet.errors import ToolkitError

DEFAULT_WEIGHTS_PATH = 'bvlc_alexnet.npy'
WEIGHT_KINDS = ('weights', 'biases')
WHERE_TO_GET = ('run python get_weights.py to download it (README, "1. Get the pretrained weights"), '
                'or give the file you have with --weights_path')


def _latin1_encode(text, encoding='latin1', errors='strict'):
    """`_codecs.encode` as Python 3 protocol-2 pickles of bytes use it, limited to latin-1."""
    if encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, 'latin1', errors)


try:  # numpy 2 moved numpy.core to numpy._core; pickles name either
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

# Everything a pickled dict of numpy arrays may legitimately refer to, from Python 2 and 3 alike.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy.core.numeric', '_frombuffer'): _frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _frombuffer,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _latin1_encode,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, lists and dicts, and nothing else."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for '{module}.{name}'")
        return _ALLOWED_GLOBALS[(module, name)]


def _read_pickled_npy(path, raw):
    """The object stored in a `.npy` file with an object dtype, unpickled through the allow-list."""
    stream = io.BytesIO(raw)
    try:
        read_header = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(stream) == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(stream)
    except ValueError as error:
        raise ToolkitError(f"{path}: not a weights file (bad .npy header: {error})") from None
    if dtype != np.dtype(object):
        raise ToolkitError(f"{path}: not a weights file (it holds a plain {dtype} array of shape "
                           f"{shape}, not a dict of layers)")
    try:
        # latin1: Python 2 `str` objects (array bytes and dict keys) come back unchanged byte for byte.
        array = _ArraysOnlyUnpickler(stream, encoding='latin1').load()
    except pickle.UnpicklingError as error:
        if 'asks for' in str(error):
            raise ToolkitError(f"{path}: refused to load: {error}, which a weights file never needs "
                               "(only numpy arrays are unpickled)") from None
        raise ToolkitError(f"{path}: not a weights file (truncated or corrupt: {error})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, UnicodeError) as error:
        raise ToolkitError(f"{path}: not a weights file (truncated or corrupt: "
                           f"{type(error).__name__}: {error})") from None
    if isinstance(array, np.ndarray) and array.dtype == object and array.shape == ():
        return array.item()
    return array


def _read_npz(path, raw):
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            flat = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ToolkitError(f"{path}: not a weights file (truncated or corrupt .npz: {error})") from None
    layers = {}
    for key, array in flat.items():
        layer, _, kind = key.partition('/')
        if kind not in WEIGHT_KINDS:
            raise ToolkitError(f"{path}: not a weights file (unexpected entry {key!r}; "
                               "entries are named like 'conv1/weights')")
        layers.setdefault(layer, {})[kind] = array
    return layers


def _text(key):
    return key.decode('latin1') if isinstance(key, bytes) else key


def _as_layer_dict(path, layer, value):
    """`{'weights': array, 'biases': array}` from either file layout of one layer."""
    if isinstance(value, dict):
        value = {_text(kind): array for kind, array in value.items()}
        missing = [kind for kind in WEIGHT_KINDS if kind not in value]
        if missing:
            raise ToolkitError(f"{path}: layer {layer} has no {' or '.join(missing)} "
                               f"(found {sorted(value)})")
        pair = value['weights'], value['biases']
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = value  # caffe-tensorflow's order: [weights, biases]
    else:
        raise ToolkitError(f"{path}: layer {layer} should hold [weights, biases] or "
                           f"{{'weights', 'biases'}}, found {type(value).__name__}")
    arrays = {}
    for kind, array in zip(WEIGHT_KINDS, pair):
        if not isinstance(array, np.ndarray) or array.dtype.kind != 'f':
            raise ToolkitError(f"{path}: layer {layer} {kind} is not a float array")
        arrays[kind] = np.asarray(array, dtype=np.float32)
        finite = np.isfinite(arrays[kind])
        if not finite.all():
            bad = arrays[kind][~finite]
            counts = [f'{int(count)} {name}' for name, count in
                      (('NaN', np.isnan(bad).sum()), ('infinite', np.isinf(bad).sum())) if count]
            raise ToolkitError(f"{path}: layer {layer} {kind} holds {' and '.join(counts)} "
                               f"value{'s' if bad.size > 1 else ''} (of {arrays[kind].size}); the "
                               'file is damaged or came from a diverged run')
    return arrays


def load_weights(path):
    """Read a weights file into ``{layer: {'weights': float32 array, 'biases': float32 array}}``.

    Accepts the BVLC `.npy` (Python 2 or 3 pickle; dict-of-lists or dict-of-dicts; keys str or bytes)
    and the pickle-free `.npz` that `save_weights` writes. Raises ToolkitError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ToolkitError(f"{path}: weights file not found; {WHERE_TO_GET}")
    with open(path, 'rb') as stream:
        raw = stream.read()
    if raw.startswith(b'PK'):
        content = _read_npz(path, raw)
    elif raw.startswith(b'\x93NUMPY'):
        content = _read_pickled_npy(path, raw)
    else:
        raise ToolkitError(f"{path}: not a weights file (neither .npy nor .npz)")
    if not isinstance(content, dict) or not content:
        raise ToolkitError(f"{path}: not a weights file (expected a dict of layers, "
                           f"found {type(content).__name__})")
    return {_text(layer): _as_layer_dict(path, _text(layer), value)
            for layer, value in content.items()}


def class_count(layers):
    """fc8's width in a weights dict: 1000 for ImageNet, fewer for a fine-tuned model."""
    biases = layers.get('fc8', {}).get('biases')
    return int(biases.shape[0]) if biases is not None and biases.ndim == 1 and biases.size else 1000


def check_shapes(path, layers, expected):
    """ToolkitError naming the first layer that is missing or has another shape than `expected`
    (alexnet.variable_shapes)."""
    for name, kinds in expected.items():
        if name not in layers:
            raise ToolkitError(f'{path}: not AlexNet: layer {name} is missing (found '
                               f'{", ".join(sorted(layers))})')
        for kind, shape in kinds.items():
            found = tuple(layers[name][kind].shape)
            if found != tuple(shape):
                raise ToolkitError(f'{path}: not AlexNet: layer {name} {kind} has shape {found}, '
                                   f'expected {tuple(shape)}')


def save_weights(path, layers):
    """Write ``{layer: {'weights', 'biases'}}`` as a pickle-free `.npz` that `load_weights` reads,
    through `run_folder.replaced_atomically`: never half a file under the final name."""
    path = os.fspath(path)
    run_folder.check_output_file(path, 'the output')  # before 233 MB are written, not after
    flat = {f"{layer}/{kind}": np.asarray(arrays[kind], dtype=np.float32)
            for layer, arrays in layers.items() for kind in WEIGHT_KINDS}
    try:  # a full disk must not stay full of half a file: replaced_atomically removes it
        with run_folder.replaced_atomically(path) as partial, open(partial, 'wb') as stream:
            np.savez(stream, **flat)
    except OSError as error:
        raise ToolkitError(f"{path}: could not write the weights file ({error.strerror}); nothing "
                           "was left behind") from None
