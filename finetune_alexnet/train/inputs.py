"""Where a run's batches come from: tf.data pipelines over the image lists or TFRecord shards, or pool5
features cached once when no conv layer learns; and each phase's graph and batches (TrainingSetup)."""
import collections
import dataclasses
import os

import tensorflow.compat.v1 as tf

import datagenerator
from alexnet import CONV_LAYERS
from finetune_alexnet import preprocessing
from finetune_alexnet import tfrecords
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.train import feature_cache
from finetune_alexnet.train import feature_store
from finetune_alexnet.train import graph as training_graph
from finetune_alexnet.train import loop


# One phase's batches (training or validation): start(session, epoch, skip_steps) (re)initialises
# the iterator skip_steps batches into the epoch's order (a resumed epoch; epoch None: validation);
# data: the ImageDataGenerator behind it, for naming unreadable images.
BatchSource = collections.namedtuple('BatchSource', 'start data')


class TrainingSetup(collections.namedtuple('TrainingSetup', [
        'graph', 'train', 'val', 'weights_model', 'image_labels', 'fill_feature_cache',
        'feature_files', 'pictures', 'later_phases'])):
    """The training graph and its two BatchSources (of phase 1; `for_phase` gives another's).

    weights_model: the AlexNet whose variables the weights file is loaded into; image_labels: the
    image pipeline's labels tensor (None on cached features), to count skipped images;
    fill_feature_cache: computes the cached features in a session (None without a cache);
    feature_files: the files that may hold them, removed when the run ends; pictures: what the
    validation pass fetches for TensorBoard's pictures (loop.picture_fetches); later_phases:
    {phase: TrainingSetup} of the phases after the first (--unfreeze_at).
    """

    def for_phase(self, phase):
        """The setup epochs of phase `phase` train with (of phase 1, this one)."""
        return self.later_phases.get(phase, self)


def generator_for(data_file):
    """The batches' generator for a list file, or for TFRecord shards (a folder or a pattern)."""
    return (tfrecords.ShardImageDataGenerator if tfrecords.is_shards(data_file)
            else datagenerator.ImageDataGenerator)


def make_datasets(settings, order_seed, workers=None):
    """The training and validation generators, and the number of steps per epoch. On several
    `workers` (distribute.Workers), this worker's rows of every batch."""
    common = dict(augment=settings.augment, skip_bad_images=settings.skip_bad_images,
                  max_pixels=settings.max_pixels,
                  **({'num_workers': workers.num_workers, 'worker_index': workers.index} if workers else {}))
    with tf.device('/cpu:0'):
        train_data = generator_for(settings.train_file)(
            settings.train_file, 'training', settings.batch_size, settings.num_classes, shuffle=True,
            seed=order_seed, **common)
        val_data = generator_for(settings.val_file)(
            settings.val_file, 'inference', settings.batch_size, settings.num_classes, shuffle=False,
            **common)
    steps_per_epoch = train_data.data_size // settings.batch_size
    if steps_per_epoch == 0:
        raise ToolkitError(f'{settings.train_file}: {train_data.data_size} images, fewer than one '
                           f'batch of --batch_size {settings.batch_size}')
    return train_data, val_data, steps_per_epoch


PIPELINE_DEVICE = '/cpu:0'  # where the input pipelines decode and resize, whatever runs the model

# images: float32 [b, 227, 227, 3], normalised on the model's device; labels: one-hot;
# training_init_op / validation_init_op: (re)start the shared iterator on either dataset.
DeviceBatches = collections.namedtuple('DeviceBatches', 'images labels training_init_op '
                                                        'validation_init_op')


def device_batches(train_dataset, val_dataset, device):
    """The batches of two datasets of (uint8 images, labels) on `device`, from one iterator that
    either initialiser points at; `preprocessing.normalize` makes the float32 images there. On a GPU
    both datasets are copied there (uint8: a quarter of float32's bytes) and two batches prefetched,
    so a step finds its batch waiting; the iterator of a copied dataset must live on its device."""
    if tf.DeviceSpec.from_string(device) != tf.DeviceSpec.from_string(PIPELINE_DEVICE):
        with tf.device(PIPELINE_DEVICE):
            train_dataset, val_dataset = (dataset.apply(tf.data.experimental.copy_to_device(device))
                                          for dataset in (train_dataset, val_dataset))
        with tf.device(device):
            train_dataset, val_dataset = train_dataset.prefetch(2), val_dataset.prefetch(2)
    with tf.device(device):
        iterator = tf.data.Iterator.from_structure(tf.data.get_output_types(train_dataset),
                                                   tf.data.get_output_shapes(train_dataset))
        pixels, labels = iterator.get_next()
        images = preprocessing.normalize(pixels)
        return DeviceBatches(images, labels, iterator.make_initializer(train_dataset),
                             iterator.make_initializer(val_dataset))


def build(settings, train_data, val_data, config, order_seed, spill_dir=None):
    """finetune.py's graph in one call (the iterator, AlexNet and its loss, the optimizer, the train
    ops, `training_setup`), for the learning-rate range test; no summaries."""
    images, labels, *init_ops = device_batches(train_data.data, val_data.data,
                                               config.model_device or PIPELINE_DEVICE)
    keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')
    model_and_loss = training_graph.alexnet_and_loss(keep_prob, config)
    graph = training_graph.train_ops(model_and_loss, images, labels, keep_prob,
                                     training_graph.optimizer(config), config)
    return training_setup(settings, graph, model_and_loss, config, train_data, val_data, labels,
                          init_ops, order_seed, spill_dir)


