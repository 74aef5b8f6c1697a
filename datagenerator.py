"""Batches of images for AlexNet from a list file, as a `tf.data` pipeline; a command to check a list.

A list file holds one `path label` per line. The label is the last field, so paths may contain spaces;
blank lines and lines starting with `#` are ignored; CRLF line ends are fine; relative paths are
relative to the list file's folder. `read_list` checks the whole file (labels, missing files, empty
list) before any graph is built and reports every problem in one error.

`ImageDataGenerator(...).data` yields (images uint8 [b, 227, 227, 3], one-hot labels float32
[b, num_classes]), pre-processed by `preprocessing` (the one definition). Per image the pipeline only
reads, decodes and resizes, in parallel; `preprocessing.normalize` (the mean subtraction and the BGR
reorder) runs once per batch where the model runs (finetune_alexnet/train/inputs.py).
It shuffles file names, not decoded images, so shuffling costs no memory.

A corrupt file can only be found by decoding it. When one turns up during training, session.run
raises one of `IMAGE_ERRORS`; `unreadable_images_error()` then checks the list in parallel and
returns a ToolkitError naming the file. With `skip_bad_images=True` such files are dropped
instead, and `describe_skipped` says how many. To check a list up front:

    python datagenerator.py --check train.txt [--num_classes 2] [--workers 8]

prints each unreadable image as `list:line: path: reason` and exits 1 if there is any, 0 if every
image decodes, 2 if the list file itself is wrong.
"""
import os
import sys

from finetune_alexnet import cli  # noqa: E402

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import re  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet import image_lists  # noqa: E402
from finetune_alexnet.model_info import MAX_CLASSES  # noqa: E402
from finetune_alexnet import preprocessing  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402

# The pipeline's functions are plain TensorFlow ops (Python `if`s on settings, tf.cond on tensors):
# AutoGraph would only re-parse their source, which costs about a second of every command's start.
NOT_CONVERTED = tf.autograph.experimental.do_not_convert

MODES = ('training', 'inference')
# What session.run raises when a listed image cannot be read: a corrupt or truncated file, or one
# that was deleted after the list was checked.
IMAGE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError)
SHOWN_PROBLEMS = 5  # an error names this many bad lines or files and counts the rest
_INTEGER = re.compile(r'[+-]?[0-9]+')
# A thread each; more only costs memory (TensorFlow's thread counts are int32 besides).
MAX_WORKERS = max(1024, os.cpu_count() or 1)
_SHOWN_CHARS = 60  # a bad field is quoted up to this length in a message


def _shown(text):
    """repr(text), cut to a readable length: a message stays one short line whatever the file holds."""
    return repr(text) if len(text) <= _SHOWN_CHARS else repr(text[:_SHOWN_CHARS]) + '...'


def _summarize(problems):
    """'a; b; c' for the first few problems, then 'and N more'."""
    shown = '; '.join(problems[:SHOWN_PROBLEMS])
    hidden = len(problems) - SHOWN_PROBLEMS
    return shown + (f'; and {hidden} more' if hidden > 0 else '')


