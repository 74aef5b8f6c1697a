"""The one pre-processing definition, checked against NumPy and OpenCV, on files of every format.

Each test builds its ops in a fresh tf.Graph, which works with or without tf.disable_v2_behavior().
"""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import image_files
from finetune_alexnet import preprocessing

MEAN_RGB = np.array([123.68, 116.779, 103.939])


def run(build, *inputs):
    """Values of the tensors `build(*constant inputs)` returns, in a graph of their own."""
    with tf.Graph().as_default(), tf.Session() as session:
        return session.run(build(*[tf.constant(value) for value in inputs]))


def decode(data):
    return run(preprocessing.decode_rgb, data)


def reference_resize(image, height, width):
    """Bilinear resize with half-pixel centres and edge clamping: the definition, in NumPy.

    In float32 and in the order TensorFlow's kernel takes (sample positions, then each row's pair of
    pixels, then between the two rows), so the values are TensorFlow's to the bit and, rounded, the
    pipeline's pixels exactly (in float64 they would move by up to 1e-5, enough to tip a value
    lying on a half to the other level).
    """
    def weights(size_in, size_out):
        scale = np.float32(size_in) / np.float32(size_out)
        centres = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        floor = np.floor(centres)
        low = np.maximum(floor, 0).astype(int)
        high = np.minimum(np.ceil(centres), size_in - 1).astype(int)
        return low, high, centres - floor
    image = image.astype(np.float32)
    top, bottom, dy = weights(image.shape[0], height)
    left, right, dx = weights(image.shape[1], width)
    dx, dy = dx[None, :, None], dy[:, None, None]
    upper = image[top][:, left] + (image[top][:, right] - image[top][:, left]) * dx
    lower = image[bottom][:, left] + (image[bottom][:, right] - image[bottom][:, left]) * dx
    return upper + (lower - upper) * dy


def reference_pixels(image, height, width):
    """The pipeline's pixels: `reference_resize` rounded to whole levels, half to even (float32)."""
    return np.round(reference_resize(image, height, width))


def levels_of(normalised):
    """The whole RGB levels a normalised image (float32 BGR minus the mean) was made from, checked to
    give it exactly."""
    levels = np.round(normalised[..., ::-1] + MEAN_RGB)
    np.testing.assert_array_equal(normalised,
                                  levels[..., ::-1].astype(np.float32) - np.float32(MEAN_RGB[::-1]))
    return levels


def test_constants_are_the_caffe_ones():
    assert preprocessing.IMAGENET_MEAN_RGB == (123.68, 116.779, 103.939)
    assert preprocessing.INPUT_SIZE == 227
    assert preprocessing.RESIZE_SIZE == 256


def whole_chain(image_bytes):
    """What the pipeline does to one file's bytes: float32 [227, 227, 3], BGR, mean subtracted."""
    return preprocessing.normalize(preprocessing.resize_for_model(preprocessing.decode_rgb(image_bytes)))


def test_normalize_uncompiled_is_the_same_arithmetic():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.float32)
    compiled = run(preprocessing.normalize, images)
    plain = run(lambda x: preprocessing.normalize(x, compiled=False), images)
    np.testing.assert_array_equal(compiled, plain)
    np.testing.assert_array_equal(plain, images[..., ::-1] - np.float32([103.939, 116.779, 123.68]))


def test_module_holds_no_tensors():
    # A tensor made at import would belong to whatever graph was the default then.
    assert not [name for name, value in vars(preprocessing).items() if isinstance(value, tf.Tensor)]


