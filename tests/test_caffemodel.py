"""The .caffemodel converter: both Caffe formats, proved by a forward pass against an NCHW NumPy net.

The tests write `.caffemodel` files by hand in protobuf's wire format (caffemodel_fixture.py) from
random weights in Caffe's own layout. The converted `.npz` drives our TensorFlow AlexNet; the
reference below computes Caffe's AlexNet directly from the Caffe-layout arrays, in NCHW with fc6
reading pool5 flattened in C,H,W order, as Caffe does. Nothing in it comes from the converter.
"""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from numpy.lib.stride_tricks import sliding_window_view

import caffemodel_fixture
import get_weights
from alexnet import AlexNet
from finetune_alexnet import caffemodel, weight_files
from finetune_alexnet.errors import ToolkitError
from test_make_lists import time_limit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


# --- Caffe's AlexNet in NumPy, NCHW, from Caffe-layout weights ------------------------------------

def conv_nchw(x, weights, biases, stride, pad, groups):
    """x [C,H,W], weights [out, in/groups, kh, kw] (Caffe) -> [out, H', W']; no ReLU."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    num_out, group_in, kh, kw = weights.shape
    group_out = num_out // groups
    outputs = []
    for g in range(groups):
        windows = sliding_window_view(x[g * group_in:(g + 1) * group_in], (kh, kw),
                                      axis=(1, 2))[:, ::stride, ::stride]  # [c, H', W', kh, kw]
        kernel = weights[g * group_out:(g + 1) * group_out]
        outputs.append(np.einsum('chwij,ocij->ohw', windows, kernel, optimize=True))
    return np.concatenate(outputs, axis=0) + biases[:, None, None]


def lrn_nchw(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    squared = np.pad(x ** 2, ((size // 2, size // 2), (0, 0), (0, 0)))
    window = sum(squared[i:i + x.shape[0]] for i in range(size))
    return x / (k + alpha / size * window) ** beta


def pool_nchw(x, size=3, stride=2):
    return sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride].max(axis=(3, 4))


def caffe_forward(image_chw, weights):
    """fc8 logits of Caffe's AlexNet for one BGR, mean-subtracted image [3, 227, 227]."""
    w = {name: (np.float64(a), np.float64(b)) for name, (a, b) in weights.items()}
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = np.float64(image_chw)
    x = pool_nchw(lrn_nchw(relu(conv_nchw(x, *w['conv1'], stride=4, pad=0, groups=1))))
    x = pool_nchw(lrn_nchw(relu(conv_nchw(x, *w['conv2'], stride=1, pad=2, groups=2))))
    x = relu(conv_nchw(x, *w['conv3'], stride=1, pad=1, groups=1))
    x = relu(conv_nchw(x, *w['conv4'], stride=1, pad=1, groups=2))
    x = pool_nchw(relu(conv_nchw(x, *w['conv5'], stride=1, pad=1, groups=2)))
    x = x.reshape(-1)  # C,H,W: Caffe's flatten of pool5
    x = relu(w['fc6'][0] @ x + w['fc6'][1])
    x = relu(w['fc7'][0] @ x + w['fc7'][1])
    return w['fc8'][0] @ x + w['fc8'][1]


def photo_bgr():
    bgr = cv2.imread(os.path.join(REPO, 'images', 'chelsea.jpg'))
    assert bgr is not None
    return cv2.resize(bgr, (227, 227), interpolation=cv2.INTER_LINEAR).astype(np.float32) - MEAN_BGR


@pytest.fixture(scope='module')
def caffe_weights():
    return caffemodel_fixture.random_caffe_weights(seed=1)


@pytest.fixture(scope='module')
def caffe_logits(caffe_weights):
    return caffe_forward(photo_bgr().transpose(2, 0, 1), caffe_weights)


