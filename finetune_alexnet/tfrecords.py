"""Sharded TFRecord data sets: written from a list file (`write_shards`, for make_tfrecords.py), read
back exactly as the list pipeline reads (what a record holds, the order, the checks:
docs/distributed.md#sharded-tfrecord-data-sets). `index_shards` learns where each record starts, so
`ShardImageDataGenerator` (image_reader.ImageReader over a `RecordSource`) reads each at its offset.
"""
import collections
import contextlib
import errno
import functools
import glob
import hashlib
import os
import re
import types

import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import digests
from finetune_alexnet import image_header
from finetune_alexnet import image_reader
from finetune_alexnet import preprocessing
from finetune_alexnet import tf_setup
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.image_lists import plural
from finetune_alexnet.image_reader import NOT_CONVERTED, error_reason, summarize

EXTENSION = '.tfrecord'
SHARD_NAME = re.compile(r'(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord')
PARTIAL = '.partial'
TARGET_SHARD_BYTES = 100 * 10**6
MAX_SHARDS = 99_999  # what five digits can number
PRE_RESIZE_SIZE = preprocessing.RESIZE_SIZE
PRE_RESIZE_QUALITY = 95
# A pre-resized set's shard count is estimated from the sizes of its first records, re-encoded.
SIZE_SAMPLE = 64
# A TFRecord record: its length (8 bytes), the length's CRC (4), the data, the data's CRC (4).
RECORD_OVERHEAD = 16

ENCODED = 'image/encoded'
FORMAT = 'image/format'
LABEL = 'image/class/label'
TEXT = 'image/class/text'
HEIGHT = 'image/height'
WIDTH = 'image/width'
FILENAME = 'image/filename'


# --- where the shards are -------------------------------------------------------------------------

def is_shards(spec):
    """True when --train_file/--val_file/--evaluate names shards (a folder, a pattern, a .tfrecord
    file) rather than a list file."""
    spec = os.fspath(spec)
    if os.path.isdir(spec) or spec.endswith(EXTENSION):
        return True
    return not os.path.isfile(spec) and re.search(r'[*?[]', spec) is not None


def find_shards(spec):
    """The shard files `spec` names, sorted by name: a folder's `*.tfrecord` files, the files a glob
    pattern matches, or one `.tfrecord` file. ToolkitError when there are none, when a folder mixes
    several sets (train-* and val-*), or when a numbered set (`-00001-of-00004`) lacks a shard."""
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        files = sorted(path for path in glob.glob(os.path.join(glob.escape(spec), '*' + EXTENSION))
                       if os.path.isfile(path))
        if not files:
            raise ToolkitError(f'{spec}: no *{EXTENSION} shards in this folder')
        prefixes = sorted({match.group('prefix') for match in map(_shard_match, files) if match})
        if len(prefixes) > 1:
            raise ToolkitError(f"{spec}: holds the shards of several sets ({', '.join(prefixes)}); "
                               f"name one with a pattern, e.g. {os.path.join(spec, prefixes[0])}-*")
    elif re.search(r'[*?[]', spec) and not os.path.exists(spec):
        files = sorted(path for path in glob.glob(spec) if os.path.isfile(path)
                       and not path.endswith(PARTIAL))
        if not files:
            raise ToolkitError(f'{spec}: no shard file matches this pattern')
    elif os.path.isfile(spec):
        files = [spec]
    else:
        raise ToolkitError(f'{spec}: no such shard file, folder or pattern')
    _check_complete(spec, files)
    return files


def _shard_match(path):
    return SHARD_NAME.fullmatch(os.path.basename(path))


def _check_complete(spec, files):
    """Every shard of a numbered set is there: a copy cut short would otherwise train on part of it."""
    sets = collections.defaultdict(set)
    for match in filter(None, map(_shard_match, files)):
        sets[(match.group('prefix'), int(match.group('count')))].add(int(match.group('index')))
    for (prefix, count), indices in sorted(sets.items()):
        missing = sorted(set(range(count)) - indices)
        if missing:
            names = [shard_file_name(prefix, index, count) for index in missing]
            raise ToolkitError(f'{spec}: {plural(len(missing), "shard")} of {count} missing: '
                               + summarize(names))