def test_pinned_values_on_a_two_by_two_image(tmp_path):
    pixels = np.array([[[10, 20, 30], [50, 60, 70]],
                       [[90, 100, 110], [130, 140, 150]]], np.uint8)
    data = image_files.encode(pixels, '.png')
    out = run(whole_chain, data)
    assert out.shape == (227, 227, 3) and out.dtype == np.float32
    # The corner copies the top-left pixel; output pixel 113 samples input coordinate 0.5 exactly,
    # the average of all four pixels (70, 80, 90). Both as B, G, R minus the mean.
    np.testing.assert_allclose(out[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)
    np.testing.assert_allclose(out[113, 113], [90 - 103.939, 80 - 116.779, 70 - 123.68], atol=1e-4)
    np.testing.assert_allclose(out[-1, -1], [150 - 103.939, 140 - 116.779, 130 - 123.68], atol=1e-4)
    np.testing.assert_array_equal(levels_of(out), reference_pixels(pixels, 227, 227))


def test_resize_rounds_half_to_even():
    # Output pixel 113 of a 2x2 image samples input coordinate 0.5 exactly (above): the average of
    # the four pixels, here 10.5, 11.5 and 0.5 per channel, rounded to the even neighbour.
    pixels = np.array([[[10, 11, 0], [11, 12, 1]], [[10, 11, 0], [11, 12, 1]]], np.uint8)
    out = run(preprocessing.resize_for_model, pixels)
    assert out.dtype == np.uint8
    assert out[113, 113].tolist() == [10, 12, 0]


def test_uniform_image_is_exactly_the_colour_minus_the_mean():
    flat = image_files.flat_rgb(5, 9, (10, 20, 30))
    out = run(whole_chain, image_files.encode(flat, '.png'))
    expected = np.float32([30, 20, 10]) - np.float32([103.939, 116.779, 123.68])
    assert np.array_equal(out, np.broadcast_to(expected, (227, 227, 3)))


@pytest.mark.parametrize('height, width', [(1, 1), (1, 500), (3, 2), (33, 700), (375, 500), (300, 227)])
def test_any_size_matches_the_numpy_reference(height, width):
    image = image_files.random_rgb(height, width, seed=height * width)
    out = run(whole_chain, image_files.encode(image, '.png'))
    np.testing.assert_array_equal(levels_of(out), reference_pixels(image, 227, 227))


def test_resize_agrees_with_opencv_inter_linear():
    cv2 = pytest.importorskip('cv2')
    image = image_files.random_rgb(41, 67, seed=3)
    ours = run(lambda x: preprocessing.resize_for_model(x), image)
    theirs = cv2.resize(image.astype(np.float32), (227, 227), interpolation=cv2.INTER_LINEAR)
    # OpenCV's float32 resize, rounded: both round sample positions to float32, so they may part
    # only within 0.01 of a half.
    assert np.abs(ours - theirs.astype(np.float64)).max() <= 0.5 + 0.01
    # OpenCV's own uint8 resize (what Caffe's images went through) works in fixed point: one level
    # off at most.
    eight_bit = cv2.resize(image, (227, 227), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours.astype(int) - eight_bit).max() <= 1


def test_normalize_is_exact_for_single_images_and_batches():
    batch = np.random.default_rng(0).uniform(0, 255, (3, 227, 227, 3)).astype(np.float32)
    expected = batch[..., ::-1] - np.float32(MEAN_RGB[::-1])
    single, batched = run(lambda one, many: [preprocessing.normalize(one),
                                              preprocessing.normalize(many)], batch[0], batch)
    assert batched.dtype == np.float32
    assert np.array_equal(batched, expected)
    assert np.array_equal(single, expected[0])


def test_normalize_takes_uint8():
    image = image_files.random_rgb(4, 5, seed=1)
    out = run(preprocessing.normalize, image)
    assert np.array_equal(out, image[..., ::-1].astype(np.float32) - np.float32(MEAN_RGB[::-1]))


# Decoding: every format gives uint8 RGB with 3 channels.

def test_jpeg_decodes_like_opencv():
    cv2 = pytest.importorskip('cv2')
    for progressive in (False, True):
        image = image_files.random_rgb(37, 51, seed=5)
        data = image_files.encode(image, '.jpg', cv2.IMWRITE_JPEG_QUALITY, 90,
                                  cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive))
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        out = decode(data)
        assert out.dtype == np.uint8
        # The accurate integer DCT: the very pixels OpenCV (and Caffe) decode.
        assert np.array_equal(out, expected), f'progressive={progressive}'


def test_cmyk_jpeg_decodes_to_its_rgb_colour(tmp_path):
    pytest.importorskip('PIL')
    for colour in [(200, 30, 90), (12, 240, 128), (0, 0, 0), (255, 255, 255)]:
        path = image_files.write_cmyk_jpeg(tmp_path / 'cmyk.jpg', image_files.flat_rgb(16, 24, colour))
        out = decode(open(path, 'rb').read())
        assert out.shape == (16, 24, 3)
        np.testing.assert_allclose(out.reshape(-1, 3), np.tile(colour, (16 * 24, 1)), atol=2)


def test_png_8_bit_with_and_without_alpha():
    rgba = np.random.default_rng(2).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    assert np.array_equal(decode(image_files.encode(rgba[..., :3], '.png')), rgba[..., :3])
    assert np.array_equal(decode(image_files.encode(rgba, '.png')), rgba[..., :3])


