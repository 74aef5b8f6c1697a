"""ImageNet validation lists: the wnid order, the three ground-truth forms, make_lists.py --imagenet_val.

A miniature ILSVRC2012 layout (ilsvrc_fixture) in both folder layouts and every ground-truth form: each
image must get the label whose caffe_classes name is its synset's name.
"""
import os
import sys
import zipfile

import pytest

import ilsvrc_fixture
import make_lists
from caffe_classes import class_names
from finetune_alexnet import cli, imagenet
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.imagenet_wnids import WNIDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS = 3


def has_scipy():
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope='module')
def ilsvrc(tmp_path_factory):
    """The miniature set: flat and foldered images; Kaggle CSV, devkit ground truth, Caffe val.txt."""
    root = tmp_path_factory.mktemp('ilsvrc')
    wnids = ilsvrc_fixture.class_order(PER_CLASS)
    flat = ilsvrc_fixture.write_images(str(root / 'flat'), wnids, foldered=False)
    foldered = ilsvrc_fixture.write_images(str(root / 'folders'), wnids, foldered=True)
    data = root / 'devkit' / 'data'
    data.mkdir(parents=True)
    files = {'kaggle': ilsvrc_fixture.write_kaggle_solution(str(root / 'LOC_val_solution.csv'), wnids),
             'devkit': ilsvrc_fixture.write_devkit_ground_truth(
                 str(data / 'ILSVRC2012_validation_ground_truth.txt'), wnids),
             'caffe': ilsvrc_fixture.write_caffe_val(str(root / 'val.txt'), wnids)}
    if has_scipy():
        ilsvrc_fixture.write_meta_mat(str(data / 'meta.mat'))
    return {'root': root, 'wnids': wnids, 'flat': flat, 'folders': foldered, **files}


