"""make_tfrecords.py and finetune_alexnet/tfrecords.py: shards written and read back by an independent
reader (every image's bytes, label, class text, size and name), the shard pipeline against the list
pipeline batch for batch, finetune.py and predict.py --evaluate on shards against the same on lists,
and every refusal in one line."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import datagenerator
import image_files
import make_tfrecords
import tiny_runs
from finetune_alexnet import cli
from finetune_alexnet import tfrecords
from finetune_alexnet.errors import ToolkitError


# --- an independent reader: the TFRecord framing by hand, the Example proto by protobuf -----------

def read_records(path):
    """[(offset, serialized Example)] of a TFRecord file, framed by hand (no CRC check)."""
    records = []
    with open(path, 'rb') as stream:
        while True:
            offset = stream.tell()
            header = stream.read(12)
            if not header:
                return records
            length = struct.unpack('<Q', header[:8])[0]
            records.append((offset, stream.read(length)))
            stream.read(4)


def example_values(serialized):
    """{key: value} of an Example: bytes for bytes lists, int for int64 lists."""
    features = tf.train.Example.FromString(serialized).features.feature
    values = {}
    for key, feature in features.items():
        kind = feature.WhichOneof('kind')
        values[key] = getattr(feature, kind).value[0]
    return values


def read_set(files):
    return [example_values(data) for path in files for _, data in read_records(path)]


def write_tfrecords(capsys, *args):
    code = cli.run(make_tfrecords.main, [str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code, err):
    assert code == 2, err
    return tiny_runs.one_error_line(err)


def list_entries(list_file):
    paths, labels = datagenerator.read_list(str(list_file))
    return list(zip(paths, labels.tolist()))


def shard_files(folder, prefix):
    return sorted(str(folder / name) for name in os.listdir(folder)
                  if name.startswith(prefix + '-') and name.endswith('.tfrecord'))


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('tiny'), class_names=True)


def _make_shards(folder, dataset, *extra):
    code = cli.run(make_tfrecords.main, [str(dataset / 'train.txt'), str(dataset / 'val.txt'),
                                         '--out_dir', str(folder), *extra])
    assert code == 0
    return folder


@pytest.fixture(scope='module')
def shards(tmp_path_factory, dataset):
    """The tiny set as shards, shuffled by the default seed: train in 2 shards, val in 2."""
    return _make_shards(tmp_path_factory.mktemp('shards'), dataset, '--num_shards', '2')


@pytest.fixture(scope='module')
def ordered_shards(tmp_path_factory, dataset):
    """The same in the lists' order (--keep_order), one shard each as the default size gives."""
    return _make_shards(tmp_path_factory.mktemp('ordered'), dataset, '--keep_order')


# --- writing ---------------------------------------------------------------------------------------

def test_shards_hold_every_image_byte_for_byte_with_its_label_text_size_and_name(dataset, shards):
    names = dict(line.split(' ', 1) for line in (dataset / 'classes.txt').read_text().splitlines())
    for prefix in ('train', 'val'):
        files = shard_files(shards, prefix)
        assert [os.path.basename(f) for f in files] == [f'{prefix}-0000{i}-of-00002.tfrecord'
                                                        for i in range(2)]
        records = read_set(files)
        entries = list_entries(dataset / f'{prefix}.txt')
        assert sorted(r['image/filename'].decode() for r in records) == sorted(p for p, _ in entries)
        labels = dict(entries)
        for record in records:
            path = record['image/filename'].decode()
            with open(path, 'rb') as stream:
                assert record['image/encoded'] == stream.read()
            height, width = cv2.imread(path).shape[:2]
            assert (record['image/height'], record['image/width']) == (height, width)
            assert record['image/class/label'] == labels[path]
            assert record['image/class/text'].decode() == names[str(labels[path])]
            assert record['image/format'] == b'jpeg'
        # Shuffled by the seed, not in the list's order; the shards split the images evenly.
        assert [r['image/filename'].decode() for r in records] != [p for p, _ in entries]
        sizes = [len(read_records(f)) for f in files]
        assert max(sizes) - min(sizes) <= 1
    assert (shards / 'classes.txt').read_text() == (dataset / 'classes.txt').read_text()


