"""Image sizes from file headers (checked against what the decoders give), every frame counted, in
Python and as graph ops (the same numbers), and --max_pixels in the list check, training and
prediction: a 23000x23000 PNG, or a GIF whose 1x1 screen hides a 12000x12000 frame, is refused by
name, never decoded."""
import io
import json
import os
import struct
import subprocess
import sys
import time
import warnings

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image, UnidentifiedImageError

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
    assert image_header.image_frames(str(path)) == (53, 37, 1, (53, 37), 53 * 37)


def test_top_down_bmp_and_unknown_files(tmp_path):
    bmp = bytearray(image_files.encode(image_files.random_rgb(5, 7), '.bmp'))
    bmp[22:26] = struct.pack('<i', -5)  # negative height: rows stored top-down
    (tmp_path / 'down.bmp').write_bytes(bytes(bmp))
    assert image_header.image_frames(str(tmp_path / 'down.bmp')) == (7, 5, 1, (7, 5), 35)
    (tmp_path / 'text.jpg').write_text('not an image')
    (tmp_path / 'short.jpg').write_bytes(b'\xff\xd8\xff\xe0\x00')
    for name in ('text.jpg', 'short.jpg', 'absent.png'):
        assert image_header.image_frames(str(tmp_path / name)) is None
        assert image_header.too_large(str(tmp_path / name), 1) is None


def test_one_sniff_names_the_formats_the_decoders_read():
    """image_type, the one test of what a file is (folder cleaning, shards' image/format, the walks)."""
    image = image_files.random_rgb(37, 53, seed=1)
    no_third_ff = b'\xff\xd8\xc0\x00\x11\x08\x75\x30\x75\x30' + bytes(20)  # tf.io.is_jpeg says no
    for data, expected in ((image_files.encode(image, '.jpg'), 'jpeg'), (cmyk_jpeg_bytes(image), 'jpeg'),
                           (image_files.encode(image, '.png'), 'png'), (pil_bytes(image, 'GIF'), 'gif'),
                           (image_files.encode(image, '.bmp'), 'bmp'),
                           (pil_bytes(image, 'WEBP', quality=80), 'webp'), (no_third_ff, ''),
                           (b'RIFF\0\0\0\0WAVEfmt ', ''), (b'GIF', ''), (b'', '')):
        assert image_header.image_type(data[:12]) == expected
    # Its 30000x30000 SOF is not read: the decoder reports the file as not an image, as the graph's
    # count (graph_pixels, 0 for it) leaves it to the decoder.
    assert image_header.frames_of(no_third_ff) is None
    assert _graph_counts([no_third_ff]) == [0]


def _bmp_header(side):
    """The first 60 bytes of a 24-bit BMP that says side x side: its pixels are not in the file."""
    data = bytearray(image_files.encode(image_files.random_rgb(5, 7), '.bmp')[:60])
    data[18:26] = struct.pack('<ii', side, side)
    return bytes(data)


@pytest.mark.parametrize('side, max_pixels, reason', [
    (30000, 100_000_000, '30000x30000 = 900.0 megapixels'),  # over Pillow's bomb error
    (12000, 100_000_000, '12000x12000 = 144.0 megapixels'),  # over Pillow's bomb warning
    (12000, 144_000_000, None),
])
def test_max_pixels_is_the_only_limit_on_the_bmp_header_pillow_reads(tmp_path, side, max_pixels, reason):
    path = tmp_path / 'cut.bmp'
    path.write_bytes(_bmp_header(side))
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no DecompressionBombWarning: Pillow's check is not run
        found = image_header.too_large(str(path), max_pixels)
    assert found == (reason and f'{reason}, over --max_pixels {max_pixels}')
    assert Image.MAX_IMAGE_PIXELS == limit  # left as it is for Pillow's other users


def test_a_jpeg_size_behind_a_tem_marker_is_read(tmp_path):
    """libjpeg skips a TEM marker (0xFF01) and decodes what follows; Pillow refuses the file, so the
    JPEG walk stays ours. The SOF here says 60000x60000, and the file ends 20 bytes after it."""
    data = image_files.encode(image_files.random_rgb(37, 53, seed=1), '.jpg')
    data = data[:2] + b'\xff\x01' + data[2:]
    with tf.Graph().as_default(), tf.Session() as session:
        assert session.run(tf.image.extract_jpeg_shape(data)).tolist() == [37, 53, 3]
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(data))
    sof = data.find(b'\xff\xc0')
    path = tmp_path / 'tem.jpg'
    path.write_bytes(data[:sof + 5] + struct.pack('>HH', 60000, 60000) + data[sof + 9:sof + 20])
    assert image_header.too_large(str(path), image_header.DEFAULT_MAX_PIXELS) == (
        '60000x60000 = 3600.0 megapixels, over --max_pixels 100000000')


huge_png = image_files.huge_png


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


# --- every frame counts (issue 21) ------------------------------------------------------------------

