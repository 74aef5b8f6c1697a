"""Classify photos with AlexNet: the ImageNet weights or your fine-tuned checkpoint.

    python predict.py images/                                   # bvlc_alexnet.npy, ImageNet's classes
    python predict.py --checkpoint_path runs/x photo.jpg list.txt    # a fine-tuned model, nothing else needed
    python predict.py --checkpoint_path runs/x --evaluate val.txt    # accuracy, precision/recall, confusion
    python predict.py --evaluate lists/val.txt --center_crop    # ImageNet's validation set, as BVLC did
    python predict.py --evaluate lists/val.txt --ten_crop       # ... and as the paper did

Inputs are image files, folders (searched recursively) and list files (`.txt`, "path label" lines as
finetune.py reads them). A checkpoint brings its class count, class names and pre-processing in
`model_info.json` (see model_info.py); without names there, a classes.txt beside it names the classes.
A weights file names its 1000 classes from caffe_classes; `--class_names classes.txt` overrides either,
and unnamed classes are 'class 0', 'class 1', ...

Images go through the one pre-processing definition (preprocessing.py, via datagenerator.py) in
batches inside the graph; class names come out of the one decoder here, `decode_predictions`, which
the notebook and visualize.py use too. An unreadable image stops the run with its name and TensorFlow's
reason, unless --skip_bad_images.

`--ten_crop` classifies each image by its ten crops (four corners and centre of the 256x256 resize,
and their mirror images; preprocessing.ten_crops) and averages the ten probability vectors: one batch
of `--batch_size` images is one forward pass of ten times as many crops. Evaluation reports top-1 and
top-k accuracy with 95% Wilson score intervals, and for the ImageNet weights the published figures
(finetune_alexnet/imagenet.py) beside them.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import collections  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import datagenerator  # noqa: E402
from finetune_alexnet import checkpoints  # noqa: E402
from finetune_alexnet import imagenet  # noqa: E402
from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet import model_info  # noqa: E402
from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from alexnet import INPUT_SIZE, TRAINABLE_LAYERS, AlexNet  # noqa: E402
from alexnet import ARCHITECTURE  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402
from finetune_alexnet.preprocessing import RESIZE_SIZE  # noqa: E402
from finetune_alexnet.image_header import IMAGE_EXTENSIONS  # noqa: E402

LIST_EXTENSION = '.txt'


# --- class names ---------------------------------------------------------------------------------

def default_class_names(num_classes):
    """caffe_classes' ImageNet names for 1000 classes, else 'class 0', 'class 1', ..."""
    if num_classes == 1000:
        from caffe_classes import class_names
        return list(class_names)
    return [f'class {index}' for index in range(num_classes)]


def decode_predictions(probs, class_names, top=5):
    """For each row of `probs` [n, num_classes]: the `top` classes as (index, name, probability).

    Most probable first; ties keep the lower class index first. `class_names` None means 'class i'.
    """
    probs = np.atleast_2d(np.asarray(probs))
    num_classes = probs.shape[1]
    names = list(class_names) if class_names is not None else default_class_names(num_classes)
    if len(names) != num_classes:
        raise ToolkitError(f"{len(names)} class names for {num_classes} classes")
    top = min(top, num_classes)
    order = np.argsort(-probs, axis=1, kind='stable')[:, :top]
    return [[(int(index), names[index], float(row[index])) for index in indices]
            for row, indices in zip(probs, order)]


# --- the model -----------------------------------------------------------------------------------

Predictions = collections.namedtuple('Predictions', 'probabilities outputs positions')


