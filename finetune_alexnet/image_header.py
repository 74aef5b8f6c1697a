"""How many pixels an image file will decode to, every frame counted, read from its header before
anything is decoded, so images over `--max_pixels` are refused undecoded (what each format's walk
reads, and why: docs/data.md#broken-and-huge-images). `image_frames(path)` counts in Python, without
TensorFlow; `graph_pixels(image_bytes)` counts the same as graph ops, for the exported SavedModel.
"""
import collections
import io
import os
import stat
import struct

from PIL import BmpImagePlugin

DEFAULT_MAX_PIXELS = 100_000_000
# The file name endings of what preprocessing.decode_rgb reads: what folder scans look for.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
# Steps a walk may take: the graph's walk (graph_pixels) takes a few microseconds a sub-block and tens
# a block, so a file made to slow a served model down is stopped within a second or two.
MAX_BLOCKS = 5_000
MAX_SUB_BLOCKS = 250_000
_MAX_JPEG_SEGMENTS = 1000  # a real file reaches its SOF within a few dozen segments
# JPEG start-of-frame markers: C0-CF except C4 (Huffman tables), C8 (reserved), CC (arithmetic tables).
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Each format's first bytes, as the decoders tell them apart (a JPEG's are tf.io.is_jpeg's); a WebP
# is a RIFF file whose form type (bytes 8-11) is WEBP.
_SIGNATURES = ((b'\xff\xd8\xff', 'jpeg'), (b'\x89PNG', 'png'), (b'GIF8', 'gif'), (b'BM', 'bmp'))

# width, height: the canvas (a GIF's logical screen, a PNG's IHDR, a WebP's VP8X); frames: how many
# pictures a decoder may make of the file; largest: (width, height) of the largest; pixels: what
# decoding may hold, frames added up, or None when the walk was cut short (MAX_BLOCKS).
Frames = collections.namedtuple('Frames', 'width height frames largest pixels')


class _Animation:
    """Frames counted as a walk finds them, each at least as large as the canvas."""

    def __init__(self, width, height):
        self.width, self.height = width, height
        self.frames, self.pixels, self.largest = 0, 0, (width, height)

    def add(self, width, height, count=1):
        self.frames += count
        self.pixels += count * max(self.width * self.height, width * height)
        if width * height > self.largest[0] * self.largest[1]:
            self.largest = (width, height)

    def result(self, complete=True):
        if not self.frames:  # no frame found: the canvas is what a decoder allocates
            self.add(self.width, self.height)
        return Frames(self.width, self.height, self.frames, self.largest,
                      self.pixels if complete else None)


def _single(width, height):
    return Frames(width, height, 1, (width, height), width * height)


