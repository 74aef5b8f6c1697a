"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as the BVLC Caffe reference model defines it.

`AlexNet` only builds the graph; `load_initial_weights` copies `bvlc_alexnet.npy` into it, leaving the
layers the user retrains at their fresh initial values. Variable names (`conv1/weights`, ...) are the
keys of the weights file. `python alexnet.py` prints the layer table (ARCHITECTURE's feature-map
sizes, parameters and multiply-adds per layer; docs/model.md).
"""
import collections
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from finetune_alexnet import weight_files  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402
from finetune_alexnet.preprocessing import INPUT_SIZE  # noqa: F401 (defined once; users import it here)

TRAINABLE_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
CONV_LAYERS = TRAINABLE_LAYERS[:5]

# One row per operation, in order. kernel/stride in pixels; depth = output channels (None: num_classes).
Layer = collections.namedtuple('Layer', 'name kind kernel stride depth groups padding relu',
                               defaults=(None, None, None, 1, 'SAME', True))
ARCHITECTURE = (
    Layer('conv1', 'conv', kernel=11, stride=4, depth=96, padding='VALID'),
    Layer('norm1', 'lrn'),
    Layer('pool1', 'pool', kernel=3, stride=2, padding='VALID'),
    Layer('conv2', 'conv', kernel=5, stride=1, depth=256, groups=2),
    Layer('norm2', 'lrn'),
    Layer('pool2', 'pool', kernel=3, stride=2, padding='VALID'),
    Layer('conv3', 'conv', kernel=3, stride=1, depth=384),
    Layer('conv4', 'conv', kernel=3, stride=1, depth=384, groups=2),
    Layer('conv5', 'conv', kernel=3, stride=1, depth=256, groups=2),
    Layer('pool5', 'pool', kernel=3, stride=2, padding='VALID'),
    Layer('flattened', 'flatten'),
    Layer('fc6', 'fc', depth=4096),
    Layer('dropout6', 'dropout'),
    Layer('fc7', 'fc', depth=4096),
    Layer('dropout7', 'dropout'),
    Layer('fc8', 'fc', depth=None, relu=False),
)

# Caffe's LRN: x / (k + alpha/n * sum over n=5 channels of x^2)^beta, with alpha=1e-4, beta=0.75, k=1.
# TensorFlow sums over 2*depth_radius+1 channels and does not divide alpha by n, hence 2 and 1e-4/5.
LRN_DEPTH_RADIUS = 2
LRN_ALPHA = 2e-05
LRN_BETA = 0.75
LRN_BIAS = 1.0
LRN_SQRT_ALPHA = np.float32(np.sqrt(LRN_ALPHA))


def local_response_normalization(x, name=None):
    """AlexNet's LRN over the channels of NHWC `x`, as tf.nn.local_response_normalization computes it,
    but faster (bench/RESULTS.md): the sums of squares over each 2r+1 neighbouring channels are x^2
    times a band matrix of ones (one matmul), and d^-0.75 = rsqrt(d) * sqrt(rsqrt(d)); the backward
    pass is TensorFlow's own LRNGrad kernel."""
    channels = int(x.shape[-1])
    index = np.arange(channels)
    band = (np.abs(index[:, None] - index[None, :]) <= LRN_DEPTH_RADIUS).astype(np.float32)

    @tf.custom_gradient
    def normalize(x):
        # For TFLite's int8 conversion (export.py --quantize int8): x * x, as TFLite has an int8 MUL
        # but no int8 SQUARE; and (x * r) * sqrt(r), as with x * (r * sqrt(r)) the int8 pool1 after
        # it is off by some 18% (RMS) instead of 1%.
        # Scaled before it is squared, (x * sqrt(alpha))^2, so the float16 rewrite (which puts the
        # MatMul in float16) cannot overflow below activations of ~25,000 (docs/training.md); in
        # float32 it is the same arithmetic to a rounding.
        scaled = x * LRN_SQRT_ALPHA
        squares = tf.reshape(scaled * scaled, [-1, channels])
        sums = tf.reshape(tf.matmul(squares, band), tf.shape(x))
        inverse_root = tf.math.rsqrt(LRN_BIAS + sums)  # beta = 0.75 = 1/2 + 1/4
        normalized = (x * inverse_root) * tf.sqrt(inverse_root)

        def gradient(upstream):
            return tf.raw_ops.LRNGrad(input_grads=upstream, input_image=x, output_image=normalized,
                                      depth_radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA,
                                      beta=LRN_BETA)
        return normalized, gradient

    with tf.name_scope(name or 'lrn'):
        return tf.identity(normalize(x), name='output')