class Classifier:
    """AlexNet and its weights in a session of its own, ready to classify image files in batches.

    Give either `weights_path` (a BVLC `.npy` or exported `.npz`; the class count is read off its fc8)
    or `checkpoint` (a fine-tuned model: class count, names and pre-processing from model_info.json).
    `class_names` overrides the names; `center_crop` applies to weight files only (a checkpoint says).
    `ten_crop` averages each image's probabilities over its ten crops (either model); `resize_size` is
    the square the crops are taken from. Use as a context manager, or call close().
    """

    def __init__(self, weights_path=None, checkpoint=None, class_names=None, center_crop=False,
                 batch_size=32, ten_crop=False, resize_size=RESIZE_SIZE):
        if (weights_path is None) == (checkpoint is None):
            raise ValueError('give exactly one of weights_path and checkpoint')
        if checkpoint is not None:
            self.prefix, info = model_info.read_model_info(checkpoint)
            self.source = self.prefix
            self.num_classes = info['num_classes']
            self.center_crop = info['preprocessing']['center_crop']
            names = class_names or model_info.class_names_of(self.prefix, info)
        else:
            self.prefix = None
            self.source = os.fspath(weights_path)
            layers = weight_files.load_weights(self.source)  # read once: checked here, loaded below
            self.num_classes = _weights_file_classes(self.source, layers)
            self.center_crop = bool(center_crop)
            names = class_names
        self.class_names = list(names) if names else default_class_names(self.num_classes)
        if len(self.class_names) != self.num_classes:
            raise ToolkitError(f"{len(self.class_names)} class names for a model of "
                               f"{self.num_classes} classes")
        self.batch_size = batch_size
        self.ten_crop, self.resize_size = bool(ten_crop), int(resize_size)
        self.graph = tf.Graph()
        with self.graph.as_default():
            # One iterator, re-initialised with a dataset of each run's files: the model is built once.
            self._iterator = tf.data.Iterator.from_structure(
                (tf.float32, tf.int64), (tf.TensorShape([None, INPUT_SIZE, INPUT_SIZE, 3]),
                                         tf.TensorShape([None])))
            images, positions = self._iterator.get_next()
            self.model = AlexNet(images, 1.0, self.num_classes, skip_layer=[], weights_path=weights_path)
            # Rows per image: 10 with ten crops, else 1. The crops' probabilities are averaged, as
            # Caffe's classifier averages its `prob` output over `oversample`'s crops.
            crops = tf.shape(images)[0] // tf.maximum(tf.shape(positions)[0], 1)
            probabilities = tf.reduce_mean(
                tf.reshape(tf.nn.softmax(self.model.fc8), [-1, crops, self.num_classes]), axis=1)
            self.end_points = dict(self.model.end_points, probabilities=probabilities,
                                   positions=positions)
            self.session = tf.Session(graph=self.graph, config=tf_setup.session_config())
            try:
                if checkpoint is not None:
                    self._restore(self.prefix)
                else:
                    self.model.load_initial_weights(self.session, layers)
            except BaseException:
                self.session.close()
                raise

    def _restore(self, prefix):
        variables = {variable.op.name: variable for layer in TRAINABLE_LAYERS
                     for variable in self.model.variables[layer].values()}
        checkpoints.check_fits(
            prefix, {name: variable.shape.as_list() for name, variable in variables.items()},
            f'an AlexNet of {self.num_classes} classes', 'is it a checkpoint written by finetune.py?')
        # Only the model's variables: the step counter and optimizer slots are not needed to predict.
        tf.train.Saver(var_list=variables).restore(self.session, prefix)

    @property
    def crop_mode(self):
        """'ten_crop', 'center_crop' (of the resize) or 'whole' (the image resized to 227)."""
        return 'ten_crop' if self.ten_crop else 'center_crop' if self.center_crop else 'whole'

    def run(self, paths, layers=(), skip_bad_images=False,
            max_pixels=image_header.DEFAULT_MAX_PIXELS):
        """Predictions(probabilities [n, num_classes], {layer: outputs [n, ...]}, positions [n]).

        Images are decoded and pre-processed inside the graph (datagenerator.images_dataset), in
        batches, in order. An unreadable file raises ToolkitError naming it, unless `skip_bad_images`:
        then it is left out, and `positions` (indices into `paths`) says which files the rows are.
        With ten crops, probabilities are the crops' mean and layer outputs are [n, 10, ...].
        """
        paths = [os.fspath(path) for path in paths]
        with self.graph.as_default():
            dataset = datagenerator.images_dataset(paths, self.batch_size, center_crop=self.center_crop,
                                                   skip_bad_images=skip_bad_images,
                                                   ten_crop=self.ten_crop, resize_size=self.resize_size,
                                                   max_pixels=max_pixels)
            initializer = self._iterator.make_initializer(dataset)
        fetches = {name: self.end_points[name] for name in ('probabilities', 'positions', *layers)}
        self.session.run(initializer)
        batches = []
        while True:
            try:
                batches.append(self.session.run(fetches))
            except tf.errors.OutOfRangeError:
                break
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
                raise datagenerator.unreadable_images_error(
                    paths, hint='fix or remove them, or pass --skip_bad_images') from None
        if not batches:
            raise ToolkitError(f"none of the {len(paths)} images could be read")
        outputs = {name: np.concatenate([batch[name] for batch in batches]) for name in fetches}
        probabilities, positions = outputs.pop('probabilities'), outputs.pop('positions')
        if self.ten_crop:
            outputs = {name: value.reshape((len(positions), -1) + value.shape[1:])
                       for name, value in outputs.items()}
        return Predictions(probabilities, outputs, positions)

    def layer_weights(self, layer):
        """{'weights', 'biases'} of `layer` as NumPy arrays."""
        return self.session.run(self.model.variables[layer])

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _weights_file_classes(path, layers):
    if 'fc8' not in layers:
        raise ToolkitError(f"{path}: layer fc8 is missing from the file (it holds "
                           f"{', '.join(sorted(layers))}); prediction needs every layer")
    return int(layers['fc8']['biases'].shape[0])


