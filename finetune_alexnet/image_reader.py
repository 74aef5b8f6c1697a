"""The one input pipeline behind both readers of labelled images: a list file's (datagenerator.py's
`ImageDataGenerator`) and TFRecord shards' (tfrecords.py's `ShardImageDataGenerator`).

What differs is the source of an image's bytes: `FileSource` (a list's files) or
`tfrecords.RecordSource` (records read at their offsets). A source has a length, names an image
(`where`), finds from headers the images over the pixel limit (`oversized`) and those that fail
undecoded (`known_bad`), gives a dataset of what `decode` takes (`elements`) and one image's bytes
(`alone`). The order, crops, batches, skipped images and errors live here once.
"""
import os

import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import image_header
from finetune_alexnet import preprocessing
from finetune_alexnet import tf_setup
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.image_lists import plural

# The pipeline's functions are plain TensorFlow ops (Python `if`s on settings, tf.cond on tensors):
# AutoGraph would only re-parse their source, which costs about a second of every command's start.
NOT_CONVERTED = tf.autograph.experimental.do_not_convert

MODES = ('training', 'inference')
# What session.run raises when an image cannot be read: a corrupt or truncated file, or one that
# was deleted after the list was checked.
IMAGE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError)
SHOWN_PROBLEMS = 5  # an error names this many problems and counts the rest


def summarize(problems):
    """'a; b; c' for the first few problems, then 'and N more'."""
    shown = '; '.join(problems[:SHOWN_PROBLEMS])
    hidden = len(problems) - SHOWN_PROBLEMS
    return shown + (f'; and {hidden} more' if hidden > 0 else '')


def error_reason(error):
    """The line of a TensorFlow OpError that says what went wrong, without graph and node details."""
    lines = [line.strip() for line in str(error.message).splitlines()]
    useful = [line for line in lines if line and not line.startswith(
        ('[[', 'File ', 'Graph execution', 'Detected at node', 'Node:'))]
    reason = useful[-1] if useful else str(error.message).strip()
    # A check of ours (tf.debugging.Assert: the pixel limit) says its message in brackets.
    if reason.startswith('assertion failed: [') and reason.endswith(']'):
        reason = reason[len('assertion failed: ['):-1]
    return reason


def check_graph_mode(what):
    """The pipelines are graphs that sessions run again for every epoch; eager mode cannot do that."""
    if tf.executing_eagerly():
        raise RuntimeError(f'{what} builds graph ops: call tf.disable_v2_behavior() first, '
                           'or build it inside `with tf.Graph().as_default():`')


class FileSource:
    """Images in files: `paths`, each named in messages with its list line when `line_numbers` are
    given. Their pixels are checked from their headers in Python (`oversized`, `known_bad`), so the
    graph decodes them without checking again."""
    changed = ('an image failed to decode, but every image decodes now; was a file changed while it '
               'was being read?')

    def __init__(self, paths, line_numbers=None, max_pixels=image_header.DEFAULT_MAX_PIXELS):
        self.paths, self.line_numbers, self.max_pixels = list(paths), line_numbers, max_pixels

    def __len__(self):
        return len(self.paths)

    def where(self, position):
        line = f'line {self.line_numbers[position]}: ' if self.line_numbers else ''
        return f'{line}{self.paths[position]}'

    def oversized(self):
        """{position: reason} for every image whose header says it is over `max_pixels`."""
        return {position: reason for position, path in enumerate(self.paths)
                if (reason := image_header.too_large(path, self.max_pixels))}

    def known_bad(self):
        """{position: reason} for every file that is missing or too large: never decoded."""
        missing = {position: 'file not found' for position, path in enumerate(self.paths)
                   if not os.path.isfile(path)}
        return {**self.oversized(), **missing}

    def elements(self, positions):
        """A dataset of the paths at `positions`: each file is read where it is decoded, in parallel."""
        return tf.data.Dataset.from_tensor_slices(tf.gather(tf.constant(self.paths), positions))

    @staticmethod
    def decode(path):
        """What a training step does to a file, short of resizing: read and decode it."""
        return preprocessing.decode_rgb(tf.io.read_file(path))

    def alone(self, position):
        return self.paths[position]