class _FileBytes:
    """An open file as a read-only bytes-like sequence (items, slices, len); items are read 64 KiB at
    a time where the walk looks. Not mmap: a file cut short while mapped kills the process (SIGBUS)."""
    _CHUNK = 1 << 16
    _KEPT = 8  # chunks cached: a walk moves forward, so a few suffice

    def __init__(self, stream):
        self._stream = stream
        self._size = os.fstat(stream.fileno()).st_size
        self._chunks = {}

    def __len__(self):
        return self._size

    def _chunk(self, index):
        chunk = self._chunks.get(index)
        if chunk is None:
            if len(self._chunks) >= self._KEPT:
                self._chunks.clear()
            self._stream.seek(index * self._CHUNK)
            chunk = self._chunks[index] = self._stream.read(self._CHUNK)
        return chunk

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(self._size)
            self._stream.seek(start)
            return self._stream.read(max(stop - start, 0))
        if not 0 <= key < self._size:
            raise IndexError(key)
        return self._chunk(key // self._CHUNK)[key % self._CHUNK]  # IndexError if the file shrank


def _unpack(layout, data, pos):
    """struct.unpack of the bytes of `data` at `pos` (struct.error when the file ends first)."""
    return struct.unpack(layout, data[pos:pos + struct.calcsize(layout)])


def image_frames(path):
    """Frames(width, height, frames, largest, pixels) of the image file at `path`, or None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a pipe or device: opening it could block
        with open(path, 'rb') as stream:
            return frames_of(_FileBytes(stream))
    except OSError:
        return None


def image_type(head):
    """'jpeg', 'png', 'gif', 'bmp' or 'webp': the format an image file's first 12 bytes announce;
    '' for anything else. The one test of what a file is, wherever the toolkit asks."""
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    return 'webp' if head[:4] == b'RIFF' and head[8:12] == b'WEBP' else ''


def frames_of(data):
    """Frames of an encoded image held in `data` (bytes, or an open file's _FileBytes), or None."""
    walk = {'bmp': _bmp_frames, 'jpeg': _jpeg_frames, 'png': _png_frames, 'gif': _gif_frames,
            'webp': _webp_frames}.get(image_type(data[:12]))
    try:
        return walk(data) if walk else None
    except (struct.error, IndexError):
        return None


def _bmp_frames(data):
    """Pillow's BMP class on the first 64 KiB: Image.open's bomb check would refuse the header."""
    try:
        return _single(*BmpImagePlugin.BmpImageFile(io.BytesIO(data[:1 << 16])).size)
    except (SyntaxError, OSError):  # what Pillow raises for a header it does not read, or cut short
        return None


def _jpeg_frames(data):
    pos = 2
    for _ in range(_MAX_JPEG_SEGMENTS):
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= len(data):
            return None
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            continue
        length = _unpack('>H', data, pos)[0]
        if marker in _SOF_MARKERS:
            height, width = _unpack('>HH', data, pos + 3)
            return _single(width, height)
        if length < 2:
            return None
        pos += length
        # Walking into the marker bytes of the previous segment: the next one must start with 0xFF.
        if pos >= len(data) or data[pos] != 0xFF:
            return None
    return None


def _png_frames(data):
    """IHDR's canvas; with an acTL, every frame: fcTL sizes, frames declared but not found, and the
    default image when it is not a frame of the animation (no fcTL before the first IDAT)."""
    if not (data[:8] == _PNG_SIGNATURE and data[12:16] == b'IHDR'):
        return None
    width, height = _unpack('>II', data, 16)
    animation = _Animation(width, height)
    pos, steps, animated, declared, default_is_frame, seen_idat = 8, 0, False, 0, False, False
    while pos + 8 <= len(data):
        steps += 1
        if steps > MAX_BLOCKS:
            return animation.result(complete=False)
        length, kind = _unpack('>I4s', data, pos)
        if kind == b'acTL' and pos + 12 <= len(data):
            animated, declared = True, _unpack('>I', data, pos + 8)[0]
        elif kind == b'fcTL' and pos + 20 <= len(data):
            animation.add(*_unpack('>II', data, pos + 12))
            default_is_frame = default_is_frame or not seen_idat
        elif kind == b'IDAT':
            if not animated:  # acTL comes before the first IDAT: a plain PNG ends its header here
                break
            seen_idat = True
        elif kind == b'IEND':
            break
        pos += 12 + length
    if not animated:
        return _single(width, height)
    animation.add(width, height, max(declared - animation.frames, 0))  # declared, not found
    if not default_is_frame:
        animation.add(width, height)
    return animation.result()


def _gif_frames(data):
    """The logical screen; every image descriptor, reached by skipping extensions and sub-blocks."""
    if data[:6] not in (b'GIF87a', b'GIF89a'):  # the versions graph_pixels walks too
        return None
    width, height = _unpack('<HH', data, 6)
    animation = _Animation(width, height)
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    blocks = sub_blocks = 0
    while pos < len(data):
        introducer = data[pos]
        if introducer in (0x2C, 0x21):
            blocks += 1
            if blocks > MAX_BLOCKS:
                return animation.result(complete=False)
        if introducer == 0x2C and pos + 10 <= len(data):  # image descriptor
            animation.add(*_unpack('<HH', data, pos + 5))
            flags = data[pos + 9]
            # After the local colour table, one byte of LZW code size, then the data sub-blocks.
            pos += 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        elif introducer == 0x21:  # extension: its label, then sub-blocks
            pos += 2
        else:  # the trailer, or bytes no decoder reads past
            break
        while pos < len(data):
            sub_blocks += 1
            if sub_blocks > MAX_SUB_BLOCKS:
                return animation.result(complete=False)
            length = data[pos]
            pos += length + 1
            if length == 0:
                break
    return animation.result()


def _webp_frames(data):
    """VP8X's canvas and every ANMF frame of an animation; else the bitstream's own size (VP8, VP8L),
    counted as the larger of it and the canvas."""
    canvas, still, animation = None, None, None
    pos, steps = 12, 0
    while pos + 8 <= len(data):
        steps += 1
        if steps > MAX_BLOCKS:
            return (animation or _Animation(*(canvas or still or (0, 0)))).result(complete=False)
        kind, length = data[pos:pos + 4], _unpack('<I', data, pos + 4)[0]
        body = pos + 8
        if kind == b'VP8X':
            canvas = (_uint24(data, body + 4) + 1, _uint24(data, body + 7) + 1)
            animated = bool(data[body] & 0x02)
            animation = _Animation(*canvas) if animated else None
        elif kind == b'ANMF' and animation is not None:
            animation.add(_uint24(data, body + 6) + 1, _uint24(data, body + 9) + 1)
        elif kind == b'VP8 ':
            width, height = _unpack('<HH', data, body + 6)
            still = (width & 0x3FFF, height & 0x3FFF)
        elif kind == b'VP8L':
            bits = _unpack('<I', data, body + 1)[0]
            still = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        if still and animation is None:
            break
        pos = body + length + (length & 1)  # chunks are padded to an even length
    if animation is not None:
        return animation.result()
    if canvas is None:
        return _single(*still) if still else None
    if still is None or still[0] * still[1] <= canvas[0] * canvas[1]:
        return _single(*canvas)
    return Frames(canvas[0], canvas[1], 1, still, still[0] * still[1])


def _uint24(data, pos):
    return int.from_bytes(data[pos:pos + 3], 'little')


def describe(frames):
    """'23000x23000 = 529.0 megapixels', or for animations and odd frames
    '1x1, 1 frame of up to 12000x12000 = 144.0 megapixels in all'."""
    if frames.pixels is None:
        return (f'{frames.width}x{frames.height}, more than {MAX_BLOCKS} blocks or {MAX_SUB_BLOCKS} '
                'sub-blocks: too many to count its frames')
    megapixels = f'{frames.pixels / 1e6:.1f} megapixels'
    if frames.frames == 1 and frames.largest == (frames.width, frames.height):
        return f'{frames.width}x{frames.height} = {megapixels}'
    count = f"{frames.frames} frame{'s' if frames.frames > 1 else ''}"
    return (f'{frames.width}x{frames.height}, {count} of up to {frames.largest[0]}x{frames.largest[1]} '
            f'= {megapixels} in all')


def too_large(path, max_pixels):
    """A reason ('23000x23000 = 529.0 megapixels, over --max_pixels 100000000') or None."""
    frames = image_frames(path)
    if frames is None or (frames.pixels is not None and frames.pixels <= max_pixels):
        return None
    return f'{describe(frames)}, over --max_pixels {max_pixels}'


# --- the same count as graph ops --------------------------------------------------------------------

# Sizes are clamped and sums saturate at _CAP, so no product or sum leaves int64 and wraps round to a
# small number; UNCOUNTABLE (a walk cut short) is over any limit a flag accepts.
_DIMENSION_CAP = 2**30
_CAP = 2**61
UNCOUNTABLE = _CAP
_UNROLL = 16  # sub-blocks skipped per loop iteration: an iteration costs as much as a dozen ops


def graph_pixels(image_bytes):
    """int64 scalar tensor: `frames_of(...).pixels` of the encoded image in the string scalar
    `image_bytes` (UNCOUNTABLE where that is None); 0 for bytes no format here claims (the decoder
    then fails on them). A JPEG whose header TensorFlow cannot read fails here, as its decoding would."""
    import tensorflow.compat.v1 as tf
    # The first 16 bytes, padded: substr fails on offsets past the end of a short string.
    head = tf.strings.join([tf.strings.substr(image_bytes, 0, 16, unit='BYTE'), '\0' * 16])

    def starts(offset, magic):
        return tf.equal(tf.strings.substr(head, offset, len(magic), unit='BYTE'), magic)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0] * shape[1]

    def walk(parse):
        return lambda: parse(tf, _Bytes(tf, image_bytes))

    # One flat switch on the format: nested conds (tf.case) made the function TensorFlow instantiates
    # (and tf.data rewrites) at every iterator initialisation several times larger.
    formats = [tf.io.is_jpeg(image_bytes), starts(0, _PNG_SIGNATURE) & starts(12, b'IHDR'),
               starts(0, b'GIF87a') | starts(0, b'GIF89a'), starts(0, b'BM'),
               starts(0, b'RIFF') & starts(8, b'WEBP'), tf.constant(True)]
    first = tf.argmax(tf.cast(tf.stack(formats), tf.int32), output_type=tf.int32)
    return tf.switch_case(first, [jpeg, walk(_graph_png), walk(_graph_gif), walk(_graph_bmp),
                                  walk(_graph_webp), lambda: tf.constant(0, tf.int64)])


class _Bytes:
    """An encoded file read as int64 values at int64 positions; reads past its end give zeros."""
    PAD = 512  # more than one GIF sub-block hop can overshoot the end (256 bytes)

    def __init__(self, tf, image_bytes):
        self.tf = tf
        self.size = tf.cast(tf.strings.length(image_bytes, unit='BYTE'), tf.int64)
        self._data = tf.concat([tf.io.decode_raw(image_bytes, tf.uint8),
                                tf.zeros([self.PAD], tf.uint8)], axis=0)
        self._last = self.size + self.PAD - 1

    def byte(self, pos):
        return self.byte_near(self.tf.minimum(self._last, pos))

    def byte_near(self, pos):
        """The byte at `pos`, which must lie below size + PAD: one gather, for the inner loop."""
        return self.tf.cast(self.tf.gather(self._data, pos), self.tf.int64)

    def uint(self, pos, count, big_endian=False):
        """Positions past the end read the zeros of the padding. As few ops as can be: every op here
        is copied into each walk, and the walks' size is what instantiating them costs."""
        tf = self.tf
        weights = [256**i for i in range(count)]
        values = self.byte(pos + tf.constant(list(range(count)), tf.int64))
        return tf.reduce_sum(values * tf.constant(weights[::-1] if big_endian else weights, tf.int64))


def _fourcc(name):
    return int.from_bytes(name, 'big')


def _area(tf, width, height):
    return tf.minimum(width, _DIMENSION_CAP) * tf.minimum(height, _DIMENSION_CAP)


def _saturating_add(tf, total, value):
    return tf.minimum(total + value, _CAP)


def _saturating_times(tf, count, value):
    """count * value for non-negative int64s (value <= _CAP), or _CAP when that is more."""
    return tf.where(count > _CAP // tf.maximum(value, 1), tf.constant(_CAP, tf.int64), count * value)


def _walk(tf, body, state):
    """Runs `body` on `state` until its last element (done) is true."""
    return tf.while_loop(lambda *state: ~state[-1], body, state, back_prop=False,
                         parallel_iterations=1)


def _graph_png(tf, data):
    canvas = _area(tf, data.uint(16, 4, big_endian=True), data.uint(20, 4, big_endian=True))
    zero, false = tf.constant(0, tf.int64), tf.constant(False)

    def body(pos, steps, animated, declared, found, pixels, default_is_frame, seen_idat, done):
        at_end = pos + 8 > data.size
        steps = tf.where(at_end, steps, steps + 1)
        length, kind = data.uint(pos, 4, True), data.uint(pos + 4, 4, True)
        is_actl = ~at_end & tf.equal(kind, _fourcc(b'acTL')) & (pos + 12 <= data.size)
        is_fctl = ~at_end & tf.equal(kind, _fourcc(b'fcTL')) & (pos + 20 <= data.size)
        is_idat = ~at_end & tf.equal(kind, _fourcc(b'IDAT'))
        is_iend = ~at_end & tf.equal(kind, _fourcc(b'IEND'))
        frame = tf.maximum(canvas, _area(tf, data.uint(pos + 12, 4, True), data.uint(pos + 16, 4, True)))
        return (pos + 12 + length, steps, animated | is_actl,
                tf.where(is_actl, data.uint(pos + 8, 4, True), declared),
                found + tf.cast(is_fctl, tf.int64),
                tf.where(is_fctl, _saturating_add(tf, pixels, frame), pixels),
                default_is_frame | (is_fctl & ~seen_idat), seen_idat | is_idat,
                at_end | (steps > MAX_BLOCKS) | (is_idat & ~animated) | is_iend)

    # pos, steps, animated (an acTL), frames declared, fcTLs found, their pixels, the default image
    # is a frame (an fcTL before IDAT), IDAT seen, done
    state = (tf.constant(8, tf.int64), zero, false, zero, zero, zero, false, false, false)
    _, steps, animated, declared, found, pixels, default_is_frame, _, _ = _walk(tf, body, state)
    pixels = _saturating_add(tf, pixels, _saturating_times(tf, tf.maximum(declared - found, 0), canvas))
    pixels = tf.where(default_is_frame, pixels, _saturating_add(tf, pixels, canvas))
    pixels = tf.where(animated, pixels, canvas)
    return tf.where(steps > MAX_BLOCKS, tf.constant(UNCOUNTABLE, tf.int64), pixels)


def _graph_gif(tf, data):
    canvas = _area(tf, data.uint(6, 2), data.uint(8, 2))

    def colour_table(flags):
        present = tf.bitwise.bitwise_and(flags, 0x80) > 0
        entries = tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.bitwise.bitwise_and(flags, 7))
        return tf.where(present, 3 * entries, tf.zeros_like(flags))

    def skip_sub_blocks(pos, sub_blocks, finished):
        """Past the sub-blocks at `pos` and their terminator: the inner loop, so as few ops a hop as
        can be (a hop moves at most 256 bytes, so reading where it lands stays in the padding)."""
        def hops(pos, sub_blocks, finished, count):
            for _ in range(count):
                going = ~finished & (pos < data.size)
                length = data.byte_near(pos)
                sub_blocks = sub_blocks + tf.cast(going, tf.int64)
                pos = tf.where(going, pos + length + 1, pos)
                finished = ~going | tf.equal(length, 0)
            return pos, sub_blocks, finished | (sub_blocks > MAX_SUB_BLOCKS)
        # An extension is mostly one sub-block and its terminator: two hops before any inner loop.
        state = hops(pos, sub_blocks, finished, 2)
        pos, sub_blocks, _ = tf.cond(
            state[-1], lambda: state,
            lambda: _walk(tf, lambda *state: hops(*state, _UNROLL), state))
        return pos, sub_blocks

    def body(pos, blocks, sub_blocks, frames, pixels, done):
        introducer = data.byte(pos)
        is_image = tf.equal(introducer, 0x2C) & (pos + 10 <= data.size)
        is_extension = (pos < data.size) & tf.equal(introducer, 0x21)
        stop = ~(is_image | is_extension)
        blocks = blocks + tf.cast(tf.equal(introducer, 0x2C) | is_extension, tf.int64)
        over = blocks > MAX_BLOCKS
        start = tf.where(is_image, pos + 11 + colour_table(data.byte(pos + 9)), pos + 2)
        end, sub_blocks = skip_sub_blocks(start, sub_blocks, stop | over)
        frame = tf.maximum(canvas, _area(tf, data.uint(pos + 5, 2), data.uint(pos + 7, 2)))
        counted = is_image & ~over
        return (end, blocks, sub_blocks, frames + tf.cast(counted, tf.int64),
                tf.where(counted, _saturating_add(tf, pixels, frame), pixels),
                stop | over | (sub_blocks > MAX_SUB_BLOCKS))

    zero = tf.constant(0, tf.int64)
    # pos (after the global colour table), blocks, sub-blocks, frames, pixels, done
    state = (13 + colour_table(data.byte(10)), zero, zero, zero, zero, tf.constant(False))
    _, blocks, sub_blocks, frames, pixels, _ = _walk(tf, body, state)
    return tf.where((blocks > MAX_BLOCKS) | (sub_blocks > MAX_SUB_BLOCKS),
                    tf.constant(UNCOUNTABLE, tf.int64), tf.where(frames > 0, pixels, canvas))


def _graph_bmp(tf, data):
    def magnitude(value):  # a signed 32-bit size: a negative height means top-down rows
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    core = tf.equal(data.uint(14, 4), 12)  # OS/2 BITMAPCOREHEADER: 16-bit sizes
    width = tf.where(core, data.uint(18, 2), magnitude(data.uint(18, 4)))
    height = tf.where(core, data.uint(20, 2), magnitude(data.uint(22, 4)))
    return _area(tf, width, height)


def _graph_webp(tf, data):
    zero, false = tf.constant(0, tf.int64), tf.constant(False)

    def masked(value, mask):
        return tf.bitwise.bitwise_and(value, mask)

    def body(pos, steps, canvas, animated, frames, pixels, still, done):
        at_end = pos + 8 > data.size
        steps = tf.where(at_end, steps, steps + 1)
        kind, length, start = data.uint(pos, 4, big_endian=True), data.uint(pos + 4, 4), pos + 8

        def chunk(name):
            return ~at_end & tf.equal(kind, _fourcc(name))
        is_vp8x, is_vp8, is_vp8l = chunk(b'VP8X'), chunk(b'VP8 '), chunk(b'VP8L')
        canvas = tf.where(is_vp8x, _area(tf, data.uint(start + 4, 3) + 1, data.uint(start + 7, 3) + 1),
                          canvas)
        animated = tf.where(is_vp8x, masked(data.byte(start), 0x02) > 0, animated)
        is_frame = chunk(b'ANMF') & animated
        frame = tf.maximum(canvas, _area(tf, data.uint(start + 6, 3) + 1, data.uint(start + 9, 3) + 1))
        lossy = _area(tf, masked(data.uint(start + 6, 2), 0x3FFF),
                      masked(data.uint(start + 8, 2), 0x3FFF))
        bits = data.uint(start + 1, 4)
        lossless = _area(tf, masked(bits, 0x3FFF) + 1,
                         masked(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1)
        still = tf.where(is_vp8, lossy, tf.where(is_vp8l, lossless, still))
        return (start + length + masked(length, 1), steps, canvas, animated,
                frames + tf.cast(is_frame, tf.int64),
                tf.where(is_frame, _saturating_add(tf, pixels, frame), pixels), still,
                at_end | (steps > MAX_BLOCKS) | ((is_vp8 | is_vp8l) & ~animated))

    # pos, steps, canvas (VP8X), animated, ANMF frames, their pixels, the still image's pixels, done
    state = (tf.constant(12, tf.int64), zero, zero, false, zero, zero, zero, false)
    _, steps, canvas, animated, frames, pixels, still, _ = _walk(tf, body, state)
    pixels = tf.where(animated, tf.where(frames > 0, pixels, canvas), tf.maximum(canvas, still))
    return tf.where(steps > MAX_BLOCKS, tf.constant(UNCOUNTABLE, tf.int64), pixels)