# --- inputs --------------------------------------------------------------------------------------

def collect_inputs(inputs, num_classes):
    """(paths, labels or None per path) from image files, folders and `.txt` list files, in order."""
    paths, labels = [], []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(item)
                           for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ToolkitError(f"{item}: no images in this folder ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
            labels += [None] * len(found)
        elif item.lower().endswith(LIST_EXTENSION) and os.path.isfile(item):
            listed, listed_labels = datagenerator.read_list(item, num_classes)
            paths += list(listed)
            labels += [int(label) for label in listed_labels]
        elif os.path.isfile(item):
            paths.append(item)
            labels.append(None)
        else:
            raise ToolkitError(f"{item}: no such image, folder or list file")
    return paths, labels


# --- evaluation ----------------------------------------------------------------------------------

def confusion_matrix(labels, predicted, num_classes):
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(successes, trials, z=Z_95):
    """(low, high): the Wilson score interval of a proportion, 95% by default.

    The accuracy of n images is a sample of the model's accuracy on all the images it could meet. The
    Wilson interval (Wilson 1927) stays close to its stated coverage for small n and for accuracies
    near 0 or 1, where the plain p +- z sqrt(p(1-p)/n) does not (and can leave [0, 1]).
    """
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # At p = 0 or 1 one end is exactly 0 or 1; rounding would leave it a hair inside.
    low = 0.0 if successes == 0 else float(centre - half)
    high = 1.0 if successes == trials else float(centre + half)
    return (low, high)


def evaluate(probs, labels, class_names, top=5):
    """Accuracy, top-k accuracy and per-class precision/recall of `probs` against `labels`.

    Precision of a class never predicted, and recall of a class absent from the labels, are None
    (undefined), not 0. Classes that neither occur nor are predicted are left out of `per_class`.
    `accuracy_interval` and `top_k_accuracy_interval` are 95% Wilson score intervals.
    """
    labels = np.asarray(labels, np.int64)
    predicted = np.argmax(probs, axis=1)
    counts = confusion_matrix(labels, predicted, probs.shape[1])
    top = min(top, probs.shape[1])
    top_k = np.argsort(-probs, axis=1, kind='stable')[:, :top]
    per_class = []
    for index in range(probs.shape[1]):
        true_positives = int(counts[index, index])
        support, predicted_count = int(counts[index].sum()), int(counts[:, index].sum())
        if support == 0 and predicted_count == 0:
            continue
        per_class.append({
            'index': index, 'class': class_names[index], 'support': support,
            'predicted': predicted_count,
            'precision': true_positives / predicted_count if predicted_count else None,
            'recall': true_positives / support if support else None})
    right = int(np.sum(predicted == labels))
    right_top_k = int(np.sum(np.any(top_k == labels[:, None], axis=1)))
    return {'images': int(len(labels)), 'accuracy': right / len(labels),
            'accuracy_interval': wilson_interval(right, len(labels)),
            'top_k': top, 'top_k_accuracy': right_top_k / len(labels),
            'top_k_accuracy_interval': wilson_interval(right_top_k, len(labels)),
            'per_class': per_class, 'confusion_matrix': counts}


def published_accuracy(classifier):
    """The published ImageNet figures to show beside ours: for the 1000-class weights files only."""
    if classifier.prefix is not None or classifier.num_classes != imagenet.NUM_CLASSES:
        return None
    return imagenet.PUBLISHED_ACCURACY['ten_crop' if classifier.ten_crop else 'center_crop']


def format_accuracy(report, published=None, crop_mode=None):
    """Top-1 and top-k accuracy with their 95% Wilson intervals, and the published figures if given."""
    rows = [('top-1', report['accuracy'], report['accuracy_interval'], 'top1'),
            (f"top-{report['top_k']}", report['top_k_accuracy'], report['top_k_accuracy_interval'],
             'top5' if report['top_k'] == 5 else None)]
    lines = [f"{report['images']} images; accuracy with its 95% interval (Wilson score)"
             + (f"; published ({published['source']})" if published else '') + ':']
    for name, value, (low, high), key in rows:
        line = f"  {name:<6} {value:7.2%}  [{low:.2%}, {high:.2%}]"
        if published and key:
            line += f"   published {published[key]:.1%}"
        lines.append(line)
    if published and crop_mode == 'whole':
        lines.append('  (these images were resized whole to 227x227; the published figures are of '
                     'crops: --center_crop or --ten_crop)')
    return '\n'.join(lines)


def mistakes(paths, probs, labels, class_names):
    """The misclassified images, most confident mistake first."""
    predicted = np.argmax(probs, axis=1)
    wrong = [i for i in range(len(paths)) if predicted[i] != labels[i]]
    wrong.sort(key=lambda i: -probs[i, predicted[i]])
    return [{'path': paths[i], 'label': int(labels[i]), 'class': class_names[labels[i]],
             'predicted': int(predicted[i]), 'predicted_class': class_names[predicted[i]],
             'probability': float(probs[i, predicted[i]])} for i in wrong]


def confusion_figure(counts, class_names, max_annotated=30):
    """A matplotlib Figure of the confusion matrix, restricted to the classes that occur."""
    from matplotlib.figure import Figure
    shown = [i for i in range(len(counts)) if counts[i].sum() or counts[:, i].sum()]
    matrix = counts[np.ix_(shown, shown)]
    size = min(4 + 0.4 * len(shown), 30)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap='Blues', interpolation='nearest')
    figure.colorbar(image, ax=axes, label='images')
    if len(shown) <= max_annotated:
        names = [class_names[i] for i in shown]
        axes.set_xticks(range(len(shown)), names, rotation=45, ha='right')
        axes.set_yticks(range(len(shown)), names)
        for row in range(len(shown)):
            for column in range(len(shown)):
                dark = matrix[row, column] > matrix.max() / 2
                axes.text(column, row, str(matrix[row, column]), ha='center', va='center',
                          color='white' if dark else 'black')
    axes.set_xlabel('predicted class')
    axes.set_ylabel('true class')
    axes.set_title(f'confusion matrix ({int(matrix.sum())} images)')
    figure.tight_layout()
    return figure


