"""The steps finetune.py builds its graph with: `optimizer`, `loss`, `train_ops` and `summaries`;
`build_training_graph` composes them as finetune.py does, so tests and the benchmarks build exactly
the graph that users train. The recipe's parts (docs/training.md) are each off unless its config
field is set. Nothing here runs a session.
"""
import collections
import contextlib
import dataclasses
import math

import numpy as np
import tensorflow.compat.v1 as tf

from alexnet import TRAINABLE_LAYERS, AlexNet
from finetune_alexnet import model_info

_GRAPH_FIELDS = [
    'x', 'y', 'keep_prob', 'model', 'logits', 'loss', 'accuracy', 'loss_sum', 'correct_count',
    'batch_count', 'train_op', 'train_summaries', 'global_step', 'learning_rate', 'var_list',
    'training', 'phase', 'phases', 'mix', 'averages', 'shared', 'features']


class TrainingGraph(collections.namedtuple('TrainingGraph', _GRAPH_FIELDS)):
    """The tensors and ops of a training step. `loss`, `train_op`, `train_summaries` and `var_list`
    are those of phase `phase`; `phases` maps each phase this graph trains to its PhaseOps.
    `training` (fed True by training steps) turns mixup/CutMix on; `mix` holds their draws and
    `averages` the moving average's AveragingOps (None when off); `features` the whole batch's
    pool5 (None on features), where `model`, the first device's, holds only its part's."""

    def for_phase(self, phase):
        """This graph with phase `phase`'s loss, train op, summaries and variables on top."""
        ops = self.phases[phase]
        return self._replace(loss=ops.loss, train_op=ops.train_op,
                             train_summaries=ops.train_summaries, var_list=ops.var_list, phase=phase)


# `gradients` (summed over the devices) and `check` (the NaN guard) are what `summaries` draws on.
PhaseOps = collections.namedtuple('PhaseOps', 'loss train_op train_summaries var_list gradients check')
# What graphs on other inputs (cached features, images) share, so one run has one global step, one
# rate, one optimizer (one set of slots) and one moving average.
# `strategy`: the MirroredStrategy of --num_gpus replicas (None on one device, or inside a worker).
Shared = collections.namedtuple('Shared', 'global_step rate optimizer loss_scale ema averages '
                                          'phase_variable strategy')
# start: each average := its variable (run once the starting weights are loaded); swap_in: the
# variables take their averages (the raw values kept aside); swap_out: the raw values back.
AveragingOps = collections.namedtuple('AveragingOps', 'start swap_in swap_out variables')


# A histogram summary of every value of fc6 (37.7 M weights, and as many gradients) costs more than the
# training step it rides along with (bench/RESULTS.md). A strided sample of at most this many values
# draws the same distribution in TensorBoard at a negligible cost.
HISTOGRAM_SAMPLE_SIZE = 2**16


def histogram_sample(tensor):
    """Every k-th value of `tensor`, at most HISTOGRAM_SAMPLE_SIZE of them, k coprime with the last
    dimension, so the sample walks through every column (output unit) of a weight matrix."""
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


def phase_layers(train_layers, unfreeze_layers, phase):
    """The layers phase `phase` trains, in the network's order: phase 1 `train_layers`, phase 2
    those and `unfreeze_layers`."""
    layers = set(train_layers) | (set(unfreeze_layers) if phase == 2 else set())
    return tuple(layer for layer in TRAINABLE_LAYERS if layer in layers)


def _tower_devices(config):
    if config.num_devices == 1:
        return [config.model_device]
    kind = 'gpu' if config.use_gpu else 'cpu'
    return [f'/{kind}:{index}' for index in range(config.num_devices)]


def replica_strategy(config):
    """The MirroredStrategy of `config.num_devices` replicas: a copy of every variable on each
    device, each device's gradients all-reduced into every copy, so no device serves the others'
    weights. NCCL between GPUs; between logical CPU devices (the tests' stand-in for GPUs) a sum on
    the first, which has no NCCL."""
    devices = _tower_devices(config)
    reduction = (tf.distribute.NcclAllReduce() if config.use_gpu
                 else tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0]))
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=reduction)


def _per_example_loss(logits, labels):
    return tf.nn.softmax_cross_entropy_with_logits_v2(labels=tf.stop_gradient(labels), logits=logits)


