"""Image sizes from file headers (checked against what the decoders give), and --max_pixels in the list
check, training and prediction: a 23000x23000 PNG is refused by name, never decoded."""
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

import datagenerator
import finetune
import image_files
import tiny_runs
from finetune_alexnet import cli
from finetune_alexnet import image_header

REPO = tiny_runs.REPO


def pil_bytes(image_rgb, format_, **options):
    stream = io.BytesIO()
    Image.fromarray(image_rgb).save(stream, format=format_, **options)
    return stream.getvalue()


def cmyk_jpeg_bytes(image_rgb):
    stream = io.BytesIO()
    Image.fromarray(image_rgb).convert('CMYK').save(stream, format='JPEG')
    return stream.getvalue()


@pytest.mark.parametrize('name, make', [
    ('baseline.jpg', lambda image: image_files.encode(image, '.jpg')),
    ('progressive.jpg', lambda image: image_files.encode(image, '.jpg', cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    ('exif.jpg', lambda image: pil_bytes(image, 'JPEG', exif=b'Exif\0\0' + b'\0' * 20000)),
    ('cmyk.jpg', lambda image: cmyk_jpeg_bytes(image)),
    ('rgb.png', lambda image: image_files.encode(image, '.png')),
    ('gray16.png', lambda image: image_files.encode(image[..., 0].astype(np.uint16) * 257, '.png')),
    ('rgb.bmp', lambda image: image_files.encode(image, '.bmp')),
    ('pil.gif', lambda image: pil_bytes(image, 'GIF')),
    ('lossy.webp', lambda image: pil_bytes(image, 'WEBP', quality=80)),
    ('lossless.webp', lambda image: pil_bytes(image, 'WEBP', lossless=True)),
    ('alpha.webp', lambda image: pil_bytes(np.dstack([image, image[..., :1]]), 'WEBP', quality=80)),
])
def test_header_size_is_the_decoded_size(tmp_path, name, make):
    image = image_files.random_rgb(37, 53, seed=1)
    path = tmp_path / name
    path.write_bytes(make(image))
    with Image.open(path) as decoded:
        expected = decoded.size
    assert expected == (53, 37)
    assert image_header.image_size(str(path)) == expected


def test_top_down_bmp_and_unknown_files(tmp_path):
    bmp = bytearray(image_files.encode(image_files.random_rgb(5, 7), '.bmp'))
    bmp[22:26] = struct.pack('<i', -5)  # negative height: rows stored top-down
    (tmp_path / 'down.bmp').write_bytes(bytes(bmp))
    assert image_header.image_size(str(tmp_path / 'down.bmp')) == (7, 5)
    (tmp_path / 'text.jpg').write_text('not an image')
    (tmp_path / 'short.jpg').write_bytes(b'\xff\xd8\xff\xe0\x00')
    for name in ('text.jpg', 'short.jpg', 'absent.png'):
        assert image_header.image_size(str(tmp_path / name)) is None
        assert image_header.too_large(str(tmp_path / name), 1) is None


def huge_png(path, side=23000):
    """An all-black side x side grayscale PNG, written row by row (never side^2 bytes in memory)."""
    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF))
    compressor = zlib.compressobj(9)
    row = b'\0' * (side + 1)  # filter byte, then the row
    idat = b''.join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0))
                     + chunk(b'IDAT', idat) + chunk(b'IEND', b''))
    return path


@pytest.fixture(scope='module')
def huge_list(tmp_path_factory):
    """A list of eight 23000x23000 PNGs (hard links to one file) and one ordinary image."""
    folder = tmp_path_factory.mktemp('huge')
    first = huge_png(folder / 'huge0.png')
    for number in range(1, 8):
        os.link(first, folder / f'huge{number}.png')
    image_files.write_png(folder / 'small.png', image_files.random_rgb(20, 30))
    lines = ['small.png 0'] + [f'huge{number}.png 1' for number in range(8)]
    (folder / 'list.txt').write_text('\n'.join(lines) + '\n')
    return folder