def data_folder(spec):
    """The folder a list file, or a set of shards, lives in (where classes.txt is looked for), as
    the user gave it (relative or not), so that messages name it the same way."""
    spec = os.fspath(spec)
    return spec if os.path.isdir(spec) else os.path.dirname(spec)


def data_digest(spec):
    """What identifies a data set for --resume: a list file's SHA-256; for shards, the SHA-256 of
    their names and sizes (reading every byte of a large set at each start would cost minutes)."""
    if not is_shards(spec):
        return digests.file_sha256(spec)
    digest = hashlib.sha256()
    for path in find_shards(spec):
        digest.update(f'{os.path.basename(path)} {os.path.getsize(path)}\n'.encode())
    return digest.hexdigest()


# --- writing --------------------------------------------------------------------------------------

def shard_file_name(prefix, index, count):
    return f'{prefix}-{index:05d}-of-{count:05d}{EXTENSION}'


def own_shards(out_dir, prefix):
    """The files in `out_dir` named as shards of `prefix`, or as their temporary copies (`.partial`):
    what --overwrite may replace, and nothing else."""
    if not os.path.isdir(out_dir):
        return []
    return [os.path.join(out_dir, name) for name in sorted(os.listdir(out_dir))
            if (match := SHARD_NAME.fullmatch(name.removesuffix(PARTIAL))) and match['prefix'] == prefix]


def check_output(out_dir, prefix, overwrite):
    """Refuses to write `prefix`'s shards into `out_dir` over existing ones unless `overwrite`; even
    then, something other than a regular file under a shard's name is never replaced."""
    existing = [path for path in own_shards(out_dir, prefix) if not path.endswith(PARTIAL)]
    for path in existing:
        if os.path.islink(path) or not os.path.isfile(path):
            raise ToolkitError(f'{path}: named like a shard, but not a regular file; move it away')
    if existing and not overwrite:
        raise ToolkitError(f'{out_dir} already holds {plural(len(existing), "shard")} of {prefix} '
                           f'({os.path.basename(existing[0])}, ...); pass --overwrite to replace '
                           'them, or choose another --out_dir')