def smoothed_labels(labels, epsilon, num_classes):
    """(1 - epsilon) x labels + epsilon / K, scaled by each row's sum: all-zero padding rows stay
    zero (they weigh nothing), and a row of one-hot or mixed labels sums to 1."""
    return labels * (1.0 - epsilon) + (epsilon / num_classes) * tf.reduce_sum(labels, 1, keepdims=True)


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
    num_devices: int = 1              # replicas (towers inside a worker) the batch is split over
    num_workers: int = 1              # machines whose gradients tf.distribute sums every step
    use_gpu: bool = False
    model_device: str = None
    mixed_precision: bool = False
    # Per-class loss weights (None: every class 1); `balanced_class_weights` makes the balanced ones.
    class_weights: tuple = None
    # ((layer, multiplier), ...): Caffe's lr_mult, that layer's update scaled by the multiplier.
    lr_mult: tuple = ()
    label_smoothing: float = 0.0      # epsilon of the training loss's targets (0: one-hot)
    ema_decay: float = 0.0            # decay of the weights' moving average (0: none kept)
    lr_schedule: str = 'step'         # 'step' (decay_steps, decay_factor) or 'cosine'
    warmup_steps: int = 0             # the rate rises linearly to learning_rate over these steps
    total_steps: int = 0              # cosine: the rate would reach 0 at this step
    mixup: float = 0.0                # alpha of mixup's Beta(alpha, alpha) (0: off)
    cutmix: float = 0.0               # alpha of CutMix's Beta(alpha, alpha) (0: off)
    mix_seed: int = 0                 # with the global step, seeds every mixing draw
    unfreeze_layers: tuple = ()       # what phase 2 trains besides train_layers (empty: one phase)
    phases: tuple = None              # the phases this graph trains (None: every phase)

    @property
    def all_phases(self):
        return (1, 2) if self.unfreeze_layers else (1,)


def balanced_class_weights(labels, num_classes):
    """scikit-learn's 'balanced' weights of integer `labels`: n / (K * count_c) for each class c of
    the K present, n labels in all. They average 1 over the training images, so the weighted loss
    keeps its scale (and the learning rate its effect); an absent class gets a neutral 1."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return tuple(float(w) for w in weights)


# Named as in Shared, so an earlier graph's `.shared` serves `train_ops` as its optimizer too.
Optimizer = collections.namedtuple('Optimizer', 'global_step rate optimizer loss_scale strategy')


def optimizer(config):
    """The global step, the learning rate (its schedule; feedable, for the range test), SGD or
    momentum, and with `config.mixed_precision` its dynamic loss scale. With --num_gpus replicas on
    one machine, made in their MirroredStrategy (`strategy`), which then holds every variable the
    graph makes; none when no phase trains on images (fc6-fc8 on cached features are too cheap to
    split) or inside one of several workers (their strategy holds the graph already)."""
    replicas = config.num_devices > 1 and config.num_workers == 1 and config.phases != ()
    strategy = replica_strategy(config) if replicas else None
    with strategy.scope() if strategy else contextlib.nullcontext():
        global_step = tf.train.get_or_create_global_step()
        with tf.name_scope('learning_rate_schedule'):
            rate = tf.placeholder_with_default(scheduled_rate(config, global_step), [],
                                               name='learning_rate')
        if config.optimizer == 'momentum':
            sgd = tf.train.MomentumOptimizer(rate, config.momentum)
        else:
            sgd = tf.train.GradientDescentOptimizer(rate)
        loss_scale = None
        if config.mixed_precision:
            loss_scale = tf.mixed_precision.DynamicLossScale()  # from 2**15, x2 after 2000 good steps
            sgd = tf.mixed_precision.MixedPrecisionLossScaleOptimizer(sgd, loss_scale)
    return Optimizer(global_step, rate, sgd, loss_scale, strategy)


def loss(logits, labels, config):
    """Each image's training loss: the cross-entropy of `logits` against `labels` (with
    `config.label_smoothing`, against smoothed ones), times its class's weight with
    `config.class_weights` (an all-zero label row, padding, then weighs 0)."""
    with tf.name_scope('loss'):
        targets = (smoothed_labels(labels, config.label_smoothing, config.num_classes)
                   if config.label_smoothing else labels)
        per_example = _per_example_loss(logits, targets)
        if config.class_weights is not None:
            # Balanced weights average 1 per image, so the loss keeps its scale.
            per_example *= tf.reduce_sum(labels * tf.constant(config.class_weights, tf.float32), axis=1)
        return per_example


def alexnet_and_loss(keep_prob, config):
    """finetune.py's model function, for graphs built by `build_training_graph` (tests, benchmarks,
    the range test): AlexNet on a batch and each image's loss."""
    def model_and_loss(images, labels, input_layer=None):
        model = AlexNet(images, keep_prob, config.num_classes, list(config.skip_layers),
                        config.weights_path, input_layer)
        return model, loss(model.fc8, labels, config)
    return model_and_loss