def test_png_16_bit_keeps_the_high_byte():
    rgba = np.random.default_rng(3).integers(0, 65536, (6, 7, 4)).astype(np.uint16)
    high_byte = (rgba >> 8).astype(np.uint8)
    assert np.array_equal(decode(image_files.encode(rgba[..., :3], '.png')), high_byte[..., :3])
    assert np.array_equal(decode(image_files.encode(rgba, '.png')), high_byte[..., :3])


def test_bmp_24_and_32_bit():
    rgba = np.random.default_rng(4).integers(0, 256, (5, 9, 4), dtype=np.uint8)
    assert np.array_equal(decode(image_files.encode(rgba[..., :3], '.bmp')), rgba[..., :3])
    assert np.array_equal(decode(image_files.encode(rgba, '.bmp')), rgba[..., :3])


@pytest.mark.parametrize('extension', ['.png', '.bmp', '.jpg'])
def test_grayscale_becomes_three_equal_channels(extension):
    gray = np.random.default_rng(5).integers(0, 256, (8, 11), dtype=np.uint8)
    if extension == '.jpg':
        gray = np.full((8, 11), 77, np.uint8)  # flat, so the lossy codec keeps it exactly
    out = decode(image_files.encode(gray, extension))
    assert out.shape == (8, 11, 3)
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_16_bit_grayscale_png():
    gray = np.random.default_rng(6).integers(0, 65536, (4, 3)).astype(np.uint16)
    out = decode(image_files.encode(gray, '.png'))
    assert np.array_equal(out, np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, axis=2))


def test_gif_gives_its_first_frame():
    first = (image_files.random_rgb(6, 300, seed=7) // 64) * 64  # few colours: a GIF has a palette
    second = image_files.flat_rgb(6, 300, (1, 2, 3))
    assert np.array_equal(decode(image_files.gif_bytes([first, second])), first)
    assert np.array_equal(decode(image_files.gif_bytes([second])), second)


@pytest.mark.parametrize('data', [b'', b'not an image', b'\xff\xd8\xff\xe0 broken jpeg header'],
                         ids=['empty', 'text', 'jpeg-header-only'])
def test_garbage_fails_with_invalid_argument(data):
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode(data)


def test_truncated_files_fail_with_invalid_argument():
    image = image_files.random_rgb(40, 40, seed=8)
    for extension in ('.jpg', '.png'):
        with pytest.raises(tf.errors.InvalidArgumentError):
            decode(image_files.truncated(image_files.encode(image, extension)))


# The paper's augmentation.

def test_inference_with_augment_is_the_centre_crop_of_the_256_resize():
    image = image_files.random_rgb(50, 70, seed=9)
    out = run(lambda x: preprocessing.resize_for_model(x, training=False, augment=True), image)
    np.testing.assert_array_equal(out, reference_pixels(image, 256, 256)[14:241, 14:241])


def _place_of(crop, resized):
    """(top, left, flipped) of a 227 crop within a 256 image, or None."""
    for flipped in (False, True):
        window = crop[:, ::-1] if flipped else crop
        for top in range(30):
            for left in range(30):
                if np.abs(resized[top, left:left + 227] - window[0]).max() < 1e-3:
                    if np.abs(resized[top:top + 227, left:left + 227] - window).max() < 1e-3:
                        return top, left, flipped
    return None


def test_training_with_augment_takes_a_seeded_random_crop_and_flip():
    image = image_files.random_rgb(40, 60, seed=10)
    resized = reference_pixels(image, 256, 256)
    seeds = [[0, seed] for seed in range(12)]

    def build(x):
        return [preprocessing.resize_for_model(x, training=True, augment=True, seed=seed)
                for seed in seeds]
    crops = run(build, image)
    again = run(build, image)
    places = [_place_of(crop, resized) for crop in crops]
    assert None not in places, 'every output is a 227 window of the 256 resize, maybe flipped'
    assert all(np.array_equal(a, b) for a, b in zip(crops, again)), 'the same seed gives the same crop'
    assert len(set(places)) > 6, 'different seeds give different crops'
    assert {flipped for _, _, flipped in places} == {False, True}


def test_training_with_augment_needs_a_seed():
    with tf.Graph().as_default(), pytest.raises(ValueError):
        preprocessing.resize_for_model(tf.zeros([5, 5, 3], tf.uint8), training=True, augment=True)