def shard_count(record_bytes, images, num_shards=None):
    """`num_shards`, else as many shards of at least TARGET_SHARD_BYTES as `record_bytes` fill (one
    for a set smaller than that), never more than one per image."""
    if num_shards:
        return int(num_shards)
    return int(max(1, min(images, MAX_SHARDS, record_bytes // TARGET_SHARD_BYTES)))


def make_example(encoded, label, text, height, width, filename):
    """The `tf.train.Example` of one image, with TF-Slim's keys."""
    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    return tf.train.Example(features=tf.train.Features(feature={
        ENCODED: bytes_feature(encoded), FORMAT: bytes_feature(image_header.image_type(encoded).encode()),
        LABEL: int_feature(label), TEXT: bytes_feature(text.encode('utf-8')),
        HEIGHT: int_feature(height), WIDTH: int_feature(width),
        FILENAME: bytes_feature(os.fspath(filename).encode('utf-8'))}))


WriteResult = collections.namedtuple('WriteResult', 'files images skipped bytes stopped')
WriteResult.__doc__ = """files: the shards written; images: records written; skipped: [(path,
reason)] of images left out; bytes: the shards' size; stopped: a stop request ended the work (then
nothing was written)."""


def _prepare_fn(pre_resize):
    """(slot, path) -> (slot, bytes to store, height, width): decoded once, to check it."""
    @NOT_CONVERTED
    def prepare(slot, path):
        data = tf.io.read_file(path)
        image = preprocessing.decode_rgb(data)
        if not pre_resize:
            shape = tf.shape(image, out_type=tf.int64)
            return slot, data, shape[0], shape[1]
        # The pipeline's own bilinear sampling (half-pixel centres, OpenCV's), rounded to 8 bits.
        pixels = preprocessing.resized_pixels(image, PRE_RESIZE_SIZE)
        encoded = tf.io.encode_jpeg(pixels, quality=PRE_RESIZE_QUALITY)
        size = tf.constant(PRE_RESIZE_SIZE, tf.int64)
        return slot, encoded, size, size
    return prepare


class _ShardWriter:
    """Writes records into shards under temporary names; `commit` renames them into place."""

    def __init__(self, out_dir, prefix, count, bounds, report):
        self.out_dir, self.prefix, self.count, self.bounds = out_dir, prefix, count, bounds
        self.report = report
        self.names = [shard_file_name(prefix, index, count) for index in range(count)]
        self.shard, self.writer, self.records, self.total_bytes = -1, None, 0, 0

    def _path(self, shard, partial=True):
        return os.path.join(self.out_dir, self.names[shard] + (PARTIAL if partial else ''))

    def _open_next(self):
        self._close()
        self.shard += 1
        self.writer = tf.io.TFRecordWriter(self._path(self.shard))
        self.records = 0

    def _close(self):
        if self.writer is not None:
            self.writer.close()
            size = os.path.getsize(self._path(self.shard))
            self.total_bytes += size
            self.report(f'{self.names[self.shard]}: {plural(self.records, "image")}, '
                        f'{size / 1e6:.1f} MB')
            self.writer = None

    @contextlib.contextmanager
    def _writing(self):
        """A write that fails (a full disk, a quota, an I/O error) removes every shard written so far
        and becomes one line."""
        try:
            yield
        except (OSError, tf.errors.OpError) as error:
            self.discard()
            reason = (error_reason(error) if isinstance(error, tf.errors.OpError)
                      else error.strerror or str(error))
            full = getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT) or \
                isinstance(error, tf.errors.ResourceExhaustedError) or 'No space left' in reason
            name = self.names[max(self.shard, 0)]
            raise ToolkitError(f'{self.out_dir}: cannot write {name} ({reason}); removed the '
                               f'unfinished shards of {self.prefix}'
                               + ('; the disk is full: free some space, or choose another --out_dir'
                                  if full else '')) from None

    def write(self, slot, serialized):
        """Writes the record of the image in `slot` (its place in the written order)."""
        with self._writing():
            while self.shard < 0 or slot >= self.bounds[self.shard + 1]:
                self._open_next()
            self.writer.write(serialized)
            self.records += 1

    def finish(self):
        with self._writing():
            while self.shard < self.count - 1:  # shards whose every image was left out: empty files
                self._open_next()
            self._close()

    def discard(self):
        if self.writer is not None:
            with contextlib.suppress(OSError, tf.errors.OpError):  # the failure being cleaned up, again
                self.writer.close()
            self.writer = None
        for shard in range(self.count):
            if os.path.exists(self._path(shard)):
                os.remove(self._path(shard))

    def commit(self, replace):
        """Old shards of the prefix go (`replace`), the new ones are renamed into place."""
        finals = [self._path(shard, partial=False) for shard in range(self.count)]
        with self._writing():
            if replace:
                for path in own_shards(self.out_dir, self.prefix):
                    if not path.endswith(PARTIAL) and path not in finals:
                        os.remove(path)
            for shard, final in enumerate(finals):
                os.replace(self._path(shard), final)
        return finals


def write_shards(paths, labels, out_dir, prefix, class_names=None, num_shards=None, pre_resize=False,
                 seed=0, shuffle=True, overwrite=False, skip_bad_images=False,
                 max_pixels=image_header.DEFAULT_MAX_PIXELS, workers=None, stop=None, report=print,
                 source=None):
    """Writes the images `paths` (labels `labels`) as shards `<prefix>-NNNNN-of-MMMMM.tfrecord` in
    `out_dir`, in an order drawn from `seed` unless not `shuffle`; returns a WriteResult. Images over
    `max_pixels` or that fail to decode are named in a ToolkitError (prefixed by `source`), or left
    out with `skip_bad_images`. A request of `stop` (signals.StopRequests) ends the work, leaving
    nothing; `report(line)` is told about each shard as it is completed."""
    paths = [os.fspath(path) for path in paths]
    labels = np.asarray(labels, np.int64)
    where = f'{source}: ' if source else ''
    check_output(out_dir, prefix, overwrite)
    order = (np.random.default_rng(seed).permutation(len(paths)) if shuffle
             else np.arange(len(paths)))
    listed = image_reader.FileSource(paths, max_pixels=max_pixels)
    oversized = listed.oversized()
    if oversized and not skip_bad_images:
        raise image_reader.too_large_error(listed, oversized, source)
    skipped = [(paths[p], reason) for p, reason in sorted(oversized.items())]
    order = np.array([p for p in order if p not in oversized], np.int64)
    if len(order) == 0:
        raise ToolkitError(f'{where}no image left to write')
    if num_shards and num_shards > len(order):
        raise ToolkitError(f'--num_shards {num_shards}: more shards than the {len(order)} images')
    os.makedirs(out_dir, exist_ok=True)
    for path in own_shards(out_dir, prefix):  # what a killed writer left
        if path.endswith(PARTIAL):
            os.remove(path)
    texts = list(class_names) if class_names else None

    workers = workers or os.cpu_count() or 1
    pending, writer, failed, done = [], None, [], 0
    try:  # whatever stops the work removes the shards written so far
        with tf.Graph().as_default(), tf.Session(config=tf_setup.session_config()) as session:
            dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(order)), [paths[p] for p in order]))
            dataset = dataset.map(_prepare_fn(pre_resize), num_parallel_calls=workers, deterministic=True)
            # A file that fails drops out here; the gap in the slots names it below.
            dataset = dataset.ignore_errors().batch(16).prefetch(2)
            for slots, images, heights, widths in image_reader.run_to_end(session, dataset, workers):
                if stop is not None and stop.requested:
                    break
                for slot, data, height, width in zip(slots.tolist(), images, heights, widths):
                    failed += [int(order[s]) for s in range(done, slot)]
                    done = slot + 1
                    position = order[slot]
                    label = int(labels[position])
                    record = make_example(data, label, texts[label] if texts else '', height, width,
                                          paths[position]).SerializeToString()
                    pending.append((slot, record))
                if writer is None and (len(pending) >= SIZE_SAMPLE or not pre_resize):
                    writer = _start_writer(out_dir, prefix, paths, order, pending, pre_resize,
                                           num_shards, report)
                if writer is not None:
                    for slot, record in pending:
                        writer.write(slot, record)
                    pending = []
        if stop is not None and stop.requested:
            if writer is not None:
                writer.discard()
            return WriteResult([], 0, skipped, 0, True)
        failed += [int(order[s]) for s in range(done, len(order))]
        writer = writer or _start_writer(out_dir, prefix, paths, order, pending, pre_resize, num_shards,
                                         report)
        for slot, record in pending:
            writer.write(slot, record)
        if failed:
            reasons = image_reader.decode_alone(listed, failed)
            if not skip_bad_images:
                raise image_reader.problems_error(listed, reasons, plural(len(failed), 'unreadable image'),
                                                  source, 'fix or remove them, or pass --skip_bad_images')
            skipped += [(paths[p], reasons[p]) for p in failed]
        if len(failed) == len(order):
            raise ToolkitError(f'{where}none of the {len(order)} images could be read')
        writer.finish()
        files = writer.commit(replace=overwrite)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return WriteResult(files, len(order) - len(failed), skipped, writer.total_bytes, False)


