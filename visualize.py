"""Figures of what AlexNet sees: photos with their top-5 classes, conv1's filters, one group of conv2's
filters, and conv1's feature maps of one photo (docs/notebook.md).

The functions return matplotlib Figures (no pyplot state), which the notebook displays; the command
line writes them as PNG files. Photos and conv1's filters (BGR, as the Caffe weights expect) are
flipped to RGB for display only; the network's input is the Classifier's own.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import glob  # noqa: E402
import os  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402

DEFAULT_IMAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'images')
FIGURES = ('photos', 'top5', 'conv1_filters', 'conv2_filters', 'conv1_feature_maps')
FEATURE_PHOTO = 'chelsea.jpg'  # the tabby cat: its stripes and whiskers make telling feature maps


def feature_photo_index(paths):
    """Which photo to show conv1's feature maps of: the cat when it is among them, else the first."""
    names = [os.path.basename(path) for path in paths]
    return names.index(FEATURE_PHOTO) if FEATURE_PHOTO in names else 0


def read_rgb(path):
    """A photo as an RGB uint8 array, for display."""
    bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ToolkitError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def normalise(array):
    """`array` scaled to [0, 1]; a constant array becomes 0.5 (grey) rather than dividing by zero."""
    array = np.asarray(array, np.float64)
    low, high = array.min(), array.max()
    if high - low < 1e-12:
        return np.full_like(array, 0.5)
    return (array - low) / (high - low)