def pil_animation(format_, frames_rgb, **options):
    stream = io.BytesIO()
    first, *rest = [Image.fromarray(frame) for frame in frames_rgb]
    first.save(stream, format=format_, save_all=True, append_images=rest, **options)
    return stream.getvalue()


@pytest.mark.parametrize('format_, options', [('GIF', {}), ('PNG', {}), ('WEBP', {'lossless': True})])
def test_real_animations_count_every_frame(tmp_path, format_, options):
    frames = [image_files.random_rgb(30, 40, seed=seed) for seed in range(3)]
    path = tmp_path / f'animation.{format_.lower()}'
    path.write_bytes(pil_animation(format_, frames, **options))
    with Image.open(path) as decoded:
        assert (decoded.n_frames, decoded.size) == (3, (40, 30))
    found = image_header.image_frames(str(path))
    assert (found.width, found.height, found.frames, found.pixels) == (40, 30, 3, 3 * 40 * 30)
    assert image_header.too_large(str(path), 3600) is None
    assert image_header.too_large(str(path), 3599) == (
        '40x30, 3 frames of up to 40x30 = 0.0 megapixels in all, over --max_pixels 3599')


HOSTILE = {  # (bytes, what too_large says before ', over --max_pixels 100000000')
    'frame_behind_a_1x1_screen.gif': (image_files.gif_with_frames((1, 1), [(12000, 12000)]),
                                      '1x1, 1 frame of up to 12000x12000 = 144.0 megapixels in all'),
    'frames_add_up.gif': (image_files.gif_with_frames((8000, 8000), [(8000, 8000), (10, 10)]),
                          '8000x8000, 2 frames of up to 8000x8000 = 128.0 megapixels in all'),
    'frames_add_up.png': (image_files.apng_with_frames((8000, 8000), [(8000, 8000)] * 2),
                          '8000x8000, 2 frames of up to 8000x8000 = 128.0 megapixels in all'),
    'frame_behind_a_1x1_canvas.png': (image_files.apng_with_frames((1, 1), [(1, 1), (12000, 12000)]),
                                      '1x1, 2 frames of up to 12000x12000 = 144.0 megapixels in all'),
    'declared_frames.png': (image_files.apng_with_frames((8000, 8000), [(8000, 8000)], declared=2),
                            '8000x8000, 2 frames of up to 8000x8000 = 128.0 megapixels in all'),
    'default_image_and_frames.png': (
        image_files.apng_with_frames((6000, 6000), [(6000, 6000)] * 2, default_is_frame=False),
        '6000x6000, 3 frames of up to 6000x6000 = 108.0 megapixels in all'),
    'frames_add_up.webp': (image_files.webp_animation((8000, 8000), [(8000, 8000), (100, 100)]),
                           '8000x8000, 2 frames of up to 8000x8000 = 128.0 megapixels in all'),
    'one_byte_sub_blocks.gif': (
        image_files.gif_with_frames((10, 10), [(10, 10)], sub_block=1, data_bytes=300_000),
        '10x10, more than 5000 blocks or 250000 sub-blocks: too many to count its frames'),
    'many_extensions.gif': (image_files.gif_with_frames((10, 10), [(10, 10)] * 2600),
                            '10x10, more than 5000 blocks or 250000 sub-blocks: too many to count its '
                            'frames'),
    'many_chunks.webp': (image_files.webp_animation((10, 10), [(10, 10)] * 5001),
                         '10x10, more than 5000 blocks or 250000 sub-blocks: too many to count its frames'),
}


@pytest.mark.parametrize('name', sorted(HOSTILE))
def test_headers_that_hide_frames_are_counted_whole(tmp_path, name):
    data, reason = HOSTILE[name]
    path = tmp_path / name
    path.write_bytes(data)
    assert image_header.too_large(str(path), image_header.DEFAULT_MAX_PIXELS) == (
        f'{reason}, over --max_pixels 100000000')


def test_a_long_walk_stays_quick(tmp_path):
    path = tmp_path / 'big.gif'  # 60 MB of frame data in 255-byte sub-blocks: walked, not refused
    path.write_bytes(image_files.gif_with_frames((100, 100), [(100, 100)], data_bytes=60_000_000))
    started = time.perf_counter()
    assert image_header.image_frames(str(path)).pixels == 10000
    assert time.perf_counter() - started < 5


def _graph_counts(byte_strings):
    with tf.Graph().as_default():
        image_bytes = tf.placeholder(tf.string, [])
        pixels = image_header.graph_pixels(image_bytes)
        with tf.Session() as session:
            return [int(session.run(pixels, {image_bytes: data})) for data in byte_strings]