def our_logits(weights_path):
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 227, 227, 3])
        model = AlexNet(x, 1.0, 1000, skip_layer=[], weights_path=weights_path)
        with tf.Session() as session:
            model.load_initial_weights(session)
            return session.run(model.fc8, {x: photo_bgr()[None]})[0]


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['current', 'v1'])
def test_converted_caffemodel_computes_what_caffe_computes(tmp_path, caffe_weights, caffe_logits,
                                                           layout, capsys):
    model_file = caffemodel_fixture.write_caffemodel(str(tmp_path / 'bvlc_alexnet.caffemodel'),
                                                     caffe_weights, layout)
    output = str(tmp_path / 'converted.npz')
    assert get_weights.main(['--caffemodel', model_file, '--output', output]) == 0
    printed = capsys.readouterr().out
    assert 'all 8 layers load' in printed and 'fc8: 1000 classes' in printed

    got = our_logits(output)
    scale = np.abs(caffe_logits).max()
    assert scale > 1  # the random net does not collapse to zeros
    assert np.abs(got - caffe_logits).max() <= 1e-5 * scale
    assert np.argmax(got) == np.argmax(caffe_logits)

    # The file is the pickle-free .npz of weight_files, in our layout, channels still BGR.
    layers = weight_files.load_weights(output)
    np.testing.assert_array_equal(layers['conv1']['weights'][:, :, :, 7],
                                  caffe_weights['conv1'][0][7].transpose(1, 2, 0))
    np.testing.assert_array_equal(layers['fc8']['weights'], caffe_weights['fc8'][0].T)
    # fc6 row (h, w, c) is Caffe's column c*36 + h*6 + w.
    h, w, c = 2, 5, 130
    np.testing.assert_array_equal(layers['fc6']['weights'][(h * 6 + w) * 256 + c],
                                  caffe_weights['fc6'][0][:, c * 36 + h * 6 + w])


# --- small models for the error paths: consistent shapes, just not AlexNet's ---------------------

def tiny_caffe_weights(conv1_filters=4):
    """An AlexNet-shaped net in miniature (4 channels everywhere, pool5 2x2)."""
    rng = np.random.default_rng(3)
    shapes = {'conv1': (conv1_filters, 3, 11, 11), 'conv2': (4, 2, 5, 5), 'conv3': (4, 4, 3, 3),
              'conv4': (4, 2, 3, 3), 'conv5': (4, 2, 3, 3), 'fc6': (8, 16), 'fc7': (8, 8),
              'fc8': (3, 8)}
    return {name: (rng.standard_normal(shape).astype(np.float32),
                   rng.standard_normal(shape[0]).astype(np.float32)) for name, shape in shapes.items()}


@pytest.mark.parametrize('layout', ['current', 'v1'])
def test_both_formats_read_back_the_written_arrays(tmp_path, layout):
    weights = tiny_caffe_weights()
    path = caffemodel_fixture.write_caffemodel(str(tmp_path / 'tiny.caffemodel'), weights, layout)
    blobs = caffemodel.named_blobs(path, caffemodel.read_net(path))
    assert sorted(blobs) == sorted(weights)  # the parameter-free ReLU layers are skipped
    for name, (kernel, biases) in weights.items():
        np.testing.assert_array_equal(blobs[name][0].reshape(kernel.shape), kernel)
        np.testing.assert_array_equal(blobs[name][1].reshape(biases.shape), biases)
    if layout == 'v1':  # the 2014 format pads to 4-D: fc weights 1 x 1 x out x in
        assert blobs['fc7'][0].shape == (1, 1, 8, 8) and blobs['fc7'][1].shape == (1, 1, 1, 8)
    else:
        assert blobs['fc7'][0].shape == (8, 8) and blobs['fc7'][1].shape == (8,)


def test_fc6_rows_are_permuted_from_chw_to_hwc(tmp_path):
    weights = tiny_caffe_weights()
    path = caffemodel_fixture.write_caffemodel(str(tmp_path / 'tiny.caffemodel'), weights, 'v1')
    layers = caffemodel.read_alexnet(path)
    pool5_chw = np.random.default_rng(0).standard_normal((4, 2, 2)).astype(np.float32)
    caffe_fc6 = weights['fc6'][0] @ pool5_chw.reshape(-1)
    ours = pool5_chw.transpose(1, 2, 0).reshape(-1) @ layers['fc6']['weights']
    np.testing.assert_allclose(ours, caffe_fc6, rtol=1e-6, atol=1e-6)


def test_wrong_shape_names_the_layer_and_both_shapes(tmp_path):
    path = caffemodel_fixture.write_caffemodel(str(tmp_path / 'other.caffemodel'),
                                               tiny_caffe_weights(conv1_filters=64), 'current')
    layers = caffemodel.read_alexnet(path)
    with pytest.raises(ToolkitError) as error:
        get_weights.check_alexnet(path, layers)
    assert str(error.value) == (f'{path}: not AlexNet: layer conv1 weights has shape (11, 11, 3, 64), '
                                'expected (11, 11, 3, 96)')


def test_missing_layer_is_named(tmp_path):
    path = caffemodel_fixture.write_caffemodel(str(tmp_path / 'cut.caffemodel'),
                                               tiny_caffe_weights(), 'v1', drop=('fc8',))
    with pytest.raises(ToolkitError, match=r'cut.caffemodel: not AlexNet: layer fc8 is missing'):
        caffemodel.read_alexnet(path)


