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


def epoch_key(seed, epoch):
    """int64 [2], the key of one epoch's shuffle and crops: drawn by a seeded stateful op at every
    initialisation of the iterator (so a seed repeats the epochs in a fresh graph; the shuffle's own
    reshuffle_each_iteration would repeat one order, as an initializable iterator rebuilds the
    dataset), or made of the seed and `epoch` when `epoch` >= 0 is fed, so that a resumed run replays
    the uninterrupted one's orders. Lists and shards derive their keys here, so their batches agree.
    """
    drawn = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64, seed=seed)
    base = seed if seed is not None else np.random.randint(2**31)
    pinned = tf.stack([tf.constant(base, tf.int64), epoch])
    return tf.where(epoch >= 0, pinned, drawn)


def epoch_feeds():
    """The optional feeds of an input pipeline's epoch: `epoch` (pins the order; -1, the default:
    a new draw) and `skip` (images of the order to leave out first, for a resumed epoch)."""
    return (tf.placeholder_with_default(tf.constant(-1, tf.int64), [], name='epoch'),
            tf.placeholder_with_default(tf.constant(0, tf.int64), [], name='skip'))


def epoch_order(size, seed, epoch, shuffle, random_crops, batch_size=None, num_workers=1,
                worker_index=0):
    """(positions, key): the order in which an epoch visits a data set's `size` items (shuffled by
    the epoch's key when `shuffle`), and the key its random crops derive from (None when neither
    shuffles nor crops). With `num_workers` > 1, only worker `worker_index`'s places of the order
    (worker_rows of batches of `batch_size`): its part of every batch, in the order all share."""
    positions = tf.range(size, dtype=tf.int64)
    key = epoch_key(seed, epoch) if shuffle or random_crops else None
    if shuffle:
        positions = tf.random.experimental.stateless_shuffle(positions, seed=key)
    if num_workers > 1:
        rows = worker_rows(size, batch_size, worker_index, num_workers)
        positions = tf.gather(positions, tf.constant(rows, tf.int64))
    return positions, key


def worker_part(batch_size, num_workers, worker_index):
    """(num_workers, worker_index, the worker's rows per batch), checked: a batch the workers split
    evenly, an index among them."""
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(f'worker_index must be in 0..num_workers - 1, got {worker_index} of {num_workers}')
    if batch_size % num_workers:
        raise ValueError(f'batch_size {batch_size} does not split evenly over {num_workers} workers')
    return num_workers, worker_index, batch_size // num_workers


def worker_rows(size, batch_size, worker_index, num_workers):
    """The places in an epoch's order (of `size` items, in batches of `batch_size`) that worker
    `worker_index` of `num_workers` reads: rows i*b .. i*b + b - 1 of every batch, b = batch_size /
    num_workers, as far as a last partial batch has them. Together the workers read every place
    once, and a step's batch is one machine's batch."""
    part = batch_size // num_workers
    starts = np.arange(0, size, batch_size, dtype=np.int64)
    rows = (starts[:, None] + worker_index * part + np.arange(part, dtype=np.int64)[None, :]).ravel()
    return rows[rows < size]


def batches_for_model(images_and_labels, batch_size, num_classes, skip_bad_images=False, skip=0):
    """A dataset of (resized uint8 RGB image, integer label) pairs in batches as training takes them:
    images uint8 [b, 227, 227, 3] (`normalize` them where the model runs), labels one-hot,
    prefetched. With `skip_bad_images`, images that failed to decode are dropped, then `skip` images
    skipped: dropped images shift the batches, so a resumed epoch's consumed part counts decoded images."""
    dataset = images_and_labels
    if skip_bad_images:
        dataset = dataset.ignore_errors().skip(skip)
    dataset = dataset.batch(batch_size)

    @tf.autograph.experimental.do_not_convert
    def finish_batch(images, labels):
        return images, tf.one_hot(labels, num_classes)
    dataset = dataset.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def prediction_batches(sources_and_positions, decode, batch_size, center_crop=False, ten_crop=False,
                       skip_bad_images=False, resize_size=RESIZE_SIZE):
    """Batches (images float32, positions int64) for prediction from a dataset of (source, position)
    pairs, `decode(source)` giving an RGB image: resized as inference takes it (the centre crop
    with `center_crop`; with `ten_crop` each image's ten crops, rows 10 i ... 10 i + 9 of
    [10 b, 227, 227, 3]), in order; with `skip_bad_images`, undecodable images are dropped and the
    positions say which remain."""
    @tf.autograph.experimental.do_not_convert
    def load(source, position):
        image = decode(source)
        if ten_crop:
            return ten_crops(image, resize_size), position
        return resize_for_model(image, training=False, augment=center_crop,
                                resize_size=resize_size), position

    @tf.autograph.experimental.do_not_convert
    def finish_batch(images, positions):
        if ten_crop:  # [b, 10, 227, 227, 3] -> [10 b, 227, 227, 3]: image after image
            images = tf.reshape(images, [-1, INPUT_SIZE, INPUT_SIZE, 3])
        return normalize(images), positions

    dataset = sources_and_positions.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_bad_images:
        dataset = dataset.ignore_errors()
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_resize_size(resize_size):
    if resize_size < INPUT_SIZE:
        raise ValueError(f'resize size {resize_size} is smaller than the {INPUT_SIZE}x{INPUT_SIZE} crop')


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
    _check_resize_size(resize_size)
    resized = resized_pixels(image_rgb, resize_size)
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
    _check_resize_size(resize_size)
    resized = resized_pixels(image_rgb, resize_size)
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