class AlexNet:
    """Builds AlexNet on `x` [batch, 227, 227, 3] (BGR, ImageNet mean subtracted).

    Args:
      x: input images tensor; the batch size may be None.
      keep_prob: scalar tensor (or float), probability of keeping a unit in dropout6/dropout7.
      num_classes: width of fc8.
      skip_layer: layers that `load_initial_weights` leaves at their fresh initial values.
      weights_path: the weights file; None means `bvlc_alexnet.npy` in the working directory.
      input_layer: None when `x` holds images; else the name of the layer whose output `x` holds
        (e.g. 'flattened' for cached pool5 features), and only the layers after it are built.

    After construction: `fc8` holds the logits, `end_points` every layer's output by name,
    `variables[layer]['weights' | 'biases']` the variables.
    """

    def __init__(self, x, keep_prob, num_classes, skip_layer, weights_path=None, input_layer=None):
        unknown = sorted(set(skip_layer) - set(TRAINABLE_LAYERS))
        if isinstance(skip_layer, str) or unknown:
            raise ToolkitError(f"unknown layer name(s) {unknown or skip_layer!r} in skip_layer; "
                               f"valid names: {', '.join(TRAINABLE_LAYERS)}")
        self.X = x
        self.KEEP_PROB = keep_prob
        self.NUM_CLASSES = num_classes
        self.SKIP_LAYER = list(skip_layer)
        self.WEIGHTS_PATH = weights_path or weight_files.DEFAULT_WEIGHTS_PATH
        names = [layer.name for layer in ARCHITECTURE]
        if input_layer is not None and input_layer not in names:
            raise ToolkitError(f"unknown input_layer {input_layer!r}; valid: {', '.join(names)}")
        self.INPUT_LAYER = input_layer
        self.end_points = collections.OrderedDict()
        self.variables = {}
        self.pre_activations = {}  # conv1-conv5, fc6, fc7 before their ReLU
        self.create()

    def create(self):
        names = [layer.name for layer in ARCHITECTURE]
        net = self.X
        for layer in ARCHITECTURE[0 if self.INPUT_LAYER is None else names.index(self.INPUT_LAYER) + 1:]:
            if layer.kind == 'conv':
                net = self._conv(net, layer)
            elif layer.kind == 'lrn':
                net = local_response_normalization(net, name=layer.name)
            elif layer.kind == 'pool':
                net = tf.nn.max_pool2d(net, ksize=layer.kernel, strides=layer.stride,
                                       padding=layer.padding, name=layer.name)
            elif layer.kind == 'flatten':
                # NHWC order, as caffe-tensorflow laid out fc6's rows.
                net = tf.reshape(net, [-1, int(net.shape[1]) * int(net.shape[2]) * int(net.shape[3])],
                                 name=layer.name)
            elif layer.kind == 'fc':
                net = self._fc(net, layer)
            elif layer.kind == 'dropout':
                # TF 2.x's dropout takes the rate of *dropped* units.
                net = tf.nn.dropout(net, rate=1.0 - self.KEEP_PROB, name=layer.name)
            self.end_points[layer.name] = net
        self.fc8 = net

    def _new_variables(self, layer_name, weights_shape):
        # The paper's initialisation (section 5): weights ~ N(0, 0.01), biases 1 in conv2, conv4, conv5,
        # fc6, fc7 and 0 elsewhere. Unlike get_variable's Glorot default, it keeps the logits of a
        # fresh fc8 small (first loss ~ ln(num_classes)) and lets the net train from scratch.
        with tf.variable_scope(layer_name):
            weights = tf.get_variable('weights', shape=weights_shape,
                                      initializer=tf.random_normal_initializer(stddev=0.01))
            bias = 1.0 if layer_name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7') else 0.0
            biases = tf.get_variable('biases', shape=weights_shape[-1:],
                                     initializer=tf.constant_initializer(bias))
        self.variables[layer_name] = {'weights': weights, 'biases': biases}
        return weights, biases

    def _conv(self, x, layer):
        input_channels = int(x.shape[-1])
        weights, biases = self._new_variables(
            layer.name, [layer.kernel, layer.kernel, input_channels // layer.groups, layer.depth])
        strides = [1, layer.stride, layer.stride, 1]
        with tf.name_scope(layer.name):
            if layer.groups == 1:
                conv = tf.nn.conv2d(x, weights, strides, padding=layer.padding)
            else:
                # The paper's two GPUs: each half of the filters sees only its half of the channels.
                input_groups = tf.split(x, layer.groups, axis=3)
                weight_groups = tf.split(weights, layer.groups, axis=3)
                conv = tf.concat([tf.nn.conv2d(i, k, strides, padding=layer.padding)
                                  for i, k in zip(input_groups, weight_groups)], axis=3)
            pre_activation = tf.nn.bias_add(conv, biases)
        self.pre_activations[layer.name] = pre_activation
        return tf.nn.relu(pre_activation, name=layer.name)

    def _fc(self, x, layer):
        depth = layer.depth or self.NUM_CLASSES
        weights, biases = self._new_variables(layer.name, [int(x.shape[-1]), depth])
        with tf.name_scope(layer.name):
            logits = tf.nn.xw_plus_b(x, weights, biases)
        if not layer.relu:
            return tf.identity(logits, layer.name)
        self.pre_activations[layer.name] = logits
        return tf.nn.relu(logits, name=layer.name)

    def load_initial_weights(self, session, layers=None):
        """Assign every layer of the weights file that is not in `skip_layer`: `layers`, the file's
        content when the caller has read it already (None: read `weights_path`). The arrays are fed
        into the variables' initializers, so they never become graph constants."""
        path = self.WEIGHTS_PATH
        to_load = [name for name in self.variables if name not in self.SKIP_LAYER]
        if layers is None:
            layers = weight_files.load_weights(path)
        check_classifier_fits(layers, self.NUM_CLASSES, self.SKIP_LAYER, path)
        feeds, initializers = {}, []
        for name in to_load:
            if name not in layers:
                raise ToolkitError(f"{path}: layer {name} is missing from the file (it holds "
                                   f"{', '.join(sorted(layers))}); skip {name} to train it from scratch")
            for kind, variable in self.variables[name].items():
                expected = tuple(variable.shape.as_list())
                found = layers[name][kind].shape
                if found != expected:
                    raise ToolkitError(f"{path}: layer {name} {kind} has shape {found}, "
                                       f"expected {expected}")
                feeds[variable.initial_value] = layers[name][kind]
                initializers.append(variable.initializer)
        session.run(initializers, feed_dict=feeds)


def check_classifier_fits(layers, num_classes, skip_layers, path):
    """Keeping the file's fc8 needs its width to be `num_classes` (the file decides, not 1000)."""
    if 'fc8' in skip_layers or 'fc8' not in layers:
        return
    file_classes = layers['fc8']['biases'].shape[0]
    if file_classes != num_classes:
        raise ToolkitError(f"{path}: its fc8 has {file_classes} classes, --num_classes is "
                           f"{num_classes}: add fc8 to --skip_layers to train a new classifier")


def layer_table(num_classes=1000, input_size=INPUT_SIZE):
    """Rows of (name, output (h, w, c), parameters, multiply-adds) for each layer of ARCHITECTURE."""
    size, channels, rows = input_size, 3, []  # every feature map is square
    for layer in ARCHITECTURE:
        params = macs = 0
        if layer.kind in ('conv', 'pool'):
            size = ((size - layer.kernel) // layer.stride + 1 if layer.padding == 'VALID'
                    else -(-size // layer.stride))
        if layer.kind == 'conv':
            weights_per_output = layer.kernel * layer.kernel * channels // layer.groups
            params = weights_per_output * layer.depth + layer.depth
            macs = size * size * layer.depth * weights_per_output
            channels = layer.depth
        elif layer.kind == 'flatten':
            size, channels = 1, size * size * channels
        elif layer.kind == 'fc':
            depth = layer.depth or num_classes
            params = channels * depth + depth
            macs = channels * depth
            channels = depth
        if layer.kind not in ('flatten', 'dropout'):  # the two get no row of their own
            rows.append((layer.name, (size, size, channels), params, macs))
    return rows


def variable_shapes(num_classes):
    """{layer: {'weights': shape, 'biases': shape}} of AlexNet's variables (and of the weight files),
    from ARCHITECTURE alone: conv weights HWIO [kernel, kernel, input channels / groups, filters], fc
    weights [inputs, outputs], biases [outputs]."""
    by_name = {layer.name: layer for layer in ARCHITECTURE}
    shapes, previous = {}, (INPUT_SIZE, INPUT_SIZE, 3)  # the previous row's output
    for name, output, _, _ in layer_table(num_classes):
        layer = by_name[name]
        if layer.kind in ('conv', 'fc'):
            inputs = ((layer.kernel, layer.kernel, previous[2] // layer.groups) if layer.kind == 'conv'
                      else (int(np.prod(previous)),))
            shapes[name] = {'weights': inputs + (output[2],), 'biases': (output[2],)}
        previous = output
    return shapes


def format_layer_table(num_classes=1000):
    rows = layer_table(num_classes)
    lines = [f"{'layer':<7}{'output':>14}{'parameters':>14}{'multiply-adds':>16}"]
    for name, (height, width, channels), params, macs in rows:
        lines.append(f"{name:<7}{f'{height}x{width}x{channels}':>14}{params:>14,}{macs:>16,}")
    total_params = sum(row[2] for row in rows)
    total_macs = sum(row[3] for row in rows)
    lines.append(f"{'total':<7}{'':>14}{total_params:>14,}{total_macs:>16,}")
    lines.append(f"model size: {total_params * 4 / 2**20:.1f} MiB as float32 ({total_params * 4:,} bytes)")
    return '\n'.join(lines)


def main(argv=None):
    parser = cli.ArgumentParser(description="Print AlexNet's layer table.")
    parser.add_argument('--num_classes', type=int, default=1000, help='width of fc8')
    args = parser.parse_args(argv)
    if args.num_classes < 1:
        parser.error('--num_classes must be at least 1')
    print(format_layer_table(args.num_classes))
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
