"""An image's width and height from its file header, read before anything is decoded.

A PNG of 23000x23000 black pixels compresses to 1.6 MB and decodes to 1.6 GB; a few of those decoded
in parallel exhaust any machine's memory. The header says how big the image will be, so the toolkit
refuses images over `--max_pixels` (default `DEFAULT_MAX_PIXELS`, 100 megapixels, more than any
camera photo) by reading a few hundred bytes of each, in pure Python, without TensorFlow.

Formats: JPEG (the SOF segment, found by walking the segments), PNG (IHDR), GIF (the logical screen),
BMP (the DIB header), WebP (VP8, VP8L and VP8X chunks). `image_size` returns None for anything it
cannot read; the decoder then reports the file as it always did.
"""
import os
import struct

DEFAULT_MAX_PIXELS = 100_000_000
# The file name endings of what preprocessing.decode_rgb reads: what folder scans look for.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
# JPEG start-of-frame markers: C0-CF except C4 (Huffman tables), C8 (reserved), CC (arithmetic tables).
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_MAX_JPEG_SEGMENTS = 1000  # a real file reaches its SOF within a few dozen segments


def image_size(path):
    """(width, height) from the header of the image file at `path`, or None when unreadable."""
    try:
        with open(path, 'rb') as stream:
            head = stream.read(32)
            if head.startswith(b'\xff\xd8'):
                return _jpeg_size(stream)
            if head.startswith(b'\x89PNG\r\n\x1a\n') and head[12:16] == b'IHDR':
                return struct.unpack('>II', head[16:24])
            if head[:6] in (b'GIF87a', b'GIF89a'):
                return struct.unpack('<HH', head[6:10])
            if head.startswith(b'BM'):
                return _bmp_size(head)
            if head.startswith(b'RIFF') and head[8:12] == b'WEBP':
                return _webp_size(head)
    except (OSError, struct.error):
        return None
    return None


def _jpeg_size(stream):
    stream.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = stream.read(1)
        while byte == b'\xff':  # fill bytes before a marker
            byte = stream.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            continue
        length_bytes = stream.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack('>H', length_bytes)[0]
        if marker in _SOF_MARKERS:
            frame = stream.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack('>HH', frame[1:5])
            return width, height
        if length < 2:
            return None
        stream.seek(length - 2, os.SEEK_CUR)
        # Walking into the marker bytes of the previous segment: skip to the next 0xFF.
        byte = stream.read(1)
        if byte != b'\xff':
            return None
        stream.seek(-1, os.SEEK_CUR)
    return None


def _bmp_size(head):
    header_size = struct.unpack('<I', head[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack('<HH', head[18:22])
    width, height = struct.unpack('<ii', head[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _webp_size(head):
    chunk = head[12:16]
    if chunk == b'VP8 ':
        width, height = struct.unpack('<HH', head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b'VP8L':
        bits = struct.unpack('<I', head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b'VP8X':
        return (int.from_bytes(head[24:27], 'little') + 1, int.from_bytes(head[27:30], 'little') + 1)
    return None


def too_large(path, max_pixels):
    """A reason ('23000x23000 = 529.0 megapixels, over --max_pixels 100000000') or None."""
    size = image_size(path)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    width, height = size
    return (f'{width}x{height} = {width * height / 1e6:.1f} megapixels, over --max_pixels '
            f'{max_pixels}')