def test_keep_order_writes_the_list_order_and_the_default_size_gives_one_shard(dataset, ordered_shards):
    files = shard_files(ordered_shards, 'train')
    assert [os.path.basename(f) for f in files] == ['train-00000-of-00001.tfrecord']
    assert [r['image/filename'].decode() for r in read_set(files)] == [
        p for p, _ in list_entries(dataset / 'train.txt')]


def test_every_format_round_trips_and_the_seed_fixes_the_order(tmp_path, capsys):
    rgb = image_files.random_rgb(30, 40, seed=4)
    files = [image_files.write_png(tmp_path / 'a.png', rgb), image_files.write_bmp(tmp_path / 'b.bmp', rgb),
             image_files.write_jpeg(tmp_path / 'c.jpg', rgb),
             image_files.write(tmp_path / 'd.gif', image_files.gif_bytes([rgb[:8, :8] // 64 * 64])),
             image_files.write_png(tmp_path / 'e.png', rgb[:, :, 0])]
    (tmp_path / 'all.txt').write_text(''.join(f'{f} {i % 3}\n' for i, f in enumerate(files)))
    orders = []
    for out in ('one', 'two'):
        code, out_text, _ = write_tfrecords(capsys, tmp_path / 'all.txt', '--out_dir', tmp_path / out,
                                            '--seed', '7')
        assert code == 0
        assert 'image/class/text is left empty' in out_text  # no classes.txt beside the list
        records = read_set(shard_files(tmp_path / out, 'all'))
        orders.append([r['image/filename'].decode() for r in records])
    assert orders[0] == orders[1] and sorted(orders[0]) == sorted(files)
    formats = {r['image/filename'].decode(): r for r in records}
    for path, expected in zip(files, ('png', 'bmp', 'jpeg', 'gif', 'png')):
        record = formats[path]
        assert record['image/format'].decode() == expected
        assert record['image/encoded'] == open(path, 'rb').read()
        assert record['image/class/text'] == b''
        assert (record['image/height'], record['image/width']) == ((8, 8) if expected == 'gif'
                                                                   else (30, 40))


def test_shard_count_follows_the_size_target(tmp_path, dataset, monkeypatch):
    assert tfrecords.shard_count(250 * 10**6, 1000) == 2  # 125 MB each: never under 100 MB
    assert tfrecords.shard_count(99 * 10**6, 1000) == 1  # a small set: one shard
    assert tfrecords.shard_count(10**12, 3) == 3  # never more shards than images
    assert tfrecords.shard_count(10**9, 1000, num_shards=4) == 4
    paths, labels = datagenerator.read_list(str(dataset / 'train.txt'))
    record_bytes = sum(os.path.getsize(p) + tfrecords.RECORD_OVERHEAD for p in paths)
    monkeypatch.setattr(tfrecords, 'TARGET_SHARD_BYTES', record_bytes // 5)
    result = tfrecords.write_shards(paths, labels, str(tmp_path), 'train', report=lambda line: None)
    assert len(result.files) == 5 and result.images == 12
    assert [len(read_records(f)) for f in result.files] == [3, 3, 2, 2, 2]
    assert all(os.path.getsize(f) >= record_bytes // 5 * 0.8 for f in result.files)
    assert result.bytes == sum(os.path.getsize(f) for f in result.files)


def test_pre_resize_stores_256_square_jpegs_of_the_resized_image(tmp_path, dataset, capsys):
    code, _, _ = write_tfrecords(capsys, dataset / 'val.txt', '--out_dir', tmp_path, '--pre_resize')
    assert code == 0
    records = read_set(shard_files(tmp_path, 'val'))
    assert len(records) == 5
    for record in records:
        assert record['image/format'] == b'jpeg'
        assert (record['image/height'], record['image/width']) == (256, 256)
        stored = cv2.imdecode(np.frombuffer(record['image/encoded'], np.uint8), cv2.IMREAD_COLOR)
        assert stored.shape == (256, 256, 3)
        # OpenCV's bilinear resize of the original samples as the pipeline does (half-pixel centres);
        # what differs is JPEG's rounding (quality 95, colour at half resolution).
        original = cv2.imread(record['image/filename'].decode(), cv2.IMREAD_COLOR)
        expected = cv2.resize(original, (256, 256), interpolation=cv2.INTER_LINEAR).astype(float)
        assert np.abs(stored - expected).mean() < 3.5  # noisy demo images: JPEG's worst case


# --- reading: the same batches as the list pipeline ------------------------------------------------

def epoch_batches(generator_class, source, mode, augment, shuffle, epoch, skip=0, **worker_part):
    """One epoch's batches (batch 4, 2 classes, seed 5); `worker_part`: num_workers, worker_index."""
    with tf.Graph().as_default():
        data = generator_class(str(source), mode, 4, 2, shuffle=shuffle, seed=5, augment=augment,
                               **worker_part)
        iterator = tf.data.make_initializable_iterator(data.data)
        next_batch = iterator.get_next()
        batches = []
        with tf.Session() as session:
            session.run(iterator.initializer, {data.epoch: epoch, data.skip: skip})
            while True:
                try:
                    batches.append(session.run(next_batch))
                except tf.errors.OutOfRangeError:
                    return data, batches


def assert_same_batches(list_file, shard_spec, cases):
    for mode, augment, shuffle, epoch, skip in cases:
        list_data, expected = epoch_batches(datagenerator.ImageDataGenerator, list_file, mode, augment,
                                            shuffle, epoch, skip)
        shard_data, found = epoch_batches(tfrecords.ShardImageDataGenerator, shard_spec, mode, augment,
                                          shuffle, epoch, skip)
        assert len(found) == len(expected) > 0
        for (images, labels), (list_images, list_labels) in zip(found, expected):
            assert images.dtype == np.uint8 and images.shape[1:] == (227, 227, 3)
            np.testing.assert_array_equal(images, list_images)
            np.testing.assert_array_equal(labels, list_labels)
        assert shard_data.paths == list_data.paths
        np.testing.assert_array_equal(shard_data.labels, list_data.labels)
        assert shard_data.data_size == list_data.data_size


TRAINING_AND_VALIDATION = [('training', True, True, 3, 0), ('training', True, True, 4, 2),
                           ('training', False, True, 1, 0), ('inference', True, False, -1, 0),
                           ('inference', False, False, -1, 0)]


def test_shards_in_the_lists_order_give_the_lists_batches_bit_for_bit(dataset, ordered_shards):
    assert_same_batches(dataset / 'train.txt', ordered_shards / 'train-*', TRAINING_AND_VALIDATION[:3])
    assert_same_batches(dataset / 'val.txt', ordered_shards / 'val-*', TRAINING_AND_VALIDATION[3:])


def test_shuffled_shards_give_the_batches_of_a_list_in_their_order(tmp_path, shards):
    """The global order is shard after shard, record after record: the epoch's shuffle permutes it
    as the list pipeline permutes a list's lines."""
    records = read_set(shard_files(shards, 'train'))
    in_shard_order = tmp_path / 'train_in_shard_order.txt'
    in_shard_order.write_text(''.join(f"{r['image/filename'].decode()} {r['image/class/label']}\n"
                                      for r in records))
    assert_same_batches(in_shard_order, shards / 'train-*', TRAINING_AND_VALIDATION[:2])


def test_index_offsets_are_where_the_records_start(shards):
    files = shard_files(shards, 'train')
    index = tfrecords.index_shards(tfrecords.find_shards(str(shards / 'train-*')), 2)
    expected = [(path, offset, len(data)) for path in files for offset, data in read_records(path)]
    assert [(index.files[s], o, n) for s, o, n in zip(index.shard, index.offset, index.length)] == \
        expected


def write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    return str(path)


def count_images(data):
    """Images one pass over `data` yields; session.run's errors propagate."""
    iterator = tf.data.make_initializable_iterator(data.data)
    labels = iterator.get_next()[1]
    seen = 0
    with tf.Session() as session:
        session.run(iterator.initializer)
        while True:
            try:
                seen += len(session.run(labels))
            except tf.errors.OutOfRangeError:
                return seen


def test_an_image_that_fails_to_decode_is_named_or_skipped(tmp_path, dataset):
    paths, labels = datagenerator.read_list(str(dataset / 'val.txt'))
    examples = [tfrecords.make_example(open(p, 'rb').read(), label, '', 240, 320, p)
                for p, label in zip(paths, labels)]
    examples[2] = tfrecords.make_example(b'\xff\xd8\xff not a jpeg', 1, '', 240, 320, 'bad.jpg')
    shard = write_records(tmp_path / 'val-00000-of-00001.tfrecord', examples)
    index = tfrecords.index_shards([shard])
    message = str(tfrecords.unreadable_records_error(index, source='val-*'))
    assert message.startswith(f'val-*: 1 unreadable image: {shard}, record 2: bad.jpg: ')
    with tf.Graph().as_default():
        data = tfrecords.ShardImageDataGenerator(str(tmp_path), 'inference', 2, 2, shuffle=False)
        with pytest.raises(tf.errors.InvalidArgumentError):
            count_images(data)
    with tf.Graph().as_default():
        data = tfrecords.ShardImageDataGenerator(str(tmp_path), 'inference', 2, 2, shuffle=False,
                                                 skip_bad_images=True)
        seen = count_images(data)
    assert seen == 4
    assert data.describe_skipped(seen) == f'skipped 1 unreadable image of 5 in {tmp_path}'


def test_a_damaged_shard_is_refused_and_one_cut_short_later_is_an_error_not_a_smaller_epoch(
        tmp_path, ordered_shards):
    source = ordered_shards / 'train-00000-of-00001.tfrecord'
    records = read_records(str(source))
    damaged = bytearray(source.read_bytes())
    offset, record = records[3]
    damaged[offset + 12 + len(record) // 2] ^= 0xFF  # inside the 4th record: its checksum fails
    (tmp_path / 'damaged').mkdir()
    (tmp_path / 'damaged' / source.name).write_bytes(bytes(damaged))
    with pytest.raises(ToolkitError) as error:
        tfrecords.index_shards([str(tmp_path / 'damaged' / source.name)])
    assert str(error.value).startswith(f"{tmp_path / 'damaged' / source.name}: not a readable "
                                       'TFRecord file of images (corrupted record at ')
    (tmp_path / 'cut').mkdir()
    (tmp_path / 'cut' / source.name).write_bytes(source.read_bytes())
    with tf.Graph().as_default():
        data = tfrecords.ShardImageDataGenerator(str(tmp_path / 'cut'), 'inference', 4, 2, shuffle=False)
        (tmp_path / 'cut' / source.name).write_bytes(source.read_bytes()[:records[10][0]])
        with pytest.raises(tf.errors.InvalidArgumentError):
            count_images(data)


def test_records_over_max_pixels_are_refused_before_decoding(ordered_shards):
    with tf.Graph().as_default(), pytest.raises(ToolkitError) as error:
        tfrecords.ShardImageDataGenerator(str(ordered_shards / 'val-*'), 'inference', 4, 2,
                                          max_pixels=1000)
    assert 'too large to decode safely' in str(error.value) and 'over --max_pixels 1000' in str(error.value)


# --- the commands on shards ----------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_and_predict_on_shards_equal_the_same_on_lists(tmp_path, dataset, ordered_shards,
                                                                capsys):
    runs = {}
    for name, train, val in (('lists', dataset / 'train.txt', dataset / 'val.txt'),
                             ('shards', ordered_shards / 'train-*', ordered_shards / 'val-*')):
        args = tiny_runs.flags(dataset, tmp_path / name)
        args[args.index('--train_file') + 1], args[args.index('--val_file') + 1] = str(train), str(val)
        result = tiny_runs.run_here(capsys, args)
        assert result.returncode == 0, result.stderr
        state = tiny_runs.read_state(tmp_path / name)
        reader = tf.train.load_checkpoint(str(tmp_path / name / 'ckpt' / state['latest_checkpoint']))
        runs[name] = ({key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()},
                      [(r['train_loss'], r['val_loss'], r['val_accuracy']) for r in state['history']])
    (weights, history), (shard_weights, shard_history) = runs['lists'], runs['shards']
    assert set(shard_weights) == set(weights) and 'fc8/weights' in weights
    for key in weights:
        np.testing.assert_allclose(shard_weights[key], weights[key], rtol=0, atol=1e-6)
    assert shard_history == history

    reports = {}
    for name, evaluate in (('lists', dataset / 'val.txt'), ('shards', ordered_shards / 'val-*')):
        output = tmp_path / f'{name}.json'
        code = cli.run(__import__('predict').main, ['--checkpoint_path', str(tmp_path / 'lists' / 'ckpt'),
                                                    '--evaluate', str(evaluate), '--json', str(output)])
        assert code == 0, capsys.readouterr().err
        reports[name] = json.loads(output.read_text())
    assert reports['shards']['evaluation']['accuracy'] == reports['lists']['evaluation']['accuracy']
    assert reports['shards']['predictions'] == reports['lists']['predictions']


# --- refusals: one line, nothing written ---------------------------------------------------------

def test_existing_shards_are_kept_unless_overwrite_and_then_only_ours(tmp_path, dataset, capsys):
    out = tmp_path / 'out'
    assert write_tfrecords(capsys, dataset / 'train.txt', '--out_dir', out, '--num_shards', '3')[0] == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    code, _, err = write_tfrecords(capsys, dataset / 'train.txt', '--out_dir', out)
    line = one_error_line(code, err)
    assert line == (f'error: {out} already holds 3 shards of train (train-00000-of-00003.tfrecord, ...); '
                    'pass --overwrite to replace them, or choose another --out_dir')
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    (out / 'notes.txt').write_text('mine')
    (out / 'val-00000-of-00001.tfrecord').write_bytes(b'another set')
    assert write_tfrecords(capsys, dataset / 'train.txt', '--out_dir', out, '--overwrite')[0] == 0
    assert sorted(os.listdir(out)) == ['classes.txt', 'notes.txt', 'train-00000-of-00001.tfrecord',
                                       'val-00000-of-00001.tfrecord']
    assert (out / 'notes.txt').read_text() == 'mine'
    assert (out / 'val-00000-of-00001.tfrecord').read_bytes() == b'another set'
    assert len(read_records(str(out / 'train-00000-of-00001.tfrecord'))) == 12


class StopAfter:
    """A signals.StopRequests stand-in that reports a request after `checks` checks."""

    def __init__(self, checks):
        self.checks = checks

    @property
    def requested(self):
        self.checks -= 1
        return self.checks < 0


def test_a_stop_request_leaves_what_was_there_before(tmp_path, dataset):
    paths, labels = datagenerator.read_list(str(dataset / 'train.txt'))
    first = tfrecords.write_shards(paths, labels, str(tmp_path), 'train', num_shards=2,
                                   report=lambda line: None)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    result = tfrecords.write_shards(paths, labels, str(tmp_path), 'train', num_shards=4, overwrite=True,
                                    stop=StopAfter(1), report=lambda line: None)
    assert result.stopped and result.files == [] and len(first.files) == 2
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_unreadable_and_oversized_images_are_named_or_left_out(tmp_path, dataset, capsys):
    entries = list_entries(dataset / 'val.txt')
    broken = image_files.write(tmp_path / 'broken.jpg',
                               image_files.truncated(image_files.encode(image_files.random_rgb(64, 64),
                                                                        '.jpg'), 0.3))
    listing = tmp_path / 'val.txt'
    listing.write_text(''.join(f'{p} {label}\n' for p, label in entries) + f'{broken} 1\n')
    code, _, err = write_tfrecords(capsys, listing, '--out_dir', tmp_path / 'out', '--num_classes', '2')
    line = one_error_line(code, err)
    assert line.startswith(f'error: {listing}: 1 unreadable image: {broken}: ')
    assert line.endswith('(fix or remove them, or pass --skip_bad_images)')
    assert not (tmp_path / 'out').exists() or shard_files(tmp_path / 'out', 'val') == []
    assert [n for n in os.listdir(tmp_path / 'out') if n.endswith('.partial')] == []
    code, out, _ = write_tfrecords(capsys, listing, '--out_dir', tmp_path / 'out', '--num_classes', '2',
                                   '--skip_bad_images')
    assert code == 0 and f'note: left out 1 image of {listing}: {broken}: ' in out
    assert len(read_set(shard_files(tmp_path / 'out', 'val'))) == 5
    code, _, err = write_tfrecords(capsys, dataset / 'val.txt', '--out_dir', tmp_path / 'big',
                                   '--max_pixels', '100')
    assert one_error_line(code, err).startswith(f'error: {dataset / "val.txt"}: 5 images too large to '
                                                'decode safely: ')
    assert not (tmp_path / 'big').exists() or os.listdir(tmp_path / 'big') == []


@pytest.mark.parametrize('args, message', [
    (['{d}/missing.txt', '--out_dir', '{t}/o'], '{d}/missing.txt: list file not found'),
    (['{d}/train.txt', '--out_dir', '{t}/o', '--num_shards', '0'], '--num_shards must be at least 1'),
    (['{d}/train.txt', '--out_dir', '{t}/o', '--num_shards', '13'],
     '--num_shards 13: more shards than the 12 images of {d}/train.txt'),
    (['{d}/train.txt', '--out_dir', '{t}/o', '--keep_order', '--seed', '3'],
     '--seed shuffles the records; --keep_order keeps the list order: give one'),
    (['{d}/train.txt', '{t}/train.txt', '--out_dir', '{t}/o'],
     'two lists would both write the shards train-*.tfrecord'),
    (['{d}/train.txt', '--out_dir', '{d}/train.txt'], '{d}/train.txt: --out_dir is a file, not a folder'),
    (['{d}/train.txt', '--out_dir', '{t}/o', '--num_classes', '1'], '{d}/classes.txt'),
    (['{d}/train.txt', '--out_dir', '{t}/o', '--class_names', '{t}/none.txt'],
     '{t}/none.txt: class names file not found'),
])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, dataset, capsys, args, message):
    args = [arg.format(d=dataset, t=tmp_path) for arg in args]
    code, _, err = write_tfrecords(capsys, *args)
    assert message.format(d=dataset, t=tmp_path) in one_error_line(code, err)
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('make, message', [
    (lambda t, s: str(t), '{t}: no *.tfrecord shards in this folder'),
    (lambda t, s: str(t / 'x-*'), '{t}/x-*: no shard file matches this pattern'),
    (lambda t, s: str(s), '{s}: holds the shards of several sets (train, val); name one with a '
                          'pattern, e.g. {s}/train-*'),
    (lambda t, s: (os.remove(t / 'c' / 'train-00001-of-00002.tfrecord'), str(t / 'c'))[1],
     '{t}/c: 1 shard of 2 missing: train-00001-of-00002.tfrecord'),
    (lambda t, s: ((t / 'g.tfrecord').write_bytes(b'\x05' * 40), str(t / 'g.tfrecord'))[1],
     '{t}/g.tfrecord: not a readable TFRecord file of images (corrupted record at 0'),
])
def test_bad_shards_stop_finetune_in_one_line(tmp_path, dataset, shards, capsys, make, message):
    (tmp_path / 'c').mkdir()
    for name in ('train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord'):
        (tmp_path / 'c' / name).write_bytes((shards / name).read_bytes())
    spec = make(tmp_path, shards)
    args = tiny_runs.flags(dataset, tmp_path / 'run')
    args[args.index('--train_file') + 1] = spec
    result = tiny_runs.run_here(capsys, args)
    assert result.returncode == 2
    assert message.format(t=tmp_path, s=shards) in tiny_runs.one_error_line(result.stderr)
    assert not (tmp_path / 'run' / 'ckpt' / 'run_state.json').exists()


def test_labels_outside_num_classes_are_named_with_their_record(shards):
    with pytest.raises(ToolkitError) as error:
        tfrecords.index_shards(tfrecords.find_shards(str(shards / 'train-*')), 1, 'spec')
    assert str(error.value).startswith(f"spec: 6 bad records: {shards / 'train-00000-of-00002.tfrecord'}, "
                                       'record ')
    assert 'label 1 is outside 0..0' in str(error.value)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (mounted as root), or the test is skipped where none can be mounted."""
    folder = tmp_path / 'disk'
    folder.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(folder)],
                             capture_output=True) if shutil.which('mount') else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip('no tmpfs can be mounted here (mount needs root)')
    try:
        yield folder
    finally:
        subprocess.run(['umount', str(folder)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_shard(tmp_path, small_disk, capsys):
    """Noise PNGs of 1.2 MB in all for a 256 KiB disk: the write fails part way, every shard written
    so far (and the unfinished one) is removed, no file with a shard's name is left."""
    lines = []
    for index in range(8):
        path = tmp_path / f'noise{index}.png'
        image_files.write_png(path, image_files.random_rgb(200, 200, seed=index))
        lines.append(f'{path} {index % 2}')
    (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
    code, out, err = write_tfrecords(capsys, tmp_path / 'train.txt', '--out_dir', small_disk / 'out',
                                     '--num_shards', '4')
    line = one_error_line(code, err)
    assert re.fullmatch(rf'error: {small_disk / "out"}: cannot write train-0000[0-3]-of-00004\.tfrecord '
                        r'\(.*No space left on device.*\); removed the unfinished shards of train; the '
                        r'disk is full: free some space, or choose another --out_dir', line), line
    assert os.listdir(small_disk / 'out') == []


# --- records holding pixel bombs: the limit holds at decoding too -----------------------------------

BOMB_READER = '''
import resource, sys
import tensorflow.compat.v1 as tf
from finetune_alexnet import tfrecords
tf.disable_v2_behavior()
data = tfrecords.ShardImageDataGenerator(sys.argv[1], 'inference', 2, 2, shuffle=False,
                                         skip_bad_images=True)
iterator = tf.data.make_initializable_iterator(data.data)
labels = iterator.get_next()[1]
seen = 0
with tf.Session() as session:
    session.run(iterator.initializer)
    while True:
        try:
            seen += len(session.run(labels))
        except tf.errors.OutOfRangeError:
            break
print(seen, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
'''


def slim_shard_with_a_bomb(folder, dataset):
    """Another tool's shard (TF-Slim's keys): the validation images, and as record 2 a 30 KB PNG of
    15000x15000 pixels (675 MB decoded) whose image/height and image/width claim 100x100."""
    paths, labels = datagenerator.read_list(str(dataset / 'val.txt'))
    examples = [tfrecords.make_example(open(p, 'rb').read(), label, '', 240, 320, p)
                for p, label in zip(paths, labels)]
    bomb = image_files.huge_png(folder / 'bomb.png', 15000, bit_depth=1).read_bytes()
    examples.insert(2, tfrecords.make_example(bomb, 1, '', 100, 100, 'bomb.png'))
    (folder / 'slim').mkdir()
    return write_records(folder / 'slim' / 'val-00000-of-00001.tfrecord', examples)


@pytest.mark.slow
def test_a_record_whose_image_is_over_max_pixels_is_refused_or_skipped_undecoded(tmp_path, dataset,
                                                                                 capsys):
    shard = slim_shard_with_a_bomb(tmp_path, dataset)
    index = tfrecords.index_shards([shard])
    assert tfrecords.oversized_records(index, 100_000_000) == {}  # its fields lie
    with tf.Graph().as_default():
        data = tfrecords.ShardImageDataGenerator(shard, 'inference', 2, 2, shuffle=False)
        with pytest.raises(tf.errors.InvalidArgumentError):
            count_images(data)
        message = str(data.unreadable_images_error())
    assert message == (f'{shard}: 1 unreadable image: {shard}, record 2: bomb.png: the record: its '
                       'header announces 225000000 pixels (every frame counted), over max_pixels '
                       '100000000; refused before decoding')
    with tf.Graph().as_default():
        data = tfrecords.ShardImageDataGenerator(shard, 'inference', 2, 2, shuffle=False,
                                                 skip_bad_images=True)
        assert count_images(data) == 5
    assert data.describe_skipped(5) == f'skipped 1 unreadable image of 6 in {shard}'
    # finetune.py on it: one line naming the shard and the record.
    args = tiny_runs.flags(dataset, tmp_path / 'run')
    args[args.index('--val_file') + 1] = str(tmp_path / 'slim')
    result = tiny_runs.run_here(capsys, args)
    assert result.returncode == 2
    assert tiny_runs.one_error_line(result.stderr) == (
        f'error: {tmp_path / "slim"}: 1 unreadable image: {shard}, record 2: bomb.png: the record: its '
        'header announces 225000000 pixels (every frame counted), over max_pixels 100000000; refused '
        'before decoding')


@pytest.mark.slow
def test_skipping_a_pixel_bomb_in_a_shard_keeps_the_memory_bounded(tmp_path, dataset):
    """Fresh processes read the shard with --skip_bad_images, and the same shard without the bomb:
    the bomb adds less than 100 MB to the peak (decoded, it alone is 675 MB; without the limit the
    peak grew by 677 MB, bench/RESULTS.md)."""
    shard = slim_shard_with_a_bomb(tmp_path, dataset)
    records = read_records(shard)
    (tmp_path / 'plain').mkdir()
    plain = write_records(tmp_path / 'plain' / 'val-00000-of-00001.tfrecord',
                          [tf.train.Example.FromString(data) for i, (_, data) in enumerate(records)
                           if i != 2])
    peaks = {}
    for name, path in (('bomb', shard), ('plain', plain)):
        result = subprocess.run([sys.executable, '-c', BOMB_READER, path], capture_output=True,
                                text=True, timeout=300, cwd=tiny_runs.REPO,
                                env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
        assert result.returncode == 0, result.stderr
        seen, peaks[name] = map(int, result.stdout.split()[-2:])
        assert seen == 5
    assert peaks['bomb'] - peaks['plain'] < 100 * 10**6, peaks