# --- output --------------------------------------------------------------------------------------

def prediction_records(paths, labels, decoded, class_names):
    records = []
    for path, label, top in zip(paths, labels, decoded):
        record = {'path': path}
        if label is not None:
            record.update(label=label, label_class=class_names[label])
        record['top'] = [{'index': index, 'class': name, 'probability': probability}
                         for index, name, probability in top]
        records.append(record)
    return records


def format_table(records):
    """One row per (image, rank); with labels, the true class and whether the top-1 matches it."""
    has_labels = any('label' in record for record in records)
    width = max([len('image')] + [len(record['path']) for record in records])
    class_width = max([len('class')] + [len(entry['class']) for record in records
                                        for entry in record['top']])
    header = f"{'image':<{width}}  {'rank':>4}  {'probability':>11}  {'class':<{class_width}}"
    lines = [(header + '  true class' if has_labels else header).rstrip()]
    for record in records:
        for rank, entry in enumerate(record['top'], 1):
            path = record['path'] if rank == 1 else ''
            line = (f"{path:<{width}}  {rank:>4}  {entry['probability']:>11.4f}  "
                    f"{entry['class']:<{class_width}}")
            if rank == 1 and 'label' in record:
                verdict = 'right' if entry['index'] == record['label'] else 'WRONG'
                line += f"  {record['label_class']} ({verdict})"
            lines.append(line.rstrip())
    return '\n'.join(lines)


