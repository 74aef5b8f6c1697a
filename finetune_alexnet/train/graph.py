"""The fine-tuning graph: AlexNet on one or more devices, loss, SGD step, accuracy and summaries.

Kept apart from finetune.py's command line so tests and the benchmarks build exactly the graph that
users train. Nothing here runs a session.
"""
import collections
import dataclasses
import math

import numpy as np
import tensorflow.compat.v1 as tf

from alexnet import AlexNet

TrainingGraph = collections.namedtuple('TrainingGraph', [
    'x', 'y', 'keep_prob', 'model', 'logits', 'loss', 'accuracy', 'loss_sum', 'correct_count',
    'batch_count', 'train_op', 'train_summaries', 'global_step', 'learning_rate', 'var_list'])


# A histogram summary of every value of fc6 (37.7 M weights, and as many gradients) costs more than the
# training step it rides along with (bench/RESULTS.md). A strided sample of at most this many values
# draws the same distribution in TensorBoard at a negligible cost.
HISTOGRAM_SAMPLE_SIZE = 2**16


def histogram_sample(tensor):
    """Every k-th value of `tensor`, at most HISTOGRAM_SAMPLE_SIZE of them (all when it is smaller).

    k is made coprime with the last dimension, so the sample walks through every column (output
    unit) of a weight matrix instead of repeating a few.
    """
    size = tensor.shape.num_elements()
    stride = -(-size // HISTOGRAM_SAMPLE_SIZE)
    if stride == 1:
        return tensor
    while math.gcd(stride, tensor.shape[-1]) != 1:
        stride += 1
    return tf.reshape(tensor, [-1])[::stride]


def trained_variables(model, train_layers):
    """The variables of `train_layers`, in the graph's layer order."""
    return [variable for layer in model.variables if layer in train_layers
            for variable in model.variables[layer].values()]


def _tower_devices(num_devices, use_gpu):
    if num_devices == 1:
        return [None]
    kind = 'gpu' if use_gpu else 'cpu'
    return [f'/{kind}:{index}' for index in range(num_devices)]


def _per_example_loss(logits, labels):
    return tf.nn.softmax_cross_entropy_with_logits_v2(labels=tf.stop_gradient(labels), logits=logits)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """What shapes the training graph; finetune.py fills it from its flags."""
    num_classes: int
    train_layers: tuple
    skip_layers: tuple = ('fc8',)
    weights_path: str = None
    learning_rate: float = 0.001
    optimizer: str = 'sgd'            # 'sgd' or 'momentum'
    momentum: float = 0.9
    weight_decay: float = 0.0         # L2 on the trained layers' weights (the paper: 5e-4)
    decay_steps: int = 0              # multiply the rate by decay_factor every this many steps (0: off)
    decay_factor: float = 0.1
    num_devices: int = 1              # towers the batch is split over
    use_gpu: bool = False
    model_device: str = None
    mixed_precision: bool = False
    # Per-class loss weights (None: every class 1); `balanced_class_weights` makes the balanced ones.
    class_weights: tuple = None
    # ((layer, multiplier), ...): Caffe's lr_mult, that layer's update scaled by the multiplier.
    lr_mult: tuple = ()


def balanced_class_weights(labels, num_classes):
    """scikit-learn's 'balanced' weights of integer `labels`: n / (K * count_c) for each class c.

    n is the number of labels and K the number of classes present, so the weights average 1 over
    the training *images* (sum_c count_c * n / (K * count_c) = n): the weighted loss, a mean over
    images, keeps its scale and the effective learning rate is unchanged, however imbalanced the
    classes. A class absent from `labels` gets weight 1: it contributes no training example, so
    its weight only matters for a loss computed elsewhere, where 1 (no weighting) is neutral.
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return tuple(float(w) for w in weights)


def build_training_graph(images, labels, config, input_layer=None, reuse=False):
    """Builds the model on `images` (a batch from tf.data) and everything one training step needs.

    `x`, `y` and `keep_prob` are placeholders with defaults: by default the batch flows straight from
    the tf.data iterator into the graph, and a caller may still feed its own arrays (the benchmarks'
    feed_dict baseline does). With `config.num_devices` > 1 the batch is split into equal towers, one
    per device, and their gradients are averaged, as the paper trained on two GPUs.

    With `input_layer` ('flattened' for cached pool5 features), `images` holds that layer's output
    and only the layers after it are built; `reuse` shares variables an earlier AlexNet created.

    `config.mixed_precision` adds dynamic loss scaling, which a session with grappler's
    mixed-precision rewrite (tf_setup.session_config) needs: the loss is multiplied by a power of two
    (from 32768) before the gradients and they are divided by it after, which is exact in float32, so
    float16 gradients do not underflow. A step whose scaled gradients overflow updates no weight and
    halves the scale; the global step still counts it, so epochs and --resume keep their arithmetic.
    """
    x = tf.placeholder_with_default(images, images.shape, name='x')
    y = tf.placeholder_with_default(labels, [None, config.num_classes], name='y')
    keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')
    global_step = tf.train.get_or_create_global_step()
    rate, sgd, loss_scale = _optimizer(config, global_step)
    batch_count = tf.shape(x, out_type=tf.int64)[0]
    towers = _build_towers(x, y, keep_prob, batch_count, sgd, config, input_layer, reuse)

    with tf.name_scope('loss'):
        loss = tf.add_n(towers.loss_shares)
    with tf.name_scope('train'):
        gradients = [tf.add_n(list(grads)) for grads in zip(*towers.gradients)]
        gradients = _scale_by_lr_mult(gradients, towers.var_list, config.lr_mult)
    logits = tf.concat(towers.logits, axis=0)[:batch_count] if len(towers.logits) > 1 else towers.logits[0]
    with tf.name_scope('metrics'):
        correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y, 1))
        accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
        correct_count = tf.reduce_sum(tf.cast(correct, tf.int64))
        # Validation sums these over batches, so a last partial batch weighs what it holds.
        loss_sum = tf.reduce_sum(_per_example_loss(logits, y))

    # A NaN/Inf loss or gradient stops the step before anything is updated or summarised: the update
    # and every summary depend on this check, so a histogram op never crashes on a NaN first.
    # (Validation fetches only the metrics above, so it computes no gradient.) With loss scaling an
    # overflowing gradient is expected now and then and handled by the optimizer: only the loss counts.
    checked = tf.stack([loss] if config.mixed_precision else [loss, tf.linalg.global_norm(gradients)])
    loss_is_finite = tf.debugging.assert_all_finite(checked, 'loss is not finite', name='loss_is_finite')
    with tf.control_dependencies([loss_is_finite]):
        train_op = _apply(sgd, gradients, towers.var_list, global_step, config.mixed_precision)
        scalars = [('cross_entropy', loss), ('accuracy', accuracy), ('learning_rate', rate)]
        if config.mixed_precision:
            scalars.append(('loss_scale', loss_scale()))
        train_summaries = _summaries(scalars, gradients, towers.var_list, config.mixed_precision)

    return TrainingGraph(x=x, y=y, keep_prob=keep_prob, model=towers.model, logits=logits, loss=loss,
                         accuracy=accuracy, loss_sum=loss_sum, correct_count=correct_count,
                         batch_count=batch_count, train_op=train_op, train_summaries=train_summaries,
                         global_step=global_step, learning_rate=rate, var_list=towers.var_list)


def _scale_by_lr_mult(gradients, var_list, lr_mult):
    """Each gradient times its layer's multiplier: plain SGD's and momentum's updates (and the
    weight decay inside the gradient) scale by exactly that factor, as Caffe's lr_mult does."""
    multipliers = dict(lr_mult)
    scaled = []
    for gradient, variable in zip(gradients, var_list):
        factor = multipliers.get(variable.op.name.split('/')[0], 1.0)
        scaled.append(gradient if factor == 1.0 else gradient * factor)
    return scaled