def build_training_graph(images, labels, config, input_layer=None, reuse=False, shared=None):
    """finetune.py's graph in one call: `optimizer`, `train_ops` and `summaries` on AlexNet
    (`alexnet_and_loss`). `reuse` shares variables an earlier AlexNet created (cached pool5 features
    under an AlexNet built alone: on one device), `shared` an earlier graph's `.shared`."""
    keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')
    optimizer_ops = shared if shared is not None else optimizer(
        dataclasses.replace(config, num_devices=1) if reuse and config.num_workers == 1 else config)
    graph = train_ops(alexnet_and_loss(keep_prob, config), images, labels, keep_prob, optimizer_ops,
                      config, input_layer, reuse)
    return summaries(graph, config)


def train_ops(model_and_loss, images, labels, keep_prob, optimizer_ops, config, input_layer=None,
              reuse=False):
    """The model (`model_and_loss(images, labels, input_layer)`: the model and each image's loss)
    on `images` (`x` and `y` may still be fed), and each phase of `config.phases`'s train op. With
    `config.num_devices` > 1 the batch is split into equal parts: MirroredStrategy replicas (made by
    `optimizer`) on one machine, towers reading the first device's variables inside a worker.
    `input_layer`, `reuse`: as AlexNet's and build_training_graph's; `optimizer_ops` may be an
    earlier graph's `.shared` (its optimizer, moving average and phase record)."""
    shared = optimizer_ops if isinstance(optimizer_ops, Shared) else None
    x = tf.placeholder_with_default(images, images.shape, name='x')
    y = tf.placeholder_with_default(labels, [None, config.num_classes], name='y')
    training = tf.placeholder_with_default(False, [], name='training')
    strategy = optimizer_ops.strategy
    if strategy is None and config.num_workers == 1:  # on cached features, or no phase: one device
        config = dataclasses.replace(config, num_devices=1)
    global_step = optimizer_ops.global_step
    with strategy.scope() if strategy else contextlib.nullcontext():
        batch_count = tf.shape(x, out_type=tf.int64)[0]
        mix, x_in, y_in = None, x, y
        if config.mixup or config.cutmix:
            if input_layer is not None:
                raise ValueError('mixup and CutMix mix images: build on images, not on cached features')
            with tf.name_scope('mixing'):
                mix = mixing_draws(x, config, global_step)
                x_in, y_in = tf.cond(training, lambda: mix_batch(x, y, mix), lambda: (x, y))
                mix.update(images=x_in, labels=y_in)  # what the step trains on (x, y unless training)
        phases = config.all_phases if config.phases is None else config.phases
        x_parts, y_parts = _split_batch(x_in, y_in, batch_count, config.num_devices, config.num_classes)

        def part(index):
            """The model on part `index` of the batch, and its share of the batch's mean loss."""
            with tf.variable_scope(tf.get_variable_scope(), reuse=reuse or index > 0):
                model, per_example = model_and_loss(x_parts[index], y_parts[index], input_layer)
            return model, _loss_share(per_example, y_parts[index], batch_count, config,
                                      padded=config.num_devices > 1)

        if strategy is not None:
            models, shares, steps = _build_replicas(part, strategy, phases, optimizer_ops, config)
        else:  # towers: the model once per device, its variables read from the first
            devices, built = _tower_devices(config), []
            for index, device in enumerate(devices):
                with tf.device(device), tf.name_scope(f'tower_{index}' if index else None):
                    built.append(part(index))
            models, shares = (list(column) for column in zip(*built))
        if shared is None:
            ema, averages = _moving_average(config, models[0])
            phase_variable = (tf.Variable(1, dtype=tf.int64, trainable=False, name='training_phase')
                              if len(config.all_phases) > 1 else None)
            shared = Shared(*optimizer_ops[:4], ema, averages, phase_variable, strategy)

        logits = _joined([model.fc8 for model in models], batch_count)
        features = (_joined([model.end_points['flattened'] for model in models], batch_count)
                    if input_layer is None else None)
        with tf.name_scope('metrics'):
            # With mixed labels, a training step's accuracy counts the larger share's class.
            correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y_in, 1))
            accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
            correct_count = tf.reduce_sum(tf.cast(correct, tf.int64))
            # Validation sums these over batches, so a last partial batch weighs what it holds. Plain
            # cross-entropy (no smoothing, no class weights), so runs with and without compare.
            loss_sum = tf.reduce_sum(_per_example_loss(logits, y_in))

        if strategy is None:
            steps = {phase: [_phase_step(phase, models[0], shares, devices, shared, config)]
                     for phase in phases}
        phases = {phase: _phase_ops(phase, steps[phase], shared) for phase in phases}
        graph = TrainingGraph(
            x=x, y=y, keep_prob=keep_prob, model=models[0], logits=logits, loss=None, accuracy=accuracy,
            loss_sum=loss_sum, correct_count=correct_count, batch_count=batch_count, train_op=None,
            train_summaries=None, global_step=global_step, learning_rate=shared.rate, var_list=None,
            training=training, phase=None, phases=phases, mix=mix, averages=shared.averages, shared=shared,
            features=features)
        return graph.for_phase(min(phases)) if phases else graph


