"""List files, the tf.data pipeline, bad images, and the --check command, on small files written here."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import datagenerator
import image_files
from finetune_alexnet import cli
from finetune_alexnet.errors import ToolkitError
from test_make_lists import time_limit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_list(path, lines, newline='\n'):
    path.write_bytes(newline.join(lines).encode('utf-8') + newline.encode())
    return str(path)


def photo_set(folder, count, seed=0):
    """`count` small PNGs of different sizes and random pixels; their paths."""
    folder.mkdir(exist_ok=True)
    paths = []
    for index in range(count):
        image = image_files.random_rgb(5 + index % 4, 7 + index % 3, seed=seed + index)
        paths.append(image_files.write_png(folder / f'img{index}.png', image))
    return paths


def labelled_list(tmp_path, paths, labels=None, name='list.txt'):
    labels = range(len(paths)) if labels is None else labels
    return write_list(tmp_path / name, [f'{path} {label}' for path, label in zip(paths, labels)])


def epochs(generator, count):
    """[(images, labels) of each epoch], re-initialising one iterator per epoch as the trainer does."""
    iterator = tf.data.make_initializable_iterator(generator.data)
    next_batch = iterator.get_next()
    results = []
    with tf.Session() as session:
        for _ in range(count):
            session.run(iterator.initializer)
            batches = []
            try:
                while True:
                    batches.append(session.run(next_batch))
            except tf.errors.OutOfRangeError:
                pass
            results.append((np.concatenate([images for images, _ in batches]),
                            np.concatenate([labels for _, labels in batches])))
    return results


def prediction_inputs(paths, center_crop=False):
    """float32 [n, 227, 227, 3]: what images_dataset, prediction's pipeline, makes of the files."""
    with tf.Graph().as_default(), tf.Session() as session:
        dataset = datagenerator.images_dataset(list(paths), batch_size=64, center_crop=center_crop)
        next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
        batches = []
        try:
            while True:
                batches.append(session.run(next_batch)[0])
        except tf.errors.OutOfRangeError:
            pass
    return np.concatenate(batches)


def normalised(pixels):
    """What preprocessing.normalize makes of uint8 RGB batches, in NumPy: float32 BGR minus the mean."""
    return pixels[..., ::-1].astype(np.float32) - np.float32([103.939, 116.779, 123.68])


def identities(labels_one_hot):
    return labels_one_hot.argmax(axis=1).tolist()


# List files.

def test_list_with_spaces_comments_blank_lines_crlf_and_relative_paths(tmp_path, monkeypatch):
    photos = tmp_path / 'my photos'
    names = ['cat 1.png', 'dog  2.png', 'x.png']
    photos.mkdir()
    paths = [image_files.write_png(photos / name, image_files.random_rgb(3, 3)) for name in names]
    list_file = write_list(tmp_path / 'train.txt', [
        '\ufeff# cats and dogs',
        '',
        'my photos/cat 1.png 0',
        '   ',
        '  my photos/dog  2.png\t1  ',
        '# my photos/x.png 1',
        f'{paths[2]} 1',
    ], newline='\r\n')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found, labels = datagenerator.read_list(list_file, num_classes=2)
    assert found == paths
    assert labels.tolist() == [0, 1, 1] and labels.dtype == np.int64


def test_every_bad_line_in_one_error(tmp_path):
    good = image_files.write_png(tmp_path / 'good.png', image_files.random_rgb(3, 3))
    list_file = write_list(tmp_path / 'list.txt', [
        f'{good} 0',
        f'{good} cat',        # 2: not an integer
        f'{good} 1.5',        # 3: not an integer
        f'{good} 2',          # 4: outside 0..1
        f'{good} -1',         # 5: outside 0..1
        'nowhere.png 0',      # 6: image not found
        f'{good}',            # 7: no label
        'gone.png 1',         # 8: image not found
        f'{good} 1',
    ])
    with pytest.raises(ToolkitError) as caught:
        datagenerator.read_list(list_file, num_classes=2)
    message = str(caught.value)
    assert '\n' not in message
    assert message.startswith(f'{list_file}: 7 bad lines')
    for shown in ['line 2', 'line 3', 'line 4', 'line 5', 'line 6', "'cat'", 'outside 0..1',
                  'not found', 'and 2 more']:
        assert shown in message
    assert 'line 7' not in message and 'line 8' not in message