def _start_writer(out_dir, prefix, paths, order, pending, pre_resize, num_shards, report):
    """A _ShardWriter whose shard count follows the records' size: the files' sizes, or (pre-resized)
    the mean size of the records made so far."""
    if pre_resize:
        mean = np.mean([len(record) for _, record in pending]) if pending else 0
        record_bytes = int(mean * len(order))
    else:
        record_bytes = sum(os.path.getsize(paths[p]) + RECORD_OVERHEAD for p in order)
    count = shard_count(record_bytes, len(order), num_shards)
    bounds = [len(part) for part in np.array_split(np.arange(len(order)), count)]
    bounds = np.concatenate([[0], np.cumsum(bounds)]).tolist()
    return _ShardWriter(out_dir, prefix, count, bounds, report)


# --- reading --------------------------------------------------------------------------------------

_INDEX_FEATURES = {LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
                   HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
                   WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
                   FILENAME: tf.io.FixedLenFeature([], tf.string, default_value='')}


class ShardIndex(types.SimpleNamespace):
    """Where every record of a set of shards is, and what it holds, in the set's global order:
    `files`, the shard paths; per record, arrays `shard` (index into `files`), `record` (its place in
    its shard), `offset`, `length` (of its Example), `labels`, `heights`, `widths`; list `filenames`."""

    @property
    def size(self):
        return len(self.labels)

    def where(self, position):
        """'shard.tfrecord, record 7: name.jpg' for messages."""
        name = self.filenames[position]
        return (f'{self.files[self.shard[position]]}, record {self.record[position]}'
                + (f': {name}' if name else ''))


