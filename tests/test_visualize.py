"""visualize.py: what each figure shows (colour order, layout, per-filter scaling) and the PNG command."""
import os

import cv2
import numpy as np
import pytest

import bvlc_fixture
import visualize
from finetune_alexnet.cli import run as run_main
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.infer.classifier import Classifier
from test_predict import write_noise


def shown(figure):
    """The array the figure's (first) image shows."""
    return np.asarray(figure.axes[0].images[0].get_array())


def test_conv1_filters_are_shown_in_rgb_each_scaled_to_its_range():
    ramp = np.linspace(0, 1, 11)[None, :]
    weights = np.zeros((11, 11, 3, 96), np.float32)
    weights[:, :, 0, 0] = 0.02            # filter 0 sees only the network's channel 0: blue (BGR input)
    weights[:, :, 2, 1] = ramp            # filter 1: red, rising left to right
    weights[:, :, :, 2] = -5 + 0.01 * ramp[..., None]  # filter 2: tiny grey ramp far below zero
    mosaic = shown(visualize.conv1_filters_figure(weights))
    assert mosaic.shape == (8 * 12 - 1, 12 * 12 - 1, 3)
    np.testing.assert_allclose(mosaic[:11, :11], np.broadcast_to([0, 0, 1], (11, 11, 3)))
    red = mosaic[:11, 12:23]
    np.testing.assert_allclose(red[..., 0], np.broadcast_to(ramp, (11, 11)), atol=1e-6)
    np.testing.assert_allclose(red[..., 1:], 0)
    grey = mosaic[:11, 24:35]  # scaled to its own range: a full black-to-white ramp
    np.testing.assert_allclose(grey, np.broadcast_to(ramp[..., None], (11, 11, 3)), atol=1e-4)
    np.testing.assert_allclose(mosaic[:11, 36:47], 0.5)  # an all-zero filter: mid-grey
    assert mosaic[11, 0, 0] == 1.0  # the white gap between rows


def test_conv2_shows_one_group_filters_as_columns_input_channels_as_rows():
    weights = np.zeros((5, 5, 48, 256), np.float32)
    weights[2, 2, 5, 130] = 3.0  # group 2's third filter, input channel 5, centre tap
    first = shown(visualize.conv2_filters_figure(weights, group=0))
    assert first.shape == (48 * 6 - 1, 128 * 6 - 1)
    np.testing.assert_allclose(first[first != 1.0], 0.5)  # group 1 is all zero: grey tiles, white gaps
    second = shown(visualize.conv2_filters_figure(weights, group=1))
    tile = second[5 * 6:5 * 6 + 5, 2 * 6:2 * 6 + 5]
    expected = np.zeros((5, 5))
    expected[2, 2] = 1
    np.testing.assert_allclose(tile, expected)
    np.testing.assert_allclose(second[0:5, 2 * 6:2 * 6 + 5], 0)  # same filter, other channel: its min
    with pytest.raises(ToolkitError, match='group 2 does not exist'):
        visualize.conv2_filters_figure(weights, group=2)


def test_feature_maps_one_tile_per_channel():
    maps = np.zeros((55, 55, 96), np.float32)
    maps[:, :, 13] = np.arange(55)[:, None]
    mosaic = shown(visualize.feature_maps_figure(maps, 'x'))
    assert mosaic.shape == (8 * 57 - 2, 12 * 57 - 2)
    row, column = divmod(13, 12)
    tile = mosaic[row * 57:row * 57 + 55, column * 57:column * 57 + 55]
    np.testing.assert_allclose(tile[:, 0], np.arange(55) / 54)


