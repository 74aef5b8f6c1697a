"""How a photo becomes AlexNet's input, as Caffe fed the Berkeley weights: one definition for training,
prediction and the notebook (the steps, and why each: docs/data.md#how-an-image-becomes-the-networks-input).

`decode_rgb` and `resize_for_model` (or `ten_crops`, the paper's test-time crops) run once per image;
`normalize` (the ImageNet mean, the BGR reorder) once per batch, where the model runs. Everything here
only adds ops to the graph that calls it (`_bgr_minus_mean` is a tf.function, traced into each graph),
so the functions work in any `tf.Graph`, with or without `tf.disable_v2_behavior()`.
"""
import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import image_header

IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
INPUT_SIZE = 227
RESIZE_SIZE = 256


def decode_rgb(image_bytes, max_pixels=None, what='image'):
    """uint8 [height, width, 3] RGB from the bytes of a JPEG (accurate integer DCT, as Caffe's
    decoder), PNG, BMP, GIF or WebP file; a corrupt, truncated or unknown file fails the op with
    InvalidArgumentError. With `max_pixels`, so does one whose header announces more
    (`image_header.graph_pixels`), naming `what` (a string or string tensor), before anything is
    decoded; graphs fed files that Python has checked (`image_header.too_large`) leave it out.
    """
    if max_pixels is not None:
        image_bytes = _within_pixel_limit(image_bytes, max_pixels, what)
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method='INTEGER_ACCURATE'),
        lambda: tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def _within_pixel_limit(image_bytes, max_pixels, what):
    """`image_bytes`, once its header is found to announce at most `max_pixels` pixels."""
    pixels = image_header.graph_pixels(image_bytes)
    counted = tf.strings.join([what, ': its header announces ', tf.strings.as_string(pixels),
                               f' pixels (every frame counted), over max_pixels {max_pixels}; refused '
                               'before decoding'])
    uncounted = tf.strings.join([
        what, f': more than {image_header.MAX_BLOCKS} blocks or {image_header.MAX_SUB_BLOCKS} '
        'sub-blocks, too many to count its frames; refused before decoding'])
    message = tf.where(tf.equal(pixels, image_header.UNCOUNTABLE), uncounted, counted)
    check = tf.debugging.Assert(pixels <= max_pixels, [message])
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def worker_rows(size, batch_size, worker_index, num_workers):
    """The places in an epoch's order (of `size` items, in batches of `batch_size`) that worker
    `worker_index` of `num_workers` reads: rows i*b .. i*b + b - 1 of every batch, b = batch_size /
    num_workers, as far as a last partial batch has them. Together the workers read every place
    once, and a step's batch is one machine's batch."""
    part = batch_size // num_workers
    starts = np.arange(0, size, batch_size, dtype=np.int64)
    rows = (starts[:, None] + worker_index * part + np.arange(part, dtype=np.int64)[None, :]).ravel()
    return rows[rows < size]


def _resized_for_crops(image_rgb, resize_size):
    if resize_size < INPUT_SIZE:
        raise ValueError(f'resize size {resize_size} is smaller than the {INPUT_SIZE}x{INPUT_SIZE} crop')
    return resized_pixels(image_rgb, resize_size)


def _crop(image, top, left):
    return image[top:top + INPUT_SIZE, left:left + INPUT_SIZE, :]


def resized_pixels(image_rgb, size):
    """uint8 [size, size, 3]: bilinear with half-pixel centres (OpenCV's sampling; TF1's
    `tf.image.resize` samples from the corners), rounded half to even, as OpenCV resizes 8-bit images."""
    resized = tf.raw_ops.ResizeBilinear(images=image_rgb[tf.newaxis], size=[size, size],
                                        align_corners=False, half_pixel_centers=True)
    return tf.cast(tf.round(tf.clip_by_value(resized[0], 0, 255)), tf.uint8)


def resize_for_model(image_rgb, training=False, augment=False, seed=None, resize_size=RESIZE_SIZE):
    """uint8 [227, 227, 3] RGB from a decoded image of any size (`resized_pixels`): straight to 227,
    or with `augment` to `resize_size` (256) squared, then a random crop flipped half of the time in
    training, the centre crop in inference. `seed` (int32/int64 [2], required for training with
    augmentation) drives the stateless crop and flip: the caller varies it per image and per epoch.
    """
    if not augment:
        return resized_pixels(image_rgb, INPUT_SIZE)
    resized = _resized_for_crops(image_rgb, resize_size)
    spare = resize_size - INPUT_SIZE
    if not training:
        return _crop(resized, spare // 2, spare // 2)
    if seed is None:
        raise ValueError('resize_for_model: training with augmentation needs a seed')
    # Three draws from 0..29: the crop's top and left, and the flip (drawn below 15 half of the time).
    draws = tf.random.stateless_uniform([3], seed=seed, minval=0, maxval=spare + 1, dtype=tf.int32)
    crop = tf.slice(resized, [draws[0], draws[1], 0], [INPUT_SIZE, INPUT_SIZE, 3])
    flip = draws[2] < (spare + 1) // 2
    return tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)


def ten_crops(image_rgb, resize_size=RESIZE_SIZE):
    """uint8 [10, 227, 227, 3] RGB: the paper's test-time crops of a decoded image, in Caffe's
    `oversample` order: of the `resize_size` (256) squared resize, the top-left, top-right,
    bottom-left and bottom-right corners and the centre, then the same five mirrored left-right."""
    resized = _resized_for_crops(image_rgb, resize_size)
    far, centre = resize_size - INPUT_SIZE, (resize_size - INPUT_SIZE) // 2
    crops = tf.stack([_crop(resized, top, left)
                      for top, left in ((0, 0), (0, far), (far, 0), (far, far), (centre, centre))])
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


@tf.function(jit_compile=True, autograph=False)
def _bgr_minus_mean(images_rgb):
    """The normalisation as one XLA-compiled pass over memory, where TensorFlow's kernels make
    several (`images[..., ::-1]` alone copies element by element; bench/RESULTS.md measures it)."""
    images = tf.cast(images_rgb, tf.float32)
    return images[..., ::-1] - np.array(IMAGENET_MEAN_RGB[::-1], dtype=np.float32)


def normalize(images_rgb, compiled=True):
    """float32 BGR minus the ImageNet mean, from RGB in [0, 255]: one image [h, w, 3] or a batch.

    Exactly `float32(rgb)[..., ::-1] - float32(mean_bgr)` (a subtraction rounds alike whatever runs
    it), by `_bgr_minus_mean`, compiled once per shape (a pipeline's full batches and its last one).
    `compiled=False` builds the same body as plain ops, for graphs that leave this process (TF Serving
    runs XLA functions only when started with a flag for it).
    """
    if compiled:
        return _bgr_minus_mean(images_rgb)
    return _bgr_minus_mean.python_function(images_rgb)