def index_shards(files, num_classes=None, source=None):
    """The ShardIndex of `files` (find_shards' list), every record read once. ToolkitError (prefixed
    by `source`, the flag's value) for a file that is not a readable, uncompressed TFRecord file,
    records without a label, height or width, labels outside 0..num_classes-1, or no record at all."""
    where = f'{source}: ' if source and source not in files else ''
    index = _read_index(tuple(_identity(path) for path in files), where)
    _check_index(index, num_classes, where)
    return index


def _identity(path):
    """What tells a shard file from a changed one: its path, size, change time and inode."""
    try:
        info = os.stat(path)
    except OSError:
        return (path, None, None, None)  # reading it names the problem
    return (path, info.st_size, info.st_mtime_ns, info.st_ino)


@functools.lru_cache(maxsize=4)
def _read_index(identities, where):
    """index_shards' reading, remembered for unchanged files: finetune.py counts the classes and
    images from the index before its generators are built on it, and reads the shards once."""
    files = [identity[0] for identity in identities]
    columns = collections.defaultdict(list)
    with tf.Graph().as_default(), tf.Session(config=tf_setup.session_config()) as session:
        path_in = tf.placeholder(tf.string, [])
        dataset = tf.data.TFRecordDataset(path_in).batch(1024).map(
            NOT_CONVERTED(lambda records: (tf.strings.length(records, unit='BYTE'),
                                           tf.io.parse_example(records, _INDEX_FEATURES))))
        iterator = tf.data.make_initializable_iterator(dataset.prefetch(2))
        next_batch = iterator.get_next()
        for shard, path in enumerate(files):
            session.run(iterator.initializer, {path_in: path})
            count = offset = 0
            while True:
                try:
                    lengths, features = session.run(next_batch)
                except tf.errors.OutOfRangeError:
                    break
                except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
                        tf.errors.NotFoundError) as error:
                    # A record failing its checksum stops the shard here, --skip_bad_images or
                    # not: the records after it could not be found.
                    raise ToolkitError(f'{where}{path}: not a readable TFRecord file of images '
                                       f'({error_reason(error)}); write it again with '
                                       'make_tfrecords.py') from None
                columns['shard'].append(np.full(len(lengths), shard, np.int32))
                columns['record'].append(np.arange(count, count + len(lengths)))
                columns['length'].append(lengths.astype(np.int64))
                # A record starts where the one before it in its shard ended.
                sizes = columns['length'][-1] + RECORD_OVERHEAD
                columns['offset'].append(offset + np.cumsum(sizes) - sizes)
                offset += int(sizes.sum())
                for key, name in ((LABEL, 'labels'), (HEIGHT, 'heights'), (WIDTH, 'widths')):
                    columns[name].append(features[key].astype(np.int64))
                columns['filenames'] += [name.decode('utf-8', 'replace') for name in features[FILENAME]]
                count += len(lengths)
    if not columns['length']:
        raise ToolkitError(f'{where}no records in {summarize(files)}')
    arrays = {name: np.concatenate(columns[name]) for name in
              ('shard', 'record', 'offset', 'length', 'labels', 'heights', 'widths')}
    return ShardIndex(files=files, filenames=columns['filenames'], **arrays)


def _check_index(index, num_classes, where):
    problems = []
    for position in np.flatnonzero(index.labels < 0):
        problems.append(f'{index.where(position)}: no {LABEL}')
    for position in np.flatnonzero((index.heights < 1) | (index.widths < 1)):
        problems.append(f'{index.where(position)}: no {HEIGHT} and {WIDTH} (needed to check '
                        '--max_pixels before decoding)')
    if num_classes is not None:
        for position in np.flatnonzero(index.labels >= num_classes):
            problems.append(f'{index.where(position)}: label {index.labels[position]} is outside '
                            f'0..{num_classes - 1}')
    if problems:
        raise ToolkitError(f'{where}{plural(len(problems), "bad record")}: {summarize(problems)}')


def oversized_records(index, max_pixels):
    """{position: reason} for the records whose height x width is over `max_pixels`."""
    pixels = index.heights * index.widths
    return {int(p): (f'{index.widths[p]}x{index.heights[p]} = {pixels[p] / 1e6:.1f} megapixels, over '
                     f'--max_pixels {max_pixels}') for p in np.flatnonzero(pixels > max_pixels)}