def summaries(graph, config):
    """`graph` with each phase's training summaries: the loss, accuracy and rate (the loss scale,
    the phase), and histograms of samples of each trained variable and its gradient. Fetched in a
    step's own run call; they wait for its NaN guard, so a histogram never meets a NaN first."""
    shared, phases = graph.shared, {}
    for phase, ops in graph.phases.items():
        with tf.name_scope(f'phase{phase}') if phase > 1 else contextlib.nullcontext(), \
                tf.control_dependencies([ops.check]):
            scalars = [('cross_entropy', ops.loss), ('accuracy', graph.accuracy),
                       ('learning_rate', shared.rate)]
            if config.mixed_precision:
                scalars.append(('loss_scale', shared.loss_scale()))
            if shared.phase_variable is not None:
                scalars.append(('phase', tf.constant(phase, tf.float32)))
            # Tags set explicitly: tf.summary.* would derive them from op names, which the variables
            # already hold ('fc6/weights' would become 'fc6/weights_1').
            merged = [tf.raw_ops.ScalarSummary(tags=tag, values=value) for tag, value in scalars]
            with tf.name_scope('histogram_samples'):
                for gradient, variable in zip(ops.gradients, ops.var_list):
                    sample = histogram_sample(gradient)
                    if config.mixed_precision:  # an overflowed (skipped) step's gradients hold Inf/NaN
                        sample = tf.where(tf.math.is_finite(sample), sample, tf.zeros_like(sample))
                    merged.append(tf.raw_ops.HistogramSummary(tag=variable.op.name + '/gradient',
                                                              values=sample))
                    merged.append(tf.raw_ops.HistogramSummary(tag=variable.op.name,
                                                              values=histogram_sample(variable)))
            phases[phase] = ops._replace(train_summaries=tf.summary.merge(merged))
    graph = graph._replace(phases=phases)
    return graph.for_phase(graph.phase) if phases else graph


# One update of a phase's variables (towers: the only one; replicas: one each, the optimizer
# all-reducing their gradients inside it).
Step = collections.namedtuple('Step', 'var_list loss gradients check update')