def test_missing_files_can_be_left_to_the_checker(tmp_path):
    list_file = write_list(tmp_path / 'list.txt', ['nowhere.png 0'])
    paths, labels = datagenerator.read_list(list_file, check_files=False)
    assert paths == [str(tmp_path / 'nowhere.png')] and labels.tolist() == [0]


def test_without_num_classes_labels_need_only_fit_a_one_hot_depth(tmp_path):
    good = image_files.write_png(tmp_path / 'good.png', image_files.random_rgb(3, 3))
    list_file = write_list(tmp_path / 'list.txt', [f'{good} 999', f'{good} -3', f'{good} 2147483647'])
    with pytest.raises(ToolkitError) as caught:
        datagenerator.read_list(list_file)
    assert str(caught.value) == (f'{list_file}: 2 bad lines: line 2: label -3 is outside 0..2147483646; '
                                 'line 3: label 2147483647 is outside 0..2147483646')
    list_file = write_list(tmp_path / 'list.txt', [f'{good} 999', f'{good} 2147483646'])
    assert datagenerator.read_list(list_file)[1].tolist() == [999, 2**31 - 2]


@pytest.mark.parametrize('label, shown', [
    ('99999999999999999999', 'label 99999999999999999999 is outside 0..1'),
    ('-1', 'label -1 is outside 0..1'),
    ('9' * 5000, 'label 999999999999999999999... is outside 0..1'),  # int() of it would raise
    ('000000000000000000001', None),  # leading zeros are still the number 1
    ('nan', "label 'nan' is not an integer"),
    ('inf', "label 'inf' is not an integer"),
    ('1e3', "label '1e3' is not an integer"),
    ('٣', "label '٣' is not an integer"),  # a digit to str.isdigit, not to a list
    ('x' * 500, "label '" + 'x' * 60 + "'... is not an integer"),
])
def test_hostile_labels_are_one_line_naming_file_and_line(tmp_path, label, shown):
    good = image_files.write_png(tmp_path / 'good.png', image_files.random_rgb(3, 3))
    list_file = write_list(tmp_path / 'list.txt', [f'{good} 0', f'{good} {label}'])
    if shown is None:
        assert datagenerator.read_list(list_file, num_classes=2)[1].tolist() == [0, 1]
        return
    with pytest.raises(ToolkitError) as caught:
        datagenerator.read_list(list_file, num_classes=2)
    assert str(caught.value) == f'{list_file}: 1 bad line: line 2: {shown}'


def test_a_fifo_as_a_list_file_is_refused_unopened(tmp_path):
    fifo = tmp_path / 'list.txt'
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with time_limit(), pytest.raises(ToolkitError, match=f'^{fifo}: not a list file \\(a FIFO\\)$'):
        datagenerator.read_list(str(fifo))


@pytest.mark.parametrize('content', [b'', b'# only a comment\n\n   \r\n'], ids=['empty', 'comments'])
def test_empty_list(tmp_path, content):
    list_file = tmp_path / 'list.txt'
    list_file.write_bytes(content)
    with pytest.raises(ToolkitError, match='the list is empty'):
        datagenerator.read_list(str(list_file), num_classes=2)


def test_missing_list_file(tmp_path):
    with pytest.raises(ToolkitError, match='list file not found'):
        datagenerator.read_list(str(tmp_path / 'absent.txt'), num_classes=2)


def test_list_that_is_not_utf8(tmp_path):
    list_file = tmp_path / 'list.txt'
    list_file.write_bytes(b'a.png 0\nb\xff.png 1\n')
    with pytest.raises(ToolkitError, match='line 2: not UTF-8'):
        datagenerator.read_list(str(list_file), num_classes=2)


def test_generator_checks_the_list_before_building_anything(tmp_path):
    list_file = write_list(tmp_path / 'list.txt', ['nowhere.png 0'])
    with tf.Graph().as_default() as graph:
        with pytest.raises(ToolkitError, match='line 1: image not found'):
            datagenerator.ImageDataGenerator(list_file, 'training', 2, 2)
        assert not graph.get_operations()


# The pipeline.