def _list_entries(txt_file, num_classes, check_files):
    """(paths, labels, line numbers) from a list file; ToolkitError listing every bad line."""
    kind = image_lists.not_a_regular_file(txt_file) if os.path.lexists(txt_file) else None
    if kind and not kind.startswith('unreadable'):  # a FIFO would wait for a writer forever
        raise ToolkitError(f'{txt_file}: not a list file ({kind})')
    try:
        with open(txt_file, 'rb') as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise ToolkitError(f'{txt_file}: list file not found') from None
    except OSError as error:
        raise ToolkitError(f'{txt_file}: cannot read the list file: {error.strerror}') from None
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b'\n') + 1
        raise ToolkitError(f'{txt_file}, line {line}: not UTF-8 text') from None

    folder = os.path.dirname(os.path.abspath(txt_file))
    paths, labels, line_numbers, problems = [], [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.rsplit(None, 1)
        if len(fields) < 2:
            problems.append(f"line {number}: expected 'path label', found {_shown(line)}")
            continue
        name, label = fields
        if not _INTEGER.fullmatch(label):
            problems.append(f'line {number}: label {_shown(label)} is not an integer')
            continue
        limit = MAX_CLASSES if num_classes is None else min(num_classes, MAX_CLASSES)
        # Only a short number is converted: int() of thousands of digits is slow, then refused.
        value = int(label) if len(label.lstrip('+-0')) <= 12 else None
        if value is None or not 0 <= value < limit:
            shown = label if len(label) <= 24 else label[:21] + '...'
            problems.append(f'line {number}: label {shown} is outside 0..{limit - 1}')
            continue
        label = value
        path = os.path.normpath(os.path.join(folder, os.path.expanduser(name)))
        if check_files and not os.path.isfile(path):
            problems.append(f'line {number}: image not found: {path}')
            continue
        paths.append(path)
        labels.append(label)
        line_numbers.append(number)
    if problems:
        raise ToolkitError(f'{txt_file}: {len(problems)} bad line{"s" if len(problems) > 1 else ""}: '
                           + _summarize(problems))
    if not paths:
        raise ToolkitError(f'{txt_file}: the list is empty (no `path label` lines)')
    return paths, np.array(labels, dtype=np.int64), line_numbers


def read_list(txt_file, num_classes=None, check_files=True):
    """(paths, labels): absolute image paths and an int64 array of labels, from a list file.

    Raises ToolkitError, before anything is decoded, for: a missing or unreadable list file, a line
    without a label, a label that is not an integer or lies outside [0, num_classes), an image that
    does not exist (unless `check_files` is False), an empty list. The message names the first few
    bad lines by number and counts the rest.
    """
    paths, labels, _ = _list_entries(txt_file, num_classes, check_files)
    return paths, labels


def read_list_lines(txt_file, num_classes=None, check_files=True):
    """read_list's (paths, labels), and the line number of each entry in the file (for messages)."""
    return _list_entries(txt_file, num_classes, check_files)


def _error_reason(error):
    """The line of a TensorFlow OpError that says what went wrong, without graph and node details."""
    lines = [line.strip() for line in error.message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(('[[', 'File ', 'Graph execution',
                                                                      'Detected at node', 'Node:'))]
    return useful[-1] if useful else error.message.strip()


def unreadable_images_error(paths, workers=None, line_numbers=None, list_file=None, hint=None,
                            max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """The one message for images that failed to decode: a ToolkitError naming each bad file (with
    its list line, when `line_numbers` are given) and why, to raise after a decode error.

    Decodes `paths` again, in parallel (`_unreadable`): seconds per thousand images. `max_pixels`
    is the limit the run was given, so this pass decodes nothing the run would not have.
    """
    bad = _unreadable(paths, workers or os.cpu_count() or 1, max_pixels)
    where = f'{list_file}: ' if list_file else ''
    if not bad:
        return ToolkitError(f'{where}an image failed to decode, but every image decodes now; was a '
                            'file changed while it was being read?')
    problems = [(f'line {line_numbers[position]}: ' if line_numbers else '')
                + f'{paths[position]}: {reason}' for position, reason in sorted(bad.items())]
    plural = 's' if len(bad) > 1 else ''
    return ToolkitError(f'{where}{len(bad)} unreadable image{plural}: {_summarize(problems)}'
                        + (f' ({hint})' if hint else ''))


def _decode_only(path):
    """What a training step does to a file, short of resizing: read and decode it."""
    return tf.shape(preprocessing.decode_rgb(tf.io.read_file(path)))


def oversized_images(paths, max_pixels):
    """{position in paths: reason} for every image whose header says it is over `max_pixels`."""
    reasons = {}
    for position, path in enumerate(paths):
        reason = image_header.too_large(path, max_pixels)
        if reason:
            reasons[position] = reason
    return reasons


def oversized_images_error(paths, max_pixels, line_numbers=None, list_file=None):
    """A ToolkitError naming the images over `max_pixels` (checked from their headers), or None."""
    big = oversized_images(paths, max_pixels)
    if not big:
        return None
    problems = [(f'line {line_numbers[position]}: ' if line_numbers else '')
                + f'{paths[position]}: {reason}' for position, reason in sorted(big.items())]
    plural = 's' if len(big) > 1 else ''
    return ToolkitError(f"{f'{list_file}: ' if list_file else ''}{len(big)} image{plural} too large "
                        f'to decode safely: {_summarize(problems)} (raise --max_pixels if you mean it)')


def _unreadable(paths, workers, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """{position in paths: reason} for every file that is missing, too large or fails to decode.

    Sizes come from the headers first: an image over `max_pixels` is reported, never decoded.
    """
    reasons = {}
    present = []
    for position, path in enumerate(paths):
        if not os.path.isfile(path):
            reasons[position] = 'file not found'
            continue
        too_large = image_header.too_large(path, max_pixels)
        if too_large:
            reasons[position] = too_large
        else:
            present.append(position)
    if not present:
        return reasons
    # One file per inter-op thread: decoding is the whole job, so --workers files decode at once.
    config = tf.ConfigProto(inter_op_parallelism_threads=workers, intra_op_parallelism_threads=1)
    with tf.Graph().as_default(), tf.Session(config=config) as session:
        dataset = tf.data.Dataset.from_tensor_slices(
            (np.array(present, dtype=np.int64), [paths[position] for position in present]))
        dataset = dataset.map(NOT_CONVERTED(lambda position, path: (position, _decode_only(path))),
                              num_parallel_calls=workers, deterministic=False)
        # Dropping failures keeps the pass going; whatever does not come out is a bad file.
        dataset = dataset.ignore_errors().batch(1024)
        options = tf.data.Options()
        options.threading.private_threadpool_size = workers
        # An initializable iterator: a one-shot one asks for a random seed, which fails while a
        # seeded fine-tuning run (op determinism on) reports a bad image through this function.
        iterator = tf.data.make_initializable_iterator(dataset.with_options(options))
        next_batch = iterator.get_next()
        session.run(iterator.initializer)
        decoded = set()
        try:
            while True:
                decoded.update(session.run(next_batch)[0].tolist())
        except tf.errors.OutOfRangeError:
            pass
        failed = [position for position in present if position not in decoded]
        if failed:
            path_in = tf.placeholder(tf.string, [])
            decode_one = _decode_only(path_in)
            for position in failed:
                try:
                    session.run(decode_one, {path_in: paths[position]})
                    reasons[position] = 'failed to decode in the parallel pass, but decodes alone'
                except tf.errors.OpError as error:
                    reasons[position] = _error_reason(error)
    return reasons


def find_bad_images(paths, workers=None, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """[(path, reason)], in list order, for every file that is missing or fails to decode.

    Decodes every file with the training pipeline's decoder, `workers` files at a time (default: one
    per CPU core). Each file is decoded once in a parallel pass that drops the failures; only the
    failures are decoded again, one by one, to get TensorFlow's reason.
    """
    paths = list(paths)
    reasons = _unreadable(paths, workers or os.cpu_count() or 1, max_pixels)
    return [(paths[position], reasons[position]) for position in sorted(reasons)]


def _check_graph_mode(what):
    """The pipelines are graphs that sessions run again for every epoch; eager mode cannot do that."""
    if tf.executing_eagerly():
        raise RuntimeError(f'{what} builds graph ops: call tf.disable_v2_behavior() first, '
                           'or build it inside `with tf.Graph().as_default():`')


class ImageDataGenerator:
    """Pre-processed, batched (images, one-hot labels) from a list file, as `self.data`.

    `mode` is 'training' or 'inference'; it matters only with `augment`, the paper's augmentation
    (resize to 256, then a random 227 crop and a random left-right flip in training, the centre crop
    in inference). With `shuffle` the whole list of names is reshuffled at every initialisation of an
    iterator over `self.data`: a different order each epoch, the same sequence of orders for the same
    `seed` in a fresh graph. To tie the order (and the crops) to the epoch number instead, so that a
    resumed run sees the orders of an uninterrupted one, feed it when initialising:
    `session.run(init_op, {generator.epoch: epoch})`; feed `generator.skip` as well (a count of
    images) to start the epoch that many places into its order, as a run resumed mid-epoch must:
    the skipped names are dropped before anything is read or decoded (with `skip_bad_images` after
    decoding, since dropped images shift the batches). The whole list of names is shuffled (the
    original's `buffer_size` is gone: shuffling names is cheap).

    `self.data` is not repeated: re-initialise its iterator for every epoch. Its last batch may be
    smaller than `batch_size` (no image is dropped). Attributes: `data`, `data_size`, `paths`,
    `labels` (int64 array), `num_classes`, `txt_file`, `epoch` and `skip` (the optional feeds above).

    A file that fails to decode makes session.run raise one of `IMAGE_ERRORS`; catch it and raise
    `unreadable_images_error()`, which names the file:

        except datagenerator.IMAGE_ERRORS:
            raise train_data.unreadable_images_error() from None

    With `skip_bad_images=True` such files are dropped instead: count the images an epoch yields
    (the sum of the batch sizes) and pass the count to `describe_skipped` for the report.

    On several workers (finetune_alexnet/train/distribute.py), `batch_size` is the global batch and
    worker `worker_index` of `num_workers` gets its rows of each: batches of batch_size /
    num_workers, in the order every worker shares (`skip` then counts this worker's images).
    """

    def __init__(self, txt_file, mode, batch_size, num_classes, shuffle=True, seed=None,
                 augment=False, skip_bad_images=False, max_pixels=image_header.DEFAULT_MAX_PIXELS,
                 num_workers=1, worker_index=0):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, not {mode!r}')
        if batch_size < 1 or num_classes < 1:
            raise ValueError('batch_size and num_classes must be positive')
        _check_graph_mode('ImageDataGenerator')
        self.txt_file = txt_file
        self.mode = mode
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.skip_bad_images = skip_bad_images
        self.max_pixels = max_pixels
        self.num_workers, self.worker_index, self.worker_batch_size = preprocessing.worker_part(
            batch_size, num_workers, worker_index)
        self.paths, self.labels, self._line_numbers = _list_entries(txt_file, num_classes, True)
        # From the headers, before any graph is built: one such image could exhaust the memory.
        too_large = oversized_images_error(self.paths, max_pixels, self._line_numbers, txt_file)
        if too_large:
            raise too_large
        self.data_size = len(self.paths)
        self.epoch, self.skip = preprocessing.epoch_feeds()
        self.data = self._build_dataset()

    def _build_dataset(self):
        training = self.mode == 'training'
        random_crops = training and self.augment
        positions, epoch_key = preprocessing.epoch_order(
            self.data_size, self.seed, self.epoch, self.shuffle, random_crops, self.batch_size,
            self.num_workers, self.worker_index)
        paths = tf.gather(tf.constant(self.paths), positions)
        labels = tf.gather(tf.constant(self.labels), positions)

        @NOT_CONVERTED
        def load(path, label, position):
            # Each image's crop depends on the epoch and on the image, not on the order of decoding.
            crop_key = (tf.random.experimental.stateless_fold_in(epoch_key, position) if random_crops
                        else None)
            image = preprocessing.decode_rgb(tf.io.read_file(path))
            return preprocessing.resize_for_model(image, training, self.augment, crop_key), label

        dataset = tf.data.Dataset.from_tensor_slices((paths, labels, positions))
        if not self.skip_bad_images:
            # Skipped before the map: a resumed epoch reads no file it will not train on.
            dataset = dataset.skip(self.skip)
        # In order, so that a seed fixes the batches too; decoding still runs on every core.
        dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return preprocessing.batches_for_model(dataset, self.worker_batch_size, self.num_classes,
                                               self.skip_bad_images, self.skip)

    def unreadable_images_error(self, workers=None):
        """A ToolkitError naming the list's unreadable images (and lines), to raise after a decode error."""
        return unreadable_images_error(
            self.paths, workers, line_numbers=self._line_numbers, list_file=self.txt_file,
            hint=f'list them all: python datagenerator.py --check {self.txt_file}',
            max_pixels=self.max_pixels)

    def describe_skipped(self, images_seen):
        """'skipped N unreadable images ...' for an epoch that yielded `images_seen`, or None if none."""
        skipped = self.data_size - images_seen
        if skipped <= 0:
            return None
        return (f'skipped {skipped} unreadable image{"s" if skipped > 1 else ""} of {self.data_size} '
                f'in {self.txt_file} (list them: python datagenerator.py --check {self.txt_file})')


def _missing_files_error(paths):
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        return ToolkitError(f'{len(missing)} image{"s" if len(missing) > 1 else ""} not found: '
                            + _summarize(missing))
    return None


def images_dataset(paths, batch_size, center_crop=False, skip_bad_images=False, ten_crop=False,
                   resize_size=preprocessing.RESIZE_SIZE, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """A dataset of (images float32 [b, 227, 227, 3], positions int64 [b]) for unlabelled files.

    For prediction: pre-processed exactly as in training, in the order given; `positions` index into
    `paths`, so results map back to files even when `skip_bad_images` drops some. `center_crop`
    resizes to `resize_size` (256) and takes the centre 227 crop, as inference does for a model trained
    with augmentation. `ten_crop` instead gives each image's ten crops (`preprocessing.ten_crops`):
    images are then [10 b, 227, 227, 3], image i's crops in rows 10 i ... 10 i + 9, so one forward pass
    covers the batch's ten crops. Missing files, and images over `max_pixels` (from their headers)
    unless skipped, raise ToolkitError at once; an undecodable one makes session.run raise one of
    `IMAGE_ERRORS` (use `find_bad_images` to name it) unless skipped.
    """
    _check_graph_mode('images_dataset')
    if not paths:
        raise ToolkitError('no images given')
    missing = _missing_files_error(paths)
    if missing:
        raise missing
    positions = np.arange(len(paths), dtype=np.int64)
    too_large = oversized_images_error(paths, max_pixels)
    if too_large and not skip_bad_images:
        raise too_large
    if too_large:
        keep = sorted(set(range(len(paths))) - set(oversized_images(paths, max_pixels)))
        paths, positions = [paths[position] for position in keep], positions[keep]
        if not paths:
            raise too_large

    @NOT_CONVERTED
    def decode(path):
        return preprocessing.decode_rgb(tf.io.read_file(path))

    return preprocessing.prediction_batches(
        tf.data.Dataset.from_tensor_slices((list(paths), positions)), decode, batch_size,
        center_crop=center_crop, ten_crop=ten_crop, skip_bad_images=skip_bad_images,
        resize_size=resize_size)


def _parse_args(argv):
    parser = cli.ArgumentParser(
        description='Check that every image of a list file exists and decodes, as training would '
                    'decode it. Prints the unreadable ones; exit status 1 if there are any, 2 if the '
                    'list file itself is wrong.')
    parser.add_argument('--check', required=True, metavar='LIST',
                        help='list file of `path label` lines')
    parser.add_argument('--num_classes', type=int, default=None,
                        help='also check that every label lies in 0..num_classes-1')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='files decoded at once (default: the number of CPU cores)')
    parser.add_argument('--max_pixels', type=int, default=image_header.DEFAULT_MAX_PIXELS,
                        help='report images larger than this (width x height, from the file '
                        'header) without decoding them')
    args = parser.parse_args(argv)
    if args.max_pixels < 1:
        parser.error('--max_pixels must be at least 1')
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f'--workers must be in 1..{MAX_WORKERS}, got {args.workers}')
    if args.num_classes is not None and not 1 <= args.num_classes <= MAX_CLASSES:
        parser.error(f'--num_classes must be in 1..{MAX_CLASSES}, got {args.num_classes}')
    return args


def main(argv=None):
    args = _parse_args(argv)
    paths, _, line_numbers = _list_entries(args.check, args.num_classes, check_files=False)
    bad = _unreadable(paths, args.workers, args.max_pixels)
    for position, reason in sorted(bad.items()):
        print(f'{args.check}:{line_numbers[position]}: {paths[position]}: {reason}')
    if bad:
        print(f'{args.check}: {len(bad)} of {len(paths)} images are unreadable', file=sys.stderr)
        return cli.EXIT_CHECK_FAILED
    print(f'{args.check}: all {len(paths)} images decode', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
