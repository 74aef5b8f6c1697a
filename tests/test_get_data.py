"""get_data.py on a miniature PetImages zip served from 127.0.0.1, with the real zip's bad files."""
import errno
import io
import json
import os
import re
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


# --- archives bounded before extraction; a full disk takes back what was extracted -----------------

def bomb_zip(path, expanded=10 * 2 ** 20):
    """A zip with the data set's layout and one member of zeros that deflates about 1000-fold."""
    good = photo(3, (0, 200, 0))
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        archive.writestr('PetImages/Cat/1.jpg', good)
        archive.writestr('PetImages/Dog/1.jpg', good)
        archive.writestr('PetImages/Dog/bomb.jpg', bytes(expanded))
    return str(path)


def folder_state(folder):
    """Every file under `folder` with its bytes, and every sub-folder: what "unchanged" means."""
    state = {}
    for directory, sub_dirs, files in os.walk(folder):
        for name in sub_dirs:
            state[os.path.relpath(os.path.join(directory, name), folder)] = None
        for name in files:
            path = os.path.join(directory, name)
            with open(path, 'rb') as stream:
                state[os.path.relpath(path, folder)] = stream.read()
    return state


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path, file_server):
    data = open(bomb_zip(tmp_path / 'bomb.zip'), 'rb').read()
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo('PetImages/Dog/bomb.jpg')
    assert info.file_size / info.compress_size > 1000  # what the test is about: a 1000-fold member
    url = file_server.add('/cats.zip', data)
    out_dir = tmp_path / 'data'
    with http_fixture.deadline(60):
        with pytest.raises(ToolkitError) as error:
            get_data.main(['cats_vs_dogs', '--out_dir', str(out_dir), '--url', url])
    assert re.fullmatch(re.escape(f"{out_dir / 'kagglecatsanddogs_5340.zip.part'}: member "
                                  "'PetImages/Dog/bomb.jpg' expands ") + r'1,\d{3}-fold \([\d,]+ to '
                        r'10,485,760 bytes\), more than the 100-fold a real file does \(a zip bomb\?\); '
                        r'refusing to extract this archive', str(error.value)), str(error.value)
    assert os.listdir(out_dir) == ['kagglecatsanddogs_5340.zip.part']  # kept for inspection, not renamed

    # The same check guards extract() itself: a folder with files in it stays as it was.
    target = tmp_path / 'target'
    (target / 'PetImages').mkdir(parents=True)
    (target / 'notes.txt').write_text('mine\n')
    before = folder_state(target)
    with pytest.raises(ToolkitError, match=r"'PetImages/Dog/bomb.jpg' expands 1,\d{3}-fold"):
        datasets.extract(str(tmp_path / 'bomb.zip'), str(target), io.StringIO(), datasets.get('cats_vs_dogs'))
    assert folder_state(target) == before


def test_an_archive_over_the_data_sets_size_or_member_count_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / 'cats.zip'
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        for index in range(3):
            for folder in ('Cat', 'Dog'):  # incompressible: no ratio to blame, only the total
                archive.writestr(f'PetImages/{folder}/{index}.jpg', rng.bytes(400_000))
    dataset = datasets.get('cats_vs_dogs')
    assert len(datasets.check_archive(str(path), dataset)) == 6
    with pytest.raises(ToolkitError) as error:
        datasets.check_archive(str(path), dataset._replace(max_extracted=2_000_000))
    assert str(error.value) == (f'{path}: its members add up to 2.3 MiB (2,400,000 bytes) uncompressed, '
                                'more than the 1.9 MiB the cats_vs_dogs data set may take; refusing to '
                                'extract this archive')
    with pytest.raises(ToolkitError) as error:
        datasets.check_archive(str(path), dataset._replace(max_members=5))
    assert str(error.value) == (f'{path}: holds 6 members, more than the 5 the cats_vs_dogs data set may '
                                'have; refusing to extract this archive')


def test_extraction_needs_the_free_space_first(tmp_path, monkeypatch):
    path = tmp_path / 'cats.zip'
    path.write_bytes(zip_with({'PetImages/Cat/1.jpg': photo(1, (1, 2, 3)),
                               'PetImages/Dog/1.jpg': photo(2, (3, 2, 1))}))
    total = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
    target = tmp_path / 'target'
    target.mkdir()
    monkeypatch.setattr(datasets.download, 'free_space', lambda folder: total + 100 * 2 ** 20 - 1)
    with pytest.raises(ToolkitError) as error:
        datasets.extract(str(path), str(target), io.StringIO())
    assert str(error.value).startswith(f'{path}: extracting it: needs {datasets.download.human_bytes(total)} '
                                       f'({total:,} bytes) and '
                                       f'{target} has 100.0 MiB free (a margin of 100.0 MiB must stay '
                                       'free)')
    assert os.listdir(target) == []
    monkeypatch.setattr(datasets.download, 'free_space', lambda folder: total + 100 * 2 ** 20)
    datasets.extract(str(path), str(target), io.StringIO())
    assert sorted(os.listdir(target / 'PetImages')) == ['Cat', 'Dog']