def _phase_step(phase, model, shares, devices, optimizer_ops, config, first=True):
    """Phase `phase`'s Step from the parts' `shares` of the batch's mean loss, each part's gradients
    taken on its device: the weight decay (unless not `first`: a replica after the first) in the
    first part's, the gradients summed, scaled by `config.lr_mult`, checked, applied."""
    var_list = trained_variables(model, phase_layers(config.train_layers, config.unfreeze_layers,
                                                     phase))
    with tf.name_scope(f'phase{phase}') if phase > 1 else contextlib.nullcontext():
        with tf.name_scope('loss'):
            decay = None
            if config.weight_decay and first:  # the paper's: the trained weights (not biases), once
                decay = config.weight_decay * tf.add_n([tf.nn.l2_loss(variable) for variable in var_list
                                                        if variable.op.name.endswith('/weights')])
            loss = tf.add_n(shares + ([decay] if decay is not None else []))
        part_gradients = []
        for index, (device, share) in enumerate(zip(devices, shares)):
            with tf.device(device):
                total = share + decay if decay is not None and index == 0 else share
                if config.mixed_precision:  # scales the loss, unscales the gradients
                    part_gradients.append(
                        [grad for grad, _ in optimizer_ops.optimizer.compute_gradients(total, var_list)])
                else:
                    part_gradients.append(tf.gradients(total, var_list))
        with tf.name_scope('train'):
            gradients = [tf.add_n(list(grads)) for grads in zip(*part_gradients)]
            if config.num_workers > 1:
                # Each worker's gradient is of the mean over its part of the global batch, and the
                # strategy sums the workers' gradients: divided by their number, the sum is the
                # gradient of the global batch's mean, as one machine computes it.
                gradients = [gradient / config.num_workers for gradient in gradients]
            gradients = _scale_by_lr_mult(gradients, var_list, config.lr_mult)

        # A NaN/Inf loss or gradient stops the step before anything is updated or summarised: the
        # update and every summary depend on this check, so a histogram op never crashes on a NaN
        # first. (Validation fetches only the metrics, so it computes no gradient.) With loss scaling
        # an overflowing gradient is expected now and then and handled by the optimizer: only the
        # loss counts.
        checked = tf.stack([loss] if config.mixed_precision
                           else [loss, tf.linalg.global_norm(gradients)])
        check = tf.debugging.assert_all_finite(checked, 'loss is not finite', name='loss_is_finite')
        with tf.control_dependencies([check]):
            gradients = [tf.identity(gradient) for gradient in gradients]
            update = _apply(optimizer_ops.optimizer, gradients, var_list, optimizer_ops.global_step,
                            config.mixed_precision)
    return Step(var_list, loss, gradients, check, update)


def _phase_ops(phase, steps, shared):
    """Phase `phase` from its steps: the batch's loss, the gradients summed (for the histograms),
    one NaN guard and one update for all, then (from the updated weights) the moving averages and
    the checkpoint's record of the phase."""
    var_list = steps[0].var_list
    with tf.name_scope(f'phase{phase}') if phase > 1 else contextlib.nullcontext():
        with tf.name_scope('loss'):
            loss = tf.add_n([step.loss for step in steps])
        with tf.name_scope('train'):
            gradients = [tf.add_n(list(grads)) for grads in zip(*(step.gradients for step in steps))]
        check = tf.group(*[step.check for step in steps], name='loss_is_finite')
        with tf.control_dependencies([check]):
            update, after = tf.group(*[step.update for step in steps]), []
            with tf.control_dependencies([update]):
                if shared.ema is not None:
                    # TensorFlow's form without num_updates: decay x average + (1 - decay) x weight.
                    after.append(shared.ema.apply(var_list))
                if shared.phase_variable is not None:
                    after.append(tf.assign(shared.phase_variable, phase).op)
            train_op = tf.group(update, *after) if after else update
    return PhaseOps(loss, train_op, None, var_list, gradients, check)