def tile(tiles, columns, gap=1):
    """One mosaic image of `tiles` [n, h, w(, c)], `columns` to a row, `gap` white pixels between."""
    tiles = np.asarray(tiles)
    count, height, width = tiles.shape[:3]
    rows = -(-count // columns)
    shape = (rows * (height + gap) - gap, columns * (width + gap) - gap) + tiles.shape[3:]
    mosaic = np.ones(shape)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        mosaic[top:top + height, left:left + width] = tiles[index]
    return mosaic


def _mosaic_figure(mosaic, title, width_inches, cmap=None):
    height_inches = width_inches * mosaic.shape[0] / mosaic.shape[1] + 0.6
    figure = Figure(figsize=(width_inches, height_inches))
    axes = figure.add_axes([0.01, 0.01, 0.98, 0.98 - 0.5 / height_inches])
    axes.imshow(mosaic, cmap=cmap, interpolation='nearest', vmin=0, vmax=1)
    axes.set_axis_off()
    axes.set_title(title)
    return figure


def _photo_axes(figure, rows, columns, place, photo, title):
    axes = figure.add_subplot(rows, columns, place)
    axes.imshow(photo)
    axes.set_axis_off()
    if title:
        axes.set_title(title)


def photos_figure(photos, titles=None):
    """The photos (RGB) side by side."""
    figure = Figure(figsize=(5 * len(photos), 4.5))
    for index, photo in enumerate(photos):
        _photo_axes(figure, 1, len(photos), index + 1, photo, titles and titles[index])
    figure.tight_layout()
    return figure


def predictions_figure(photos, decoded, titles=None):
    """Each photo (RGB) beside a bar chart of its top classes, from classifier.decode_predictions."""
    figure = Figure(figsize=(11, 2.8 * len(photos)))
    for index, (photo, top) in enumerate(zip(photos, decoded)):
        _photo_axes(figure, len(photos), 2, 2 * index + 1, photo, titles and titles[index])
        bar_axes = figure.add_subplot(len(photos), 2, 2 * index + 2)
        names = [name if len(name) <= 32 else name[:31] + '…' for _, name, _ in top]
        probabilities = [probability for _, _, probability in top]
        positions = np.arange(len(top))[::-1]  # most probable at the top
        bar_axes.barh(positions, probabilities, color='tab:blue')
        bar_axes.set_yticks(positions, names)
        bar_axes.set_xlim(0, 1)
        bar_axes.set_xlabel('probability')
        for position, probability in zip(positions, probabilities):
            bar_axes.text(min(probability, 0.82) + 0.01, position, f'{probability:.3f}', va='center')
    figure.tight_layout()
    return figure


def conv1_filters_figure(conv1_weights):
    """conv1's filters [11, 11, 3, 96] as colour tiles, each scaled to its own range, BGR shown as RGB."""
    weights = np.asarray(conv1_weights)
    filters = np.moveaxis(weights, 3, 0)[..., ::-1]  # [96, 11, 11, 3], channels BGR -> RGB
    tiles = [normalise(one) for one in filters]
    return _mosaic_figure(tile(tiles, 12), f'conv1: {len(tiles)} filters '
                          f'({weights.shape[0]}x{weights.shape[1]}, RGB, each scaled to its range)', 10)


def conv2_filters_figure(conv2_weights, group=0, groups=2):
    """One group of conv2's filters [5, 5, 48, 256]: a column per filter, a row per input channel.

    Each filter of a group sees only that group's 48 conv1 channels, so no single colour image shows
    it; every 5x5 slice is drawn in grey, each filter (column) scaled to its own range.
    """
    weights = np.asarray(conv2_weights)
    per_group = weights.shape[3] // groups
    if not 0 <= group < groups:
        raise ToolkitError(f"conv2 has {groups} groups; group {group} does not exist")
    group_weights = weights[..., group * per_group:(group + 1) * per_group]  # [5, 5, 48, 128]
    normalised = np.stack([normalise(group_weights[..., n]) for n in range(per_group)], axis=-1)
    # tile order: row = input channel, column = filter
    tiles = np.transpose(normalised, (2, 3, 0, 1)).reshape(-1, weights.shape[0], weights.shape[1])
    return _mosaic_figure(tile(tiles, per_group), f'conv2, group {group + 1} of {groups}: '
                          f'{per_group} filters (columns) x {weights.shape[2]} input channels (rows)',
                          16, cmap='gray')


def feature_maps_figure(conv1_maps, title='conv1 feature maps'):
    """conv1's output for one photo [55, 55, 96], one grey tile per channel, each scaled to its range."""
    maps = np.moveaxis(np.asarray(conv1_maps), 2, 0)
    tiles = [normalise(one) for one in maps]
    return _mosaic_figure(tile(tiles, 12, gap=2), f'{title} ({len(tiles)} channels)', 12,
                          cmap='gray')


def make_figures(classifier, paths, feature_image=None):
    """{name: Figure} of FIGURES for the image files `paths`, computed with a classifier.Classifier;
    `feature_image` (an index into `paths`) picks the photo of the feature maps (None: the default)."""
    from finetune_alexnet.infer.classifier import decode_predictions
    if feature_image is None:
        feature_image = feature_photo_index(paths)
    result = classifier.run(paths, layers=['conv1'])
    photos = [read_rgb(path) for path in paths]
    titles = [os.path.basename(path) for path in paths]
    decoded = decode_predictions(result.probabilities, classifier.class_names, top=5)
    return {
        'photos': photos_figure(photos, titles),
        'top5': predictions_figure(photos, decoded, titles),
        'conv1_filters': conv1_filters_figure(classifier.layer_weights('conv1')['weights']),
        'conv2_filters': conv2_filters_figure(classifier.layer_weights('conv2')['weights']),
        'conv1_feature_maps': feature_maps_figure(result.outputs['conv1'][feature_image],
                                                  f'conv1 feature maps of {titles[feature_image]}'),
    }


def main(argv=None):
    parser = cli.ArgumentParser(
        description="Write the notebook's figures as PNG files: top-5 bar charts, conv1 and conv2 "
        "filters, conv1 feature maps.")
    parser.add_argument('images', nargs='*', help=f'photos (default: the .jpg files in {DEFAULT_IMAGES})')
    model = parser.add_mutually_exclusive_group()
    model.add_argument('--weights_path', help='weights file (default bvlc_alexnet.npy)')
    model.add_argument('--checkpoint_path', '--checkpoint',
                       help='a fine-tuned checkpoint instead (prefix or folder)')
    parser.add_argument('--out_dir', required=True, help='folder for the PNG files (created if needed)')
    parser.add_argument('--feature_image', type=int, default=None,
                        help=f'which photo (0-based) to show the conv1 feature maps of (default: '
                        f'{FEATURE_PHOTO} if given, else the first)')
    args = parser.parse_args(argv)
    run_folder.check_output_folder(args.out_dir, '--out_dir')  # before the model loads, not after

    import tensorflow.compat.v1 as tf
    from finetune_alexnet.infer.classifier import Classifier
    tf_setup.quiet_python_logging(args.verbose)  # first: disable_v2_behavior logs a deprecation
    tf.disable_v2_behavior()

    paths = args.images or sorted(glob.glob(os.path.join(DEFAULT_IMAGES, '*.jpg')))
    if not paths:
        raise ToolkitError(f"no images given and none in {DEFAULT_IMAGES}")
    if args.feature_image is not None and not 0 <= args.feature_image < len(paths):
        raise ToolkitError(f"--feature_image {args.feature_image}: there are {len(paths)} images")
    weights_path = None if args.checkpoint_path else (args.weights_path or weight_files.DEFAULT_WEIGHTS_PATH)
    with Classifier(weights_path=weights_path, checkpoint=args.checkpoint_path) as classifier:
        figures = make_figures(classifier, paths, args.feature_image)
    os.makedirs(args.out_dir, exist_ok=True)
    for name in FIGURES:
        path = os.path.join(args.out_dir, f'{name}.png')
        figures[name].savefig(path, dpi=100)
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