def format_evaluation(report, wrong, max_mistakes, published=None, crop_mode=None):
    lines = [f"{report['images']} images: accuracy {report['accuracy']:.4f}, "
             f"top-{report['top_k']} accuracy {report['top_k_accuracy']:.4f}",
             '', f"{'class':<30} {'images':>7} {'predicted':>9} {'precision':>9} {'recall':>7}"]
    for row in report['per_class']:
        precision = '-' if row['precision'] is None else f"{row['precision']:.4f}"
        recall = '-' if row['recall'] is None else f"{row['recall']:.4f}"
        lines.append(f"{row['class'][:30]:<30} {row['support']:>7} {row['predicted']:>9} "
                     f"{precision:>9} {recall:>7}")
    lines += ['', f"{len(wrong)} misclassified" + (', most confident first:' if wrong else '')]
    shown = wrong if max_mistakes <= 0 else wrong[:max_mistakes]
    for entry in shown:
        lines.append(f"  {entry['probability']:.4f}  {entry['path']}  "
                     f"(true: {entry['class']}, predicted: {entry['predicted_class']})")
    if len(shown) < len(wrong):
        lines.append(f"  ... and {len(wrong) - len(shown)} more (all of them in --json)")
    # Last, where a long per-class table cannot push it off the screen.
    lines += ['', format_accuracy(report, published, crop_mode)]
    return '\n'.join(lines)


def write_csv(path, records, top):
    with open(path, 'w', newline='') as stream:
        writer = csv.writer(stream)
        columns = ['path', 'label', 'label_class']
        for rank in range(1, top + 1):
            columns += [f'top{rank}_index', f'top{rank}_class', f'top{rank}_probability']
        writer.writerow(columns)
        for record in records:
            row = [record['path'], record.get('label', ''), record.get('label_class', '')]
            for entry in record['top']:
                row += [entry['index'], entry['class'], repr(entry['probability'])]
            writer.writerow(row)


def write_json(path, content):
    with open(path, 'w') as stream:
        json.dump(content, stream, indent=2)
        stream.write('\n')


# --- features on disk ---------------------------------------------------------------------------

FEATURE_LAYERS = tuple(layer.name for layer in ARCHITECTURE)


def add_feature_arguments(parser):
    parser.add_argument('--features', metavar='LAYER', help='instead of classifying, write this '
                        f"layer's outputs ({', '.join(FEATURE_LAYERS)}) for every input to --output, "
                        'an .npz of features, paths and (for list inputs) labels')
    parser.add_argument('--output', help='with --features: the .npz file to write')
    return parser


def check_feature_arguments(args):
    """Refuse --features flag mistakes before the model is built."""
    if args.features not in FEATURE_LAYERS:
        raise ToolkitError(f"--features {args.features}: unknown layer; valid: {', '.join(FEATURE_LAYERS)}")
    if args.evaluate or args.csv or args.json:
        raise ToolkitError('--features writes features only: give the images or lists as inputs, '
                           'without --evaluate, --csv or --json')
    if args.ten_crop:
        raise ToolkitError('--features takes one view per image: use --center_crop or no crop, '
                           'not --ten_crop')
    if not args.output:
        raise ToolkitError('--features needs --output FILE.npz')
    if not args.output.endswith('.npz'):
        raise ToolkitError(f'--output {args.output}: the features file should end in .npz')
    run_folder.check_output_file(args.output, '--output')


