"""get_data.py on a miniature PetImages zip served from 127.0.0.1, with the real zip's bad files."""
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import datagenerator
import finetune
import get_data
import http_fixture
import image_files
import make_lists
from finetune_alexnet import cli
from finetune_alexnet import datasets
from finetune_alexnet.errors import ToolkitError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD_PER_CLASS = 12


@pytest.fixture
def file_server():
    yield from http_fixture.serve()


def photo(seed, colour):
    """A small JPEG that looks like something: a coloured blob on noise."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (48 + seed % 7, 64, 3), dtype=np.uint8)
    image[10:40, 15:50] = colour
    return image_files.encode(image, '.jpg', 1, 90)  # 1 = cv2.IMWRITE_JPEG_QUALITY


def mini_pet_images():
    """(zip bytes, {member: reason} of the bad ones, [good members]) in the real zip's layout."""
    members, bad, good = {}, {}, []
    for label, (folder, colour) in enumerate((('Cat', (200, 120, 40)), ('Dog', (40, 90, 220)))):
        for index in range(GOOD_PER_CLASS):
            name = f'PetImages/{folder}/{index}.jpg'
            members[name] = photo(100 * label + index, colour)
            good.append(name)
        members[f'PetImages/{folder}/Thumbs.db'] = b'\xd0\xcf\x11\xe0' + bytes(300)
        bad[f'PetImages/{folder}/Thumbs.db'] = datasets.THUMBS
    members['PetImages/Cat/666.jpg'] = b''
    bad['PetImages/Cat/666.jpg'] = datasets.EMPTY
    members['PetImages/Dog/11702.jpg'] = b'This is not a JPEG but a text file with a .jpg name.\n'
    bad['PetImages/Dog/11702.jpg'] = datasets.NOT_IMAGE
    members['PetImages/Dog/cut.jpg'] = image_files.truncated(photo(7, (10, 200, 10)), keep=0.5)
    bad['PetImages/Dog/cut.jpg'] = datasets.CORRUPT
    members['readme[1].txt'] = b'Kaggle cats and dogs (test miniature)\n'
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue(), bad, good


def read_list(path):
    with open(path) as stream:
        return [line.rsplit(' ', 1) for line in stream.read().splitlines()]


@pytest.mark.slow
def test_lists_hold_exactly_the_good_images_and_finetune_runs_on_them(tmp_path, file_server, capsys,
                                                                       bvlc_npy):
    data, bad, good = mini_pet_images()
    url = file_server.add('/kagglecatsanddogs_5340.zip', data)
    out_dir = tmp_path / 'data'
    argv = ['cats_vs_dogs', '--out_dir', str(out_dir), '--url', url, '--val_fraction', '0.25',
            '--seed', '3', '--workers', '2']
    assert get_data.main(argv) == 0
    printed = capsys.readouterr().out

    folder = out_dir / 'PetImages'
    train, val = read_list(out_dir / 'train.txt'), read_list(out_dir / 'val.txt')
    listed = sorted(path for path, _ in train + val)
    assert listed == sorted(str(folder / name[len('PetImages/'):]) for name in good)
    assert {(os.path.basename(os.path.dirname(path)), label) for path, label in train + val} == \
        {('Cat', '0'), ('Dog', '1')}
    assert (out_dir / 'classes.txt').read_text() == '0 Cat\n1 Dog\n'
    assert datagenerator.find_bad_images(listed) == []  # every listed image decodes in training
    for name in bad:
        assert not (out_dir / name).exists()
    assert (out_dir / 'readme[1].txt').exists() and not (out_dir / datasets.STAGING_NAME).exists()

    # The report names each dropped file with its reason; the summary counts them per reason.
    report = sorted(line.split('\t') for line in (out_dir / 'dropped.txt').read_text().splitlines())
    assert report == sorted([reason, name] for name, reason in bad.items())
    assert 'dropped 5 files' in printed and f'     2  {datasets.THUMBS}' in printed
    assert f'     1  {datasets.CORRUPT} (PetImages/Dog/cut.jpg)' in printed
    assert f'next: python finetune.py --train_file {out_dir / "train.txt"}' in printed

    # Exactly what make_lists.py writes for the cleaned folder with the same split settings.
    assert make_lists.main([str(folder), '--out_dir', str(tmp_path / 'by_make_lists'),
                            '--val_fraction', '0.25', '--seed', '3']) == 0
    for name in ('train.txt', 'val.txt', 'classes.txt'):
        assert (out_dir / name).read_text() == (tmp_path / 'by_make_lists' / name).read_text()
    assert [len([1 for _, label in val if label == c]) for c in '01'] == [3, 3]

    # A rerun reuses the extracted folder (no request at all) and only rewrites the lists.
    requests = len(file_server.requests)
    assert get_data.main(argv[:-4] + ['--seed', '4']) == 0
    assert 'already extracted and checked; reusing it' in capsys.readouterr().out
    assert len(file_server.requests) == requests
    assert sorted(path for path, _ in read_list(out_dir / 'train.txt') + read_list(out_dir / 'val.txt')) \
        == listed

    assert cli.run(finetune.main, [
        '--train_file', str(out_dir / 'train.txt'), '--val_file', str(out_dir / 'val.txt'),
        '--num_classes', '2', '--num_epochs', '1', '--batch_size', '8', '--weights_path', bvlc_npy,
        '--seed', '0', '--checkpoint_path', str(tmp_path / 'run' / 'checkpoints'),
        '--filewriter_path', str(tmp_path / 'run' / 'tensorboard')]) == 0, capsys.readouterr().err[-2000:]
    metrics = [json.loads(line) for line in
               (tmp_path / 'run' / 'checkpoints' / 'metrics.jsonl').read_text().splitlines()]
    assert [record['epoch'] for record in metrics] == [1]
    assert np.isfinite(metrics[0]['train_loss']) and 0 <= metrics[0]['val_accuracy'] <= 1


