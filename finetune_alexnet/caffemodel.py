"""Read a Caffe `.caffemodel` (a binary `NetParameter` protobuf) and convert AlexNet's weights.

No Caffe and no generated `caffe_pb2` module: the few fields read are declared at run time with
`google.protobuf` (which TensorFlow installs) in `_MESSAGES`, with the field numbers of Caffe's
`src/caffe/proto/caffe.proto`; protobuf skips the rest. `caffe_to_alexnet` moves Caffe's NCHW layout
to ours (NHWC, as caffe-tensorflow's `bvlc_alexnet.npy`): docs/weights.md says how. Nothing in the
file is trusted: every blob's shape is checked against Caffe's limits and the values it holds.
"""
import functools
import math
import os

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from finetune_alexnet import image_lists
from finetune_alexnet.errors import ToolkitError

MAX_BYTES = 2**31 - 1  # protobuf's limit on one message; BVLC's AlexNet is 233 MB
MAX_AXES = 32  # Caffe's kMaxBlobAxes
CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
FC_LAYERS = ('fc6', 'fc7', 'fc8')
ALEXNET_LAYERS = CONV_LAYERS + FC_LAYERS

_FIELD = descriptor_pb2.FieldDescriptorProto
_PACKAGE = 'finetune_alexnet_caffe'
_MESSAGES = {
    'BlobShape': [('dim', 1, _FIELD.TYPE_INT64, True, None)],
    'BlobProto': [('num', 1, _FIELD.TYPE_INT32, False, None),
                  ('channels', 2, _FIELD.TYPE_INT32, False, None),
                  ('height', 3, _FIELD.TYPE_INT32, False, None),
                  ('width', 4, _FIELD.TYPE_INT32, False, None),
                  ('data', 5, _FIELD.TYPE_FLOAT, True, None),
                  ('shape', 7, _FIELD.TYPE_MESSAGE, False, 'BlobShape'),
                  ('double_data', 8, _FIELD.TYPE_DOUBLE, True, None)],
    'LayerParameter': [('name', 1, _FIELD.TYPE_STRING, False, None),
                       ('type', 2, _FIELD.TYPE_STRING, False, None),
                       ('blobs', 7, _FIELD.TYPE_MESSAGE, True, 'BlobProto')],
    'V1LayerParameter': [('name', 4, _FIELD.TYPE_STRING, False, None),
                         ('type', 5, _FIELD.TYPE_INT32, False, None),
                         ('blobs', 6, _FIELD.TYPE_MESSAGE, True, 'BlobProto')],
    'NetParameter': [('name', 1, _FIELD.TYPE_STRING, False, None),
                     ('layers', 2, _FIELD.TYPE_MESSAGE, True, 'V1LayerParameter'),
                     ('layer', 100, _FIELD.TYPE_MESSAGE, True, 'LayerParameter')],
}


@functools.cache
def message_classes():
    """{'NetParameter': class, ...}, built once from the table above in a private descriptor pool."""
    file_proto = descriptor_pb2.FileDescriptorProto(name='finetune_alexnet_caffe.proto',
                                                    package=_PACKAGE, syntax='proto2')
    for message_name, fields in _MESSAGES.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, field_type, repeated, type_name in fields:
            field = message.field.add(name=name, number=number, type=field_type,
                                      label=_FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL)
            if type_name:
                field.type_name = f'.{_PACKAGE}.{type_name}'
            elif repeated:
                field.options.packed = True  # as caffe.proto declares them; unpacked also parses
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f'{_PACKAGE}.{name}'))
            for name in _MESSAGES}


def read_net(path):
    """The parsed NetParameter of a `.caffemodel`; ToolkitError if it is missing or not one."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise ToolkitError(f'{path}: no such .caffemodel file')
    kind = image_lists.not_a_regular_file(path)  # a FIFO would wait for a writer forever
    if kind:
        raise ToolkitError(f'{path}: not a .caffemodel file ({kind})')
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise ToolkitError(f'{path}: {size:,} bytes, more than protobuf can parse (2 GiB): not a '
                           '.caffemodel')
    with open(path, 'rb') as stream:
        raw = stream.read(MAX_BYTES + 1)
    if not raw:
        raise ToolkitError(f'{path}: empty file, not a .caffemodel')
    start = raw[:64].lstrip()
    if start[:5] in (b'name:', b'layer', b'input') or start[:1] in (b'#', b'<'):
        raise ToolkitError(f'{path}: a text file, not a binary .caffemodel (a deploy.prototxt or an '
                           'HTML page?)')
    net = message_classes()['NetParameter']()
    try:
        net.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ToolkitError(f'{path}: truncated or not a .caffemodel ({len(raw):,} bytes; protobuf '
                           f'says: {error})') from None
    return net


def _shown(shape):
    return str(shape) if len(shape) <= 8 else str(shape[:8])[:-1] + ', ...)'


def _blob_shape(path, layer, index, blob):
    """The blob's shape, every dimension at least 1; ToolkitError naming the layer otherwise."""
    if blob.HasField('shape'):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    where = f'{path}: layer {layer} blob {index}'
    if not 1 <= len(shape) <= MAX_AXES:
        raise ToolkitError(f'{where} has {len(shape)} dimensions; a Caffe blob has 1 to {MAX_AXES} '
                           '(corrupt?)')
    if min(shape) < 1:
        raise ToolkitError(f'{where} has shape {_shown(shape)}: a dimension of {min(shape)} (corrupt?)')
    return shape