def test_batches_shapes_values_and_the_last_partial_batch(tmp_path):
    paths = photo_set(tmp_path / 'photos', 5)
    list_file = labelled_list(tmp_path, paths, labels=[0, 1, 2, 0, 1])
    with tf.Graph().as_default():
        generator = datagenerator.ImageDataGenerator(list_file, 'inference', batch_size=2, num_classes=3,
                                                     shuffle=False)
        images_spec, labels_spec = tf.data.get_output_shapes(generator.data)
        assert images_spec.as_list() == [None, 227, 227, 3]
        assert labels_spec.as_list() == [None, 3]
        # uint8 pixels: normalised where the model runs (finetune_alexnet/train/inputs.py)
        assert tf.data.get_output_types(generator.data) == (tf.uint8, tf.float32)
        iterator = tf.data.make_one_shot_iterator(generator.data)
        next_batch = iterator.get_next()
        with tf.Session() as session:
            batches = [session.run(next_batch) for _ in range(3)]
            with pytest.raises(tf.errors.OutOfRangeError):
                session.run(next_batch)  # not repeated: the trainer re-initialises per epoch
    assert [len(images) for images, _ in batches] == [2, 2, 1]
    assert generator.data_size == 5 and generator.paths == paths
    assert generator.labels.tolist() == [0, 1, 2, 0, 1]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    assert np.array_equal(labels, np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]])
    # Normalised, exactly what prediction and the notebook get for the same files.
    assert np.array_equal(normalised(images), prediction_inputs(paths))


def test_uniform_image_through_the_pipeline_has_the_exact_values(tmp_path):
    path = image_files.write_png(tmp_path / 'flat.png', image_files.flat_rgb(30, 40, (200, 100, 50)))
    with tf.Graph().as_default():
        generator = datagenerator.ImageDataGenerator(labelled_list(tmp_path, [path]), 'training', 4, 1)
        ((images, labels),) = epochs(generator, 1)
    assert images.dtype == np.uint8
    assert np.array_equal(images[0], np.broadcast_to(np.uint8([200, 100, 50]), (227, 227, 3)))
    assert labels.tolist() == [[1.0]]