def _moving_average(config, model):
    """The moving average of every variable any phase trains, and the ops that start and swap it."""
    if not config.ema_decay:
        return None, None
    variables = trained_variables(model, phase_layers(config.train_layers, config.unfreeze_layers,
                                                      max(config.all_phases)))
    # Named as TensorFlow names them, 'fc8/weights/ExponentialMovingAverage', which model_info reads.
    ema = tf.train.ExponentialMovingAverage(config.ema_decay, name=model_info.EMA_SUFFIX)
    ema.apply(variables)  # creates the averages (this op itself is never run)
    averages = [ema.average(variable) for variable in variables]
    with tf.name_scope('moving_average'):
        start = tf.group(*[average.assign(variable) for variable, average in zip(variables, averages)],
                         name='start')
        # The raw weights wait here while validation runs on the averages: outside every collection,
        # so no checkpoint holds them.
        kept = [tf.Variable(tf.zeros(variable.shape, variable.dtype.base_dtype), trainable=False,
                            collections=[], name=variable.op.name.replace('/', '_') + '_raw')
                for variable in variables]
        keep = [raw.assign(variable) for raw, variable in zip(kept, variables)]
        with tf.control_dependencies(keep):
            swap_in = tf.group(*[variable.assign(average) for variable, average
                                 in zip(variables, averages)], name='swap_in')
        swap_out = tf.group(*[variable.assign(raw) for variable, raw in zip(variables, kept)],
                            name='swap_out')
    return ema, AveragingOps(start, swap_in, swap_out, tuple(variables))