def run_main(args, capsys):
    code = cli.run(make_lists.main, [str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_list(list_file):
    with open(list_file, encoding='utf-8') as stream:
        entries = []
        for line in stream:
            path, label = line.rstrip('\n').rsplit(' ', 1)
            if not os.path.isabs(path):
                path = os.path.normpath(os.path.join(os.path.dirname(list_file), path))
            entries.append((path, int(label)))
    return entries


def assert_labelled_by_synset(entries, ilsvrc, layout):
    """Every image of the set, in image order, with the label whose caffe_classes name is its synset's."""
    assert [os.path.basename(path) for path, _ in entries] == [
        ilsvrc_fixture.image_name(number) for number in range(1, len(ilsvrc['wnids']) + 1)]
    for (path, label), wnid in zip(entries, ilsvrc['wnids']):
        assert path == ilsvrc[layout][os.path.basename(path)]
        assert class_names[label] == ilsvrc_fixture.CAFFE_NAME[wnid], path
        assert label == ilsvrc_fixture.CAFFE_LABEL[wnid]


# --- the wnid list -------------------------------------------------------------------------------

def test_wnids_are_the_1000_sorted_ilsvrc_synsets_in_caffe_label_order():
    assert len(WNIDS) == 1000 == len(set(WNIDS)) == len(class_names)
    assert list(WNIDS) == sorted(WNIDS)
    for wnid, _, label, name in ilsvrc_fixture.SYNSETS:
        assert WNIDS[label] == wnid and class_names[label] == name
    # The two cranes: the same name, different synsets.
    assert (WNIDS[134], WNIDS[517]) == ('n02012849', 'n03126707')


def test_make_caffe_classes_writes_both_modules_from_a_wheel(tmp_path):
    sys.path.insert(0, os.path.join(REPO, 'tools'))
    try:
        import make_caffe_classes
    finally:
        sys.path.pop(0)
    wheel = tmp_path / 'timm-0.0.0-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as archive:
        # The wheel lists synsets sorted; its lemma file is in any order.
        archive.writestr(make_caffe_classes.SYNSETS_MEMBER, '\n'.join(WNIDS) + '\n')
        archive.writestr(make_caffe_classes.LEMMAS_MEMBER, ''.join(
            f'{wnid}\t{name}\n' for wnid, name in reversed(list(zip(WNIDS, class_names)))))
    names_file, wnids_file = tmp_path / 'names.py', tmp_path / 'wnids.py'
    assert make_caffe_classes.main([str(wheel), '--output', str(names_file),
                                    '--wnids_output', str(wnids_file)]) == 0
    names_module, wnids_module = {}, {}
    exec(names_file.read_text(), names_module)
    exec(wnids_file.read_text(), wnids_module)
    assert names_module['class_names'] == list(class_names)
    assert wnids_module['WNIDS'] == tuple(WNIDS)
    with open(os.path.join(REPO, 'finetune_alexnet', 'imagenet_wnids.py')) as stream:
        assert stream.read().split('\n', 1)[1] == wnids_file.read_text().split('\n', 1)[1]


# --- make_lists.py --imagenet_val ------------------------------------------------------------------

@pytest.mark.parametrize('layout', ['flat', 'folders'])
@pytest.mark.parametrize('form', ['kaggle', 'caffe', 'devkit'])
def test_val_list_labels_every_image_by_its_synset(ilsvrc, tmp_path, capsys, layout, form):
    if form == 'devkit' and not has_scipy():
        pytest.skip('reading meta.mat needs scipy, which is not installed')
    out_dir = tmp_path / 'lists'
    code, out, err = run_main(['--imagenet_val', ilsvrc['root'] / layout, '--labels', ilsvrc[form],
                               '--out_dir', out_dir], capsys)
    assert (code, err) == (0, '')
    assert sorted(os.listdir(out_dir)) == ['val.txt']
    total = len(ilsvrc['wnids'])
    assert f'{total} images of {len(ilsvrc_fixture.SYNSETS)} classes' in out
    assert_labelled_by_synset(read_list(out_dir / 'val.txt'), ilsvrc, layout)


def test_val_list_with_relative_paths_and_a_subset_of_the_images(ilsvrc, tmp_path, capsys):
    subset = tmp_path / 'subset'
    subset.mkdir()
    for number in (2, 5):
        name = ilsvrc_fixture.image_name(number)
        os.symlink(ilsvrc['flat'][name], subset / name)
    out_dir = tmp_path / 'lists'
    code, out, _ = run_main(['--imagenet_val', subset, '--labels', ilsvrc['kaggle'], '--out_dir', out_dir,
                             '--relative'], capsys)
    assert code == 0
    assert f"note: {len(ilsvrc['wnids']) - 2} images of {ilsvrc['kaggle']} not in {subset}" in out
    with open(out_dir / 'val.txt') as stream:
        lines = stream.read().splitlines()
    assert lines == [f"../subset/{ilsvrc_fixture.image_name(number)} "
                     f"{ilsvrc_fixture.CAFFE_LABEL[ilsvrc['wnids'][number - 1]]}" for number in (2, 5)]


def test_meta_mat_is_found_beside_the_ground_truth_or_given(ilsvrc, tmp_path):
    elsewhere = tmp_path / 'ground_truth.txt'
    elsewhere.write_text(open(ilsvrc['devkit']).read())
    with pytest.raises(ToolkitError, match=r'meta\.mat not found; the devkit keeps it beside'):
        imagenet.read_ground_truth(str(elsewhere))
    if not has_scipy():
        pytest.skip('reading meta.mat needs scipy, which is not installed')
    beside = imagenet.read_ground_truth(ilsvrc['devkit'])
    given = imagenet.read_ground_truth(str(elsewhere),
                                       os.path.join(os.path.dirname(ilsvrc['devkit']), 'meta.mat'))
    assert given.labels == beside.labels
    assert beside.labels['ILSVRC2012_val_00000001'] == ilsvrc_fixture.CAFFE_LABEL[ilsvrc['wnids'][0]]


def test_devkit_form_without_scipy_says_so_in_one_line(ilsvrc, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'scipy', None)  # makes `import scipy.io` fail
    monkeypatch.setitem(sys.modules, 'scipy.io', None)
    ground_truth = tmp_path / 'ILSVRC2012_validation_ground_truth.txt'
    ground_truth.write_text(open(ilsvrc['devkit']).read())
    (tmp_path / 'meta.mat').write_bytes(b'MATLAB 5.0 MAT-file')
    with pytest.raises(ToolkitError) as error:
        imagenet.read_ground_truth(str(ground_truth))
    message = str(error.value)
    assert 'meta.mat needs scipy (pip install scipy)' in message and '\n' not in message
    assert "LOC_val_solution.csv or Caffe's val.txt" in message


def test_meta_mat_maps_ids_not_in_wnid_order(ilsvrc, tmp_path):
    """Reading meta.mat's struct through scipy; ids past 1000 (inner nodes) are ignored."""
    if not has_scipy():
        pytest.skip('reading meta.mat needs scipy, which is not installed')
    mapping = imagenet.read_meta_mat(os.path.join(os.path.dirname(ilsvrc['devkit']), 'meta.mat'))
    assert mapping == {identifier: wnid for wnid, identifier, _, _ in ilsvrc_fixture.SYNSETS}
    not_mat = tmp_path / 'meta.mat'
    not_mat.write_bytes(b'MATLAB? no' * 20)
    with pytest.raises(ToolkitError, match=rf"{not_mat}: not the devkit's meta.mat"):
        imagenet.read_meta_mat(str(not_mat))


# --- wrong and mismatched files ------------------------------------------------------------------

def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('text, line, message', [
    ('ImageId,Prediction\n', 1, 'expected the header ImageId,PredictionString'),
    ('ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n'
     'ILSVRC2012_val_00000002,n99999999 1 2 3 4\n', 3, "'n99999999' is not one of the 1000"),
    ('ImageId,PredictionString\nILSVRC2012_val_00000001,\n', 2, 'expected ILSVRC2012_val_<8 digits>'),
    ('ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n\n'
     'ILSVRC2012_val_00000001,n01440764 1 2 3 4\n', 4, 'listed twice (first on line 2)'),
    ('ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 1000\n', 2,
     'label 1000 is outside 0..999'),
    ('ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG x\n', 2, 'expected ILSVRC2012_val_'),
    ('490\n361\ntench\n', 3, "expected one ILSVRC2012 id (1..1000) per line; found 'tench'"),
    ('490\n\n361\n', 2, 'blank line; line k must hold the id of image k'),
    ('some text here\n', 1, 'not a ground-truth file'),
])
def test_wrong_ground_truth_names_its_first_bad_line(tmp_path, text, line, message):
    path = write(tmp_path / 'labels.txt', text)
    with pytest.raises(ToolkitError) as error:
        imagenet.read_ground_truth(path)
    assert str(error.value).startswith(f'{path}:{line}: ')
    assert message in str(error.value) and '\n' not in str(error.value)


def test_devkit_id_missing_from_meta_mat_names_the_line(ilsvrc, tmp_path):
    if not has_scipy():
        pytest.skip('reading meta.mat needs scipy, which is not installed')
    path = write(tmp_path / 'gt.txt', '490\n1\n361\n')
    meta = os.path.join(os.path.dirname(ilsvrc['devkit']), 'meta.mat')
    with pytest.raises(ToolkitError, match=rf'{path}:3: ILSVRC2012 id 361 is not one of the classes in'):
        imagenet.read_ground_truth(path, meta)


def test_meta_given_for_a_form_that_does_not_need_it(ilsvrc):
    with pytest.raises(ToolkitError, match=r'--meta m\.mat: only the devkit'):
        imagenet.read_ground_truth(ilsvrc['kaggle'], 'm.mat')


def test_image_in_the_wrong_wnid_folder_is_named(ilsvrc, tmp_path, capsys):
    folder = tmp_path / 'val'
    second = ilsvrc_fixture.image_name(2)
    wrong_wnid = next(wnid for wnid in ilsvrc_fixture.CAFFE_LABEL if wnid != ilsvrc['wnids'][1])
    (folder / wrong_wnid).mkdir(parents=True)
    os.symlink(ilsvrc['flat'][second], folder / wrong_wnid / second)
    code, _, err = run_main(['--imagenet_val', folder, '--labels', ilsvrc['caffe'], '--out_dir',
                             tmp_path / 'lists'], capsys)
    assert code == 2
    assert err == (f"error: {folder / wrong_wnid / second}: in folder {wrong_wnid}, but {ilsvrc['caffe']}:2 "
                   f"says {ilsvrc['wnids'][1]} (label {ilsvrc_fixture.CAFFE_LABEL[ilsvrc['wnids'][1]]})\n")
    assert not (tmp_path / 'lists').exists()


def test_image_without_ground_truth_is_named(ilsvrc, tmp_path, capsys):
    folder = tmp_path / 'val'
    folder.mkdir()
    stray = folder / ilsvrc_fixture.image_name(999)
    stray.write_bytes(open(ilsvrc['flat'][ilsvrc_fixture.image_name(1)], 'rb').read())
    code, _, err = run_main(['--imagenet_val', folder, '--labels', ilsvrc['kaggle'], '--out_dir',
                             tmp_path / 'lists'], capsys)
    assert code == 2
    assert err.startswith(f"error: {stray}: not in {ilsvrc['kaggle']}") and err.count('\n') == 1


@pytest.mark.parametrize('args, message', [
    (['--imagenet_val', 'x'], '--imagenet_val needs --labels'),
    (['--labels', 'y.csv'], 'give a FOLDER of images, or --imagenet_val DIR --labels FILE'),
    (['folder', '--imagenet_val', 'x', '--labels', 'y.csv'], 'give either FOLDER (folder) or --imagenet_val'),
    (['folder', '--labels', 'y.csv'], '--labels and --meta go with --imagenet_val'),
    (['--imagenet_val', 'x', '--labels', 'y.csv', '--seed', '3'], '--seed splits a FOLDER'),
    (['--imagenet_val', 'x', '--labels', 'missing.csv'], 'missing.csv: ground-truth file not found'),
    (['--imagenet_val', 'x', '--labels', os.path.join(REPO, 'README.md')], 'README.md:1: not a ground-truth'),
])
def test_flag_mistakes_are_one_line(tmp_path, capsys, args, message):
    code, out, err = run_main(args + ['--out_dir', tmp_path / 'lists'], capsys)
    assert code == 2 and out == ''
    assert err.startswith('error: ') and message in err and err.count('\n') == 1


def test_folder_that_is_missing_or_holds_no_images(ilsvrc, tmp_path):
    ground_truth = imagenet.read_ground_truth(ilsvrc['caffe'])
    with pytest.raises(ToolkitError, match='no such folder'):
        imagenet.find_validation_images(str(tmp_path / 'nothing'), ground_truth, ('.jpeg',))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ToolkitError, match='no validation images'):
        imagenet.find_validation_images(str(tmp_path / 'empty'), ground_truth, ('.jpeg',))
