"""feature_cache: the cached-feature dataset serves every row once per epoch, in the feeder's order."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from finetune_alexnet.train import feature_cache


def epoch_batches(count, batch_size, drop_remainder, seeds):
    rng = np.random.default_rng(1)
    features = rng.standard_normal((count, feature_cache.FEATURE_SIZE)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, count)]
    epochs = []
    with tf.Graph().as_default():
        dataset, feeder = feature_cache.cached_dataset(3, batch_size, drop_remainder)
        iterator = tf.data.make_initializable_iterator(dataset)
        next_batch = iterator.get_next()
        with tf.Session() as session:
            for seed in seeds:
                session.run(iterator.initializer, feeder.start_epoch(features, labels, seed))
                batches = []
                while True:
                    try:
                        batches.append(session.run(next_batch))
                    except tf.errors.OutOfRangeError:
                        break
                epochs.append(batches)
    return features, labels, epochs


@pytest.mark.parametrize('drop_remainder', [False, True])
def test_each_epoch_serves_the_rows_in_the_seeded_order(drop_remainder):
    features, labels, epochs = epoch_batches(10, 4, drop_remainder, seeds=[7, 8, None])
    for seed, batches in zip([7, 8, None], epochs):
        order = np.arange(10)
        if seed is not None:
            np.random.default_rng(seed).shuffle(order)
        sizes = [len(batch_features) for batch_features, _ in batches]
        assert sizes == ([4, 4] if drop_remainder else [4, 4, 2])
        for number, (batch_features, batch_labels) in enumerate(batches):
            rows = np.sort(order[number * 4:number * 4 + 4])
            np.testing.assert_array_equal(batch_features, features[rows])
            np.testing.assert_array_equal(batch_labels, labels[rows])


def test_an_epoch_left_unfinished_restarts_cleanly():
    """finetune.py stops an epoch after its full batches and re-initialises for validation."""
    rng = np.random.default_rng(2)
    features = rng.standard_normal((9, feature_cache.FEATURE_SIZE)).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 9)]
    with tf.Graph().as_default():
        dataset, feeder = feature_cache.cached_dataset(2, 4, drop_remainder=False)
        iterator = tf.data.make_initializable_iterator(dataset)
        next_features, _ = iterator.get_next()
        with tf.Session() as session:
            session.run(iterator.initializer, feeder.start_epoch(features, labels, 3))
            session.run(next_features)
            session.run(iterator.initializer, feeder.start_epoch(features[:5], labels[:5]))
            served = [session.run(next_features) for _ in range(2)]
            with pytest.raises(tf.errors.OutOfRangeError):
                session.run(next_features)
    np.testing.assert_array_equal(np.concatenate(served), features[:5])


def test_large_caches_go_to_a_memory_map(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, 'MEMORY_LIMIT_BYTES', 2 * feature_cache.FEATURE_SIZE * 4)
    values = np.arange(5 * feature_cache.FEATURE_SIZE, dtype=np.float32).reshape(5, -1)
    with tf.Graph().as_default():
        dataset = tf.data.Dataset.from_tensor_slices((values, np.eye(5, dtype=np.float32))).batch(2)
        iterator = tf.data.make_initializable_iterator(dataset)
        features, labels = iterator.get_next()
        with tf.Session() as session:
            stored, stored_labels = feature_cache.extract(
                session, iterator.initializer, features, labels, 5, 5, str(tmp_path / 'cache.npy'))
    assert isinstance(stored.base, np.memmap) or isinstance(stored, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / 'cache.npy', mmap_mode='r'), values)
    np.testing.assert_array_equal(stored_labels, np.eye(5))
    assert 'on disk' in feature_cache.describe_size(5)
