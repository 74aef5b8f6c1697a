"""The learning-rate range test (`finetune.py --find_lr`, docs/training.md), Leslie Smith's as fast.ai
popularised it: train with a rate rising exponentially from 1e-6 to 1, stop when the loss diverges,
suggest the rate at the steepest descent of the smoothed loss against log(rate).
"""
import collections
import shutil
import tempfile

import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import tf_setup
from finetune_alexnet.train import inputs
from finetune_alexnet.train import loop
from finetune_alexnet.train import runs

START_RATE = 1e-6
END_RATE = 1.0
DEFAULT_STEPS = 300
SMOOTHING = 0.9          # weight of the running average in the smoothed loss
DIVERGENCE_FACTOR = 4.0  # stop once the smoothed loss is this many times its lowest value

RangeTest = collections.namedtuple('RangeTest', ['rates', 'losses', 'smoothed', 'suggestion',
                                                 'stopped_early'])


def rate_at(step, steps, start=START_RATE, end=END_RATE):
    """The rate of step `step` (0-based) of `steps`: start * (end/start)^(step/(steps-1))."""
    return start * (end / start) ** (step / (steps - 1))


def smooth(losses, beta=SMOOTHING):
    """The bias-corrected exponential moving average of `losses`."""
    average, smoothed = 0.0, []
    for index, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**index))
    return np.array(smoothed)


def steepest_descent(rates, smoothed):
    """The rate where the smoothed loss falls fastest against log(rate) (None: too few points),
    leaving out the first tenth (the average still settles) and the last (the loss shoots up)."""
    if len(rates) < 5:
        return None
    slopes = np.gradient(np.asarray(smoothed), np.log(np.asarray(rates)))
    margin = max(1, len(rates) // 10)
    window = slopes[margin:len(rates) - margin]
    return float(rates[margin + int(np.argmin(window))])


def find_learning_rate(settings):
    """--find_lr: the range test on the training data; writes its plot and nothing else (no run)."""
    gpu = runs.use_gpu(settings)
    runs.read_class_names(settings)  # a wrong --class_names is refused here as in a run
    layers = runs.initial_weights(settings, resumed=False)
    order_seed = runs.new_order_seed(settings)
    spill_dir = tempfile.mkdtemp(prefix='find_lr_')  # no run folder: cached features go here
    try:
        with loop.seeded(settings.seed):
            train_data, val_data, steps_per_epoch = inputs.make_datasets(settings, order_seed)
            config = runs.training_config(settings, gpu, steps_per_epoch, train_data.labels)
            setup = inputs.build(settings, train_data, val_data, config, order_seed, spill_dir)
            with tf.Session(config=tf_setup.session_config(
                    gpu, xla=settings.xla, mixed_precision=settings.mixed_precision)) as session:
                session.run(tf.global_variables_initializer())
                runs.load_starting_weights(session, settings, setup.weights_model, layers)
                del layers
                if setup.fill_feature_cache:
                    setup.fill_feature_cache(session)
                result = range_test(
                    session, setup.graph, lambda epoch: setup.train.start(session, epoch),
                    {setup.graph.keep_prob: settings.keep_probability}, settings.find_lr_steps)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    plot(result, settings.find_lr)
    print(describe(result))
    print(f'plot of loss against learning rate: {settings.find_lr}')
    return 0


def range_test(session, graph, start_epoch, feed, steps=DEFAULT_STEPS):
    """A RangeTest of up to `steps` training steps with rising rates, as many epochs as they need
    (`start_epoch(epoch)` starts one); a non-finite loss (the NaN guard) counts as divergence."""
    rates, losses = [], []
    epoch, stopped_early = 1, False
    start_epoch(epoch)
    step = 0
    while step < steps:
        rate = rate_at(step, steps)
        try:
            _, loss = session.run([graph.train_op, graph.loss], {**feed, graph.learning_rate: rate})
        except tf.errors.OutOfRangeError:
            epoch += 1
            start_epoch(epoch)
            continue
        except tf.errors.InvalidArgumentError as error:
            if 'loss is not finite' not in str(error.message):
                raise
            stopped_early = True
            break
        rates.append(rate)
        losses.append(float(loss))
        step += 1
        smoothed = smooth(losses)
        if step > 1 and smoothed[-1] > DIVERGENCE_FACTOR * smoothed.min():
            stopped_early = True
            break
    smoothed = smooth(losses)
    return RangeTest(np.array(rates), np.array(losses), smoothed, steepest_descent(rates, smoothed),
                     stopped_early)


def describe(result):
    end = (f'the loss diverged at rate {result.rates[-1]:.2g}' if result.stopped_early
           else f'the rate reached {result.rates[-1]:.2g}' if len(result.rates) else 'no step ran')
    if result.suggestion is None:
        return f'learning-rate range test: {len(result.rates)} steps, too few to suggest a rate ({end})'
    return (f'learning-rate range test: {len(result.rates)} steps, {end}; suggested --learning_rate '
            f'{result.suggestion:.2g} (steepest descent of the loss)')


def plot(result, path):
    """Loss (raw and smoothed) against the rate on a log axis, the suggestion marked; saved to `path`."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    axes.plot(result.rates, result.losses, color='0.75', linewidth=1, label='loss')
    axes.plot(result.rates, result.smoothed, color='C0', label='smoothed')
    if result.suggestion is not None:
        axes.axvline(result.suggestion, color='C3', linestyle='--',
                     label=f'suggested {result.suggestion:.2g}')
    axes.set_xscale('log')
    axes.set_xlabel('learning rate')
    axes.set_ylabel('training loss')
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if len(finite):  # keep the diverging tail from squashing the interesting part
        axes.set_ylim(min(finite.min(), np.min(result.losses)) * 0.9,
                      max(finite[0], finite.min()) * DIVERGENCE_FACTOR * 1.1)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