def _optimizer(config, global_step):
    """The learning rate (with its step decay), the optimizer, and its loss scale (mixed precision)."""
    with tf.name_scope('learning_rate_schedule'):
        if config.decay_steps:
            rate = tf.train.exponential_decay(config.learning_rate, global_step, config.decay_steps,
                                              config.decay_factor, staircase=True)
        else:
            rate = tf.constant(config.learning_rate, tf.float32)
        # Feedable, so the learning-rate range test (lr_finder) sets each step's rate.
        rate = tf.placeholder_with_default(rate, [], name='learning_rate')
    if config.optimizer == 'momentum':
        sgd = tf.train.MomentumOptimizer(rate, config.momentum)
    else:
        sgd = tf.train.GradientDescentOptimizer(rate)
    loss_scale = None
    if config.mixed_precision:
        loss_scale = tf.mixed_precision.DynamicLossScale()  # from 2**15, x2 after 2000 good steps
        sgd = tf.mixed_precision.MixedPrecisionLossScaleOptimizer(sgd, loss_scale)
    return rate, sgd, loss_scale


Towers = collections.namedtuple('Towers', ['model', 'var_list', 'logits', 'loss_shares', 'gradients'])


def _build_towers(x, y, keep_prob, batch_count, sgd, config, input_layer, reuse):
    """AlexNet once per device on an equal part of the batch; each tower's loss share and gradients."""
    devices = _tower_devices(config.num_devices, config.use_gpu)
    if len(devices) > 1:
        # Equal parts. A batch that does not divide evenly (validation's last) is padded with copies
        # of its last image with all-zero labels, which add nothing to the loss or the gradients
        # (an empty tower instead would trip oneDNN's convolution).
        padding = tf.cast((len(devices) - batch_count % len(devices)) % len(devices), tf.int32)
        x_parts = tf.split(tf.concat([x, tf.repeat(x[-1:], padding, axis=0)], 0), len(devices))
        y_parts = tf.split(tf.concat([y, tf.zeros([padding, config.num_classes])], 0), len(devices))
    else:
        x_parts, y_parts = [x], [y]
    logits, shares, gradients = [], [], []
    model = var_list = None
    for index, device in enumerate(devices):
        with tf.device(device or config.model_device), tf.name_scope(f'tower_{index}' if index else None), \
                tf.variable_scope(tf.get_variable_scope(), reuse=reuse or index > 0):
            tower_model = AlexNet(x_parts[index], keep_prob, config.num_classes, list(config.skip_layers),
                                  config.weights_path, input_layer)
            if model is None:
                model = tower_model
                var_list = trained_variables(model, config.train_layers)
            with tf.name_scope('loss'):
                per_example = _per_example_loss(tower_model.fc8, y_parts[index])
                if config.class_weights is not None:
                    # Each example's loss times its class's weight (balanced weights average 1
                    # per image, so the loss keeps its scale). Padding rows have all-zero labels:
                    # weight 0.
                    weights = tf.constant(config.class_weights, tf.float32)
                    per_example *= tf.reduce_sum(y_parts[index] * weights, axis=1)
                loss_sum = tf.reduce_sum(per_example)
                # Each tower's share of the whole batch's mean: the towers' gradients then add up
                # to exactly the gradient of one device's mean loss, whatever the split.
                share = loss_sum / tf.cast(batch_count, tf.float32)
                if config.weight_decay and index == 0:
                    # The paper's weight decay on the trained layers' weights (not biases), once.
                    decayed = [v for v in var_list if v.op.name.endswith('/weights')]
                    share += config.weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in decayed])
            logits.append(tower_model.fc8)
            shares.append(share)
            if config.mixed_precision:  # scales the loss, unscales the gradients
                gradients.append([grad for grad, _ in sgd.compute_gradients(share, var_list)])
            else:
                gradients.append(tf.gradients(share, var_list))
    return Towers(model, var_list, logits, shares, gradients)