@NOT_CONVERTED
def _read_record(path, offset, length):
    """A dataset of the one serialized record at `offset` of shard `path`, read (CRCs checked) in
    one read of its size. A record missing since the index was built (a file truncated or replaced)
    yields the empty string, which fails to parse: an error, never a record silently dropped."""
    variant = tf.raw_ops.TFRecordDatasetV2(
        filenames=tf.reshape(path, [1]), compression_type='', buffer_size=length + RECORD_OVERHEAD,
        byte_offsets=tf.reshape(offset, [1]))
    records = tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.string))
    return records.take(1).concatenate(tf.data.Dataset.from_tensors(tf.constant(''))).take(1)


class RecordSource:
    """The records of a ShardIndex as image_reader's source, each read at its byte offset. The index's
    sizes are checked against `max_pixels` first (`oversized`); as they are only what the writer
    claims, each record's own header is checked again as it is decoded (`decode`)."""
    changed = ('a record failed to read or decode, but every record reads now; was a shard changed '
               'while it was being read?')
    gone = 'the shard ends inside this record (was it cut short or replaced while it was read?)'

    def __init__(self, index, max_pixels=None):
        self.index, self.max_pixels = index, max_pixels

    def __len__(self):
        return self.index.size

    def where(self, position):
        return self.index.where(position)

    def oversized(self):
        return oversized_records(self.index, self.max_pixels)

    def known_bad(self):
        return {}  # a record's size is checked as it is decoded

    def elements(self, positions):
        """A dataset of the serialized records at `positions`, in order."""
        # The graph holds each shard's name once, and per record its shard number, offset, length.
        def column(values):
            return tf.gather(tf.constant(values), positions)
        files = tf.gather(tf.constant([os.fsencode(path) for path in self.index.files]),
                          column(self.index.shard))
        where = tf.data.Dataset.from_tensor_slices(
            (files, column(self.index.offset), column(self.index.length)))
        return where.interleave(_read_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def decode(self, serialized):
        """uint8 [height, width, 3] RGB of a record's image, by preprocessing.decode_rgb; with
        `max_pixels`, an image whose header announces more fails before it is decoded."""
        encoded = tf.io.parse_single_example(
            serialized, {ENCODED: tf.io.FixedLenFeature([], tf.string)})[ENCODED]
        return preprocessing.decode_rgb(encoded, max_pixels=self.max_pixels, what='the record')

    def alone(self, position):
        """The serialized record at `position`, read in Python (an iterator over the offset reader
        would have to serialize it, which TensorFlow cannot); None when its shard does not hold it
        (any more). The CRCs are not checked: the parallel pass read it with them."""
        index = self.index
        length = index.length[position]
        with open(index.files[index.shard[position]], 'rb') as stream:
            stream.seek(int(index.offset[position]))
            header = stream.read(12)
            data = stream.read(int(length))
        if len(header) < 12 or int.from_bytes(header[:8], 'little') != length or len(data) < length:
            return None
        return data


class ShardImageDataGenerator(image_reader.ImageReader):
    """datagenerator.ImageDataGenerator's batches, from TFRecord shards (`txt_file`: their spec;
    `paths`: the records' file names). `index` is the ShardIndex; `records_digest` identifies the
    shards (for caches keyed by the images: pre-resized records share the files' names)."""

    def _open(self):
        self.index = index_shards(find_shards(self.txt_file), self.num_classes, self.txt_file)
        self.records_digest = data_digest(self.txt_file)
        self.paths, self.labels = self.index.filenames, self.index.labels
        return RecordSource(self.index, self.max_pixels)


def unreadable_records_error(index, workers=None, source=None, hint=None, max_pixels=None):
    """The one message for records that failed: a ToolkitError naming each, with the reason."""
    return image_reader.unreadable_error(RecordSource(index, max_pixels), workers, source, hint)


def images_dataset(index, batch_size, center_crop=False, skip_bad_images=False, ten_crop=False,
                   resize_size=preprocessing.RESIZE_SIZE, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """datagenerator.images_dataset for the records of `index`, in its order (`positions` index it)."""
    return image_reader.prediction_batches(
        RecordSource(index, max_pixels), batch_size, center_crop=center_crop,
        skip_bad_images=skip_bad_images, ten_crop=ten_crop, resize_size=resize_size)