def training_setup(settings, graph, model_and_loss, config, train_data, val_data, labels, init_ops,
                   order_seed, spill_dir=None):
    """The TrainingSetup of each phase: `graph` (on the images of the iterator whose `labels` and
    (training, validation) `init_ops` are given) for the phases that train on images, and for
    those that train on cached pool5 features a graph of fc6-fc8 there (`model_and_loss` again,
    sharing the variables, the optimizer and its slots, the step and the moving average)."""
    training_init_op, validation_init_op = init_ops
    # The epoch number pins the shuffle order, so a resumed run sees the orders an uninterrupted one
    # would have seen.
    train = BatchSource(lambda session, epoch, skip_steps=0: session.run(
        training_init_op, {train_data.epoch: epoch,
                           train_data.skip: skip_steps * train_data.worker_batch_size}),
        train_data)
    val = BatchSource(lambda session, epoch, skip_steps=0: session.run(validation_init_op), val_data)
    pictures = loop.picture_fetches(graph)
    setups = {phase: TrainingSetup(graph.for_phase(phase), train, val, graph.model, labels, None, (),
                                   pictures, {}) for phase in graph.phases}
    cache_phases = tuple(phase for phase in settings.phases if settings.phase_uses_cache(phase))
    if not cache_phases:
        return _phases_joined(setups)

    # Cached features: the full model on images made them (its conv layers, and every variable
    # exists for the checkpoints); fc6-fc8 again on the cache, sharing their variables.
    image_model = graph.model
    dataset, feeder = feature_cache.cached_dataset(settings.num_classes, settings.batch_size,
                                                   drop_remainder=False)
    with tf.device('/cpu:0'):
        cache_iterator = tf.data.make_initializable_iterator(dataset)
        cached_features, cached_labels = cache_iterator.get_next()
    cache_graph = training_graph.summaries(training_graph.train_ops(
        model_and_loss, cached_features, cached_labels, graph.keep_prob, graph.shared,
        dataclasses.replace(config, phases=cache_phases), input_layer='flattened', reuse=True), config)
    cache = {}
    # Features too large for memory spill to files here (the run's folder unless told otherwise).
    feature_files = {name: os.path.join(spill_dir or settings.checkpoint_path, f'features_{name}.npy')
                     for name in ('train', 'val')}
    store = shared_feature_store(settings)

    def fill_feature_cache(session):
        conv_digest = conv_weights_digest(session, image_model) if store else None
        for name, data, init_op in (('train', train_data, training_init_op),
                                    ('val', val_data, validation_init_op)):
            # Shards name their records after the files they came from, but pre-resized ones hold
            # other pixels: their own digest keeps their features apart.
            shards = {'shards': data.records_digest} if hasattr(data, 'records_digest') else {}
            key = feature_store.set_key(
                conv_digest, data.paths, data.labels, settings.num_classes,
                {**feature_settings(settings, config), **shards}) if store else None
            stored, note = store.load(key) if store else (None, None)
            if note:
                print(f'note: {note}')
            if stored is not None:
                print(f'pool5 features of {data.txt_file}: from {store.root}')
                cache[name] = stored
                continue
            print(f'caching pool5 features of {data.txt_file}: '
                  f'{feature_cache.describe_size(data.data_size)}')
            try:
                cache[name] = feature_cache.extract(session, init_op, graph.features, labels,
                                                    data.data_size, settings.num_classes,
                                                    feature_files[name])
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.NotFoundError):
                raise data.unreadable_images_error() from None
            if store:
                store.save(key, *cache[name])

    def start_train(session, epoch, skip_steps=0):  # the order fixed by the run's seed and the epoch
        feed = feeder.start_epoch(*cache['train'], shuffle_seed=order_seed * 100_003 + epoch,
                                  skip_batches=skip_steps)
        session.run(cache_iterator.initializer, feed)

    def start_val(session, epoch, skip_steps=0):
        session.run(cache_iterator.initializer, feeder.start_epoch(*cache['val']))

    pictures = loop.picture_fetches(cache_graph)
    for phase in cache_phases:
        setups[phase] = TrainingSetup(
            cache_graph.for_phase(phase), BatchSource(start_train, train_data),
            BatchSource(start_val, val_data), image_model, None, fill_feature_cache,
            tuple(feature_files.values()), pictures, {})
    return _phases_joined(setups)


def _phases_joined(setups):
    """Phase 1's setup, holding the later phases'."""
    return setups[1]._replace(later_phases={phase: setup for phase, setup in setups.items()
                                            if phase != 1})


def shared_feature_store(settings):
    """The on-disk feature store of --cache_dir, or None ('none', or conv layers that start random)."""
    if settings.cache_dir == 'none' or set(settings.skip_layers) & set(CONV_LAYERS):
        return None  # randomly initialised conv layers make features no later run can reuse
    return feature_store.FeatureStore(settings.cache_dir, int(settings.cache_max_gb * 2**30))


def conv_weights_digest(session, model):
    """The digest of conv1-conv5 as the session holds them: what, with the images, makes pool5."""
    variables = {variable.op.name: variable for layer in CONV_LAYERS
                 for variable in model.variables[layer].values()}
    return feature_store.arrays_digest(session.run(variables))


def feature_settings(settings, config):
    """What besides weights and images changes the cached numbers."""
    return {'device': 'gpu' if config.use_gpu else 'cpu', 'mixed_precision': settings.mixed_precision,
            'xla': settings.xla, 'skip_bad_images': settings.skip_bad_images}


def image_paths(data):
    """The list's image paths as files on disk (relative lines are relative to the list's folder)."""
    folder = os.path.dirname(os.path.abspath(data.txt_file))
    return [os.path.join(folder, path) for path in data.paths]
