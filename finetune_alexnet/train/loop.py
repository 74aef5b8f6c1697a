"""What the epoch loop of finetune.py calls around its session.run calls: the steps' failures as one
line, a validation pass, and seeding."""
import contextlib
import math
import re

import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet.errors import ToolkitError

_STEP_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.DataLossError,
                tf.errors.NotFoundError)


@contextlib.contextmanager
def step_errors(batches, nan_message):
    """Around an epoch's training steps: the batches running out early (unreadable images skipped)
    ends the block quietly; an unreadable image becomes a one-line ToolkitError naming it, a NaN loss
    one saying `nan_message()` (called then, so it can name the step)."""
    try:
        yield
    except tf.errors.OutOfRangeError:
        pass
    except _STEP_ERRORS as error:
        if 'loss is not finite' in str(error.message):
            raise ToolkitError(nan_message()) from None
        raise step_error(error, batches) from None


def step_error(error, batches):
    """A one-line ToolkitError for a failed session.run: an unreadable image, or TensorFlow's reason."""
    if error.op is None or error.op.type.startswith(('Iterator', 'MakeIterator')):
        return batches.data.unreadable_images_error()
    reasons = [line.strip() for line in str(error.message).splitlines()
               if re.match(r'\s*(\(\d+\) )?[A-Z_]+: ', line)] or ['(no reason given)']
    return ToolkitError(f'TensorFlow stopped the step in {error.op.name}: {reasons[0]}')


def first_loss_note(loss, num_classes):
    """A fresh classifier's first loss is about ln(num_classes); far from it, the start is off: a
    note saying so (None otherwise)."""
    expected = math.log(num_classes)
    if abs(loss - expected) > max(1.0, 0.5 * expected):
        return (f"note: the first loss, {loss:.3f}, is far from ln({num_classes}) = {expected:.3f}: "
                "the new layers start with large outputs; if the loss does not fall, lower the "
                "learning rate")
    return None


def count_remaining_images(session, labels):
    """Images left in the epoch after its last full step (with --skip_bad_images, to count skips)."""
    remaining = 0
    while True:
        try:
            remaining += len(session.run(labels))
        except tf.errors.OutOfRangeError:
            return remaining


def validate(session, graph, batches, outputs=None, picture_fetches=None, workers=None):
    """Loss, accuracy and image count over every validation image, the last partial batch weighted by
    its size; with a moving average of the weights (--ema_decay), of the averages.

    With `outputs` (a summaries.ValidationOutputs), the same run calls also fetch `picture_fetches`
    (each image's class probabilities and label, and fc7 while the projector wants rows) for the
    pictures. On several `workers` each validates its rows of every batch, and the sums and
    `outputs` are joined (Workers.join_validation): one machine's numbers.
    """
    loss_sum = correct = count = 0
    metrics = [graph.loss_sum, graph.correct_count, graph.batch_count]
    with averaged_weights(session, graph):
        batches.start(session, None)
        while True:
            fetches = {'metrics': metrics}
            if outputs is not None:
                fetches.update({name: tensor for name, tensor in picture_fetches.items()
                                if name != 'features' or outputs.wants_features})
            try:
                result = session.run(fetches)
            except tf.errors.OutOfRangeError:
                break
            except _STEP_ERRORS as error:  # DataLoss: a damaged TFRecord shard
                raise step_error(error, batches) from None
            if outputs is not None:
                outputs.add(result['probabilities'], result['labels'], result.get('features'))
            batch_loss, batch_correct, batch_count = result['metrics']
            loss_sum += float(batch_loss)
            correct += int(batch_correct)
            count += int(batch_count)
    if workers is not None:
        loss_sum, correct, count = workers.join_validation(session, (loss_sum, correct, count),
                                                           outputs, batches.data)
    if count == 0:
        raise ToolkitError(f'{batches.data.txt_file}: no validation image could be read')
    return loss_sum / count, correct / count, int(count)


@contextlib.contextmanager
def averaged_weights(session, graph):
    """The trained variables hold their moving averages inside the block (nothing without one)."""
    if graph.averages is None:
        yield
        return
    session.run(graph.averages.swap_in)
    try:
        yield
    finally:
        session.run(graph.averages.swap_out)


def start_averages(session, graph):
    """The moving averages start at the weights a new run starts from (after they are loaded)."""
    if graph.averages is not None:
        session.run(graph.averages.start)


@contextlib.contextmanager
def seeded(seed):
    """Seed every random choice, and make TensorFlow's kernels deterministic (None: leave both):
    without it, gradient kernels may sum in varying order, and two seeded runs drift apart. The
    switch is process-wide, so it is put back afterwards (tests, notebooks run more than one)."""
    if seed is None:
        yield
        return
    tf.set_random_seed(seed)
    np.random.seed(seed)
    # tf.config.experimental.enable_op_determinism is not in compat.v1, and its state and the switch
    # off are not exported at all: all three live in TensorFlow's config module.
    from tensorflow.python.framework import config as tf_config
    was_enabled = tf_config.is_op_determinism_enabled()
    tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def picture_fetches(graph):
    """What the validation pass fetches besides its metrics, for the pictures and the projector."""
    with tf.name_scope('validation_outputs'):
        return {'probabilities': tf.nn.softmax(graph.logits), 'labels': tf.argmax(graph.y, 1),
                'features': graph.model.end_points['fc7']}