def write_features(args):
    """--features LAYER --output FILE: the layer's outputs for every input, batched through the
    prediction pipeline, saved with np.savez (no pickles) as

        features  float32 [n, ...]: the layer's output, one row per image (pool5: [n, 6, 6, 256])
        paths     str [n]: the images, in input order (unreadable ones left out with --skip_bad_images)
        labels    int64 [n]: the list files' labels, -1 for images given directly (only when a list
                  file is among the inputs)
        layer     str: the layer's name
    """
    check_feature_arguments(args)
    with Classifier(weights_path=args.weights_path, checkpoint=args.checkpoint_path,
                    center_crop=args.center_crop, batch_size=args.batch_size,
                    resize_size=args.resize) as classifier:
        paths, labels = collect_inputs(args.inputs, classifier.num_classes)
        result = classifier.run(paths, layers=[args.features], skip_bad_images=args.skip_bad_images,
                                max_pixels=args.max_pixels)
    kept = result.positions.tolist()
    if len(kept) < len(paths):
        skipped = sorted(set(range(len(paths))) - set(kept))
        print(f"warning: skipped {len(skipped)} unreadable image(s): "
              f"{', '.join(paths[i] for i in skipped)}", file=sys.stderr)
    features = result.outputs[args.features]
    content = {'features': features, 'paths': np.array([paths[i] for i in kept], dtype=str),
               'layer': np.array(args.features)}
    if any(label is not None for label in labels):
        content['labels'] = np.array([-1 if labels[i] is None else labels[i] for i in kept], np.int64)
    np.savez(args.output, **content)
    print(f"wrote {args.output}: {args.features} features {list(features.shape)} of {len(kept)} images"
          f"{', with labels' if 'labels' in content else ''}")
    return 0


# --- command line --------------------------------------------------------------------------------

def get_args_parser():
    parser = cli.ArgumentParser(
        description='Classify images with AlexNet: ImageNet weights or a fine-tuned checkpoint.')
    parser.add_argument('inputs', nargs='*',
                        help='image files, folders (searched recursively) and .txt lists of "path label"')
    model = parser.add_mutually_exclusive_group()
    model.add_argument('--weights_path', help='weights file (.npy or exported .npz); the default when '
                       f'no --checkpoint_path is given is {weight_files.DEFAULT_WEIGHTS_PATH}')
    model.add_argument('--checkpoint_path', '--checkpoint', help='fine-tuned checkpoint prefix or its folder (best.ckpt, '
                       'else the latest); its model_info.json gives classes and pre-processing')
    parser.add_argument('--class_names', help='classes.txt of "label name" lines, overriding the names')
    parser.add_argument('--center_crop', action='store_true',
                        help='with --weights_path: classify the centre 227 crop of a 256 resize '
                        'instead of the whole image resized to 227 (how BVLC measured its weights)')
    parser.add_argument('--ten_crop', action='store_true',
                        help='average the probabilities of the four corner and the centre 227 crops '
                        "of the 256 resize and of their mirror images (the paper's test-time crops)")
    parser.add_argument('--resize', type=int, default=RESIZE_SIZE, metavar='SIZE',
                        help='with --center_crop or --ten_crop (or a checkpoint trained with '
                        '--augment): the square the 227 crops are taken from')
    parser.add_argument('--evaluate', metavar='LIST',
                        help='a "path label" list: report accuracy, per-class precision/recall, the '
                        'confusion matrix and the misclassified images')
    parser.add_argument('--confusion_matrix', default='confusion_matrix.png',
                        help='with --evaluate: where to write the confusion matrix PNG')
    parser.add_argument('--max_mistakes', type=int, default=20,
                        help='with --evaluate: misclassified images to print (0: all)')
    parser.add_argument('--top_k', type=int, default=5, help='classes to show per image')
    parser.add_argument('--batch_size', type=int, default=32, help='images per forward pass')
    parser.add_argument('--csv', help='also write the predictions to this CSV file')
    parser.add_argument('--json', help='also write predictions (and evaluation) to this JSON file')
    parser.add_argument('--max_pixels', type=int, default=image_header.DEFAULT_MAX_PIXELS,
                        help='refuse (with --skip_bad_images: skip) images larger than this, '
                        'width x height from the file header')
    parser.add_argument('--skip_bad_images', action='store_true',
                        help='warn about unreadable images and go on without them')
    return add_feature_arguments(parser)


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.evaluate and args.inputs:
        parser.error('give either inputs to classify or --evaluate LIST, not both')
    if not args.evaluate and not args.inputs:
        parser.error('nothing to classify: give image files, folders or list files, or --evaluate LIST')
    if args.top_k < 1 or args.batch_size < 1:
        parser.error('--top_k and --batch_size must be at least 1')
    if args.center_crop and args.checkpoint_path:
        parser.error('--center_crop applies to --weights_path; a checkpoint brings its own pre-processing')
    if args.center_crop and args.ten_crop:
        parser.error('give --center_crop or --ten_crop, not both')
    if args.resize < INPUT_SIZE:
        parser.error(f'--resize {args.resize} is smaller than the {INPUT_SIZE}x{INPUT_SIZE} crop')
    if not args.checkpoint_path and not args.weights_path:
        args.weights_path = weight_files.DEFAULT_WEIGHTS_PATH
    return args


