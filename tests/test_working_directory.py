"""No command writes into the working directory unasked.

Every command runs in this process (`cli.run(module.main, argv)`) from an empty scratch folder, with
every input and output named by an absolute path elsewhere, and the scratch folder must still be
empty afterwards: a default that writes into '.' (a stray confusion_matrix.png, a cache, a log)
fails here. The commands share one tiny fine-tuned run (tests/tiny_runs.py), made from a scratch
folder of its own.
"""
import io
import os
import zipfile

import pytest

import alexnet
import datagenerator
import export
import finetune
import get_data
import get_weights
import http_fixture
import image_files
import make_lists
import predict
import tiny_runs
import visualize
from finetune_alexnet import cli
from finetune_alexnet import demo_data

pytestmark = pytest.mark.slow  # a fine-tuning run, a 233 MB download and a forward pass per command


def run_from(folder, main, argv):
    """`main(argv)` as a shell would run it from `folder`; (exit status, what `folder` holds after)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        code = cli.run(main, [str(arg) for arg in argv])
    return code, sorted(os.listdir(folder))


@pytest.fixture
def scratch(tmp_path):
    """An empty working folder, apart from tmp_path where the test keeps its inputs and outputs."""
    folder = tmp_path / 'cwd'
    folder.mkdir()
    return folder


@pytest.fixture
def file_server():
    yield from http_fixture.serve()


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """The 12-image data set and a one-epoch run fine-tuned on it from an empty working folder:
    (data set folder, checkpoint folder, what that working folder held after the run)."""
    root = tmp_path_factory.mktemp('tiny_run')
    dataset = tiny_runs.make_dataset(root / 'data', class_names=True)
    (root / 'cwd').mkdir()
    code, left = run_from(root / 'cwd', finetune.main, tiny_runs.flags(dataset, root / 'run', epochs=1))
    assert code == 0
    return dataset, root / 'run' / 'ckpt', left


def test_finetune(tiny_run):
    _, checkpoint, left = tiny_run
    assert os.path.isdir(checkpoint)
    assert left == []


def test_predict_with_evaluate(tiny_run, scratch, tmp_path):
    dataset, checkpoint, _ = tiny_run
    assert run_from(scratch, predict.main, ['--checkpoint_path', checkpoint, '--evaluate',
                                            dataset / 'val.txt']) == (0, [])
    # With --json the confusion matrix goes beside it, never into '.'.
    assert run_from(scratch, predict.main, ['--checkpoint_path', checkpoint, '--evaluate', dataset / 'val.txt',
                                            '--json', tmp_path / 'predictions.json']) == (0, [])
    assert [name for name in os.listdir(tmp_path) if name.endswith('confusion_matrix.png')]
    assert run_from(scratch, predict.main, ['--checkpoint_path', checkpoint, dataset / 'images']) == (0, [])


def test_make_lists(tiny_run, scratch, tmp_path):
    dataset, _, _ = tiny_run
    assert run_from(scratch, make_lists.main, [dataset / 'images', '--out_dir', tmp_path / 'lists',
                                               '--relative']) == (0, [])
    assert sorted(os.listdir(tmp_path / 'lists')) == ['classes.txt', 'train.txt', 'val.txt']


def test_export(tiny_run, scratch, tmp_path):
    _, checkpoint, _ = tiny_run
    assert run_from(scratch, export.main, ['--checkpoint_path', checkpoint,
                                           '--output', tmp_path / 'model.npz']) == (0, [])
    assert (tmp_path / 'model.npz').is_file()


def test_visualize(tiny_run, scratch, tmp_path):
    dataset, checkpoint, _ = tiny_run
    photo = sorted((dataset / 'images' / demo_data.CLASS_NAMES[0]).iterdir())[0]
    assert run_from(scratch, visualize.main, ['--checkpoint_path', checkpoint, '--out_dir', tmp_path / 'figures',
                                              photo]) == (0, [])
    assert os.listdir(tmp_path / 'figures')


def test_datagenerator_check(tiny_run, scratch):
    dataset, _, _ = tiny_run
    assert run_from(scratch, datagenerator.main, ['--check', dataset / 'train.txt',
                                                  '--num_classes', '2']) == (0, [])


def test_alexnet(scratch):
    assert run_from(scratch, alexnet.main, ['--num_classes', '2']) == (0, [])


def test_get_weights(scratch, tmp_path, file_server, bvlc_npy):
    with open(bvlc_npy, 'rb') as stream:
        data = stream.read()
    url = file_server.add('/bvlc_alexnet.npy', data)
    assert run_from(scratch, get_weights.main, ['--url', url, '--output',
                                                tmp_path / 'bvlc_alexnet.npy']) == (0, [])
    assert os.path.getsize(tmp_path / 'bvlc_alexnet.npy') == len(data)


def mini_pet_images():
    """A zip in the Kaggle Cats and Dogs layout: three small photos a class."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for label, folder in enumerate(('Cat', 'Dog')):
            for index in range(3):
                photo = image_files.random_rgb(40, 48, seed=10 * label + index)
                archive.writestr(f'PetImages/{folder}/{index}.jpg', image_files.encode(photo, '.jpg'))
    return buffer.getvalue()


def test_get_data(scratch, tmp_path, file_server):
    url = file_server.add('/kagglecatsanddogs_5340.zip', mini_pet_images())
    assert run_from(scratch, get_data.main, ['cats_vs_dogs', '--out_dir', tmp_path / 'data', '--url', url,
                                             '--val_fraction', '0.34', '--workers', '1']) == (0, [])
    assert {'train.txt', 'val.txt', 'classes.txt'} <= set(os.listdir(tmp_path / 'data'))
