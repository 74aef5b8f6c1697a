"""An independent NumPy AlexNet, written from Caffe's layer definitions (bvlc_alexnet/deploy.prototxt).

Nothing here comes from alexnet.py: padding, grouping, LRN and pooling are spelled out as Caffe
computes them, in float64, so the TensorFlow graph can be checked against it.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv(x, weights, biases, stride, pad, groups):
    """Caffe Convolution: x [H,W,C], weights [kh,kw,C/groups,N] -> [H',W',N], ReLU not included."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw, group_in, num_out = weights.shape
    group_out = num_out // groups
    outputs = []
    for g in range(groups):
        part = x[:, :, g * group_in:(g + 1) * group_in]
        windows = sliding_window_view(part, (kh, kw), axis=(0, 1))[::stride, ::stride]
        # windows: [H', W', C, kh, kw]
        kernel = weights[:, :, :, g * group_out:(g + 1) * group_out]
        outputs.append(np.einsum('hwcij,ijcn->hwn', windows, kernel, optimize=True))
    return np.concatenate(outputs, axis=2) + biases


def relu(x):
    return np.maximum(x, 0)


def lrn_caffe(x, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe LRN across channels: x_c / (k + alpha/n * sum_{c' in window} x_c'^2)^beta."""
    squared = np.pad(x ** 2, ((0, 0), (0, 0), (local_size // 2, local_size // 2)))
    window_sum = sum(squared[:, :, i:i + x.shape[2]] for i in range(local_size))
    return x / (k + alpha / local_size * window_sum) ** beta


def max_pool(x, size=3, stride=2):
    """Caffe MAX pooling with ceil rounding; for AlexNet's sizes the windows fit exactly."""
    out_h = int(np.ceil((x.shape[0] - size) / stride)) + 1
    out_w = int(np.ceil((x.shape[1] - size) / stride)) + 1
    assert (out_h - 1) * stride + size <= x.shape[0], 'windows must fit for this reference'
    windows = sliding_window_view(x, (size, size), axis=(0, 1))[::stride, ::stride]
    return windows[:out_h, :out_w].max(axis=(3, 4))


def forward(image, layers):
    """Logits (fc8) and the intermediate layers for one image [227,227,3]; dropout is off (test time)."""
    w = {name: (np.float64(v['weights']), np.float64(v['biases'])) for name, v in layers.items()}
    out = {}
    x = np.float64(image)
    out['conv1'] = x = relu(conv(x, *w['conv1'], stride=4, pad=0, groups=1))
    out['norm1'] = x = lrn_caffe(x)
    out['pool1'] = x = max_pool(x)
    out['conv2'] = x = relu(conv(x, *w['conv2'], stride=1, pad=2, groups=2))
    out['norm2'] = x = lrn_caffe(x)
    out['pool2'] = x = max_pool(x)
    out['conv3'] = x = relu(conv(x, *w['conv3'], stride=1, pad=1, groups=1))
    out['conv4'] = x = relu(conv(x, *w['conv4'], stride=1, pad=1, groups=2))
    out['conv5'] = x = relu(conv(x, *w['conv5'], stride=1, pad=1, groups=2))
    out['pool5'] = x = max_pool(x)
    x = x.reshape(-1)  # caffe-tensorflow transposed fc6's rows into this (h, w, c) order
    out['fc6'] = x = relu(x @ w['fc6'][0] + w['fc6'][1])
    out['fc7'] = x = relu(x @ w['fc7'][0] + w['fc7'][1])
    out['fc8'] = x @ w['fc8'][0] + w['fc8'][1]
    return out