def _apply(sgd, gradients, var_list, global_step, mixed_precision):
    """The update op; it always advances the global step, also when loss scaling skips the update."""
    with tf.name_scope('train'):
        if mixed_precision:
            update = sgd.apply_gradients(list(zip(gradients, var_list)))
            with tf.control_dependencies([update]):
                return tf.assign_add(global_step, 1).op
        return sgd.apply_gradients(list(zip(gradients, var_list)), global_step=global_step)


def _summaries(scalars, gradients, var_list, mixed_precision):
    """The merged training summaries: the scalars, and histograms of samples of each trained variable
    and its gradient."""
    # Tags set explicitly: tf.summary.* would derive them from op names, which the variables
    # already hold ('fc6/weights' would become 'fc6/weights_1').
    summaries = [tf.raw_ops.ScalarSummary(tags=tag, values=value) for tag, value in scalars]
    with tf.name_scope('histogram_samples'):
        for gradient, variable in zip(gradients, var_list):
            sample = histogram_sample(gradient)
            if mixed_precision:  # an overflowed (skipped) step's gradients hold Inf/NaN
                sample = tf.where(tf.math.is_finite(sample), sample, tf.zeros_like(sample))
            summaries.append(tf.raw_ops.HistogramSummary(tag=variable.op.name + '/gradient',
                                                         values=sample))
            summaries.append(tf.raw_ops.HistogramSummary(tag=variable.op.name,
                                                         values=histogram_sample(variable)))
    return tf.summary.merge(summaries)