def problems_error(source, reasons, counted, prefix=None, hint=None):
    """ToolkitError '<prefix>: <counted>: <where>: <reason>; ... (<hint>)' for {position: reason}."""
    problems = [f'{source.where(position)}: {reason}' for position, reason in sorted(reasons.items())]
    return ToolkitError((f'{prefix}: ' if prefix else '') + f'{counted}: {summarize(problems)}'
                        + (f' ({hint})' if hint else ''))


def too_large_error(source, oversized, prefix=None):
    """The one message for images over the pixel limit (`oversized`: {position: reason})."""
    return problems_error(source, oversized, f'{plural(len(oversized), "image")} too large to decode '
                          'safely', prefix, 'raise --max_pixels if you mean it')


def undecodable(source, workers=None):
    """{position: reason} for every image of `source` that cannot be read or decoded, or is over the
    pixel limit (from its header, never decoded). The others are decoded once, `workers` at a time,
    in a pass that drops the failures; only those are decoded again, alone, for TensorFlow's reason."""
    workers = workers or os.cpu_count() or 1
    reasons = source.known_bad()
    present = np.array([position for position in range(len(source)) if position not in reasons],
                       np.int64)
    if not len(present):
        return reasons
    # One image per inter-op thread: decoding is the whole job, so `workers` images decode at once.
    config = tf.ConfigProto(inter_op_parallelism_threads=workers, intra_op_parallelism_threads=1)
    with tf.Graph().as_default(), tf.Session(config=config) as session:
        dataset = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(present),
                                       source.elements(present)))
        dataset = dataset.map(
            NOT_CONVERTED(lambda position, element: (position, tf.shape(source.decode(element)))),
            num_parallel_calls=workers, deterministic=False)
        # Dropping failures keeps the pass going; whatever does not come out is a bad image.
        dataset = dataset.ignore_errors().batch(1024)
        decoded = {int(p) for positions, _ in run_to_end(session, dataset, workers) for p in positions}
    reasons.update(decode_alone(source, [p for p in present.tolist() if p not in decoded]))
    return reasons


