"""The fine-tuning graph: AlexNet on one or more devices, loss, SGD step, accuracy and summaries.

Kept apart from finetune.py's command line so tests and the benchmarks build exactly the graph that
users train. Nothing here runs a session.
"""
import collections

import tensorflow.compat.v1 as tf

from alexnet import AlexNet

TrainingGraph = collections.namedtuple('TrainingGraph', [
    'x', 'y', 'keep_prob', 'model', 'logits', 'loss', 'accuracy', 'loss_sum', 'correct_count',
    'batch_count', 'train_op', 'train_summaries', 'global_step', 'learning_rate', 'var_list',
    'loss_is_finite'])


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


def build_training_graph(images, labels, num_classes, train_layers, skip_layers, weights_path,
                         learning_rate, optimizer='sgd', momentum=0.9, weight_decay=0.0,
                         decay_steps=0, decay_factor=0.1, num_devices=1, use_gpu=False,
                         model_device=None, input_layer=None, reuse=False):
    """Builds the model on `images` (a batch from tf.data) and everything one training step needs.

    `x`, `y` and `keep_prob` are placeholders with defaults: by default the batch flows straight from
    the tf.data iterator into the graph, and a caller may still feed its own arrays (the benchmarks'
    feed_dict baseline does). With `num_devices` > 1 the batch is split into equal towers, one per
    device, and their gradients are averaged, as the paper trained on two GPUs.

    With `input_layer` ('flattened' for cached pool5 features), `images` holds that layer's output
    and only the layers after it are built; `reuse` shares variables an earlier AlexNet created.
    """
    x = tf.placeholder_with_default(images, images.shape, name='x')
    y = tf.placeholder_with_default(labels, [None, num_classes], name='y')
    keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')
    global_step = tf.train.get_or_create_global_step()

    with tf.name_scope('learning_rate'):
        if decay_steps:
            rate = tf.train.exponential_decay(learning_rate, global_step, decay_steps, decay_factor,
                                              staircase=True)
        else:
            rate = tf.constant(learning_rate, tf.float32)
    if optimizer == 'momentum':
        sgd = tf.train.MomentumOptimizer(rate, momentum)
    else:
        sgd = tf.train.GradientDescentOptimizer(rate)

    devices = _tower_devices(num_devices, use_gpu)
    x_parts = tf.split(x, len(devices)) if len(devices) > 1 else [x]
    y_parts = tf.split(y, len(devices)) if len(devices) > 1 else [y]
    tower_logits, tower_losses, tower_grads = [], [], []
    model = var_list = None
    for index, device in enumerate(devices):
        with tf.device(device or model_device), tf.name_scope(f'tower_{index}' if index else None), \
                tf.variable_scope(tf.get_variable_scope(), reuse=reuse or index > 0):
            tower_model = AlexNet(x_parts[index], keep_prob, num_classes, skip_layers, weights_path,
                                  input_layer)
            if model is None:
                model = tower_model
                var_list = trained_variables(model, train_layers)
            logits = tower_model.fc8
            with tf.name_scope('cross_entropy'):
                loss = tf.reduce_mean(_per_example_loss(logits, y_parts[index]))
                if weight_decay:
                    # The paper's weight decay on the trained layers' weights (not biases).
                    decayed = [v for v in var_list if v.op.name.endswith('/weights')]
                    loss += weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in decayed])
            tower_logits.append(logits)
            tower_losses.append(loss)
            tower_grads.append(tf.gradients(loss, var_list))

    with tf.name_scope('cross_entropy'):
        loss = tf.add_n(tower_losses) / len(tower_losses) if len(devices) > 1 else tower_losses[0]
    with tf.name_scope('train'):
        if len(devices) > 1:
            gradients = [tf.add_n(list(grads)) / len(grads) for grads in zip(*tower_grads)]
        else:
            gradients = tower_grads[0]
    # A NaN/Inf loss or gradient stops the step before anything is updated or summarised: the update
    # and every summary depend on this check, so a histogram op never crashes on a NaN first.
    loss_is_finite = tf.debugging.assert_all_finite(
        tf.stack([loss, tf.linalg.global_norm(gradients)]), 'loss is not finite', name='loss_is_finite')
    with tf.control_dependencies([loss_is_finite]):
        with tf.name_scope('train'):
            train_op = sgd.apply_gradients(list(zip(gradients, var_list)), global_step=global_step)

        logits = tf.concat(tower_logits, axis=0) if len(devices) > 1 else tower_logits[0]
        with tf.name_scope('accuracy'):
            correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y, 1))
            accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
            correct_count = tf.reduce_sum(tf.cast(correct, tf.int64))
        with tf.name_scope('evaluation'):
            loss_sum = tf.reduce_sum(_per_example_loss(logits, y))
            batch_count = tf.shape(x, out_type=tf.int64)[0]

        summaries = [tf.summary.scalar('cross_entropy', loss), tf.summary.scalar('accuracy', accuracy),
                     tf.summary.scalar('learning_rate', rate)]
        for gradient, variable in zip(gradients, var_list):
            summaries.append(tf.summary.histogram(variable.op.name + '/gradient', gradient))
        for variable in var_list:
            summaries.append(tf.summary.histogram(variable.op.name, variable))
        train_summaries = tf.summary.merge(summaries)

    return TrainingGraph(x=x, y=y, keep_prob=keep_prob, model=model, logits=logits, loss=loss,
                         accuracy=accuracy, loss_sum=loss_sum, correct_count=correct_count,
                         batch_count=batch_count, train_op=train_op, train_summaries=train_summaries,
                         global_step=global_step, learning_rate=rate, var_list=var_list,
                         loss_is_finite=loss_is_finite)