@pytest.mark.slow
def test_check_with_8_workers_reports_eight_huge_pngs_in_little_memory(huge_list):
    assert os.path.getsize(huge_list / 'huge0.png') < 2 * 2**20
    # Peak RSS of the child alone: a wrapper process whose only child is the check.
    wrapper = ('import resource, subprocess, sys; result = subprocess.run(sys.argv[1:], '
               'capture_output=True, text=True); print(result.returncode); print(result.stdout, end=""); '
               'print(result.stderr, end="", file=sys.stderr); '
               'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)')
    result = subprocess.run([sys.executable, '-c', wrapper, sys.executable, 'datagenerator.py',
                             '--check', str(huge_list / 'list.txt'), '--workers', '8'],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    status, *lines = result.stdout.splitlines()
    *messages, peak_kib = result.stderr.strip().splitlines()
    assert int(status) == 1 and 'Traceback' not in result.stderr
    assert lines == [f"{huge_list / 'list.txt'}:{number + 2}: {huge_list / f'huge{number}.png'}: "
                     '23000x23000 = 529.0 megapixels, over --max_pixels 100000000'
                     for number in range(8)]
    assert messages == [f"{huge_list / 'list.txt'}: 8 of 9 images are unreadable"]
    assert int(peak_kib) * 1024 < 2 * 2**30, f'peak RSS {int(peak_kib) / 2**20:.2f} GiB'


def test_check_decodes_what_is_under_the_limit(tmp_path, capsys):
    image_files.write_png(tmp_path / 'a.png', image_files.random_rgb(20, 30))
    image_files.write_png(tmp_path / 'b.png', image_files.random_rgb(40, 30))
    (tmp_path / 'list.txt').write_text('a.png 0\nb.png 1\n')
    assert datagenerator.main(['--check', str(tmp_path / 'list.txt'), '--max_pixels', '1200']) == 0
    assert datagenerator.main(['--check', str(tmp_path / 'list.txt'), '--max_pixels', '1199']) == 1
    out = capsys.readouterr().out
    assert out == f"{tmp_path / 'list.txt'}:2: {tmp_path / 'b.png'}: 30x40 = 0.0 megapixels, over " \
        '--max_pixels 1199\n'


def test_training_refuses_an_oversized_image_naming_its_line(tmp_path, capsys):
    data = tiny_runs.make_dataset(tmp_path / 'data')
    result = cli.run(finetune.main, tiny_runs.flags(data, tmp_path, '--max_pixels', '10000'))
    assert result == 2
    line = tiny_runs.one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {data / 'train.txt'}: 12 images too large to decode safely: line 1: ")
    assert 'over --max_pixels 10000' in line and 'and 7 more' in line
    assert not (tmp_path / 'ckpt' / 'run_state.json').exists()


def test_prediction_refuses_or_skips_oversized_images(tmp_path, bvlc_npy, capsys):
    import predict
    big, small = tmp_path / 'big.png', tmp_path / 'small.png'
    image_files.write_png(big, image_files.random_rgb(60, 60))
    image_files.write_png(small, image_files.random_rgb(20, 20))
    args = ['--weights_path', bvlc_npy, '--max_pixels', '1000', str(big), str(small)]
    assert cli.run(predict.main, args) == 2
    assert tiny_runs.one_error_line(capsys.readouterr().err) == (
        f'error: 1 image too large to decode safely: {big}: 60x60 = 0.0 megapixels, over '
        '--max_pixels 1000 (raise --max_pixels if you mean it)')
    assert cli.run(predict.main, args + ['--skip_bad_images', '--json', str(tmp_path / 'out.json')]) == 0
    predictions = json.loads((tmp_path / 'out.json').read_text())['predictions']
    assert [record['path'] for record in predictions] == [str(small)]
    assert f'skipped 1 unreadable image(s): {big}' in capsys.readouterr().err
