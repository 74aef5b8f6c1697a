"""Small image files for the tests, in every format and flavour the pipeline must read, plus broken ones.

OpenCV writes JPEG (baseline and progressive), PNG (8/16-bit, gray, alpha) and BMP. Neither OpenCV
nor TensorFlow writes GIF, so `gif_bytes` encodes one here (a plain LZW stream that never grows past
9-bit codes). CMYK JPEGs need Pillow, which matplotlib already requires.
"""
import struct
import zlib

import cv2
import numpy as np


def _to_opencv_order(image):
    """RGB(A) or gray -> BGR(A) or gray, the channel order cv2.imencode expects."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return image[..., [2, 1, 0, 3]]
    return image[..., ::-1]


def encode(image, extension, *params):
    """The bytes of an RGB(A)/gray uint8 or uint16 image, encoded by OpenCV as '.png', '.jpg', '.bmp'."""
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(_to_opencv_order(image)), list(params))
    assert ok, f'OpenCV could not encode {extension}'
    return encoded.tobytes()


def write(path, data):
    """Write bytes to `path` (a pathlib.Path) and return its name as a string."""
    path.write_bytes(data)
    return str(path)


def write_png(path, image):
    return write(path, encode(image, '.png'))


def write_bmp(path, image):
    return write(path, encode(image, '.bmp'))


def write_jpeg(path, image, quality=95, progressive=False):
    return write(path, encode(image, '.jpg', cv2.IMWRITE_JPEG_QUALITY, quality,
                              cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)))


def write_cmyk_jpeg(path, image_rgb):
    """A CMYK JPEG (as Photoshop exports for print) of an RGB image, through Pillow."""
    from PIL import Image
    Image.fromarray(image_rgb).convert('CMYK').save(str(path), 'JPEG', quality=100)
    return str(path)


def gif_bytes(frames_rgb):
    """An (animated, if several frames) GIF of RGB frames with at most 256 colours in all."""
    height, width = frames_rgb[0].shape[:2]
    colours = np.unique(np.concatenate([frame.reshape(-1, 3) for frame in frames_rgb]), axis=0)
    assert len(colours) <= 256, 'a GIF palette holds 256 colours'
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(colours)] = colours
    index_of = {tuple(colour): index for index, colour in enumerate(colours.tolist())}

    out = bytearray(b'GIF89a')
    out += struct.pack('<HHBBB', width, height, 0xF7, 0, 0)  # global colour table of 2**(7+1) entries
    out += palette.tobytes()
    for frame in frames_rgb:
        indices = [index_of[tuple(pixel)] for pixel in frame.reshape(-1, 3).tolist()]
        out += struct.pack('<BHHHHB', 0x2C, 0, 0, width, height, 0)  # image descriptor
        out += bytes([8]) + _sub_blocks(_lzw_9bit(indices))
    return bytes(out + b'\x3B')


def _lzw_9bit(indices):
    """LZW codes for 8-bit pixels that never compress: a clear code every 250 pixels keeps the
    decoder's table below 512 entries, so every code stays 9 bits wide."""
    clear, end = 256, 257
    codes = []
    for start in range(0, len(indices), 250):
        codes.append(clear)
        codes.extend(indices[start:start + 250])
    codes.append(end)
    bits = 0
    count = 0
    packed = bytearray()
    for code in codes:  # GIF packs codes least significant bit first
        bits |= code << count
        count += 9
        while count >= 8:
            packed.append(bits & 0xFF)
            bits >>= 8
            count -= 8
    if count:
        packed.append(bits & 0xFF)
    return bytes(packed)


def _sub_blocks(data, size=255):
    blocks = bytearray()
    for start in range(0, len(data), size):
        chunk = data[start:start + size]
        blocks += bytes([len(chunk)]) + chunk
    return bytes(blocks + b'\x00')


def truncated(data, keep=0.5):
    """The first part of an encoded file, as a download cut short leaves it."""
    return data[:int(len(data) * keep)]


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def flat_rgb(height, width, colour):
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


# --- headers that announce more than they look: hand-written frames, never decoded by the tests -----

def gif_with_frames(screen, frames, sub_block=255, data_bytes=2):
    """A GIF whose logical screen is `screen` (width, height) and whose image descriptors have the
    sizes `frames`, each followed by a comment extension and `data_bytes` bytes of (undecodable) image
    data in sub-blocks of `sub_block` bytes: what the header walk must step through."""
    out = bytearray(b'GIF89a' + struct.pack('<HHBBB', *screen, 0x80, 0, 0) + bytes(6))  # 2 colours
    for width, height in frames:
        out += b'\x21\xfe' + _sub_blocks(b'a comment', 9)  # an extension to skip
        out += struct.pack('<BHHHHB', 0x2C, 0, 0, width, height, 0) + bytes([2])
        out += _sub_blocks(b'\x4c' * data_bytes, sub_block)
    return bytes(out + b'\x3B')


def _png_chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF))


def apng_with_frames(canvas, frames, declared=None, default_is_frame=True):
    """An APNG of a `canvas` (width, height) IHDR whose fcTL chunks have the sizes `frames` (the
    first before IDAT when `default_is_frame`), acTL declaring `declared` frames (default: as many)."""
    def fctl(number, width, height):
        return _png_chunk(b'fcTL', struct.pack('>IIIIIHHBB', number, width, height, 0, 0, 1, 10, 0, 0))
    frames = list(frames)
    out = b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', struct.pack('>IIBBBBB', *canvas, 8, 0, 0, 0, 0))
    out += _png_chunk(b'acTL', struct.pack('>II', len(frames) if declared is None else declared, 0))
    rest = frames
    if default_is_frame and frames:
        out += fctl(0, *frames[0])
        rest = frames[1:]
    out += _png_chunk(b'IDAT', zlib.compress(b'\0' * 4))
    for number, (width, height) in enumerate(rest, start=1):
        out += fctl(number, width, height) + _png_chunk(b'fdAT', struct.pack('>I', number) + b'x')
    return out + _png_chunk(b'IEND', b'')


def webp_animation(canvas, frames):
    """An animated WebP: VP8X of a `canvas` (width, height), ANIM, and one ANMF chunk per frame size."""
    def chunk(kind, data):
        return kind + struct.pack('<I', len(data)) + data + b'\0' * (len(data) & 1)

    def uint24(value):
        return value.to_bytes(3, 'little')
    body = chunk(b'VP8X', bytes([0x02, 0, 0, 0]) + uint24(canvas[0] - 1) + uint24(canvas[1] - 1))
    body += chunk(b'ANIM', bytes(6))
    for width, height in frames:
        body += chunk(b'ANMF', bytes(6) + uint24(width - 1) + uint24(height - 1) + bytes(4)
                      + chunk(b'VP8L', b'\x2f' + bytes(5)))
    return b'RIFF' + struct.pack('<I', 4 + len(body)) + b'WEBP' + body


def huge_png(path, side=23000, bit_depth=8):
    """An all-black side x side grayscale PNG, written row by row (never side^2 bytes in memory).
    With `bit_depth` 1 a row is side/8 bytes: 15000x15000 compresses to about 30 KB."""
    compressor = zlib.compressobj(9)
    row = b'\0' * (1 + (side * bit_depth + 7) // 8)  # filter byte, then the row
    idat = b''.join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b'\x89PNG\r\n\x1a\n'
                     + _png_chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, bit_depth, 0, 0, 0, 0))
                     + _png_chunk(b'IDAT', idat) + _png_chunk(b'IEND', b''))
    return path
