"""Weight files in the exact layout of the real `bvlc_alexnet.npy`, with random values.

The real file was written by Python 2's `np.save` on a dict: a `.npy` header declaring a 0-d object
array, then a protocol-2 pickle in which every array is `numpy.core.multiarray._reconstruct` +
`ndarray.__setstate__` with its raw bytes as a Python 2 `str` (opcodes SHORT_BINSTRING/BINSTRING).
Python 3's pickler cannot produce those opcodes, so this module writes the pickle by hand, opcode by
opcode, the way Python 2 did.
"""
import struct

import numpy as np

LAYER_SHAPES = {
    'conv1': (11, 11, 3, 96),
    'conv2': (5, 5, 48, 256),
    'conv3': (3, 3, 256, 384),
    'conv4': (3, 3, 192, 384),
    'conv5': (3, 3, 192, 256),
    'fc6': (9216, 4096),
    'fc7': (4096, 4096),
    'fc8': (4096, 1000),
}


def random_weights(num_classes=1000, seed=0, layers=None):
    """{layer: {'weights', 'biases'}} float32, He-scaled so activations neither vanish nor explode."""
    rng = np.random.default_rng(seed)
    result = {}
    for layer, shape in LAYER_SHAPES.items():
        if layers is not None and layer not in layers:
            continue
        if layer == 'fc8':
            shape = (4096, num_classes)
        fan_in = int(np.prod(shape[:-1]))
        weights = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        biases = rng.uniform(-0.1, 0.1, size=shape[-1:]).astype(np.float32)
        result[layer] = {'weights': weights, 'biases': biases}
    return result


# --- a protocol-2 pickler that writes Python 2 `str` objects -----------------------------------------

def _py2_str(data, bytes_as='py2str'):
    if isinstance(data, str):
        data = data.encode('latin1')
    if bytes_as == 'bytes':  # Python 3 bytes (protocol 3 opcodes), for the "bytes keys" variant
        if len(data) < 256:
            return b'C' + bytes([len(data)]) + data
        return b'B' + struct.pack('<I', len(data)) + data
    if len(data) < 256:
        return b'U' + bytes([len(data)]) + data
    return b'T' + struct.pack('<i', len(data)) + data


def _int(value):
    if 0 <= value < 256:
        return b'K' + bytes([value])
    if 0 <= value < 65536:
        return b'M' + struct.pack('<H', value)
    return b'J' + struct.pack('<i', value)


def _tuple(items):
    items = list(items)
    if not items:
        return b')'
    if len(items) <= 3:
        return b''.join(items) + {1: b'\x85', 2: b'\x86', 3: b'\x87'}[len(items)]
    return b'(' + b''.join(items) + b't'


_RECONSTRUCT = b'cnumpy.core.multiarray\n_reconstruct\n'
_NDARRAY = b'cnumpy\nndarray\n'
_DTYPE = b'cnumpy\ndtype\n'


def _dtype(code, byteorder, flags):
    # numpy.dtype(code, 0, 1) then __setstate__((3, byteorder, None, None, None, -1, -1, flags))
    return (_DTYPE + _tuple([_py2_str(code), _int(0), _int(1)]) + b'R'
            + b'(' + _int(3) + _py2_str(byteorder) + b'NNN' + b'J\xff\xff\xff\xff' * 2
            + _int(flags) + b'tb')


def _empty_array():
    return _RECONSTRUCT + _tuple([_NDARRAY, _tuple([_int(0)]), _py2_str('b')]) + b'R'


def _float32_array(array):
    array = np.ascontiguousarray(array, dtype='<f4')
    state = (b'(' + _int(1) + _tuple(_int(d) for d in array.shape) + _dtype('f4', '<', 0)
             + b'\x89' + _py2_str(array.tobytes()) + b't')
    return _empty_array() + state + b'b'


def _layer_value(arrays, layout, bytes_as):
    if layout == 'list':  # caffe-tensorflow: [weights, biases]
        return b']' + b'(' + _float32_array(arrays['weights']) + _float32_array(arrays['biases']) + b'e'
    return (b'}' + b'(' + _py2_str('weights', bytes_as) + _float32_array(arrays['weights'])
            + _py2_str('biases', bytes_as) + _float32_array(arrays['biases']) + b'u')


def py2_pickle_of_weights(layers, layout='list', bytes_as='py2str'):
    """The pickle stream Python 2's np.save wrote for `np.save(path, {layer: value})`."""
    items = b''.join(_py2_str(layer, bytes_as) + _layer_value(arrays, layout, bytes_as)
                     for layer, arrays in layers.items())
    the_dict = b'}' + b'(' + items + b'u'
    object_array_state = (b'(' + _int(1) + _tuple([]) + _dtype('O8', '|', 63) + b'\x89'
                          + b']' + the_dict + b'a' + b't')
    protocol = b'\x80\x03' if bytes_as == 'bytes' else b'\x80\x02'
    return protocol + _empty_array() + object_array_state + b'b' + b'.'


def npy_with_pickle(pickle_bytes):
    """A version-1.0 `.npy` file declaring a 0-d object array, followed by `pickle_bytes`."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    # Python 2's numpy padded the header so that the data starts at a multiple of 16 bytes.
    total = 10 + len(header) + 1
    header += ' ' * ((16 - total % 16) % 16) + '\n'
    return b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header.encode('latin1') + pickle_bytes


def write_bvlc_npy(path, layers, layout='list', bytes_as='py2str'):
    """Write `layers` as the real bvlc_alexnet.npy is written; returns `path`."""
    with open(path, 'wb') as stream:
        stream.write(npy_with_pickle(py2_pickle_of_weights(layers, layout, bytes_as)))
    return path
