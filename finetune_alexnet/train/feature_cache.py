"""Cached pool5 features: when every convolutional layer is frozen, compute them once, not every epoch
(docs/training.md). They stay in memory up to `MEMORY_LIMIT_BYTES`, beyond that in a file in the
checkpoint folder, read back through a memory map; feature_store keeps them for later runs.
"""
import os

import numpy as np
import tensorflow.compat.v1 as tf

from alexnet import CONV_LAYERS, layer_table

FEATURE_SIZE = next(int(np.prod(shape)) for name, shape, _, _ in layer_table() if name == 'pool5')
MEMORY_LIMIT_BYTES = 4 * 2**30


def can_cache(train_layers, augment, mixup=0.0, cutmix=0.0):
    """Whether pool5 is constant over the run: no conv layer learns, no image is augmented or mixed."""
    return not (augment or mixup or cutmix or set(train_layers) & set(CONV_LAYERS))


def describe_size(count):
    size = count * FEATURE_SIZE * 4
    where = 'in memory' if size <= MEMORY_LIMIT_BYTES else 'on disk'
    return f'{count} x {FEATURE_SIZE} float32 = {size / 2**30:.2f} GiB {where}'


def extract(session, init_op, features, labels, count, num_classes, cache_file):
    """(features [count, 9216], one-hot labels [count, num_classes]) of `features` over the whole
    (unshuffled) data set, the features a memory map on `cache_file` beyond MEMORY_LIMIT_BYTES."""
    if count * FEATURE_SIZE * 4 > MEMORY_LIMIT_BYTES:
        # Whatever sits at the path goes first: a symlink left there would be written through.
        remove_cache_file(cache_file)
        store = np.lib.format.open_memmap(cache_file, mode='w+', dtype=np.float32,
                                          shape=(count, FEATURE_SIZE))
    else:
        store = np.empty((count, FEATURE_SIZE), np.float32)
    label_store = np.empty((count, num_classes), np.float32)
    session.run(init_op)
    filled = 0
    while True:
        try:
            batch_features, batch_labels = session.run([features, labels])
        except tf.errors.OutOfRangeError:
            break
        store[filled:filled + len(batch_features)] = batch_features
        label_store[filled:filled + len(batch_labels)] = batch_labels
        filled += len(batch_features)
    # Fewer than `count` when unreadable images were skipped.
    return store[:filled], label_store[:filled]


def cached_dataset(num_classes, batch_size, drop_remainder):
    """A dataset of (features, labels) batches gathered in NumPy from the arrays a `Feeder` points it
    at (they never enter the graph), in the order the feeder chose for the epoch; its iterator's
    initializer takes the feed `Feeder.start_epoch` returns."""
    feeder = Feeder(batch_size, drop_remainder)

    @tf.autograph.experimental.do_not_convert  # plain ops: AutoGraph would only re-parse the source
    def gather(index):
        features, labels = tf.numpy_function(feeder.batch, [index], (tf.float32, tf.float32),
                                             name='cached_batch')
        features.set_shape([None, FEATURE_SIZE])
        labels.set_shape([None, num_classes])
        return features, labels

    dataset = tf.data.Dataset.range(feeder.batch_count).map(gather)
    # Nothing here for tf.data's autotuner to tune, and with it on, every re-initialisation of the
    # iterator waits for the autotuner's thread of the previous epoch (bench/RESULTS.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options), feeder


class Feeder:
    """Holds the cached arrays and the order of the current epoch."""

    def __init__(self, batch_size, drop_remainder):
        self.batch_size, self.drop_remainder = batch_size, drop_remainder
        self.features = self.labels = self.order = None
        self.first_batch = 0
        self.batch_count = tf.placeholder(tf.int64, [], name='cached_batch_count')

    def start_epoch(self, features, labels, shuffle_seed=None, skip_batches=0):
        """Points the feeder at `features` and `labels`, `skip_batches` into the epoch's order (a run
        resumed mid-epoch); returns the feed for the iterator's initializer."""
        self.features, self.labels = features, labels
        self.order = np.arange(len(features))
        if shuffle_seed is not None:
            np.random.default_rng(shuffle_seed).shuffle(self.order)
        count = len(features)
        full, rest = divmod(count, self.batch_size)
        total = full if self.drop_remainder or not rest else full + 1
        self.first_batch = min(skip_batches, total)
        return {self.batch_count: total - self.first_batch}

    def batch(self, index):
        start = (int(index) + self.first_batch) * self.batch_size
        # Sorted indices read a memory map front to back; the batch's order does not matter.
        rows = np.sort(self.order[start:start + self.batch_size])
        return self.features[rows], self.labels[rows]


def remove_cache_file(cache_file):
    """Removes the spill file, or a symlink at its path (the link itself, never its target)."""
    if os.path.lexists(cache_file):
        os.remove(cache_file)
