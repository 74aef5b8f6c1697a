"""`.caffemodel` files written by hand, byte by byte in protobuf's wire format, for the tests.

Nothing here uses the reader's message definitions (or protobuf at all): fields are encoded from the
numbers in Caffe's `src/caffe/proto/caffe.proto`, so a wrong field number in the reader fails the
tests instead of agreeing with itself.

    NetParameter      name = 1, layers = 2 (V1LayerParameter), layer = 100 (LayerParameter)
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  name = 4, type = 5 (enum LayerType), blobs = 6
    BlobProto         num = 1, channels = 2, height = 3, width = 4, data = 5 (packed float),
                      shape = 7 (BlobShape: dim = 1, packed int64)

Weights are in Caffe's layout: convolutions (out, in/group, kh, kw), inner products (out, in), fc6's
inputs in pool5's C,H,W order. The 2014 (V1) format stores every blob as 4-D num x channels x height
x width, so inner-product weights are 1 x 1 x out x in and biases 1 x 1 x 1 x out.
"""
import numpy as np

# Caffe layout of BVLC AlexNet's parameters: conv (out, in/group, kh, kw); fc (out, in).
CAFFE_SHAPES = {
    'conv1': (96, 3, 11, 11),
    'conv2': (256, 48, 5, 5),
    'conv3': (384, 256, 3, 3),
    'conv4': (384, 192, 3, 3),
    'conv5': (256, 192, 3, 3),
    'fc6': (4096, 9216),
    'fc7': (4096, 4096),
    'fc8': (1000, 4096),
}
V1_CONVOLUTION, V1_INNER_PRODUCT, V1_RELU = 4, 14, 18


def random_caffe_weights(seed=1, num_classes=1000):
    """{layer: (weights, biases)} in Caffe's layout, He-scaled so activations stay in range."""
    rng = np.random.default_rng(seed)
    result = {}
    for layer, shape in CAFFE_SHAPES.items():
        if layer == 'fc8':
            shape = (num_classes, 4096)
        fan_in = int(np.prod(shape[1:]))
        weights = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        biases = rng.uniform(-0.1, 0.1, size=shape[0]).astype(np.float32)
        result[layer] = (weights, biases)
    return result


def varint(value):
    """A base-128 varint; a negative value as protobuf writes an int32/int64: its 64-bit two's
    complement, ten bytes."""
    if value < 0:
        value &= 2**64 - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(field, wire_type):
    return varint(field << 3 | wire_type)


def delimited(field, payload):
    return tag(field, 2) + varint(len(payload)) + payload


def integer(field, value):
    return tag(field, 0) + varint(value)


def text(field, value):
    return delimited(field, value.encode())


def blob_v1(array):
    """A BlobProto of the 2014 format: 4-D num/channels/height/width, leading dimensions padded with 1."""
    shape = (1,) * (4 - array.ndim) + tuple(array.shape)
    header = b''.join(integer(number, size) for number, size in zip((1, 2, 3, 4), shape))
    return header + delimited(5, np.ascontiguousarray(array, '<f4').tobytes())


def blob_current(array):
    """A BlobProto of the current format: a BlobShape with the array's own dimensions."""
    dims = delimited(1, b''.join(varint(size) for size in array.shape))
    return delimited(7, dims) + delimited(5, np.ascontiguousarray(array, '<f4').tobytes())


def blob_raw(layout, dims, count):
    """A BlobProto claiming `dims` (any integers, negative or huge included) and holding `count`
    float values: the hostile blobs a reader must refuse. 'current' writes a BlobShape (`dims` may
    have any length, even none); 'v1' the four int32 fields num/channels/height/width (`dims` None:
    none of them written)."""
    if layout == 'current':
        header = delimited(7, delimited(1, b''.join(varint(size) for size in dims)) if dims else b'')
    else:
        header = b''.join(integer(number, size) for number, size in zip((1, 2, 3, 4), dims or ()))
    return header + delimited(5, np.zeros(count, '<f4').tobytes())


def write_layers(path, layers, layout='current'):
    """A .caffemodel of `layers` [(name, [BlobProto bytes])], with Convolution as every type."""
    field, kind, name_field, type_field, blob_field = {
        'current': (100, 'Convolution', 1, 2, 7), 'v1': (2, V1_CONVOLUTION, 4, 5, 6)}[layout]
    with open(path, 'wb') as stream:
        stream.write(text(1, 'Hostile'))
        for name, blobs in layers:
            kind_bytes = text(type_field, kind) if layout == 'current' else integer(type_field, kind)
            layer = text(name_field, name) + kind_bytes + b''.join(delimited(blob_field, blob)
                                                                  for blob in blobs)
            stream.write(delimited(field, layer))
    return path


def layer_v1(name, layer_type, arrays):
    return (text(4, name) + integer(5, layer_type)
            + b''.join(delimited(6, blob_v1(array)) for array in arrays))


def layer_current(name, layer_type, arrays):
    return (text(1, name) + text(2, layer_type)
            + b''.join(delimited(7, blob_current(array)) for array in arrays))


def write_caffemodel(path, weights, layout='current', extra_layers=True, drop=()):
    """Write `weights` ({layer: (weights, biases)}, Caffe layout) as a .caffemodel; returns `path`.

    `layout` is 'current' (NetParameter.layer, LayerParameter) or 'v1' (NetParameter.layers,
    V1LayerParameter). Parameter-free layers (ReLU) are interleaved as in the real file; layers in
    `drop` are left out.
    """
    field, make, conv, fc, relu = {
        'current': (100, layer_current, 'Convolution', 'InnerProduct', 'ReLU'),
        'v1': (2, layer_v1, V1_CONVOLUTION, V1_INNER_PRODUCT, V1_RELU),
    }[layout]
    with open(path, 'wb') as stream:
        stream.write(text(1, 'CaffeNet'))
        for name, arrays in weights.items():
            if name in drop:
                continue
            kind = conv if name.startswith('conv') else fc
            stream.write(delimited(field, make(name, kind, arrays)))
            if extra_layers:
                stream.write(delimited(field, make(f'relu{name[-1]}', relu, [])))
    return path
