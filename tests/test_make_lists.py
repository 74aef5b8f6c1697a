"""make_lists.py and finetune_alexnet/image_lists.py: both folder layouts, the stratified and hash
splits, the files it writes, and every refusal."""

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest

import make_lists
from finetune_alexnet import cli
from finetune_alexnet import image_lists
from finetune_alexnet.errors import ToolkitError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_image(path, value=128):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((8, 8, 3), value, dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def make_class_folders(root, counts):
    """root/<class>/<i>.jpg for each class and count."""
    for class_name, count in counts.items():
        for i in range(count):
            write_image(os.path.join(root, class_name, f'{i}.jpg'))
    return root


def make_flat_folder(root, counts):
    """Kaggle layout: root/<class>.<i>.jpg."""
    for class_name, count in counts.items():
        for i in range(count):
            write_image(os.path.join(root, f'{class_name}.{i}.jpg'))
    return root


def read_list(list_file):
    """Read `path label` lines the way the data pipeline does: the label is the last field."""
    entries = []
    with open(list_file, encoding='utf-8') as handle:
        for line in handle:
            path, label = line.rstrip('\n').rsplit(' ', 1)
            if not os.path.isabs(path):
                path = os.path.join(os.path.dirname(list_file), path)
            entries.append((os.path.normpath(path), int(label)))
    return entries


def read_classes(classes_file):
    with open(classes_file, encoding='utf-8') as handle:
        return [tuple(line.rstrip('\n').split(' ', 1)) for line in handle]


def run_main(args, capsys):
    code = cli.run(make_lists.main, [str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_class_folder_layout_labels_follow_sorted_names(tmp_path):
    folder = make_class_folders(str(tmp_path / 'data'), {'zebra': 3, 'ant': 2, 'moth': 4})
    paths, labels, class_names = image_lists.find_images(folder)
    assert class_names == ['ant', 'moth', 'zebra']
    assert len(paths) == 9
    for path, label in zip(paths, labels):
        assert os.path.isabs(path)
        assert os.path.basename(os.path.dirname(path)) == class_names[label]


def test_flat_kaggle_layout_takes_the_class_before_the_first_dot(tmp_path):
    folder = make_flat_folder(str(tmp_path / 'train'), {'dog': 3, 'cat': 2})
    paths, labels, class_names = image_lists.find_images(folder)
    assert class_names == ['cat', 'dog']
    assert sorted(labels) == [0, 0, 1, 1, 1]
    for path, label in zip(paths, labels):
        assert os.path.basename(path).split('.')[0] == class_names[label]


def test_flat_layout_refuses_a_name_without_a_class_part(tmp_path):
    folder = make_flat_folder(str(tmp_path / 'train'), {'dog': 2, 'cat': 2})
    write_image(os.path.join(folder, 'photo.jpg'))
    with pytest.raises(ToolkitError, match='photo.jpg'):
        image_lists.find_images(folder)


@pytest.mark.parametrize('class_size, fraction, expected_val', [
    (10, 0.1, 1), (20, 0.25, 5), (20, 0.35, 7), (15, 0.1, 2), (4, 0.1, 1), (3, 0.9, 2), (1, 0.5, 0),
])
def test_validation_count_rounds_half_up_and_keeps_both_sides(class_size, fraction, expected_val):
    assert image_lists.validation_count(class_size, fraction) == expected_val


def test_split_is_stratified_with_exact_counts():
    labels = [0] * 20 + [1] * 40 + [2] * 10
    paths = [f'/data/{i}.jpg' for i in range(len(labels))]
    train, val = image_lists.split_stratified(paths, labels, 0.25, seed=0)
    assert sorted(train + val) == sorted(zip(paths, labels))
    assert [sum(label == c for _, label in val) for c in range(3)] == [5, 10, 3]  # 2.5 rounds up to 3
    assert [sum(label == c for _, label in train) for c in range(3)] == [15, 30, 7]


def test_split_is_deterministic_for_a_seed_and_differs_for_another():
    labels = [0] * 50 + [1] * 50
    paths = [f'/data/{i}.jpg' for i in range(len(labels))]
    first = image_lists.split_stratified(paths, labels, 0.2, seed=0)
    assert image_lists.split_stratified(paths, labels, 0.2, seed=0) == first
    other = image_lists.split_stratified(paths, labels, 0.2, seed=1)
    assert sorted(other[1]) != sorted(first[1])


def test_training_list_is_shuffled_and_validation_keeps_folder_order():
    # A training list sorted by class would feed a small shuffle buffer one class at a time.
    labels = [0] * 50 + [1] * 50
    paths = [f'/data/{i:03d}.jpg' for i in range(len(labels))]
    train, val = image_lists.split_stratified(paths, labels, 0.2, seed=0)
    assert [label for _, label in train] != sorted(label for _, label in train)
    assert val == sorted(val)


def test_functions_compose_as_finetune_demo_uses_them(tmp_path):
    folder = make_class_folders(str(tmp_path / 'images'), {'disk': 5, 'ring': 5})
    paths, labels, class_names = image_lists.find_images(folder)
    train, val = image_lists.split_stratified(paths, labels, val_fraction=0.2, seed=0)
    list_files = image_lists.write_lists(str(tmp_path), train, val, class_names)
    assert read_list(list_files['train.txt']) == train
    assert read_list(list_files['val.txt']) == val
    assert read_classes(list_files['classes.txt']) == [('0', 'disk'), ('1', 'ring')]


def test_lists_read_back_with_the_data_pipeline_reader(tmp_path):
    datagenerator = pytest.importorskip('datagenerator')  # imports TensorFlow; only this test pays
    folder = str(tmp_path / 'odd names')
    # Lists written inside the image folder start with the class folder's name, and list readers treat
    # a leading '#' as a comment and expand a leading '~'.
    make_class_folders(folder, {'#1 cats': 3, '~dogs': 3})
    write_image(os.path.join(folder, '~dogs', '#1 best dog.jpg'))
    paths, labels, class_names = image_lists.find_images(folder)
    for relative in (False, True):
        train, val = image_lists.split_stratified(paths, labels, val_fraction=0.3, seed=0)
        list_files = image_lists.write_lists(folder, train, val, class_names, relative=relative)
        read = []
        for name in ('train.txt', 'val.txt'):
            read_paths, read_labels = datagenerator.read_list(list_files[name], num_classes=2)
            read += zip(read_paths, (int(label) for label in read_labels))
        assert sorted(read) == sorted(zip(paths, labels))


def test_main_writes_lists_that_read_back(tmp_path, capsys):
    folder = make_class_folders(str(tmp_path / 'data'), {'cat': 10, 'dog': 20})
    out_dir = tmp_path / 'lists'
    code, out, err = run_main([folder, '--out_dir', out_dir, '--val_fraction', '0.1', '--seed', '0'], capsys)
    assert code == 0 and err == ''

    train = read_list(out_dir / 'train.txt')
    val = read_list(out_dir / 'val.txt')
    assert read_classes(out_dir / 'classes.txt') == [('0', 'cat'), ('1', 'dog')]
    assert [sum(label == c for _, label in val) for c in (0, 1)] == [1, 2]
    assert [sum(label == c for _, label in train) for c in (0, 1)] == [9, 18]
    everything = train + val
    assert len({path for path, _ in everything}) == 30
    for path, label in everything:
        assert os.path.isabs(path) and os.path.isfile(path)
        assert os.path.basename(os.path.dirname(path)) == ['cat', 'dog'][label]

    # The per-class counts are printed: label, name, train, val.
    assert ['0', 'cat', '9', '1'] in [line.split() for line in out.splitlines()]
    assert ['1', 'dog', '18', '2'] in [line.split() for line in out.splitlines()]


def test_same_seed_writes_identical_files_and_another_seed_differs(tmp_path, capsys):
    folder = make_flat_folder(str(tmp_path / 'train'), {'cat': 30, 'dog': 30})

    def lists_for(seed, name):
        out_dir = tmp_path / name
        code, _, _ = run_main([folder, '--out_dir', out_dir, '--seed', seed, '--val_fraction', '0.2'], capsys)
        assert code == 0
        return [(out_dir / f).read_text() for f in ('train.txt', 'val.txt')]

    assert lists_for(0, 'a') == lists_for(0, 'b')
    assert lists_for(0, 'a')[1] != lists_for(5, 'c')[1]


def test_relative_paths_resolve_against_the_list_folder(tmp_path, capsys):
    folder = make_class_folders(str(tmp_path / 'data'), {'cat': 3, 'dog': 3})
    out_dir = tmp_path / 'runs' / 'lists'
    assert run_main([folder, '--out_dir', out_dir, '--relative', '--val_fraction', '0.4'], capsys)[0] == 0
    lines = (out_dir / 'train.txt').read_text().splitlines()
    assert all(not os.path.isabs(line.rsplit(' ', 1)[0]) for line in lines)
    for path, _ in read_list(out_dir / 'train.txt') + read_list(out_dir / 'val.txt'):
        assert os.path.isfile(path)


def test_paths_with_spaces_keep_the_label_as_the_last_field(tmp_path, capsys):
    folder = str(tmp_path / 'my photos')
    make_class_folders(folder, {'golden retriever': 4, 'tabby cat': 4})
    write_image(os.path.join(folder, 'tabby cat', 'on the sofa 2.jpg'))
    out_dir = tmp_path / 'out lists'
    assert run_main([folder, '--out_dir', out_dir, '--val_fraction', '0.25'], capsys)[0] == 0
    entries = read_list(out_dir / 'train.txt') + read_list(out_dir / 'val.txt')
    assert len(entries) == 9
    assert all(os.path.isfile(path) for path, _ in entries)
    assert (os.path.join(folder, 'tabby cat', 'on the sofa 2.jpg'), 1) in entries
    assert read_classes(out_dir / 'classes.txt') == [('0', 'golden retriever'), ('1', 'tabby cat')]


def test_non_image_files_are_skipped_with_a_count(tmp_path, capsys):
    folder = make_class_folders(str(tmp_path / 'data'), {'cat': 3, 'dog': 3})
    write_image(os.path.join(folder, 'cat', 'upper.JPEG'))  # extensions are case-insensitive
    write_image(os.path.join(folder, 'dog', 'pic.png'))
    for name in ('cat/notes.txt', 'dog/labels.csv', 'dog/model.npy'):
        (tmp_path / 'data' / name).write_text('not an image')
    (tmp_path / 'data' / 'cat' / '.DS_Store').write_text('hidden, ignored silently')
    write_image(os.path.join(folder, 'stray.jpg'))  # next to the class folders: in no class
    out_dir = tmp_path / 'lists'
    code, out, _ = run_main([folder, '--out_dir', out_dir, '--val_fraction', '0.25'], capsys)
    assert code == 0
    assert 'skipped 3 non-image files' in out
    assert 'skipped 1 file outside the class sub-folders' in out
    entries = read_list(out_dir / 'train.txt') + read_list(out_dir / 'val.txt')
    names = sorted(os.path.basename(path) for path, _ in entries)
    assert names == sorted(['0.jpg', '1.jpg', '2.jpg'] * 2 + ['upper.JPEG', 'pic.png'])


def test_flat_layout_skips_non_images_too(tmp_path, capsys):
    folder = make_flat_folder(str(tmp_path / 'train'), {'cat': 2, 'dog': 2})
    (tmp_path / 'train' / 'sampleSubmission.csv').write_text('id,label\n')
    code, out, _ = run_main([folder, '--out_dir', tmp_path / 'lists', '--val_fraction', '0.5'], capsys)
    assert code == 0
    assert 'skipped 1 non-image file (' in out


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert 'Traceback' not in err
    for fragment in fragments:
        assert fragment in err


def test_missing_folder_is_refused(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    code, _, err = run_main([missing, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, str(missing), 'no such folder')


def test_a_file_instead_of_a_folder_is_refused(tmp_path, capsys):
    a_file = tmp_path / 'list.txt'
    a_file.write_text('x')
    code, _, err = run_main([a_file, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, str(a_file), 'not a folder')


def test_error_names_the_folder_as_typed(tmp_path, capsys, monkeypatch):
    (tmp_path / 'empty').mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['empty', '--out_dir', 'lists'], capsys)
    assert_one_line_error(code, err)
    assert err.startswith('error: empty: no images found')


def test_empty_folder_is_refused(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    code, _, err = run_main([empty, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, str(empty), 'no images')


def test_folder_with_only_non_images_is_refused(tmp_path, capsys):
    folder = tmp_path / 'docs'
    folder.mkdir()
    (folder / 'readme.txt').write_text('hello')
    code, _, err = run_main([folder, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, str(folder), 'no images')


@pytest.mark.parametrize('layout', ['class folders', 'flat'])
def test_single_class_is_refused(tmp_path, capsys, layout):
    folder = str(tmp_path / 'one')
    if layout == 'flat':
        make_flat_folder(folder, {'cat': 3})
    else:
        make_class_folders(folder, {'cat': 3})
    code, _, err = run_main([folder, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, folder, 'one class', "'cat'")


def test_empty_class_folder_is_refused(tmp_path, capsys):
    folder = make_class_folders(str(tmp_path / 'data'), {'cat': 3, 'dog': 3})
    os.makedirs(os.path.join(folder, 'emu'))
    code, _, err = run_main([folder, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, os.path.join(folder, 'emu'), 'no images')


@pytest.mark.parametrize('fraction', ['0', '1', '-0.1', '1.5', 'nan'])
def test_val_fraction_outside_zero_one_is_refused(tmp_path, capsys, fraction):
    folder = make_class_folders(str(tmp_path / 'data'), {'cat': 3, 'dog': 3})
    code, _, err = run_main([folder, '--out_dir', tmp_path / 'lists', '--val_fraction', fraction], capsys)
    assert_one_line_error(code, err, '--val_fraction')
    assert not (tmp_path / 'lists').exists()


def test_unwritable_out_dir_is_refused(tmp_path, capsys):
    folder = make_class_folders(str(tmp_path / 'data'), {'cat': 3, 'dog': 3})
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file where the folder should go')
    code, _, err = run_main([folder, '--out_dir', blocker / 'lists'], capsys)
    assert_one_line_error(code, err, str(blocker / 'lists'))
    code, _, err = run_main([folder, '--out_dir', blocker], capsys)
    assert err.strip() == f'error: {blocker}: --out_dir is a file, not a folder'


def test_command_line_run_succeeds_and_errors_without_traceback(tmp_path):
    folder = make_flat_folder(str(tmp_path / 'kaggle train'), {'cat': 5, 'dog': 5})
    script = os.path.join(REPO_ROOT, 'make_lists.py')
    out_dir = str(tmp_path / 'lists')

    ok = subprocess.run([sys.executable, script, folder, '--out_dir', out_dir, '--val_fraction', '0.2'],
                        capture_output=True, text=True, cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert len(read_list(os.path.join(out_dir, 'val.txt'))) == 2

    missing = str(tmp_path / 'missing')
    bad = subprocess.run([sys.executable, script, missing, '--out_dir', out_dir],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr == f'error: {missing}: no such folder\n'


# --- symlinks and duplicates ---

def listed_pairs(list_file):
    """[(path, label)] of a list file (the label is the last field)."""
    return [(path, int(label)) for path, label in
            (line.rsplit(' ', 1) for line in list_file.read_text().splitlines() if line.strip())]


def write_bytes_image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([seed]) * (100 + seed))


def test_a_symlink_loop_is_not_followed_into_a_new_class(tmp_path, capsys):
    data = tmp_path / 'data'
    for name, seed in (('cat/a.jpg', 1), ('cat/b.jpg', 2), ('dog/c.jpg', 3), ('dog/d.jpg', 4)):
        write_bytes_image(data / name, seed)
    os.symlink('.', data / 'loop')                 # the issue's `loop -> .`: a third class otherwise
    os.symlink('..', data / 'cat' / 'up')          # a loop inside a class folder
    os.symlink(str(data / 'dog'), data / 'cat' / 'dogs_again')  # a folder listed already
    os.symlink(str(data / 'cat' / 'gone.jpg'), data / 'dog' / 'dangling.jpg')
    os.makedirs(tmp_path / 'elsewhere')
    write_bytes_image(tmp_path / 'elsewhere' / 'e.jpg', 5)
    os.symlink(str(tmp_path / 'elsewhere'), data / 'dog' / 'linked')  # an ordinary linked folder
    assert make_lists.main([str(data), '--out_dir', str(tmp_path / 'lists'), '--val_fraction', '0.5']) == 0
    out = capsys.readouterr().out
    listed = dict(listed_pairs(tmp_path / 'lists' / 'train.txt')
                  + listed_pairs(tmp_path / 'lists' / 'val.txt'))
    assert sorted(os.path.relpath(path, data) for path in listed) == [
        'cat/a.jpg', 'cat/b.jpg', 'dog/c.jpg', 'dog/d.jpg', 'dog/linked/e.jpg']
    assert (tmp_path / 'lists' / 'classes.txt').read_text() == '0 cat\n1 dog\n'
    assert f"note: skipped {data / 'loop'} (a symlink to a folder above it)" in out
    assert f"note: skipped {data / 'cat' / 'up'} (a symlink to a folder above it)" in out
    assert f"note: skipped {data / 'cat' / 'dogs_again'} (a symlink to a folder already listed)" in out
    assert f"note: skipped {data / 'dog' / 'dangling.jpg'} (a dangling symlink)" in out


def test_duplicates_are_reported_not_refused(tmp_path, capsys):
    data = tmp_path / 'data'
    write_bytes_image(data / 'cat' / 'a.jpg', 1)
    write_bytes_image(data / 'cat' / 'a copy.jpg', 1)
    write_bytes_image(data / 'dog' / 'same as a.jpg', 1)
    write_bytes_image(data / 'dog' / 'b.jpg', 2)
    write_bytes_image(data / 'dog' / 'c.jpg', 3)  # same size as none: never read
    assert image_lists.find_duplicates([str(data / 'cat' / 'a.jpg'), str(data / 'dog' / 'b.jpg')]) == []
    assert make_lists.main([str(data), '--out_dir', str(tmp_path / 'lists')]) == 0
    out = capsys.readouterr().out
    assert 'note: 1 group of files with the same content (kept;' in out
    assert (f"  {data / 'cat' / 'a copy.jpg'} = {data / 'cat' / 'a.jpg'} = {data / 'dog' / 'same as a.jpg'}"
            ' (in different classes: cat, dog)') in out
    assert len(listed_pairs(tmp_path / 'lists' / 'train.txt')
               + listed_pairs(tmp_path / 'lists' / 'val.txt')) == 5


def test_flat_layout_skips_dangling_symlinks(tmp_path, capsys):
    data = tmp_path / 'flat'
    for name, seed in (('cat.0.jpg', 1), ('cat.1.jpg', 2), ('dog.0.jpg', 3), ('dog.1.jpg', 4)):
        write_bytes_image(data / name, seed)
    os.symlink(str(data / 'nothing.jpg'), data / 'dog.2.jpg')
    assert make_lists.main([str(data), '--out_dir', str(tmp_path / 'lists')]) == 0
    assert f"note: skipped {data / 'dog.2.jpg'} (a dangling symlink)" in capsys.readouterr().out


# --- special files, names a line cannot hold, the round trip through the list reader ---

@contextlib.contextmanager
def time_limit(seconds=20):
    """Fail the test instead of hanging (a FIFO opened for reading waits for a writer forever)."""
    def expired(signum, frame):
        raise TimeoutError(f'still running after {seconds} s')
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_line_breaks_are_every_character_splitlines_breaks_at():
    breaking = {chr(code) for code in range(0x110000) if len(f'a{chr(code)}b'.splitlines()) > 1}
    assert image_lists.LINE_BREAKS == breaking


@pytest.mark.parametrize('layout', ['class folders', 'flat'])
def test_fifos_sockets_and_links_to_them_are_skipped_with_a_note_never_opened(tmp_path, capsys, layout):
    data = tmp_path / 'data'
    if layout == 'flat':
        make_flat_folder(str(data), {'cat': 2, 'dog': 2})
        specials = {'fifo': data / 'cat.9.jpg', 'fifo2': data / 'dog.9.jpg', 'socket': data / 'dog.8.png',
                    'link': data / 'cat.8.jpg'}
    else:
        make_class_folders(str(data), {'cat': 2, 'dog': 2})
        specials = {'fifo': data / 'cat' / 'pipe.jpg', 'fifo2': data / 'dog' / 'pipe.jpg',
                    'socket': data / 'dog' / 's.png', 'link': data / 'cat' / 'to pipe.jpg'}
    # Two FIFOs of one size (0): the duplicate check would read both, and wait forever.
    os.mkfifo(specials['fifo'])
    os.mkfifo(specials['fifo2'])
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(specials['socket']))
    os.symlink(specials['fifo'], specials['link'])
    try:
        with time_limit():
            code, out, err = run_main([data, '--out_dir', tmp_path / 'lists', '--val_fraction', '0.5'],
                                      capsys)
    finally:
        server.close()
    assert code == 0, err
    for name, why in (('fifo', 'a FIFO'), ('fifo2', 'a FIFO'), ('socket', 'a socket'),
                      ('link', 'a symlink to a FIFO')):
        assert f'note: skipped {specials[name]} ({why})' in out.splitlines()
    listed = read_list(tmp_path / 'lists' / 'train.txt') + read_list(tmp_path / 'lists' / 'val.txt')
    assert len(listed) == 4 and all(os.path.isfile(path) for path, _ in listed)


def test_a_symlink_loop_in_a_file_name_is_skipped(tmp_path, capsys):
    data = make_class_folders(str(tmp_path / 'data'), {'cat': 2, 'dog': 2})
    loop = os.path.join(data, 'cat', 'loop.jpg')
    os.symlink(loop, loop)
    code, out, _ = run_main([data, '--out_dir', tmp_path / 'lists'], capsys)
    assert code == 0 and f'note: skipped {loop} (a symlink loop)' in out.splitlines()


@pytest.mark.parametrize('char', sorted(image_lists.LINE_BREAKS), ids=lambda char: f'U+{ord(char):04X}')
def test_a_file_name_with_any_line_break_is_refused_by_name(tmp_path, capsys, char):
    data = make_class_folders(str(tmp_path / 'data'), {'cat': 2, 'dog': 2})
    bad = os.path.join(data, 'dog', f'two{char}lines.jpg')
    write_image(bad)
    code, _, err = run_main([data, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, repr(bad), 'contains a line break', 'rename it')
    assert not (tmp_path / 'lists').exists()


def test_a_file_name_that_is_not_utf8_is_refused_by_name(tmp_path, capsys):
    data = make_class_folders(str(tmp_path / 'data'), {'cat': 2, 'dog': 2})
    with open(os.path.join(os.fsencode(data), b'dog', b'latin1 \xe9t\xe9.jpg'), 'wb') as stream:
        stream.write(b'not decoded here')
    code, _, err = run_main([data, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, 'latin1 \\udce9t\\udce9.jpg', 'is not valid UTF-8')
    assert not (tmp_path / 'lists').exists()


@pytest.mark.parametrize('layout, name, problem', [
    ('class folders', ' cat', 'begins or ends with whitespace'),
    ('class folders', 'cat ', 'begins or ends with whitespace'),
    ('class folders', 'tab\tcat', "control character ('\\t')"),
    ('class folders', 'esc\x1bcat', "control character ('\\x1b')"),
    ('flat', 'cat ', 'begins or ends with whitespace'),
])
def test_a_class_name_classes_txt_cannot_hold_is_refused(tmp_path, capsys, layout, name, problem):
    data = str(tmp_path / 'data')
    if layout == 'flat':
        make_flat_folder(data, {name: 2, 'dog': 2})
    else:
        make_class_folders(data, {name: 2, 'dog': 2})
    code, _, err = run_main([data, '--out_dir', tmp_path / 'lists'], capsys)
    assert_one_line_error(code, err, f'class name {name!r}', problem)
    assert not (tmp_path / 'lists').exists()


# Relative lists written into the image folder start with these class names.
AWKWARD_CLASSES = {'#hash class': ['#1.jpg', ' lead.jpg', '-dash.jpg'],
                   '-dash': ['--help.jpg', '-1.jpg'],
                   '~tilde': ['~x.jpg', 'x~.jpg'],
                   'x 1': ['y 2.jpg', 'a\tb.jpg', 'nb\u00a0sp.jpg'],
                   'Ünïcødé 猫': ['写真 3.jpg', 'zero\u200bwidth.jpg', '  two leading.png', '1 1.jpg'],
                   '\ufeffbom': ['\ufeffbom.jpg', 'b.jpg']}


@pytest.mark.parametrize('relative', [False, True], ids=['absolute', 'relative'])
def test_what_make_lists_writes_the_list_reader_reads_back_identically(tmp_path, capsys, relative):
    datagenerator = pytest.importorskip('datagenerator')  # imports TensorFlow; only these tests pay
    from finetune_alexnet import model_info
    data = tmp_path / '-data #1 '
    expected = []
    for label, (class_name, names) in enumerate(sorted(AWKWARD_CLASSES.items())):
        for value, name in enumerate(names):
            write_image(str(data / class_name / name), value=10 * value)
            expected.append((str(data / class_name / name), label))
    out_dir = data if relative else tmp_path / 'lists'
    args = [data, '--out_dir', out_dir, '--val_fraction', '0.3'] + (['--relative'] if relative else [])
    code, _, err = run_main(args, capsys)
    assert code == 0, err
    read = []
    for name in ('train.txt', 'val.txt'):
        paths, labels = datagenerator.read_list(str(out_dir / name), num_classes=len(AWKWARD_CLASSES))
        read += zip(paths, labels.tolist())
    assert sorted(read) == sorted(expected)
    assert model_info.read_class_names_file(str(out_dir / 'classes.txt'), len(AWKWARD_CLASSES)) == \
        sorted(AWKWARD_CLASSES)


def test_a_relative_path_starting_with_a_byte_order_mark_survives_the_first_line(tmp_path):
    datagenerator = pytest.importorskip('datagenerator')
    image = tmp_path / '\ufeffmark.jpg'
    write_image(str(image))
    image_lists.write_list(str(tmp_path / 'list.txt'), [(str(image), 1)], relative=True)
    assert (tmp_path / 'list.txt').read_text(encoding='utf-8') == './\ufeffmark.jpg 1\n'
    paths, labels = datagenerator.read_list(str(tmp_path / 'list.txt'))
    assert paths == [str(image)] and labels.tolist() == [1]


@pytest.mark.parametrize('flag, value', [
    ('--val_fraction', 'nan'), ('--val_fraction', 'inf'), ('--val_fraction', '-inf'),
    ('--val_fraction', '0'), ('--seed', '-1'), ('--seed', str(2**32)), ('--seed', '1' + '0' * 30),
])
def test_numbers_out_of_range_are_refused_before_the_scan(tmp_path, capsys, flag, value):
    data = tmp_path / 'data'
    data.mkdir()
    os.mkfifo(data / 'pipe.jpg')  # were the folder scanned, this would show as a note
    code, out, err = run_main([data, '--out_dir', tmp_path / 'lists', flag, value], capsys)
    assert_one_line_error(code, err, flag)
    assert out == '' and not (tmp_path / 'lists').exists()


def test_a_skipped_special_file_with_an_odd_name_is_noted_on_one_printable_line(tmp_path, capsys):
    data = make_class_folders(str(tmp_path / 'data'), {'cat': 2, 'dog': 2})
    odd = os.path.join(os.fsencode(data), b'dog', b'pipe\n\xff')
    os.mkfifo(odd)
    with time_limit():
        code, out, err = run_main([data, '--out_dir', tmp_path / 'lists'], capsys)
    assert code == 0, err
    assert f"note: skipped {os.fsdecode(odd)!r} (a FIFO)" in out.splitlines()



# --- the hash split (retrain.py's rule) ---

def retrain_side(file_name, val_fraction):
    """retrain.py's rule, written out again: 'val' or 'train' for a file name."""
    name = re.sub(r'_nohash_.*$', '', file_name)
    value = int(hashlib.sha1(name.encode('utf-8')).hexdigest(), 16)
    percentage = (value % (2**27 - 1 + 1)) * (100.0 / (2**27 - 1))
    return 'val' if percentage < val_fraction * 100 else 'train'


def sides(out_dir):
    """{path: 'train' or 'val'} of the lists in out_dir."""
    return {**{path: 'train' for path, _ in read_list(out_dir / 'train.txt')},
            **{path: 'val' for path, _ in read_list(out_dir / 'val.txt')}}


def test_hash_split_assigns_each_name_by_retrains_formula():
    names = ['cat.0.jpg', 'dog.17.png', 'IMG_0042.JPG', 'leaf3_nohash_0.jpg', 'été 2.jpg', 'a', 'b.gif']
    paths = [f'/data/{"cat" if i % 2 else "dog"}/{name}' for i, name in enumerate(names)]
    train, val = image_lists.split_by_hash(paths, [i % 2 for i in range(len(names))], 0.5, seed=0)
    found = {os.path.basename(path): 'val' for path, _ in val}
    found.update({os.path.basename(path): 'train' for path, _ in train})
    assert found == {name: retrain_side(name, 0.5) for name in names}
    assert set(found.values()) == {'train', 'val'}  # both sides are exercised


def test_hash_percentage_of_a_name_worked_out_from_its_sha1():
    # `printf cat.0.jpg | sha1sum` = 5b71...b2cf40ab; its low 27 bits are 0x2cf40ab = 47136939.
    expected = 47136939 * 100.0 / (2**27 - 1)
    # 35.1198; the folder is not hashed.
    assert image_lists.hash_percentage('/any/folder/cat.0.jpg') == expected
    # Validation takes it from 35.12% up, training below.
    train, val = image_lists.split_by_hash(['/d/cat/cat.0.jpg'], [0], 0.3511, seed=0)
    assert (train, val) == ([('/d/cat/cat.0.jpg', 0)], [])
    train, val = image_lists.split_by_hash(['/d/cat/cat.0.jpg'], [0], 0.3512, seed=0)
    assert (train, val) == ([], [('/d/cat/cat.0.jpg', 0)])


def test_hash_split_keeps_every_listed_file_in_its_list_when_images_are_added(tmp_path, capsys):
    folder = str(tmp_path / 'data')
    for i in range(60):
        write_image(os.path.join(folder, ['cat', 'dog'][i % 2], f'photo{i}.jpg'))
    before = tmp_path / 'before'
    code, _, err = run_main([folder, '--out_dir', before, '--split', 'hash', '--val_fraction', '0.3'],
                            capsys)
    assert code == 0, err
    first = sides(before)
    assert len(first) == 60 and set(first.values()) == {'train', 'val'}
    for i in range(60, 200):  # more than three times as many images, in both classes and a new one
        write_image(os.path.join(folder, ['cat', 'dog', 'emu'][i % 3], f'photo{i}.jpg'))
    after = tmp_path / 'after'
    code, out, err = run_main([folder, '--out_dir', after, '--split', 'hash', '--val_fraction', '0.3',
                               '--seed', '7'], capsys)
    assert code == 0, err
    second = sides(after)
    assert len(second) == 200
    assert {path: second[path] for path in first} == first
    assert second == {path: retrain_side(os.path.basename(path), 0.3) for path in second}
    assert classes_from_labels(after) == ['cat', 'dog', 'emu']


def classes_from_labels(out_dir):
    return [name for _, name in read_classes(out_dir / 'classes.txt')]


def test_stratified_split_moves_images_when_the_folder_grows(tmp_path, capsys):
    # Why the hash split exists: the default split reshuffles each class as it grows.
    folder = str(tmp_path / 'data')
    for i in range(60):
        write_image(os.path.join(folder, ['cat', 'dog'][i % 2], f'photo{i}.jpg'))
    assert run_main([folder, '--out_dir', tmp_path / 'a', '--val_fraction', '0.3'], capsys)[0] == 0
    for i in range(60, 120):
        write_image(os.path.join(folder, ['cat', 'dog'][i % 2], f'photo{i}.jpg'))
    assert run_main([folder, '--out_dir', tmp_path / 'b', '--val_fraction', '0.3'], capsys)[0] == 0
    old, new = sides(tmp_path / 'a'), sides(tmp_path / 'b')
    assert any(new[path] != side for path, side in old.items())


def test_hash_split_keeps_nohash_variants_of_one_subject_together(tmp_path, capsys):
    folder = str(tmp_path / 'leaves')
    for subject in range(40):
        for variant in range(3):
            for class_name in ('healthy', 'rust'):
                write_image(os.path.join(folder, class_name, f'leaf{subject}_nohash_{variant}.jpg'))
    out_dir = tmp_path / 'lists'
    code, _, err = run_main([folder, '--out_dir', out_dir, '--split', 'hash', '--val_fraction', '0.25'],
                            capsys)
    assert code == 0, err
    side_of_subject = {}
    for path, side in sides(out_dir).items():
        subject = os.path.basename(path).split('_nohash_')[0]
        side_of_subject.setdefault(subject, set()).add(side)
    assert len(side_of_subject) == 40
    # Every variant of a subject, in both classes, is on one side; and both sides are used.
    assert all(len(found) == 1 for found in side_of_subject.values()), side_of_subject
    assert {next(iter(found)) for found in side_of_subject.values()} == {'train', 'val'}
    assert all(next(iter(side_of_subject[f'leaf{i}'])) == retrain_side(f'leaf{i}', 0.25)
               for i in range(40))


@pytest.mark.parametrize('fraction', [0.1, 0.25, 0.5])
def test_hash_split_gives_about_the_requested_fraction(fraction):
    paths = [f'/photos/{["cat", "dog"][i % 2]}/IMG_{i:04d}.jpg' for i in range(400)]
    train, val = image_lists.split_by_hash(paths, [i % 2 for i in range(400)], fraction, seed=0)
    assert sorted(train + val) == sorted(zip(paths, [i % 2 for i in range(400)]))
    # Binomial: 3 standard deviations of a share of 400 draws is at most 0.075.
    assert abs(len(val) / 400 - fraction) < 3 * (fraction * (1 - fraction) / 400) ** 0.5


def test_hash_split_seed_orders_training_only(tmp_path, capsys):
    folder = make_flat_folder(str(tmp_path / 'train'), {'cat': 40, 'dog': 40})

    def lists(seed):
        out_dir = tmp_path / f'seed{seed}'
        assert run_main([folder, '--out_dir', out_dir, '--split', 'hash', '--seed', seed], capsys)[0] == 0
        return read_list(out_dir / 'train.txt'), read_list(out_dir / 'val.txt')

    (train0, val0), (train5, val5) = lists(0), lists(5)
    assert val0 == val5 and val0 == sorted(val0)  # validation keeps the folder's order
    assert sorted(train0) == sorted(train5) and train0 != train5
    assert lists(0) == (train0, val0)


def test_hash_split_notes_a_class_left_without_validation_images(tmp_path, capsys):
    folder = str(tmp_path / 'data')
    names = {'cat': [f'c{i}.jpg' for i in range(30)], 'dog': [f'd{i}.jpg' for i in range(30)]}
    # A class of two images that both hash to training at 10%.
    names['emu'] = [name for name in (f'e{i}.jpg' for i in range(50))
                    if retrain_side(name, 0.1) == 'train'][:2]
    for class_name, files in names.items():
        for name in files:
            write_image(os.path.join(folder, class_name, name))
    code, out, err = run_main([folder, '--out_dir', tmp_path / 'lists', '--split', 'hash'], capsys)
    assert code == 0, err
    assert "note: class 'emu' has no validation images (the hash put all 2 in train.txt)" in out
    assert ['2', 'emu', '2', '0'] in [line.split() for line in out.splitlines()]


def test_split_flag_is_checked(tmp_path, capsys):
    folder = make_class_folders(str(tmp_path / 'data'), {'cat': 3, 'dog': 3})
    code, _, err = run_main([folder, '--out_dir', tmp_path / 'lists', '--split', 'random'], capsys)
    assert_one_line_error(code, err, '--split', "invalid choice: 'random'")
    code, _, err = run_main(['--imagenet_val', folder, '--labels', tmp_path / 'x.csv', '--out_dir',
                             tmp_path / 'lists', '--split', 'hash'], capsys)
    assert_one_line_error(code, err, '--split')
    assert not (tmp_path / 'lists').exists()