def run_to_end(session, dataset, workers):
    """Each element of `dataset`, run in `session` with a pool of `workers` threads of its own."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    # An initializable iterator: a one-shot one asks for a random seed, which fails while a seeded
    # fine-tuning run (op determinism on) reports a bad image through `undecodable`.
    iterator = tf.data.make_initializable_iterator(dataset.with_options(options))
    next_element = iterator.get_next()
    session.run(iterator.initializer)
    while True:
        try:
            yield session.run(next_element)
        except tf.errors.OutOfRangeError:
            return


def decode_alone(source, positions):
    """{position: TensorFlow's reason} for `positions` of `source`, each decoded by itself."""
    reasons = {}
    if not positions:
        return reasons
    with tf.Graph().as_default(), tf.Session(config=tf_setup.session_config()) as session:
        element = tf.placeholder(tf.string, [])
        shape = tf.shape(source.decode(element))
        for position in positions:
            value = source.alone(position)
            if value is None:
                reasons[position] = source.gone
                continue
            try:
                session.run(shape, {element: value})
                reasons[position] = 'failed to decode in the parallel pass, but decodes alone'
            except tf.errors.OpError as error:
                reasons[position] = error_reason(error)
    return reasons


def unreadable_error(source, workers=None, prefix=None, hint=None):
    """The one message for images that failed to read or decode: a ToolkitError naming each (with
    its list line or shard record) and why, to raise after a decode error. Decodes `source` again
    (`undecodable`): seconds per thousand images."""
    bad = undecodable(source, workers)
    if not bad:
        return ToolkitError((f'{prefix}: ' if prefix else '') + source.changed)
    return problems_error(source, bad, plural(len(bad), 'unreadable image'), prefix, hint)


def prediction_batches(source, batch_size, center_crop=False, skip_bad_images=False, ten_crop=False,
                       resize_size=preprocessing.RESIZE_SIZE):
    """A dataset of (images float32 [b, 227, 227, 3], positions int64 [b]) of `source`'s images, in
    order, as inference takes them: resized whole, or the centre crop of the `resize_size` resize with
    `center_crop`, or with `ten_crop` each image's ten crops (rows 10 i ... 10 i + 9 of [10 b, ...]).
    Images over the pixel limit raise ToolkitError at once, unless `skip_bad_images` (which also
    drops the images that fail to decode); `positions` say which remain."""
    check_graph_mode('images_dataset')
    positions = np.arange(len(source), dtype=np.int64)
    oversized = source.oversized()
    if oversized:
        positions = np.setdiff1d(positions, list(oversized)).astype(np.int64)
        if not skip_bad_images or not len(positions):
            raise too_large_error(source, oversized)

    @NOT_CONVERTED
    def load(element, position):
        image = source.decode(element)
        if ten_crop:
            return preprocessing.ten_crops(image, resize_size), position
        return preprocessing.resize_for_model(image, augment=center_crop, resize_size=resize_size), position

    @NOT_CONVERTED
    def finish_batch(images, positions):
        if ten_crop:  # [b, 10, 227, 227, 3] -> [10 b, 227, 227, 3]: image after image
            images = tf.reshape(images, [-1, preprocessing.INPUT_SIZE, preprocessing.INPUT_SIZE, 3])
        return preprocessing.normalize(images), positions

    dataset = tf.data.Dataset.zip((source.elements(positions), tf.data.Dataset.from_tensor_slices(positions)))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_bad_images:
        dataset = dataset.ignore_errors()
    dataset = dataset.batch(batch_size).map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


class ImageReader:
    """Pre-processed, batched (images, one-hot labels) of a labelled data set, as `self.data`: not
    repeated (re-initialise its iterator every epoch), its last batch perhaps smaller (docs/data.md).

    `mode` matters only with `augment` (preprocessing.resize_for_model). With `shuffle`, positions are
    reshuffled at every initialisation, repeatably for a `seed`; feeding `epoch` pins the order and
    the crops, and `skip` starts the epoch that many images in (a run resumed mid-epoch). An image
    that fails to decode makes session.run raise one of `IMAGE_ERRORS` (`unreadable_images_error()`
    names it), or with `skip_bad_images` is dropped (`describe_skipped`). On several workers
    `batch_size` is the global batch, and worker `worker_index` gets its rows of each.

    A subclass's `_open` returns the source of `txt_file` (setting `paths` and `labels`, int64);
    `check_command` names the command that lists its unreadable images, if any.
    """
    check_command = None

    def __init__(self, txt_file, mode, batch_size, num_classes, shuffle=True, seed=None,
                 augment=False, skip_bad_images=False, max_pixels=image_header.DEFAULT_MAX_PIXELS,
                 num_workers=1, worker_index=0):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, not {mode!r}')
        if batch_size < 1 or num_classes < 1:
            raise ValueError('batch_size and num_classes must be positive')
        check_graph_mode(type(self).__name__)
        self.txt_file = os.fspath(txt_file)
        self.mode, self.batch_size, self.num_classes = mode, batch_size, num_classes
        self.shuffle, self.seed, self.augment = shuffle, seed, augment
        self.skip_bad_images, self.max_pixels = skip_bad_images, max_pixels
        if num_workers < 1 or not 0 <= worker_index < num_workers:
            raise ValueError(f'worker_index must be in 0..num_workers - 1, got {worker_index} of '
                             f'{num_workers}')
        if batch_size % num_workers:
            raise ValueError(f'batch_size {batch_size} does not split evenly over {num_workers} workers')
        self.num_workers, self.worker_index = num_workers, worker_index
        self.worker_batch_size = batch_size // num_workers
        self.source = self._open()
        # From the headers, before any graph is built: one such image could exhaust the memory.
        oversized = self.source.oversized()
        if oversized:
            raise too_large_error(self.source, oversized, self.txt_file)
        self.data_size = len(self.source)
        # Optional feeds of an initialisation: `epoch` pins the order (-1: a new draw), `skip` starts
        # the epoch that many images into it.
        self.epoch = tf.placeholder_with_default(tf.constant(-1, tf.int64), [], name='epoch')
        self.skip = tf.placeholder_with_default(tf.constant(0, tf.int64), [], name='skip')
        self.data = self._build_dataset()

    def _open(self):
        raise NotImplementedError

    def _build_dataset(self):
        training = self.mode == 'training'
        random_crops = training and self.augment
        positions = tf.range(self.data_size, dtype=tf.int64)
        if self.shuffle or random_crops:
            # The key of the epoch's shuffle and crops: drawn by a seeded stateful op at every
            # initialisation (a seed repeats the epochs in a fresh graph; the shuffle's own
            # reshuffle_each_iteration would repeat one order, as an initializable iterator rebuilds
            # the dataset), or made of the seed and a fed `epoch`, so that a resumed run replays the
            # uninterrupted one's orders. Lists and shards share it, so their batches agree.
            drawn = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64, seed=self.seed)
            base = self.seed if self.seed is not None else np.random.randint(2**31)
            pinned = tf.stack([tf.constant(base, tf.int64), self.epoch])
            epoch_key = tf.where(self.epoch >= 0, pinned, drawn)
        if self.shuffle:
            positions = tf.random.experimental.stateless_shuffle(positions, seed=epoch_key)
        if self.num_workers > 1:
            rows = preprocessing.worker_rows(self.data_size, self.batch_size, self.worker_index,
                                             self.num_workers)
            positions = tf.gather(positions, tf.constant(rows, tf.int64))
        if not self.skip_bad_images:
            # Skipped before reading: a resumed epoch reads no image it will not train on.
            positions = positions[self.skip:]

        @NOT_CONVERTED
        def load(element, label_and_position):
            label, position = label_and_position
            # Each image's crop depends on the epoch and on the image, not on the order of decoding.
            crop_key = (tf.random.experimental.stateless_fold_in(epoch_key, position) if random_crops
                        else None)
            image = self.source.decode(element)
            return (preprocessing.resize_for_model(image, training, self.augment, crop_key),
                    tf.one_hot(label, self.num_classes))

        labels = tf.data.Dataset.from_tensor_slices((tf.gather(tf.constant(self.labels), positions),
                                                     positions))
        dataset = tf.data.Dataset.zip((self.source.elements(positions), labels))
        # In order, so that a seed fixes the batches too; decoding still runs on every core.
        dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.skip_bad_images:
            # Dropped images shift the batches: a resumed epoch's consumed part counts decoded images.
            dataset = dataset.ignore_errors().skip(self.skip)
        return dataset.batch(self.worker_batch_size).prefetch(tf.data.AUTOTUNE)

    def unreadable_images_error(self, workers=None):
        """A ToolkitError naming the unreadable images (with their lines or records), to raise after
        a decode error."""
        hint = f'list them all: {self.check_command}' if self.check_command else None
        return unreadable_error(self.source, workers, self.txt_file, hint)

    def describe_skipped(self, images_seen):
        """'skipped N unreadable images ...' for an epoch that yielded `images_seen`, or None if none."""
        skipped = self.data_size - images_seen
        if skipped <= 0:
            return None
        return (f'skipped {plural(skipped, "unreadable image")} of {self.data_size} in {self.txt_file}'
                + (f' (list them: {self.check_command})' if self.check_command else ''))
