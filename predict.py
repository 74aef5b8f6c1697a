"""Classify photos with AlexNet: the ImageNet weights or your fine-tuned checkpoint.

    python predict.py images/                                   # bvlc_alexnet.npy, ImageNet's classes
    python predict.py --checkpoint_path runs/x photo.jpg list.txt    # a fine-tuned model, nothing else needed
    python predict.py --checkpoint_path runs/x --evaluate val.txt    # accuracy, precision/recall, confusion

docs/prediction.md describes the inputs, the outputs, the evaluation and the crops. The work happens
in the package: finetune_alexnet/infer/classifier.py runs the model and decodes class names,
infer/inputs.py expands the inputs, metrics.py computes the evaluation's numbers, infer/reports.py
prints and writes them, and infer/features.py writes `--features`.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import tensorflow.compat.v1 as tf  # noqa: E402

from alexnet import INPUT_SIZE  # noqa: E402
from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet import metrics  # noqa: E402
from finetune_alexnet import model_info  # noqa: E402
from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402
from finetune_alexnet.infer import features  # noqa: E402
from finetune_alexnet.infer import inputs  # noqa: E402
from finetune_alexnet.infer import reports  # noqa: E402
from finetune_alexnet.infer.classifier import Classifier, decode_predictions  # noqa: E402
from finetune_alexnet.preprocessing import RESIZE_SIZE  # noqa: E402

MAX_RESIZE = 2048


def get_args_parser():
    parser = cli.ArgumentParser(
        description='Classify images with AlexNet: ImageNet weights or a fine-tuned checkpoint.')
    parser.add_argument('inputs', nargs='*',
                        help='image files, folders (searched recursively) and .txt lists of "path label"')
    model = parser.add_mutually_exclusive_group()
    model.add_argument('--weights_path', help='weights file (.npy or exported .npz); the default when '
                       f'no --checkpoint_path is given is {weight_files.DEFAULT_WEIGHTS_PATH}')
    model.add_argument('--checkpoint_path', '--checkpoint',
                       help='fine-tuned checkpoint prefix or its folder (best.ckpt, else the latest); '
                       'its model_info.json gives classes and pre-processing')
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
                        help='a "path label" list, or TFRecord shards (a folder or a pattern): report '
                        'accuracy, per-class precision/recall, the confusion matrix and the '
                        'misclassified images')
    parser.add_argument('--confusion_matrix', metavar='PATH',
                        help='with --evaluate: where to write the confusion matrix PNG (default: '
                        'beside --json, else beside --csv, as that file without its extension plus '
                        f'{reports.CONFUSION_MATRIX_SUFFIX}; with neither, it is not written)')
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
    parser.add_argument('--features', metavar='LAYER', help='instead of classifying, write this '
                        f"layer's outputs ({', '.join(features.FEATURE_LAYERS)}) for every input to "
                        '--output, an .npz of features, paths and (for list inputs) labels; conv1-'
                        'conv5, fc6 and fc7 are after their ReLU, LAYER_preact before it')
    parser.add_argument('--output', help='with --features: the .npz file to write')
    parser.add_argument('--device', choices=tf_setup.DEVICE_CHOICES, default='auto',
                        help='where the model runs (auto: a GPU when there is one)')
    return parser


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.evaluate and args.inputs:
        parser.error('give either inputs to classify or --evaluate LIST, not both')
    if not args.evaluate and not args.inputs:
        parser.error('nothing to classify: give image files, folders or list files, or --evaluate LIST')
    if args.top_k < 1 or args.batch_size < 1:
        parser.error('--top_k and --batch_size must be at least 1')
    if args.max_mistakes < 0:
        parser.error(f'--max_mistakes must be at least 0 (0: all), got {args.max_mistakes}')
    if args.max_pixels < 1:
        parser.error(f'--max_pixels must be at least 1, got {args.max_pixels}')
    if args.center_crop and args.checkpoint_path:
        parser.error('--center_crop applies to --weights_path; a checkpoint brings its own pre-processing')
    if args.center_crop and args.ten_crop:
        parser.error('give --center_crop or --ten_crop, not both')
    if args.resize < INPUT_SIZE:
        parser.error(f'--resize {args.resize} is smaller than the {INPUT_SIZE}x{INPUT_SIZE} crop')
    if args.resize > MAX_RESIZE:  # every image is resized to this square in memory, in float32
        parser.error(f'--resize {args.resize} is larger than {MAX_RESIZE}')
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


def check_feature_arguments(args):
    """Refuse --features flag mistakes before the model is built."""
    if args.features not in features.FEATURE_LAYERS:
        raise ToolkitError(f"--features {args.features}: unknown layer; valid: "
                           f"{', '.join(features.FEATURE_LAYERS)}")
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


def main(argv=None):
    args = parse_args(argv)
    check_resize(args)
    # --confusion_matrix, else beside --json or --csv; None: not written
    confusion_path = args.evaluate and (args.confusion_matrix
                                        or reports.confusion_matrix_beside(args.json or args.csv))
    for flag, path in (('--csv', args.csv), ('--json', args.json),  # before any work, not after it
                       ('--confusion_matrix', confusion_path)):
        if path:
            run_folder.check_output_file(path, flag)
    if args.features:
        check_feature_arguments(args)
    tf_setup.quiet_python_logging(args.verbose)  # first: disable_v2_behavior logs a deprecation
    tf.disable_v2_behavior()
    weights_path = None if args.checkpoint_path else (args.weights_path or weight_files.DEFAULT_WEIGHTS_PATH)
    with Classifier(weights_path=weights_path, checkpoint=args.checkpoint_path,
                    center_crop=args.center_crop, batch_size=args.batch_size, ten_crop=args.ten_crop,
                    resize_size=args.resize, use_gpu=tf_setup.use_gpu(args.device)) as classifier:
        if args.class_names:
            classifier.class_names = model_info.read_class_names_file(args.class_names,
                                                                      classifier.num_classes)
        records = None  # the index of TFRecord shards given to --evaluate
        if args.evaluate:
            paths, labels, records = inputs.evaluation_inputs(args.evaluate, classifier.num_classes)
        else:
            skipped = []
            paths, labels = inputs.collect_inputs(args.inputs, classifier.num_classes, skipped)
            for entry in skipped:
                print(f'note: skipped {entry}', file=sys.stderr)
        result = classifier.run(paths, layers=[args.features] if args.features else [],
                                skip_bad_images=args.skip_bad_images, max_pixels=args.max_pixels,
                                records=records)
        names, source = classifier.class_names, classifier.source
        published, crop_mode = reports.published_accuracy(classifier), classifier.crop_mode
    paths, labels, skipped = inputs.read_inputs(paths, labels, result.positions)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}",
              file=sys.stderr)
    if args.features:
        content = features.write_features(args.output, result.outputs[args.features], paths, labels,
                                          args.features)
        print(f"wrote {args.output}: {args.features} features {list(content['features'].shape)} of "
              f"{len(paths)} images{', with labels' if 'labels' in content else ''}")
        return 0
    probs = result.probabilities
    records = reports.prediction_records(paths, labels, decode_predictions(probs, names, args.top_k),
                                         names)
    content = {'model': source, 'predictions': records}
    if args.evaluate:
        report = metrics.accuracy_report(probs, labels, names, args.top_k)
        mistakes = reports.mistake_records(paths, probs, labels, names)
        print(reports.format_evaluation(report, mistakes, args.max_mistakes, published, crop_mode))
        if confusion_path:
            reports.write_confusion_matrix(confusion_path, report['confusion_matrix'], names)
            print(f"confusion matrix: {confusion_path}")
        content['evaluation'] = reports.evaluation_content(report, mistakes, crop_mode, published)
    else:
        print(reports.format_table(records))
    if args.csv:
        reports.write_csv(args.csv, records, min(args.top_k, len(names)))
    if args.json:
        run_folder.write_json_atomically(args.json, content)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
