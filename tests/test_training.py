"""The training graph on in-memory batches: what changes, what stays, --num_gpus replicas (towers
inside a worker), NaN guard, decay."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from finetune_alexnet import tf_setup
from finetune_alexnet.train import graph as training
from alexnet import TRAINABLE_LAYERS


def batch(size=4, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-100, 100, (size, 227, 227, 3)).astype(np.float32)
    labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, size)]
    return images, labels


def build(num_classes=3, train_layers=('fc6', 'fc7', 'fc8'), num_devices=1, **kwargs):
    images = tf.placeholder(tf.float32, [None, 227, 227, 3])
    labels = tf.placeholder(tf.float32, [None, num_classes])
    config = training.TrainingConfig(
        num_classes=num_classes, train_layers=tuple(train_layers), skip_layers=TRAINABLE_LAYERS,
        learning_rate=kwargs.pop('learning_rate', 0.01), num_devices=num_devices,
        **{key: kwargs.pop(key) for key in list(kwargs) if key not in ('input_layer', 'reuse')})
    return training.build_training_graph(images, labels, config, **kwargs)


def one_step(num_devices, train_layers, optimizer='sgd', steps=1, weight_decay=0.0,
             learning_rate=0.01):
    images, labels = batch()
    with tf.Graph().as_default():
        tf.set_random_seed(5)
        graph = build(train_layers=train_layers, num_devices=num_devices, optimizer=optimizer,
                      weight_decay=weight_decay, learning_rate=learning_rate)
        # One thread: CPU convolution gradients are then bit-repeatable, so any difference is the replicas..
        config = tf_setup.session_config(logical_cpus=2, threads=1)
        with tf.Session(config=config) as session:
            session.run(tf.global_variables_initializer())
            before = session.run(graph.model.variables)
            losses, after = [], []
            for _ in range(steps):
                loss, _ = session.run([graph.loss, graph.train_op], {graph.x: images, graph.y: labels})
                losses.append(loss)
                after.append(session.run(graph.model.variables))
            step = session.run(graph.global_step)
    return losses, before, after[0], step


def test_only_trained_layers_change():
    _, before, after, step = one_step(1, ['fc7', 'fc8'])
    assert step == 1
    for layer in TRAINABLE_LAYERS:
        for kind in ('weights', 'biases'):
            same = np.array_equal(before[layer][kind], after[layer][kind])
            assert same == (layer not in ('fc7', 'fc8')), (layer, kind)


def test_plain_sgd_step_is_learning_rate_times_gradient():
    images, labels = batch()
    with tf.Graph().as_default():
        tf.set_random_seed(2)
        graph = build(train_layers=['fc8'], learning_rate=0.5)
        weights = graph.model.variables['fc8']['weights']
        gradient = tf.gradients(graph.loss, weights)[0]
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            feed = {graph.x: images, graph.y: labels}
            w0, g0 = session.run([weights, gradient], feed)
            session.run(graph.train_op, feed)
            w1 = session.run(weights)
    np.testing.assert_allclose(w1, w0 - 0.5 * g0, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_two_replicas_give_the_same_loss_and_updates_as_one_device():
    losses_one, before, after_one, _ = one_step(1, TRAINABLE_LAYERS, optimizer='momentum', steps=2,
                                                learning_rate=1e-4)
    losses_two, _, after_two, _ = one_step(2, TRAINABLE_LAYERS, optimizer='momentum', steps=2,
                                           learning_rate=1e-4)
    assert losses_one[1] < losses_one[0]  # it learns, so the updates compared below are real
    # The second loss comes after an update: float rounding, amplified by the net, allows 1e-3.
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-3)
    for layer in TRAINABLE_LAYERS:
        for kind in ('weights', 'biases'):
            # After the first step: the same gradients, summed over two replicas or taken at once.
            update_one = after_one[layer][kind] - before[layer][kind]
            update_two = after_two[layer][kind] - before[layer][kind]
            scale = np.abs(update_one).max()
            assert scale > 0
            # Updates are read back as differences of float32 weights: allow their rounding too.
            rounding = 2 * np.spacing(np.abs(before[layer][kind]).max())
            np.testing.assert_allclose(update_two, update_one, rtol=0,
                                       atol=1e-4 * scale + rounding, err_msg=f'{layer}/{kind}')


def test_replicas_hold_a_copy_of_every_weight_and_all_reduce_the_gradients():
    """--num_gpus replicas, not a parameter server: each device has its own convolutions and its own
    copy of every variable, updated there from the all-reduced gradients."""
    with tf.Graph().as_default() as graph:
        training_graph = build(num_devices=2)
        devices = {op.device.split('device:')[1] for op in graph.get_operations() if op.type == 'Conv2D'}
        variable = training_graph.model.variables['fc8']['weights']
        copies = [value.device.split('device:')[1] for value in variable.values]
        updates = {op.device.split('device:')[1] for op in graph.get_operations()
                   if op.type == 'ResourceApplyGradientDescent'}
        # Each copy's update takes the sum of both replicas' gradients (the CPU's all-reduce: a
        # sum on the first device, copied to each).
        for update in graph.get_operations():
            if update.type == 'ResourceApplyGradientDescent':
                sums = set()
                pending = [update.inputs[2].op]
                for _ in range(6):
                    sums |= {op for op in pending if op.type == 'AddN'}
                    pending = [tensor.op for op in pending for tensor in op.inputs]
                assert len(sums) == 1, update.name
                summed = {tensor.op.device.split('device:')[1] for tensor in sums.pop().inputs}
                assert summed == {'CPU:0', 'CPU:1'}, update.name
    assert devices == {'CPU:0', 'CPU:1'}
    assert copies == ['CPU:0', 'CPU:1']
    assert updates == {'CPU:0', 'CPU:1'}


@pytest.mark.parametrize('use_gpu, reduction', [(True, 'NcclAllReduce'), (False, 'ReductionToOneDevice')])
def test_replicas_all_reduce_by_nccl_on_gpus(use_gpu, reduction):
    config = training.TrainingConfig(num_classes=3, train_layers=('fc8',), num_devices=4,
                                     use_gpu=use_gpu)
    strategy = training.replica_strategy(config)
    assert type(strategy.extended._cross_device_ops).__name__ == reduction
    kind = 'GPU' if use_gpu else 'CPU'
    assert [device.split('device:')[1] for device in strategy.extended.worker_devices] == \
        [f'{kind}:{index}' for index in range(4)]


@pytest.mark.slow
def test_nan_loss_stops_the_step_before_any_update_or_summary():
    images, labels = batch()
    labels[0, 0] = np.nan  # a NaN image pixel may vanish in ReLU/max-pool; a NaN label cannot
    with tf.Graph().as_default():
        graph = build()
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            before = session.run(graph.model.variables)
            with pytest.raises(tf.errors.InvalidArgumentError, match='loss is not finite'):
                session.run([graph.train_op, graph.train_summaries], {graph.x: images, graph.y: labels})
            after = session.run(graph.model.variables)
            assert session.run(graph.global_step) == 0
    for layer in TRAINABLE_LAYERS:
        np.testing.assert_array_equal(before[layer]['weights'], after[layer]['weights'])


@pytest.mark.slow
def test_weight_decay_adds_half_squared_norm_of_trained_weights():
    images, labels = batch()
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        plain = build(train_layers=['fc8'])
        with tf.variable_scope('decayed'):
            decayed = build(train_layers=['fc8'], weight_decay=5e-4)
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            for layer in TRAINABLE_LAYERS:  # the same weights in both copies
                for kind in ('weights', 'biases'):
                    decayed.model.variables[layer][kind].load(
                        session.run(plain.model.variables[layer][kind]), session)
            feed = {plain.x: images, plain.y: labels, decayed.x: images, decayed.y: labels}
            loss, loss_decayed, fc8 = session.run(
                [plain.loss, decayed.loss, plain.model.variables['fc8']['weights']], feed)
    assert loss_decayed - loss == pytest.approx(5e-4 * 0.5 * np.sum(np.float64(fc8) ** 2), rel=1e-3)


def test_step_decay_of_the_learning_rate():
    with tf.Graph().as_default():
        graph = build(learning_rate=0.1, decay_steps=3, decay_factor=0.5)
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            rates = []
            for step in range(7):
                graph.global_step.load(step, session)
                rates.append(session.run(graph.learning_rate))
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025], rtol=1e-6)


def test_evaluation_counts_are_exact_for_a_partial_batch():
    images, labels = batch(size=3)
    with tf.Graph().as_default():
        graph = build()
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            logits, loss_sum, correct, count = session.run(
                [graph.logits, graph.loss_sum, graph.correct_count, graph.batch_count],
                {graph.x: images, graph.y: labels})
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert count == 3
    assert loss_sum == pytest.approx(-(labels * log_probs).sum(), rel=1e-5)
    assert correct == (logits.argmax(1) == labels.argmax(1)).sum()


@pytest.mark.parametrize('size', [1, 3])
def test_replicas_count_a_partial_batch_exactly(size):
    images, labels = batch(size=size)
    results = []
    for num_devices in (1, 2):
        with tf.Graph().as_default():
            tf.set_random_seed(1)
            graph = build(num_devices=num_devices)
            with tf.Session(config=tf_setup.session_config(logical_cpus=2, threads=1)) as session:
                session.run(tf.global_variables_initializer())
                results.append(session.run([graph.loss_sum, graph.correct_count, graph.loss,
                                            graph.batch_count], {graph.x: images, graph.y: labels}))
    (sum_one, correct_one, loss_one, count_one), (sum_two, correct_two, loss_two, count_two) = results
    assert count_one == count_two == size and correct_one == correct_two
    assert sum_two == pytest.approx(sum_one, rel=1e-5) and loss_two == pytest.approx(loss_one, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('shape', [(9216, 4096), (4096, 2), (3, 3, 48, 256), (4096,), (2,)])
def test_histogram_sample_is_a_strided_sample_that_reaches_every_column(shape):
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as session:
        sample = session.run(training.histogram_sample(tf.constant(values)))
    size = values.size
    assert sample.size <= training.HISTOGRAM_SAMPLE_SIZE
    if size <= training.HISTOGRAM_SAMPLE_SIZE:
        np.testing.assert_array_equal(sample.reshape(shape), values)
        return
    stride = int(np.flatnonzero(values.reshape(-1) == sample[1])[0])
    np.testing.assert_array_equal(sample, values.reshape(-1)[::stride])
    columns = np.arange(size)[::stride] % shape[-1]
    assert len(np.unique(columns)) == shape[-1]  # no output unit is left out


def test_histogram_summaries_hold_samples_of_the_large_tensors():
    images, labels = batch()
    with tf.Graph().as_default():
        graph = build()
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            serialized, fc6 = session.run([graph.train_summaries, graph.model.variables['fc6']],
                                          {graph.x: images, graph.y: labels})
    histograms = {value.tag: value.histo for value in tf.Summary.FromString(serialized).value
                  if value.HasField('histo')}
    assert set(histograms) == {f'{layer}/{kind}{suffix}' for layer in ('fc6', 'fc7', 'fc8')
                               for kind in ('weights', 'biases') for suffix in ('', '/gradient')}
    assert 0.9 * training.HISTOGRAM_SAMPLE_SIZE < histograms['fc6/weights'].num \
        <= training.HISTOGRAM_SAMPLE_SIZE
    assert histograms['fc8/biases'].num == 3 and histograms['fc8/biases/gradient'].num == 3
    assert histograms['fc6/biases'].num == 4096
    weights = fc6['weights'].reshape(-1)
    assert weights.min() <= histograms['fc6/weights'].min <= histograms['fc6/weights'].max <= weights.max()


def mixed_precision_steps(features, mixed_precision, steps=2, optimizer='momentum'):
    """Steps of fc6-fc8 on pool5-sized `features` (a plain float32 session: no grappler rewrite, so
    only the loss scaling differs between mixed_precision on and off)."""
    labels = np.eye(3, dtype=np.float32)[np.arange(len(features)) % 3]
    with tf.Graph().as_default():
        tf.set_random_seed(4)
        config = training.TrainingConfig(num_classes=3, train_layers=('fc6', 'fc7', 'fc8'),
                                         skip_layers=TRAINABLE_LAYERS, learning_rate=0.01,
                                         optimizer=optimizer, mixed_precision=mixed_precision)
        graph = training.build_training_graph(tf.constant(features), tf.constant(labels), config,
                                              input_layer='flattened')
        with tf.Session(config=tf_setup.session_config(threads=1)) as session:
            session.run(tf.global_variables_initializer())
            before = session.run(graph.model.variables)
            for _ in range(steps):
                _, summary = session.run([graph.train_op, graph.train_summaries])
            return (before, session.run(graph.model.variables), session.run(graph.global_step),
                    tf.Summary.FromString(summary))


@pytest.mark.slow
def test_loss_scaling_changes_no_update_when_nothing_overflows():
    features = np.random.default_rng(0).uniform(0, 30, (6, 9216)).astype(np.float32)
    _, plain, plain_step, _ = mixed_precision_steps(features, False)
    _, scaled, scaled_step, summary = mixed_precision_steps(features, True)
    assert plain_step == scaled_step == 2
    for layer in ('fc6', 'fc7', 'fc8'):
        for kind in ('weights', 'biases'):  # scaling by a power of two is exact in float32
            np.testing.assert_allclose(scaled[layer][kind], plain[layer][kind], rtol=1e-6, atol=1e-9)
    scalars = {value.tag: value.simple_value for value in summary.value if value.HasField('simple_value')}
    assert scalars['loss_scale'] == 2.0**15


@pytest.mark.slow
def test_an_overflowing_step_is_skipped_and_halves_the_loss_scale():
    # fc7's outputs near 1e35 make fc8's gradient, times the loss scale 2^15, overflow float32,
    # while the loss itself stays finite.
    features = np.full((6, 9216), 1e35, np.float32)
    before, after, step, summary = mixed_precision_steps(features, True, steps=1, optimizer='sgd')
    assert step == 1  # counted, so epochs keep their length
    for layer in ('fc6', 'fc7', 'fc8'):
        np.testing.assert_array_equal(after[layer]['weights'], before[layer]['weights'])
    scalars = {value.tag: value.simple_value for value in summary.value if value.HasField('simple_value')}
    assert np.isfinite(scalars['cross_entropy'])
    histogram = {value.tag: value.histo for value in summary.value if value.HasField('histo')}
    assert histogram['fc8/weights/gradient'].num > 0  # written, Inf replaced, instead of crashing
    _, _, _, second = mixed_precision_steps(features, True, steps=2, optimizer='sgd')
    scales = {value.tag: value.simple_value for value in second.value if value.HasField('simple_value')}
    assert scales['loss_scale'] < 2.0**15


def features_graph(num_classes=3, train_layers=('fc7', 'fc8'), **config):
    """fc6-fc8 on a pool5-features placeholder: the loss and update arithmetic without the convs."""
    features = tf.placeholder(tf.float32, [None, 9216])
    labels = tf.placeholder(tf.float32, [None, num_classes])
    settings = dict(num_classes=num_classes, train_layers=tuple(train_layers),
                    skip_layers=TRAINABLE_LAYERS, learning_rate=0.1)
    settings.update(config)
    return training.build_training_graph(features, labels, training.TrainingConfig(**settings),
                                         input_layer='flattened')


def features_batch(size=6, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, size)]
    return rng.uniform(0, 3, (size, 9216)).astype(np.float32), labels


def log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_balanced_class_weights_are_scikit_learns_and_average_one_per_image():
    labels = [0, 0, 0, 1, 1, 2]
    weights = training.balanced_class_weights(labels, 3)
    # scikit-learn's compute_class_weight('balanced'): n / (K * count) = 6 / (3 * [3, 2, 1]).
    np.testing.assert_allclose(weights, [2 / 3, 1.0, 2.0])
    assert np.mean(np.array(weights)[labels]) == pytest.approx(1.0)  # per image, not per class
    # 12 against 4 (the example): 16 / (2 * 12) and 16 / (2 * 4).
    np.testing.assert_allclose(training.balanced_class_weights([0] * 12 + [1] * 4, 2), [2 / 3, 2.0])
    # 99 against 1: still an average weight of 1 per image, so the learning rate keeps its size.
    weights = np.array(training.balanced_class_weights([0] * 99 + [1], 2))
    assert np.mean(weights[[0] * 99 + [1]]) == pytest.approx(1.0)
    # A class without a training image gets the neutral weight 1; the others still average 1.
    np.testing.assert_allclose(training.balanced_class_weights([0, 1, 1, 1], 3), [2.0, 2 / 3, 1.0])


@pytest.mark.parametrize('num_devices', [1, 2])
def test_class_weights_weight_each_example_loss_as_computed_by_hand(num_devices):
    features, labels = features_batch(size=5)  # 5 over 2 replicas: a padded row, which must weigh 0
    class_weights = (0.25, 2.0, 0.75)
    with tf.Graph().as_default():
        tf.set_random_seed(4)
        graph = features_graph(class_weights=class_weights, num_devices=num_devices)
        with tf.Session(config=tf_setup.session_config(logical_cpus=2)) as session:
            session.run(tf.global_variables_initializer())
            loss, logits, unweighted_sum = session.run(
                [graph.loss, graph.logits, graph.loss_sum], {graph.x: features, graph.y: labels})
    cross_entropy = -(labels * log_softmax(logits)).sum(axis=1)
    example_weights = np.array(class_weights)[labels.argmax(axis=1)]
    assert loss == pytest.approx((example_weights * cross_entropy).mean(), rel=1e-5)
    # Validation's loss stays unweighted, so runs with and without weights compare.
    assert unweighted_sum == pytest.approx(cross_entropy.sum(), rel=1e-5)


@pytest.mark.parametrize('optimizer', ['sgd', 'momentum'])
def test_lr_mult_scales_that_layers_update_exactly(optimizer):
    """Caffe's lr_mult: fc8's step is 10 x rate x gradient (weight decay included), fc7's is not
    scaled. (Momentum's first step is rate x gradient too; it carries the scaled gradient on.)"""
    features, labels = features_batch()
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        graph = features_graph(lr_mult=(('fc8', 10.0),), learning_rate=0.01, optimizer=optimizer,
                               weight_decay=5e-3)
        weights = {layer: graph.model.variables[layer]['weights'] for layer in ('fc7', 'fc8')}
        gradients = dict(zip(weights, tf.gradients(graph.loss, list(weights.values()))))
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            feed = {graph.x: features, graph.y: labels}
            before, grads = session.run([weights, gradients], feed)
            session.run(graph.train_op, feed)
            after = session.run(weights)
    assert np.abs(grads['fc8']).max() > 1e-3  # a real step
    np.testing.assert_allclose(after['fc8'], before['fc8'] - 0.01 * 10 * grads['fc8'], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(after['fc7'], before['fc7'] - 0.01 * grads['fc7'], rtol=1e-5, atol=1e-8)


def test_the_learning_rate_can_be_fed_for_one_step():
    features, labels = features_batch()
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        graph = features_graph(train_layers=('fc8',), learning_rate=0.01)
        weights = graph.model.variables['fc8']['weights']
        gradient = tf.gradients(graph.loss, weights)[0]
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            feed = {graph.x: features, graph.y: labels}
            w0, g0 = session.run([weights, gradient], feed)
            session.run(graph.train_op, {**feed, graph.learning_rate: 0.3})
            w1 = session.run(weights)
            assert session.run(graph.learning_rate) == pytest.approx(0.01)  # fed for that step only
    np.testing.assert_allclose(w1, w0 - 0.3 * g0, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_a_training_step_under_the_float16_rewrite_is_finite_and_close_to_float32():
    """Every layer trained, He-scaled weights (conv1 near 400, above float16's squared range) and the
    emulated float16 rewrite (a GPU's --mixed_precision): the loss agrees with float32 to 1e-3, and
    once the loss scale has dropped below the first steps' overflow the update is finite and points
    where float32's does (cosine > 0.99 per layer)."""
    from test_alexnet import float16_rewrite_config, he_weights
    images, labels = batch(size=2)
    runs = []
    for config in (tf_setup.session_config(), float16_rewrite_config()):
        with tf.Graph().as_default():
            tf.set_random_seed(3)
            graph = build(train_layers=TRAINABLE_LAYERS, mixed_precision=True, learning_rate=1e-3)
            with tf.Session(config=config) as session:
                session.run(tf.global_variables_initializer())
                he_weights(graph.model, session, TRAINABLE_LAYERS[:7])
                before = session.run(graph.model.variables)
                for _ in range(16):  # dynamic loss scaling: an overflowing step halves the scale
                    loss, conv1, _ = session.run(
                        [graph.loss, graph.model.end_points['conv1'], graph.train_op],
                        {graph.x: images, graph.y: labels})
                    after = session.run(graph.model.variables)
                    if not np.array_equal(after['fc8']['weights'], before['fc8']['weights']):
                        break
                runs.append((loss, conv1.max(), before, after))
    (loss32, conv32, before, after32), (loss16, conv16, _, after16) = runs
    assert conv32 > 256 and conv16 > 256
    assert np.isfinite(loss16) and abs(loss16 - loss32) < 1e-3 * abs(loss32)
    for layer in TRAINABLE_LAYERS:
        for kind in ('weights', 'biases'):
            assert np.isfinite(after16[layer][kind]).all(), (layer, kind)
            update16 = (after16[layer][kind] - before[layer][kind]).ravel()
            update32 = (after32[layer][kind] - before[layer][kind]).ravel()
            cosine = update16 @ update32 / (np.linalg.norm(update16) * np.linalg.norm(update32))
            assert cosine > 0.99, (layer, kind, cosine)


def features_steps(num_devices, size, steps=2, initial=None):
    """`steps` momentum steps of fc7-fc8 on a batch of `size` pool5 features over `num_devices`
    logical CPU devices, starting from `initial` (fed to the initial values, as the weights file
    is loaded): (losses, weights before, weights after)."""
    features, labels = features_batch(size=size)
    with tf.Graph().as_default():
        tf.set_random_seed(4)
        graph = features_graph(train_layers=('fc7', 'fc8'), num_devices=num_devices,
                               optimizer='momentum', learning_rate=1e-4, weight_decay=5e-4)
        variables = {layer: graph.model.variables[layer] for layer in ('fc7', 'fc8')}
        feed = {} if initial is None else {
            variables[layer][kind].initial_value: initial[layer][kind]
            for layer in variables for kind in ('weights', 'biases')}
        with tf.Session(config=tf_setup.session_config(logical_cpus=num_devices, threads=1)) as session:
            session.run(tf.global_variables_initializer(), feed)
            before = session.run(variables)
            losses = [session.run([graph.loss, graph.train_op], {graph.x: features, graph.y: labels})[0]
                      for _ in range(steps)]
            after = session.run(variables)
            copies = [session.run(value) for value in variables['fc8']['weights'].values] \
                if num_devices > 1 else None
    return losses, before, after, copies


@pytest.mark.parametrize('num_devices, size', [(2, 6), (2, 5), (3, 7)])
def test_replicas_train_as_one_device_also_on_a_partial_batch(num_devices, size):
    """Two momentum steps with weight decay: the replicas' losses and weights equal one device's to
    1e-6, also when the batch does not split evenly (a padding row, whose gradient must be 0, not
    softmax - 0), and every replica's copy of the weights is the same."""
    losses_one, before, after_one, _ = features_steps(1, size)
    losses, before_replicas, after, copies = features_steps(num_devices, size, initial=before)
    for layer in after:
        np.testing.assert_array_equal(before_replicas[layer]['weights'], before[layer]['weights'])
    assert losses_one[1] < losses_one[0]
    np.testing.assert_allclose(losses, losses_one, rtol=1e-6)
    for layer in after:
        for kind in ('weights', 'biases'):
            update_one = after_one[layer][kind] - before[layer][kind]
            update = after[layer][kind] - before[layer][kind]
            scale = np.abs(update_one).max()
            assert scale > 0
            rounding = 2 * np.spacing(np.abs(before[layer][kind]).max())
            np.testing.assert_allclose(update, update_one, rtol=0, atol=1e-6 * scale + rounding,
                                       err_msg=f'{layer}/{kind}')
    for copy in copies[1:]:
        np.testing.assert_array_equal(copy, copies[0])


@pytest.mark.parametrize('num_devices', [1, 2])
def test_the_graphs_features_are_the_whole_batchs_pool5(num_devices):
    """What the feature cache stores: every image's pool5, not the first device's part (which is
    all the model's own end points hold over several devices), and no padding row."""
    images, labels = batch(size=3)
    with tf.Graph().as_default():
        tf.set_random_seed(6)
        graph = build(num_devices=num_devices)
        reference = graph.model.end_points['flattened']
        with tf.Session(config=tf_setup.session_config(logical_cpus=2, threads=1)) as session:
            session.run(tf.global_variables_initializer())
            features, first_part = session.run([graph.features, reference],
                                               {graph.x: images, graph.y: labels})
            # Each image alone: on two devices, the first device's part is that image.
            alone = np.concatenate([session.run(reference, {graph.x: images[i:i + 1],
                                                            graph.y: labels[i:i + 1]})
                                    for i in range(3)])
    assert features.shape == (3, 9216)
    assert first_part.shape == ((3, 9216) if num_devices == 1 else (2, 9216))
    np.testing.assert_allclose(features, alone, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(features[:len(first_part)], first_part, rtol=1e-6, atol=1e-6)
