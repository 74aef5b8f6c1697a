"""Small image files for the tests, in every format and flavour the pipeline must read, plus broken ones.

OpenCV writes JPEG (baseline and progressive), PNG (8/16-bit, gray, alpha) and BMP. Neither OpenCV
nor TensorFlow writes GIF, so `gif_bytes` encodes one here (a plain LZW stream that never grows past
9-bit codes). CMYK JPEGs need Pillow, which matplotlib already requires.
"""
import struct

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


def _sub_blocks(data):
    blocks = bytearray()
    for start in range(0, len(data), 255):
        chunk = data[start:start + 255]
        blocks += bytes([len(chunk)]) + chunk
    return bytes(blocks + b'\x00')


def truncated(data, keep=0.5):
    """The first part of an encoded file, as a download cut short leaves it."""
    return data[:int(len(data) * keep)]


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def flat_rgb(height, width, colour):
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()