def check_resize(args):
    """--resize only means something when 227 crops are taken; say so before the model is built."""
    if args.resize == RESIZE_SIZE or args.center_crop or args.ten_crop:
        return
    if args.checkpoint_path and model_info.read_model_info(args.checkpoint_path)[1]['preprocessing'][
            'center_crop']:
        return
    raise ToolkitError(f'--resize {args.resize}: nothing is cropped (images are resized whole to '
                       f'{INPUT_SIZE}x{INPUT_SIZE}); add --center_crop or --ten_crop')


def main(argv=None):
    args = parse_args(argv)
    check_resize(args)
    for flag in ('csv', 'json', 'confusion_matrix'):  # before any work, not after it
        if getattr(args, flag) and (flag != 'confusion_matrix' or args.evaluate):
            run_folder.check_output_file(getattr(args, flag), f'--{flag}')
    tf_setup.quiet_python_logging(args.verbose)  # first: disable_v2_behavior logs a deprecation
    tf.disable_v2_behavior()
    if args.features:
        return write_features(args)
    with Classifier(weights_path=args.weights_path, checkpoint=args.checkpoint_path,
                    center_crop=args.center_crop, batch_size=args.batch_size, ten_crop=args.ten_crop,
                    resize_size=args.resize) as classifier:
        if args.class_names:
            classifier.class_names = model_info.read_class_names_file(args.class_names,
                                                                      classifier.num_classes)
        if args.evaluate:
            paths, labels = datagenerator.read_list(args.evaluate, classifier.num_classes)
            paths, labels = list(paths), [int(label) for label in labels]
        else:
            paths, labels = collect_inputs(args.inputs, classifier.num_classes)
        result = classifier.run(paths, skip_bad_images=args.skip_bad_images,
                                max_pixels=args.max_pixels)
        if len(result.positions) < len(paths):
            kept = set(result.positions.tolist())
            skipped = [path for position, path in enumerate(paths) if position not in kept]
            print(f"warning: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}",
                  file=sys.stderr)
            paths = [paths[position] for position in result.positions]
            labels = [labels[position] for position in result.positions]
        probs = result.probabilities
        names, source = classifier.class_names, classifier.source
        published, crop_mode = published_accuracy(classifier), classifier.crop_mode
    decoded = decode_predictions(probs, names, args.top_k)
    records = prediction_records(paths, labels, decoded, names)
    content = {'model': source, 'predictions': records}
    if args.evaluate:
        report = evaluate(probs, labels, names, args.top_k)
        wrong = mistakes(paths, probs, labels, names)
        print(format_evaluation(report, wrong, args.max_mistakes, published, crop_mode))
        confusion_figure(report['confusion_matrix'], names).savefig(args.confusion_matrix, dpi=100)
        print(f"confusion matrix: {args.confusion_matrix}")
        content['evaluation'] = dict(report, confusion_matrix=report['confusion_matrix'].tolist(),
                                     mistakes=wrong, crops=crop_mode, published=published)
    else:
        print(format_table(records))
    if args.csv:
        write_csv(args.csv, records, min(args.top_k, len(names)))
    if args.json:
        write_json(args.json, content)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
