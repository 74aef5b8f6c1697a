"""How a photo becomes AlexNet's input: one definition for training, prediction and the notebook.

The Berkeley weights were trained in Caffe on images that OpenCV decoded, so the network expects
what Caffe fed it:

1. decode to RGB, 8 bits per channel (grayscale repeated to 3 channels, alpha dropped, 16-bit PNGs
   reduced to their high byte, animated GIFs reduced to their first frame);
2. resize to 227x227 with bilinear interpolation (half-pixel centres, no anti-aliasing: the same
   sampling as OpenCV's INTER_LINEAR) in float32, rounded to whole levels (half to even): uint8, as
   OpenCV's resize of Caffe's 8-bit images (its fixed point lands within a level of this);
3. subtract the ImageNet mean, R 123.68, G 116.779, B 103.939;
4. reorder the channels to BGR.

With the paper's augmentation (off by default) step 2 becomes: resize to 256x256, then take a random
227x227 crop and flip it left-right half of the time in training, or take the centre crop in inference.
For evaluation as the paper's section 4.1 and Caffe's `oversample` do, `ten_crops` gives the four
corner crops and the centre crop of the 256x256 resize and their mirror images; the caller averages
the network's probabilities over them.

Steps 1-2 run once per image (`decode_rgb`, `resize_for_model`); steps 3-4 (`normalize`) run on any
[..., 3] tensor, once per batch: in training on the model's device, after the uint8 batch has been
copied there (finetune_alexnet/train/inputs.py's `device_batches`), in prediction in its pipeline.

Everything here only adds ops to the graph that calls it: nothing runs at import and no tensor is
made at module level (`_bgr_minus_mean` is a tf.function, traced into each graph that calls it), so
the functions work in any `tf.Graph` built later, with or without `tf.disable_v2_behavior()`.
"""
import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import image_header

IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
INPUT_SIZE = 227
RESIZE_SIZE = 256


def decode_rgb(image_bytes, max_pixels=None, what='image'):
    """uint8 [height, width, 3] RGB from the bytes of a JPEG, PNG, BMP, GIF or WebP file.

    JPEGs go through `decode_jpeg` with the accurate integer DCT, the one OpenCV and Pillow use, so
    the pixels are the ones Caffe saw (TensorFlow's default is the fast DCT, off by up to 4 levels).
    Its decoder also converts CMYK and reads progressive files. Other formats go through
    `decode_image`. A corrupt, truncated or unknown file makes the op fail with InvalidArgumentError.

    With `max_pixels`, the header is read first (`image_header.graph_pixels`, every frame counted),
    and an image that announces more fails with InvalidArgumentError naming `what` (a string or a
    string tensor) and the limit; nothing is decoded unless the check passes. Graphs fed files that
    Python has already checked (`image_header.too_large`) leave it out.
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


def bilinear_resize(image, size):
    """float32 [size, size, 3]: bilinear with half-pixel centres, as OpenCV (and so Caffe) samples.

    Spelled out because TF1's `tf.image.resize` samples from the top-left corners instead, which
    shifts the picture by half an input pixel.
    """
    resized = tf.raw_ops.ResizeBilinear(images=image[tf.newaxis], size=[size, size], align_corners=False,
                                        half_pixel_centers=True)
    return tf.squeeze(resized, axis=0)


def epoch_key(seed, epoch):
    """int64 [2], the key of one epoch's shuffle and crops in an input pipeline: new at every
    initialisation of the iterator, or pinned by feeding `epoch` >= 0.

    A stateful op draws a new key each time an iterator is initialised (it runs as part of the
    initializer), and everything random is derived from the key statelessly. Seeded, the op repeats
    its sequence in a fresh graph, hence repeatable epochs. (The shuffle's own
    reshuffle_each_iteration would not do: an initializable iterator rebuilds the dataset, and with a
    seed it then gives the same order every epoch.) Feeding `epoch` replaces the draw by a key made
    of the seed and the epoch, so a resumed run replays the orders of the uninterrupted one. Every
    pipeline (image lists, TFRecord shards) derives its key here, so their batches agree.
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
    prefetched. With `skip_bad_images`, images that
    failed to decode are dropped and then `skip` images skipped: dropped images shift the batches,
    so a resumed epoch's consumed part is counted in decoded images (decoded again, but the epoch
    still starts where the interrupted one stopped)."""
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
    """uint8 [size, size, 3]: `bilinear_resize` rounded to whole levels (half to even), as OpenCV
    resizes 8-bit images (its fixed point lands within one level of this)."""
    resized = bilinear_resize(image_rgb, size)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)


def resize_for_model(image_rgb, training=False, augment=False, seed=None, resize_size=RESIZE_SIZE):
    """uint8 [227, 227, 3] RGB from a decoded image of any size (`resized_pixels`).

    Without `augment`: a bilinear resize straight to 227x227. With `augment`: a bilinear resize to
    `resize_size` (256) squared, then in training a 227x227 crop at a random place, flipped left-right
    half of the time; in inference the centre crop, so prediction is deterministic. `seed` (int32/int64
    [2], required for training with augmentation) drives the crop and the flip through stateless random
    ops, so one seed always gives the same crop: the caller varies it per image and per epoch.
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
    """uint8 [10, 227, 227, 3] RGB: the paper's test-time crops of a decoded image.

    Caffe's `oversample`, in its order: of the bilinear `resize_size` (256) squared resize, the crops
    at the top-left, top-right, bottom-left and bottom-right corners and the centre crop (the one
    `resize_for_model` gives in inference), then the same five mirrored left-right.
    """
    _check_resize_size(resize_size)
    resized = resized_pixels(image_rgb, resize_size)
    far, centre = resize_size - INPUT_SIZE, (resize_size - INPUT_SIZE) // 2
    crops = tf.stack([_crop(resized, top, left)
                      for top, left in ((0, 0), (0, far), (far, 0), (far, far), (centre, centre))])
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


@tf.function(jit_compile=True, autograph=False)
def _bgr_minus_mean(images_rgb):
    """The normalisation as one XLA-compiled loop.

    XLA fuses the cast, the channel reversal and the subtraction into a single pass over memory,
    where TensorFlow's own kernels make several (the plain `images[..., ::-1]` is a strided slice
    that copies element by element); bench/RESULTS.md has the measurement. A subtraction rounds
    the same way whatever runs it, so the values are those of the plain NumPy expression.
    """
    images = tf.cast(images_rgb, tf.float32)
    return images[..., ::-1] - np.array(IMAGENET_MEAN_RGB[::-1], dtype=np.float32)


def normalize(images_rgb, compiled=True):
    """float32 BGR minus the ImageNet mean, from RGB in [0, 255]: one image [h, w, 3] or a batch.

    Exactly `float32(rgb)[..., ::-1] - float32(mean_bgr)`, computed by an XLA-compiled function
    (see `_bgr_minus_mean`); compiled once per shape, so a pipeline compiles it twice, for its full
    batches and its last one. `compiled=False` builds the same body as plain ops, for graphs that
    leave this process (TF Serving runs XLA functions only when started with a flag for it); a
    subtraction rounds alike either way.
    """
    if compiled:
        return _bgr_minus_mean(images_rgb)
    return _bgr_minus_mean.python_function(images_rgb)