def zip_with(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize('evil', ['../evil.jpg', 'PetImages/Cat/../../../evil.jpg', '/tmp/evil.jpg'])
def test_a_member_that_would_land_outside_out_dir_is_refused(tmp_path, file_server, evil):
    good = photo(1, (200, 0, 0))
    data = zip_with({'PetImages/Cat/1.jpg': good, 'PetImages/Dog/1.jpg': good, evil: good})
    url = file_server.add('/cats.zip', data)
    out_dir = tmp_path / 'deep' / 'data'
    with pytest.raises(ToolkitError) as error:
        get_data.main(['cats_vs_dogs', '--out_dir', str(out_dir), '--url', url])
    assert f"member {evil!r} is " in str(error.value)
    assert 'would land outside --out_dir; refusing to extract this archive' in str(error.value)
    assert not (tmp_path / 'evil.jpg').exists() and not (tmp_path / 'deep' / 'evil.jpg').exists()
    assert not (out_dir / 'PetImages').exists()
    assert not (out_dir / 'kagglecatsanddogs_5340.zip').exists()  # only the .part, for inspection


def test_an_archive_of_something_else_is_named(tmp_path, file_server):
    url = file_server.add('/other.zip', zip_with({'flowers/rose/1.jpg': photo(2, (9, 9, 9))}))
    with pytest.raises(ToolkitError, match=r'holds no PetImages/Cat/ folder; is it the cats_vs_dogs'):
        get_data.main(['cats_vs_dogs', '--out_dir', str(tmp_path), '--url', url])
    page = file_server.add('/page.zip', b'<html>moved</html>')
    with pytest.raises(ToolkitError, match=r'kagglecatsanddogs_5340.zip.part: not a zip file'):
        get_data.main(['cats_vs_dogs', '--out_dir', str(tmp_path / 'b'), '--url', page])


def test_flags_and_names_are_checked(tmp_path, capsys):
    assert get_data.main(['--list']) == 0
    assert 'cats_vs_dogs' in capsys.readouterr().out
    with pytest.raises(ToolkitError, match=r"unknown data set 'mnist'; known: cats_vs_dogs"):
        get_data.main(['mnist', '--out_dir', str(tmp_path)])
    with pytest.raises(ToolkitError, match='--out_dir is required'):
        get_data.main(['cats_vs_dogs'])
    with pytest.raises(ToolkitError, match=r'--val_fraction 1.5 is outside \(0, 1\)'):
        get_data.main(['cats_vs_dogs', '--out_dir', str(tmp_path), '--val_fraction', '1.5'])
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file')
    with pytest.raises(ToolkitError, match=rf'{blocker}/data: --out_dir cannot be created: {blocker} is a '
                                           'file, not a folder'):
        get_data.main(['cats_vs_dogs', '--out_dir', str(blocker / 'data'), '--url', 'http://127.0.0.1:9/x'])


@pytest.mark.slow
def test_command_fails_in_one_line_on_404(tmp_path, file_server):
    url = file_server.url('/nothing.zip')
    result = subprocess.run([sys.executable, 'get_data.py', 'cats_vs_dogs', '--out_dir', str(tmp_path),
                             '--url', url], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'error: {url}: HTTP 404 Not Found']