def blob_array(path, layer, index, blob):
    """A BlobProto as a float32 array of its own shape (leading 1s of the 4-D format kept)."""
    shape = _blob_shape(path, layer, index, blob)
    count = len(blob.data) or len(blob.double_data)
    needed = math.prod(shape)  # exact: NumPy's int64 product wraps around silently
    if count != needed:
        needs = f'{needed:,}' if needed < 10**15 else f'about 10^{len(str(needed)) - 1}'
        raise ToolkitError(f'{path}: layer {layer} blob {index} holds {count:,} values but its '
                           f'shape {_shown(shape)} needs {needs} (truncated or corrupt)')
    if len(blob.data):
        values = np.asarray(blob.data, dtype=np.float32)
    else:
        values = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    return values.reshape(shape)


def named_blobs(path, net):
    """{layer name: [arrays]} for every layer with blobs, from either format (first one wins)."""
    found = {}
    for layer in list(net.layer) + list(net.layers):
        if layer.name in found or not len(layer.blobs):
            continue
        found[layer.name] = [blob_array(path, layer.name, index, blob)
                             for index, blob in enumerate(layer.blobs)]
    return found


def _squeeze_leading(path, layer, what, array, rank):
    """Drop the leading 1s the 2014 format pads shapes with, down to `rank` dimensions."""
    shape = array.shape
    while len(shape) > rank and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != rank:
        raise ToolkitError(f'{path}: layer {layer} {what} has shape {array.shape}; AlexNet needs a '
                           f'{rank}-D array there (is this AlexNet?)')
    return array.reshape(shape)


def _layer_pair(path, blobs, name, present):
    if name not in blobs:
        others = ', '.join(present) or 'none'
        raise ToolkitError(f'{path}: not AlexNet: layer {name} is missing (layers with weights: '
                           f'{others}; a truncated download loses the last layers)')
    arrays = blobs.pop(name)  # popped: the converted copy replaces it, so memory stays at one model
    if len(arrays) != 2:
        raise ToolkitError(f'{path}: layer {name} has {len(arrays)} blobs; AlexNet has weights and '
                           'biases (2)')
    return arrays


def caffe_to_alexnet(path, blobs):
    """{layer: {'weights', 'biases'}} in our layout from Caffe's arrays {layer: [weights, biases]}."""
    layers = {}
    present = sorted(blobs)
    for name in CONV_LAYERS:
        weights, biases = _layer_pair(path, blobs, name, present)
        weights = _squeeze_leading(path, name, 'weights', weights, 4)
        layers[name] = {'weights': np.ascontiguousarray(weights.transpose(2, 3, 1, 0)),
                        'biases': _squeeze_leading(path, name, 'biases', biases, 1)}
    pool5_channels = layers['conv5']['weights'].shape[3]
    for name in FC_LAYERS:
        weights, biases = _layer_pair(path, blobs, name, present)
        weights = _squeeze_leading(path, name, 'weights', weights, 2)
        outputs, inputs = weights.shape
        if name == 'fc6':
            # Caffe's row index is c*H*W + h*W + w; ours is (h*W + w)*C + c.
            side = int(round((inputs / pool5_channels) ** 0.5))
            if side * side * pool5_channels != inputs:
                raise ToolkitError(f'{path}: layer fc6 weights have {inputs} inputs, not a square '
                                   f'pool5 of {pool5_channels} channels (is this AlexNet?)')
            weights = weights.reshape(outputs, pool5_channels, side, side).transpose(2, 3, 1, 0)
            weights = weights.reshape(inputs, outputs)
        else:
            weights = weights.T
        layers[name] = {'weights': np.ascontiguousarray(weights),
                        'biases': _squeeze_leading(path, name, 'biases', biases, 1)}
    return layers


def read_alexnet(path):
    """AlexNet's eight layers from a `.caffemodel` (either format), in our layout, float32."""
    net = read_net(path)
    if not len(net.layer) and not len(net.layers):
        raise ToolkitError(f'{path}: no layers: not a .caffemodel (or truncated before its first layer)')
    blobs = named_blobs(path, net)
    del net  # the parsed message holds a second copy of every weight
    return caffe_to_alexnet(path, blobs)