def test_a_full_disk_during_extraction_removes_what_was_extracted_and_keeps_the_archive(
        tmp_path, file_server, monkeypatch):
    data, _, _ = mini_pet_images()
    url = file_server.add('/cats.zip', data)
    out_dir = tmp_path / 'data'
    written = {'bytes': 0}
    real_open = open

    class FillingFile:
        """Files on a disk that is full once 40,000 bytes have been extracted."""

        def __init__(self, stream):
            self.stream = stream

        def write(self, chunk):
            if written['bytes'] + len(chunk) > 40_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written['bytes'] += len(chunk)
            return self.stream.write(chunk)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.stream.close()

    def filling_open(path, mode='r', *args, **kwargs):
        stream = real_open(path, mode, *args, **kwargs)
        return FillingFile(stream) if 'w' in mode else stream

    # zipfile writes the members: the disk fills under its writes.
    monkeypatch.setattr(zipfile, 'open', filling_open, raising=False)
    with http_fixture.deadline(60):
        with pytest.raises(ToolkitError) as error:
            get_data.main(['cats_vs_dogs', '--out_dir', str(out_dir), '--url', url])
    archive = out_dir / 'kagglecatsanddogs_5340.zip'
    staging = out_dir / datasets.STAGING_NAME
    total = sum(info.file_size for info in zipfile.ZipFile(io.BytesIO(data)).infolist())
    assert re.fullmatch(re.escape(f'{staging}: the disk is full after extracting ') + r'[\d.]+ KiB'
                        + re.escape(f' of {datasets.download.human_bytes(total)} from {archive}; removed '
                                    'what was extracted and kept the archive: free some space and rerun'),
                        str(error.value)), str(error.value)
    assert 'damaged' not in str(error.value) and 'delete it' not in str(error.value)
    assert 0 < written['bytes'] <= 40_000
    assert os.listdir(out_dir) == ['kagglecatsanddogs_5340.zip'] and archive.read_bytes() == data

    monkeypatch.undo()  # room again: the kept archive extracts whole
    datasets.extract(str(archive), str(tmp_path / 'again'), io.StringIO())
    assert (tmp_path / 'again' / 'PetImages' / 'Dog' / 'cut.jpg').exists()


def test_a_damaged_member_removes_what_was_extracted_and_names_the_archive(tmp_path):
    path = tmp_path / 'cats.zip'
    body = photo(4, (5, 6, 7))
    path.write_bytes(zip_with({'PetImages/Cat/1.jpg': body, 'PetImages/Dog/1.jpg': body}))
    data = bytearray(path.read_bytes())
    last = data.rindex(body[-200:])  # the second member's stored bytes: a bit flipped in them
    data[last + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    target = tmp_path / 'target'
    target.mkdir()
    with pytest.raises(ToolkitError, match=r"cats.zip: cannot extract PetImages/Dog/1.jpg \(Bad CRC-32 for "
                                           r"file 'PetImages/Dog/1.jpg'\); the archive is damaged"):
        datasets.extract(str(path), str(target), io.StringIO())
    assert os.listdir(target) == []


def test_the_known_archive_is_no_larger_than_its_known_size(tmp_path, file_server, monkeypatch):
    dataset = datasets.get('cats_vs_dogs')
    url = file_server.add('/kagglecatsanddogs_5340.zip', b'PK', content_length=dataset.archive_bytes + 1)
    monkeypatch.setitem(datasets.DATASETS, 'cats_vs_dogs', dataset._replace(url=url))
    with pytest.raises(ToolkitError) as error:
        get_data.main(['cats_vs_dogs', '--out_dir', str(tmp_path)])
    assert str(error.value) == (f'{url}: the server announces 786.7 MiB (824,887,077 bytes), more than '
                                "kagglecatsanddogs_5340.zip's known size (824,887,076 bytes); refusing it "
                                'before writing anything')
    assert os.listdir(tmp_path) == []


def test_download_bounds_are_flags_checked_before_any_work(tmp_path):
    base = ['cats_vs_dogs', '--out_dir', str(tmp_path / 'data')]
    for extra, message in ((['--max_download_mb', '5'], '--max_download_mb caps a --url download'),
                           (['--url', 'http://127.0.0.1:9/x', '--max_download_mb', 'nan'],
                            '--max_download_mb must be a positive number of MiB, got nan'),
                           (['--speed_time', '-1'], '--speed_time must be a positive number of seconds'),
                           (['--speed_limit', 'inf'], '--speed_limit must be 0 or more bytes per second'),
                           (['--timeout', 'nan'], '--timeout must be positive and at most 86400 s, got nan')):
        with pytest.raises(ToolkitError, match=re.escape(message)):
            get_data.main(base + extra)
    assert not (tmp_path / 'data').exists()


def test_a_failed_download_takes_back_the_folders_it_created_and_keeps_what_was_there(tmp_path,
                                                                                      file_server):
    url = file_server.url('/nothing.zip')
    out_dir = tmp_path / 'new' / 'data'
    with pytest.raises(ToolkitError, match='HTTP 404 Not Found'):
        get_data.main(['cats_vs_dogs', '--out_dir', str(out_dir), '--url', url])
    assert os.listdir(tmp_path) == []  # data and new, both made by the command, are gone
    kept = tmp_path / 'kept'
    kept.mkdir()
    with pytest.raises(ToolkitError, match='HTTP 404 Not Found'):
        get_data.main(['cats_vs_dogs', '--out_dir', str(kept / 'data'), '--url', url])
    assert os.listdir(tmp_path) == ['kept'] and os.listdir(kept) == []


def test_a_mirror_is_capped_at_what_the_data_sets_archive_can_be(tmp_path, file_server):
    """1.5 GiB of members stored and 1 KiB of framing for each of the 50,000 it may hold."""
    most = int(1.5 * 2 ** 30) + 50_000 * 1024
    url = file_server.add('/huge.zip', b'', content_length=most + 1)
    with http_fixture.deadline(30):
        with pytest.raises(ToolkitError) as error:
            get_data.main(['cats_vs_dogs', '--out_dir', str(tmp_path / 'data'), '--url', url])
    assert str(error.value) == (
        f'{url}: the server announces 1.5 GiB ({most + 1:,} bytes), more than the most a cats_vs_dogs '
        f'archive can be (its bound on what it extracts to) ({most:,} bytes; --max_download_mb allows '
        'more); refusing it before writing anything')
    assert os.listdir(tmp_path) == []