def test_truncated_file_and_text_file_are_refused(tmp_path):
    whole = caffemodel_fixture.write_caffemodel(str(tmp_path / 'whole.caffemodel'),
                                                tiny_caffe_weights(), 'current')
    data = open(whole, 'rb').read()
    truncated = tmp_path / 'truncated.caffemodel'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ToolkitError, match=r'truncated.caffemodel: truncated or not a \.caffemodel'):
        caffemodel.read_alexnet(str(truncated))
    prototxt = tmp_path / 'deploy.prototxt'
    prototxt.write_text('name: "AlexNet"\nlayer {\n  name: "data"\n}\n')
    with pytest.raises(ToolkitError, match=r'deploy.prototxt: a text file, not a binary'):
        caffemodel.read_alexnet(str(prototxt))


@pytest.mark.slow
def test_command_reports_a_truncated_caffemodel_in_one_line(tmp_path):
    whole = caffemodel_fixture.write_caffemodel(str(tmp_path / 'whole.caffemodel'),
                                                tiny_caffe_weights(), 'v1')
    data = open(whole, 'rb').read()
    truncated = tmp_path / 'bvlc_alexnet.caffemodel'
    truncated.write_bytes(data[:len(data) - 100])
    output = tmp_path / 'out.npz'
    result = subprocess.run([sys.executable, 'get_weights.py', '--caffemodel', str(truncated),
                             '--output', str(output)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {truncated}: truncated'), result.stderr
    assert not output.exists()


# --- hostile dimensions and sizes: one line naming the layer, never a traceback ----------------------

HOSTILE_BLOBS = [
    ('current', (96, 3, 11, -11), 0, 'conv1 blob 0 has shape (96, 3, 11, -11): a dimension of -11'),
    ('current', (0, 3, 11, 11), 0, 'conv1 blob 0 has shape (0, 3, 11, 11): a dimension of 0'),
    ('current', (-(2**63), 1), 0, f'a dimension of {-(2**63)}'),
    # NumPy's int64 product of these wraps around to 0, which the 0 values would have matched.
    ('current', (2**32, 2**32), 0, 'conv1 blob 0 holds 0 values but its shape (4294967296, 4294967296) '
                                   'needs about 10^19 (truncated or corrupt)'),
    ('current', (2**62, 2**62, 2**62), 4, 'needs about 10^55'),
    ('current', (4, 3), 10, 'conv1 blob 0 holds 10 values but its shape (4, 3) needs 12'),
    ('current', (4, 3), 13, 'conv1 blob 0 holds 13 values but its shape (4, 3) needs 12'),
    ('current', (1,) * 33, 1, 'conv1 blob 0 has 33 dimensions; a Caffe blob has 1 to 32'),
    ('current', (), 1, 'conv1 blob 0 has 0 dimensions'),
    ('v1', (1, 1, -1, 4), 4, 'conv1 blob 0 has shape (1, 1, -1, 4): a dimension of -1'),
    ('v1', None, 4, 'conv1 blob 0 has shape (0, 0, 0, 0): a dimension of 0'),
    ('v1', (2**31 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 1), 1, 'needs about 10^37'),
]


@pytest.mark.parametrize('layout, dims, count, message', HOSTILE_BLOBS,
                         ids=[f'{layout} {dims}'[:40] for layout, dims, _, _ in HOSTILE_BLOBS])
def test_hostile_blob_dimensions_are_one_line_naming_the_layer(tmp_path, capsys, layout, dims, count,
                                                                message):
    from finetune_alexnet import cli
    path = caffemodel_fixture.write_layers(
        str(tmp_path / 'hostile.caffemodel'),
        [('conv1', [caffemodel_fixture.blob_raw(layout, dims, count)])], layout)
    output = tmp_path / 'out.npz'
    assert cli.run(get_weights.main, ['--caffemodel', path, '--output', str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: {path}: layer conv1 blob 0 '), err
    assert message in err
    assert not output.exists()


def test_a_fifo_or_an_oversized_file_is_refused_unread(tmp_path):
    fifo = tmp_path / 'pipe.caffemodel'
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with time_limit(), pytest.raises(ToolkitError, match=r'pipe.caffemodel: not a \.caffemodel file '
                                                         r'\(a FIFO\)$'):
        caffemodel.read_net(str(fifo))
    huge = tmp_path / 'huge.caffemodel'
    with open(huge, 'wb') as stream:
        stream.truncate(2**31)  # sparse: no disk used, and the reader must not read it
    with pytest.raises(ToolkitError, match=r'huge.caffemodel: 2,147,483,648 bytes, more than protobuf'):
        caffemodel.read_net(str(huge))