def mixing_draws(x, config, global_step):
    """One batch's mixup/CutMix draws, from the run's seed and the global step alone (stateless):
    {'permutation', 'lam' (drawn from Beta(alpha, alpha)), 'cutmix' (whether CutMix mixes this batch),
    'box' ([top, bottom, left, right), the rows and columns pasted), 'label_weight' (the share of
    the batch's own labels: lam for mixup, 1 - the box's area share for CutMix)}; the graph adds
    'images' and 'labels', what the step trains on. Both on: CutMix at even odds (timm's rules).
    """
    size = tf.shape(x)[0]
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    step = tf.cast(tf.identity(global_step), tf.int64)
    seed = tf.constant(config.mix_seed, tf.int64)
    uniform = tf.random.stateless_uniform(tf.reshape(size + 3, [1]), tf.stack([seed, 2 * step]))
    permutation = tf.argsort(uniform[:size], stable=True)
    if config.mixup and config.cutmix:
        use_cutmix = uniform[size + 2] < 0.5
    else:
        use_cutmix = tf.constant(bool(config.cutmix))
    alpha = tf.where(use_cutmix, float(config.cutmix), float(config.mixup))
    gamma = tf.random.stateless_gamma([2], tf.stack([seed, 2 * step + 1]), alpha=alpha)
    lam = gamma[0] / (gamma[0] + gamma[1])  # Beta(alpha, alpha) as a ratio of two Gammas
    cut = tf.sqrt(1.0 - lam)
    cut_height = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_width = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    centre_y = tf.minimum(tf.cast(uniform[size] * tf.cast(height, tf.float32), tf.int32), height - 1)
    centre_x = tf.minimum(tf.cast(uniform[size + 1] * tf.cast(width, tf.float32), tf.int32), width - 1)
    box = tf.stack([tf.clip_by_value(centre_y - cut_height // 2, 0, height),
                    tf.clip_by_value(centre_y + cut_height // 2, 0, height),
                    tf.clip_by_value(centre_x - cut_width // 2, 0, width),
                    tf.clip_by_value(centre_x + cut_width // 2, 0, width)])
    area = tf.cast((box[1] - box[0]) * (box[3] - box[2]), tf.float32)
    box_weight = 1.0 - area / tf.cast(height * width, tf.float32)
    return {'permutation': permutation, 'lam': lam, 'cutmix': use_cutmix, 'box': box,
            'label_weight': tf.where(use_cutmix, box_weight, lam)}


def mix_batch(x, y, mix):
    """The batch mixed with its permutation: mixup blends whole images, CutMix pastes the box;
    labels are blended by `label_weight` either way."""
    other_x = tf.gather(x, mix['permutation'])
    other_y = tf.gather(y, mix['permutation'])

    def cutmix():
        rows = tf.range(tf.shape(x)[1])
        columns = tf.range(tf.shape(x)[2])
        inside = ((rows >= mix['box'][0]) & (rows < mix['box'][1]))[:, None] & \
                 ((columns >= mix['box'][2]) & (columns < mix['box'][3]))[None, :]
        return tf.where(tf.broadcast_to(inside[None, :, :, None], tf.shape(x)), other_x, x)

    def mixup():
        return mix['lam'] * x + (1.0 - mix['lam']) * other_x

    mixed = tf.cond(mix['cutmix'], cutmix, mixup)
    weight = mix['label_weight']
    return mixed, weight * y + (1.0 - weight) * other_y


def _scale_by_lr_mult(gradients, var_list, lr_mult):
    """Each gradient times its layer's multiplier: plain SGD's and momentum's updates (and the
    weight decay inside the gradient) scale by exactly that factor, as Caffe's lr_mult does."""
    factors = [dict(lr_mult).get(variable.op.name.split('/')[0], 1.0) for variable in var_list]
    return [gradient if factor == 1.0 else gradient * factor for gradient, factor in zip(gradients, factors)]


def scheduled_rate(config, global_step):
    """The rate of the step that starts at `global_step`: the schedule (constant, step decay, or
    cosine from learning_rate at the end of the warm-up to 0 at total_steps), times (s + 1) / W
    during a warm-up of W steps (docs/training.md)."""
    step = tf.cast(global_step, tf.float64)
    base = tf.constant(config.learning_rate, tf.float64)
    warmup = config.warmup_steps
    if config.lr_schedule == 'cosine':
        progress = tf.clip_by_value((step - warmup) / max(config.total_steps - warmup, 1), 0.0, 1.0)
        rate = base * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif config.decay_steps:
        rate = base * tf.pow(tf.constant(config.decay_factor, tf.float64),
                             tf.floor(step / config.decay_steps))
    else:
        rate = base
    if warmup:
        rate *= tf.minimum(tf.constant(1.0, tf.float64), (step + 1.0) / warmup)
    return tf.cast(rate, tf.float32)


def _joined(parts, batch_count):
    """The devices' parts of a batch as one (without the padding rows)."""
    return tf.concat(parts, axis=0)[:batch_count] if len(parts) > 1 else parts[0]


def _split_batch(x, y, batch_count, parts, num_classes):
    """`parts` equal parts of the batch. One that does not divide evenly (validation's last) is
    padded with copies of its last image with all-zero labels, which _loss_share weighs 0 (an empty
    part instead would trip oneDNN's convolution)."""
    if parts == 1:
        return [x], [y]
    padding = tf.cast((parts - batch_count % parts) % parts, tf.int32)
    x_parts = tf.split(tf.concat([x, tf.repeat(x[-1:], padding, axis=0)], 0), parts)
    y_parts = tf.split(tf.concat([y, tf.zeros([padding, num_classes])], 0), parts)
    return x_parts, y_parts


def _loss_share(per_example, labels, batch_count, config, padded):
    """One part's share of the whole batch's mean loss: the parts' gradients then add up to exactly
    the gradient of one device's mean loss, whatever the split."""
    if padded and config.class_weights is None:
        # A padding row's loss is 0, but the fused cross-entropy's gradient is softmax - labels
        # whatever the labels sum to: softmax - 0 for a padding row. Times the row's label sum
        # (1 for a real row, exactly; 0 for padding) its gradient is 0.
        per_example *= tf.reduce_sum(labels, axis=1)
    return tf.reduce_sum(per_example) / tf.cast(batch_count, tf.float32)


def _build_replicas(part, strategy, phases, optimizer_ops, config):
    """`part` once per replica (strategy.extended.call_for_each_replica), and each phase's Step
    there, whose update all-reduces the replicas' gradients (summed: each is of the replica's share
    of the batch's mean) into every copy of the weights: (models, shares, {phase: [Step, ...]})."""
    built = {}

    @tf.autograph.experimental.do_not_convert
    def replica():
        index = int(tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group))
        model, share = part(index)
        device = strategy.extended.worker_devices[index]
        built[index] = model, share, {
            phase: _phase_step(phase, model, [share], [device], optimizer_ops, config, first=index == 0)
            for phase in phases}

    strategy.extended.call_for_each_replica(replica)
    models, shares, steps = zip(*(built[index] for index in range(config.num_devices)))
    return list(models), list(shares), {phase: [step[phase] for step in steps] for phase in phases}


def _apply(sgd, gradients, var_list, global_step, mixed_precision):
    """The update op; it always advances the global step, also when loss scaling skips the update."""
    with tf.name_scope('train'):
        if mixed_precision:
            update = sgd.apply_gradients(list(zip(gradients, var_list)))
            with tf.control_dependencies([update]):
                return tf.assign_add(global_step, 1).op
        return sgd.apply_gradients(list(zip(gradients, var_list)), global_step=global_step)