def test_the_graph_counts_what_python_counts():
    """graph_pixels (the served model's check) against image_frames, on every kind of file here."""
    image = image_files.random_rgb(37, 53, seed=1)
    animation = [image_files.random_rgb(30, 40, seed=seed) for seed in range(3)]
    files = {'baseline.jpg': image_files.encode(image, '.jpg'),
             'progressive.jpg': image_files.encode(image, '.jpg', cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
             'cmyk.jpg': cmyk_jpeg_bytes(image), 'rgb.png': image_files.encode(image, '.png'),
             'gray16.png': image_files.encode(image[..., 0].astype(np.uint16) * 257, '.png'),
             'rgb.bmp': image_files.encode(image, '.bmp'), 'pil.gif': pil_bytes(image, 'GIF'),
             'ours.gif': image_files.gif_bytes([image // 64 * 64]),
             'lossy.webp': pil_bytes(image, 'WEBP', quality=80),
             'lossless.webp': pil_bytes(image, 'WEBP', lossless=True),
             'alpha.webp': pil_bytes(np.dstack([image, image[..., :1]]), 'WEBP', quality=80),
             'animated.gif': pil_animation('GIF', animation), 'animated.png': pil_animation('PNG', animation),
             'animated.webp': pil_animation('WEBP', animation, lossless=True)}
    files.update({name: data for name, (data, _) in HOSTILE.items()})
    bmp = bytearray(files['rgb.bmp'])
    bmp[22:26] = struct.pack('<i', -37)
    files['down.bmp'] = bytes(bmp)
    expected = {name: image_header.frames_of(data).pixels for name, data in files.items()}
    expected = {name: image_header.UNCOUNTABLE if pixels is None else pixels
                for name, pixels in expected.items()}
    assert expected['animated.webp'] == 3600 and expected['baseline.jpg'] == 1961
    assert dict(zip(files, _graph_counts(list(files.values())))) == expected
    # What no format claims counts 0: the decoder then reports the bytes as it always did.
    assert _graph_counts([b'', b'GIF8', b'not an image', b'RIFF\0\0\0\0WEBP']) == [0, 0, 0, 0]



def test_the_graph_is_one_switch_of_small_branches():
    """tf.data instantiates (and rewrites) a map function at every iterator initialisation, at a cost
    that grows with every branch and loop body it holds, taken or not: 2.2 s of CPU a time for the
    nested tf.case of 1442 nodes, 0.6 s for one switch_case of 1115 (while a JPEG decodes in 2 ms)."""
    with tf.Graph().as_default() as graph:
        image_header.graph_pixels(tf.placeholder(tf.string, []))
    definition = graph.as_graph_def()
    dispatch = [node.op for node in definition.node if node.op in ('If', 'StatelessIf', 'Case',
                                                                    'StatelessCase')]
    assert dispatch in (['Case'], ['StatelessCase'])
    assert len(definition.node) + sum(len(f.node_def) for f in definition.library.function) <= 1150

@pytest.fixture
def hidden_frame_list(tmp_path):
    """A list of an ordinary image and a GIF whose 1x1 screen hides a 12000x12000 frame."""
    image_files.write_png(tmp_path / 'small.png', image_files.random_rgb(20, 30))
    (tmp_path / 'hidden.gif').write_bytes(HOSTILE['frame_behind_a_1x1_screen.gif'][0])
    (tmp_path / 'list.txt').write_text('small.png 0\nhidden.gif 1\n')
    return tmp_path


HIDDEN_REASON = '1x1, 1 frame of up to 12000x12000 = 144.0 megapixels in all, over --max_pixels 100000000'


def test_a_hidden_frame_is_refused_by_the_check_and_by_training(hidden_frame_list, capsys):
    folder = hidden_frame_list
    assert datagenerator.main(['--check', str(folder / 'list.txt')]) == 1
    assert capsys.readouterr().out == f"{folder / 'list.txt'}:2: {folder / 'hidden.gif'}: {HIDDEN_REASON}\n"
    with tf.Graph().as_default():
        for skip in (False, True):  # too large is never skipped in training: it is the list's fault
            with pytest.raises(datagenerator.ToolkitError) as raised:
                datagenerator.ImageDataGenerator(str(folder / 'list.txt'), 'training', 2, 2,
                                                 skip_bad_images=skip)
            assert str(raised.value) == (f"{folder / 'list.txt'}: 1 image too large to decode safely: "
                                         f"line 2: {folder / 'hidden.gif'}: {HIDDEN_REASON} (raise "
                                         '--max_pixels if you mean it)')


def test_a_hidden_frame_is_refused_or_skipped_by_prediction(hidden_frame_list, bvlc_npy, capsys):
    import predict
    folder = hidden_frame_list
    args = ['--weights_path', bvlc_npy, str(folder)]  # a folder: its images found by the scan
    assert cli.run(predict.main, args) == 2
    assert tiny_runs.one_error_line(capsys.readouterr().err) == (
        f"error: 1 image too large to decode safely: {folder / 'hidden.gif'}: {HIDDEN_REASON} (raise "
        '--max_pixels if you mean it)')
    assert cli.run(predict.main, args + ['--skip_bad_images', '--json', str(folder / 'out.json')]) == 0
    predictions = json.loads((folder / 'out.json').read_text())['predictions']
    assert [record['path'] for record in predictions] == [str(folder / 'small.png')]
    assert f"skipped 1 unreadable image(s): {folder / 'hidden.gif'}" in capsys.readouterr().err
