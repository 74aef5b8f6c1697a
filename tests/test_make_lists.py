"""make_lists.py and finetune_alexnet/image_lists.py: both folder layouts, the stratified split, the
files it writes, and every refusal."""

import os
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