def test_predictions_figure_bars_are_the_probabilities():
    photos = [np.zeros((10, 12, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)]
    decoded = [[(3, 'three', 0.7), (1, 'one', 0.2)], [(0, 'zero', 0.9), (2, 'two', 0.05)]]
    figure = visualize.predictions_figure(photos, decoded, ['a', 'b'])
    assert len(figure.axes) == 4
    bars = figure.axes[1]
    assert [patch.get_width() for patch in bars.patches] == [0.7, 0.2]
    assert bars.patches[0].get_y() > bars.patches[1].get_y()  # the most probable at the top
    labels = {tick.get_text(): position for tick, position in zip(bars.get_yticklabels(), bars.get_yticks())}
    assert labels['three'] > labels['one']
    assert figure.axes[0].get_title() == 'a'


def test_read_rgb_converts_from_opencvs_bgr(tmp_path):
    path = str(tmp_path / 'red.png')
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 2] = 255  # OpenCV's channel 2 is red
    cv2.imwrite(path, image)
    assert visualize.read_rgb(path)[0, 0].tolist() == [255, 0, 0]
    (tmp_path / 'bad.jpg').write_bytes(b'nope')
    with pytest.raises(ToolkitError, match='bad.jpg: not a readable image'):
        visualize.read_rgb(str(tmp_path / 'bad.jpg'))


def test_command_line_writes_every_figure_as_png(bvlc_npy, tmp_path):
    photos = [write_noise(tmp_path / 'one.png', 1), write_noise(tmp_path / 'two.jpg', 2)]
    out_dir = tmp_path / 'figures'
    assert visualize.main(['--weights_path', bvlc_npy, '--out_dir', str(out_dir),
                           '--feature_image', '1'] + photos) == 0
    assert sorted(os.listdir(out_dir)) == sorted(f'{name}.png' for name in visualize.FIGURES)
    for name in visualize.FIGURES:
        image = cv2.imread(str(out_dir / f'{name}.png'))
        assert image is not None and min(image.shape[:2]) > 100, name


def test_command_line_errors_are_one_line(tmp_path, capsys):
    photo = write_noise(tmp_path / 'one.png', 1)
    argv = ['--weights_path', str(tmp_path / 'missing.npy'), '--out_dir', str(tmp_path), photo]
    assert run_main(visualize.main, argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing.npy'}: weights file not found")
    assert run_main(visualize.main, argv[:4] + ['--feature_image', '3', photo]) == 2
    assert '--feature_image 3: there are 1 images' in capsys.readouterr().err


def test_feature_maps_default_to_the_cat():
    assert visualize.feature_photo_index(['images/astronaut.jpg', 'images/chelsea.jpg']) == 1
    assert visualize.feature_photo_index(['a.png', 'b.png']) == 0


@pytest.mark.slow
def test_checkpoint_path_shows_a_fine_tuned_model(tmp_path):
    """--checkpoint_path draws the fine-tuned model's own filters and its class names."""
    import test_predict
    layers = bvlc_fixture.random_weights(num_classes=2, seed=5)
    test_predict.make_checkpoint(str(tmp_path / 'run'), layers, class_names=['cat', 'dog'])
    photo = write_noise(tmp_path / 'one.png', 1)
    out_dir = tmp_path / 'figures'
    assert visualize.main(['--checkpoint_path', str(tmp_path / 'run'), '--out_dir', str(out_dir),
                           photo]) == 0
    assert sorted(os.listdir(out_dir)) == sorted(f'{name}.png' for name in visualize.FIGURES)
    with Classifier(checkpoint=str(tmp_path / 'run')) as classifier:
        figures = visualize.make_figures(classifier, [photo])
    # The checkpoint's own filters, not the ImageNet file's, and its class names on the bars.
    np.testing.assert_array_equal(shown(figures['conv1_filters']),
                                  shown(visualize.conv1_filters_figure(layers['conv1']['weights'])))
    labels = [label.get_text() for label in figures['top5'].axes[1].get_yticklabels()]
    assert sorted(labels) == ['cat', 'dog']


def test_an_out_dir_naming_a_file_is_one_line_before_any_work(tmp_path, capsys):
    """Checked before the model loads (no weights file here, so a later check would name that)."""
    existing = tmp_path / 'figures'
    existing.write_text('a file, not a folder')
    assert run_main(visualize.main, ['--weights_path', str(tmp_path / 'absent.npy'),
                                     '--out_dir', str(existing)]) == 2
    assert capsys.readouterr().err.strip() == f'error: {existing}: --out_dir is a file, not a folder'
    assert existing.read_text() == 'a file, not a folder'