def test_every_format_and_size_goes_through(tmp_path):
    pytest.importorskip('PIL')
    rgb = image_files.random_rgb(20, 30, seed=1)
    rgba16 = np.random.default_rng(2).integers(0, 65536, (9, 13, 4)).astype(np.uint16)
    files = [
        image_files.write_jpeg(tmp_path / 'baseline.jpg', rgb),
        image_files.write_jpeg(tmp_path / 'progressive.jpg', rgb, progressive=True),
        image_files.write_cmyk_jpeg(tmp_path / 'cmyk.jpg', rgb),
        image_files.write_png(tmp_path / 'alpha16.png', rgba16),
        image_files.write_png(tmp_path / 'gray.png', rgb[..., 0]),
        image_files.write_bmp(tmp_path / 'image.bmp', rgb),
        image_files.write(tmp_path / 'anim.gif', image_files.gif_bytes([(rgb // 128) * 128, rgb * 0])),
        image_files.write_png(tmp_path / 'dot.png', rgb[:1, :1]),
        image_files.write_png(tmp_path / 'strip.png', image_files.random_rgb(1, 500)),
        image_files.write(tmp_path / 'png named été.jpg', image_files.encode(rgb, '.png')),
    ]
    with tf.Graph().as_default():
        generator = datagenerator.ImageDataGenerator(labelled_list(tmp_path, files), 'training', 4,
                                                     num_classes=len(files), shuffle=False)
        ((images, labels),) = epochs(generator, 1)
    assert images.shape == (len(files), 227, 227, 3)
    assert identities(labels) == list(range(len(files)))
    assert images.dtype == np.uint8
    # GIF: the first frame, not the black second one.
    assert images[6].max() > 0


def test_shuffle_changes_every_epoch_and_repeats_with_the_seed(tmp_path):
    list_file = labelled_list(tmp_path, photo_set(tmp_path / 'photos', 12))

    def orders(seed, shuffle=True):
        with tf.Graph().as_default():
            generator = datagenerator.ImageDataGenerator(list_file, 'training', 5, 12, shuffle=shuffle,
                                                         seed=seed)
            return [identities(labels) for _, labels in epochs(generator, 3)]

    first = orders(seed=7)
    assert all(sorted(order) == list(range(12)) for order in first)
    assert len({tuple(order) for order in first}) == 3, 'a new order every epoch'
    assert orders(seed=7) == first, 'the same seed gives the same orders'
    assert orders(seed=8) != first
    assert orders(seed=7, shuffle=False) == [list(range(12))] * 3


def test_feeding_the_epoch_ties_the_order_to_it(tmp_path):
    list_file = labelled_list(tmp_path, photo_set(tmp_path / 'photos', 10))

    def orders(epochs_fed):
        with tf.Graph().as_default():
            generator = datagenerator.ImageDataGenerator(list_file, 'training', 4, 10, seed=5)
            iterator = tf.data.make_initializable_iterator(generator.data)
            labels = iterator.get_next()[1]
            result = []
            with tf.Session() as session:
                for epoch in epochs_fed:
                    session.run(iterator.initializer, {generator.epoch: epoch})
                    result.append(identities(np.concatenate([session.run(labels) for _ in range(3)])))
            return result

    uninterrupted = orders([1, 2, 3])
    assert len({tuple(order) for order in uninterrupted}) == 3
    assert orders([3, 2]) == uninterrupted[:0:-1], 'a resumed run replays the same epochs'


def test_augmentation_differs_per_epoch_repeats_with_the_seed_and_is_fixed_in_inference(tmp_path):
    paths = photo_set(tmp_path / 'photos', 3)
    list_file = labelled_list(tmp_path, paths)

    def run(mode, seed):
        with tf.Graph().as_default():
            generator = datagenerator.ImageDataGenerator(list_file, mode, 3, 3, shuffle=False, seed=seed,
                                                         augment=True)
            return [images for images, _ in epochs(generator, 2)]

    first, second = run('training', seed=1)
    assert not np.array_equal(first, second), 'new crops and flips every epoch'
    again = run('training', seed=1)
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)
    inference = run('inference', seed=None)
    assert np.array_equal(inference[0], inference[1])
    assert np.array_equal(normalised(inference[0]), prediction_inputs(paths, center_crop=True))
    assert not np.array_equal(normalised(inference[0]), prediction_inputs(paths))


def bad_set(tmp_path):
    """A list of five: good, truncated JPEG, good, text named .jpg, good."""
    good = photo_set(tmp_path / 'photos', 3)
    jpeg = image_files.encode(image_files.random_rgb(64, 64, seed=3), '.jpg')
    truncated = image_files.write(tmp_path / 'truncated.jpg', image_files.truncated(jpeg))
    text = image_files.write(tmp_path / 'notes.jpg', b'not an image at all')
    paths = [good[0], truncated, good[1], text, good[2]]
    return labelled_list(tmp_path, paths, labels=[0] * 5), paths


def test_a_corrupt_file_stops_the_run_with_an_error_naming_it(tmp_path):
    list_file, paths = bad_set(tmp_path)
    with tf.Graph().as_default():
        generator = datagenerator.ImageDataGenerator(list_file, 'training', 2, 1, seed=0)
        with pytest.raises(datagenerator.IMAGE_ERRORS):
            epochs(generator, 1)
    error = generator.unreadable_images_error()
    assert isinstance(error, ToolkitError)
    message = str(error)
    assert '\n' not in message
    assert f'{list_file}: 2 unreadable images' in message
    assert f'line 2: {paths[1]}: jpeg::Uncompress failed' in message
    assert f'line 4: {paths[3]}: Unknown image file format' in message
    assert '--check' in message


def test_skip_bad_images_drops_them_and_reports_how_many(tmp_path):
    list_file, paths = bad_set(tmp_path)
    with tf.Graph().as_default():
        generator = datagenerator.ImageDataGenerator(list_file, 'training', 2, 1, seed=0,
                                                     skip_bad_images=True)
        os.remove(paths[4])  # a file deleted after the list was checked is skipped as well
        results = epochs(generator, 2)
    assert [len(images) for images, _ in results] == [2, 2]
    assert generator.describe_skipped(2).startswith(f'skipped 3 unreadable images of 5 in {list_file}')
    assert generator.describe_skipped(5) is None


def test_find_bad_images_names_each_file_and_why(tmp_path):
    _, paths = bad_set(tmp_path)
    empty = image_files.write(tmp_path / 'empty.png', b'')
    png = image_files.encode(image_files.random_rgb(50, 50), '.png')
    truncated_png = image_files.write(tmp_path / 'cut.png', image_files.truncated(png))
    paths = paths + [str(tmp_path / 'missing.png'), empty, truncated_png]
    expected = [paths[1], paths[3], paths[5], empty, truncated_png]
    for workers in (1, 3):
        bad = datagenerator.find_bad_images(paths, workers=workers)
        assert [path for path, _ in bad] == expected
    reasons = dict(bad)
    assert reasons[paths[5]] == 'file not found'
    assert 'empty' in reasons[empty]
    assert all(reason and '\n' not in reason for reason in reasons.values())
    assert datagenerator.find_bad_images(paths[:1] + paths[2:3]) == []


def test_images_dataset_gives_positions_and_can_skip(tmp_path):
    _, paths = bad_set(tmp_path)
    for skip, expected in [(True, [0, 2, 4])]:
        with tf.Graph().as_default(), tf.Session() as session:
            dataset = datagenerator.images_dataset(paths, batch_size=2, skip_bad_images=skip)
            assert tf.data.get_output_shapes(dataset)[0].as_list() == [None, 227, 227, 3]
            next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
            positions = []
            try:
                while True:
                    positions.extend(session.run(next_batch)[1].tolist())
            except tf.errors.OutOfRangeError:
                pass
        assert positions == expected
    with tf.Graph().as_default(), pytest.raises(ToolkitError, match='1 image not found: .*nowhere.png'):
        datagenerator.images_dataset(paths + [str(tmp_path / 'nowhere.png')], batch_size=2)


def test_an_unreadable_file_of_a_plain_list_of_images_is_named(tmp_path):
    _, paths = bad_set(tmp_path)
    with pytest.raises(datagenerator.IMAGE_ERRORS):
        prediction_inputs(paths)
    error = datagenerator.unreadable_images_error(paths)  # what prediction raises after that
    assert str(error).startswith(f'2 unreadable images: {paths[1]}: jpeg::Uncompress failed')
    assert paths[3] in str(error)
    images = prediction_inputs([paths[0]])
    assert images.shape == (1, 227, 227, 3) and images.dtype == np.float32


def test_naming_unreadable_images_keeps_the_runs_pixel_limit(tmp_path):
    """The pass that names the bad files after a decode error decodes nothing over the run's
    --max_pixels: it reports those from their headers, as the run itself did (issue 21)."""
    _, paths = bad_set(tmp_path)
    error = str(datagenerator.unreadable_images_error(paths, max_pixels=10))
    assert f'{paths[0]}: ' in error and 'over --max_pixels 10' in error
    assert 'jpeg::Uncompress failed' not in error  # the corrupt JPEG is over 10 pixels too: not decoded
    list_file = labelled_list(tmp_path, paths[:1])
    with tf.Graph().as_default():
        generator = datagenerator.ImageDataGenerator(list_file, 'inference', 2, 1, max_pixels=10**6)
    assert generator.max_pixels == 10**6


def test_bad_arguments(tmp_path):
    list_file = labelled_list(tmp_path, photo_set(tmp_path / 'photos', 1))
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match='mode'):
            datagenerator.ImageDataGenerator(list_file, 'train', 2, 2)
        with pytest.raises(ValueError, match='batch_size'):
            datagenerator.ImageDataGenerator(list_file, 'training', 0, 2)


@pytest.mark.slow
def test_eager_mode_is_refused_with_a_hint(tmp_path):
    """In a fresh process (this one runs in TF1 mode, see conftest.py) with TF2's eager default."""
    list_file = labelled_list(tmp_path, photo_set(tmp_path / 'photos', 1))
    code = ('import datagenerator\n'
            'try:\n'
            f'    datagenerator.ImageDataGenerator({str(list_file)!r}, "training", 2, 2)\n'
            'except RuntimeError as error:\n'
            '    print("refused:", error)\n')
    result = run_python(['-c', code])
    assert result.returncode == 0, result.stderr
    assert 'refused:' in result.stdout and 'disable_v2_behavior' in result.stdout


# As the trainer runs it: TF1 behaviour, one iterator made from the structure, re-initialised per epoch.

TF1_SCRIPT = '''
import sys
import numpy as np
import tensorflow.compat.v1 as tf
tf.disable_v2_behavior()
import datagenerator
generator = datagenerator.ImageDataGenerator(sys.argv[1], 'training', 4, 6, seed=3, augment=True,
                                             skip_bad_images=True)
iterator = tf.data.Iterator.from_structure(tf.data.get_output_types(generator.data),
                                           tf.data.get_output_shapes(generator.data))
init = iterator.make_initializer(generator.data)
images, labels = iterator.get_next()
with tf.Session() as session:
    for epoch in range(2):
        session.run(init)
        seen = []
        try:
            while True:
                seen.extend(session.run(labels).argmax(axis=1).tolist())
        except tf.errors.OutOfRangeError:
            pass
        print(images.shape.as_list(), seen, generator.describe_skipped(len(seen)))
'''


def run_python(args, cwd=REPO):
    environment = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.run([sys.executable] + args, cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_in_tf1_mode_as_the_trainer_runs_it(tmp_path):
    paths = photo_set(tmp_path / 'photos', 5)
    paths.append(image_files.write(tmp_path / 'broken.png', b'\x89PNG\r\n\x1a\n broken'))
    result = run_python(['-c', TF1_SCRIPT, labelled_list(tmp_path, paths)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all(line.startswith('[None, 227, 227, 3] [') for line in lines)
    list_file = tmp_path / 'list.txt'
    note = (f'skipped 1 unreadable image of 6 in {list_file} '
            f'(list them: python datagenerator.py --check {list_file})')
    assert all(line.endswith(note) for line in lines)
    assert lines[0] != lines[1], 'a new order every epoch'


# The --check command.

@pytest.mark.slow
def test_check_command_lists_bad_files_and_exits_1(tmp_path):
    list_file, paths = bad_set(tmp_path)
    os.remove(paths[4])
    result = run_python([os.path.join(REPO, 'datagenerator.py'), '--check', list_file, '--workers', '2'],
                        cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f'{list_file}:2: {paths[1]}: jpeg::Uncompress failed. Invalid JPEG data or crop window.',
        f'{list_file}:4: {paths[3]}: Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, '
        'WebP required.',
        f'{list_file}:5: {paths[4]}: file not found',
    ]
    assert f'{list_file}: 3 of 5 images are unreadable' in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_check_command_exits_2_on_a_bad_list(tmp_path):
    list_file = write_list(tmp_path / 'list.txt', ['a.png zero'])
    result = run_python([os.path.join(REPO, 'datagenerator.py'), '--check', list_file,
                         '--num_classes', '2'])
    assert result.returncode == 2
    assert result.stdout == ''
    assert f"error: {list_file}: 1 bad line: line 1: label 'zero' is not an integer" in result.stderr
    assert 'Traceback' not in result.stderr


def test_check_exits_0_when_every_image_decodes(tmp_path, capsys):
    list_file = labelled_list(tmp_path, photo_set(tmp_path / 'photos', 4))
    assert datagenerator.main(['--check', list_file, '--num_classes', '4']) == 0
    captured = capsys.readouterr()
    assert captured.out == ''
    assert f'{list_file}: all 4 images decode' in captured.err
    assert cli.run(datagenerator.main, ['--check', list_file, '--num_classes', '3']) == 2
    assert 'line 4: label 3 is outside 0..2' in capsys.readouterr().err


@pytest.mark.parametrize('skip_bad_images', [False, True])
def test_skip_starts_the_pinned_epoch_order_past_the_consumed_images(tmp_path, skip_bad_images):
    """What a run resumed mid-epoch feeds: the epoch's own order, minus the images already trained
    on. With skip_bad_images the count is of images that decoded (a bad one shifts the batches)."""
    paths = photo_set(tmp_path / 'photos', 9)
    if skip_bad_images:
        paths[4] = image_files.write(tmp_path / 'bad.png', b'not an image')
    list_file = labelled_list(tmp_path, paths)
    with tf.Graph().as_default():
        generator = datagenerator.ImageDataGenerator(list_file, 'training', 2, 9, shuffle=True,
                                                     seed=5, skip_bad_images=skip_bad_images)
        iterator = tf.data.make_initializable_iterator(generator.data)
        labels = tf.argmax(iterator.get_next()[1], axis=1)
        with tf.Session() as session:
            def epoch_labels(skip):
                session.run(iterator.initializer, {generator.epoch: 3, generator.skip: skip})
                found = []
                while True:
                    try:
                        found += session.run(labels).tolist()
                    except tf.errors.OutOfRangeError:
                        return found
            whole = epoch_labels(0)
            assert len(whole) == (8 if skip_bad_images else 9) and len(set(whole)) == len(whole)
            for skip in (2, 4, 6):
                assert epoch_labels(skip) == whole[skip:]
