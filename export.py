"""Export a model to run outside this repository: weights file, SavedModel (TF Serving, TF 2), TFLite, ONNX.

    python export.py --checkpoint_path runs/x --format savedmodel --output models/cats_dogs/1

docs/serving.md describes every format and flag: the npz weights file (only the model's variables),
the SavedModel's signatures and pixel limit, the TFLite file's quantizations and int8 agreement
check, the ONNX file, and the manifests that let --overwrite replace only an earlier export. The
work happens in finetune_alexnet/infer/serving.py (the writers) and exports.py (reading, checks).
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import os  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import datagenerator  # noqa: E402
from finetune_alexnet import image_lists  # noqa: E402
from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet import model_info  # noqa: E402
from finetune_alexnet.infer import exports  # noqa: E402
from finetune_alexnet.infer import manifests  # noqa: E402
from finetune_alexnet.infer import serving  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from alexnet import INPUT_SIZE, TRAINABLE_LAYERS  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402
from finetune_alexnet.infer.classifier import default_class_names  # noqa: E402

FORMATS = ('npz', 'savedmodel', 'tflite', 'onnx')
# Beyond this the graph's pixel count saturates (image_header.UNCOUNTABLE): no limit there.
MAX_PIXELS_CAP = image_header.UNCOUNTABLE - 1
QUANTIZATIONS = (serving.FLOAT16, serving.INT8)  # --format tflite only
# The int8 calibration's images are held in memory, 0.6 MB each; TFLite's guide suggests 100-500.
MAX_REPRESENTATIVE = 1000


def get_args_parser():
    parser = cli.ArgumentParser(
        description='Export AlexNet, a fine-tuned checkpoint or a weights file, as a weights file (npz), '
        'a SavedModel folder for TF Serving and TensorFlow 2 (savedmodel: takes encoded image files), a '
        'TFLite file (tflite: takes pre-processed float32 [n, 227, 227, 3] images, labels beside it) or an '
        'ONNX file (onnx: as tflite, for ONNX Runtime, TensorRT, OpenVINO). docs/serving.md has details.')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint_path', '--checkpoint',
                        help='checkpoint prefix (runs/x/best.ckpt) or its folder (best.ckpt, else latest)')
    source.add_argument('--weights_path', help='a weights file (.npy or .npz) holding every layer, '
                        'e.g. bvlc_alexnet.npy for the ImageNet classifier')
    parser.add_argument('--format', choices=FORMATS, default='npz',
                        help='npz: weights file; savedmodel: a folder (a TF Serving version folder '
                        'such as models/cats_dogs/1); tflite: a .tflite file; onnx: an .onnx file '
                        f'(opset {serving.ONNX_OPSET})')
    parser.add_argument('--output', required=True,
                        help='the file (npz, tflite, onnx) or folder (savedmodel) to write; '
                        'missing folders are created')
    parser.add_argument('--quantize', choices=QUANTIZATIONS,
                        help='tflite only: float16 stores the weights as float16 (half the size); '
                        'int8 computes every op in int8 (a quarter of the size; needs --train_file), '
                        'float32 input and output either way')
    int8 = parser.add_argument_group('--quantize int8')
    int8.add_argument('--train_file', '--representative_list', metavar='LIST',
                      help='a "path label" list (the training list) whose images calibrate the '
                      "activations' ranges")
    int8.add_argument('--representative_size', type=int, default=100, metavar='N',
                      help=f'how many images of --train_file calibrate (a seeded sample; all of them '
                      f'when fewer), 1 to {MAX_REPRESENTATIVE}')
    int8.add_argument('--seed', type=int, default=0, help='seed of the sample of --train_file')
    int8.add_argument('--val_file', '--agreement_list', metavar='LIST',
                      help='a "path label" list (the validation list): print how often the int8 and '
                      'float32 models agree on its top-1 classes, and their accuracies')
    parser.add_argument('--class_names', help='classes.txt of "label name" lines, overriding the names')
    parser.add_argument('--center_crop', action='store_true',
                        help='with --weights_path: the exported model classifies the centre 227 crop '
                        'of a 256 resize (a checkpoint brings its own setting)')
    parser.add_argument('--max_pixels', type=int, default=image_header.DEFAULT_MAX_PIXELS,
                        help='savedmodel only: the most pixels (width x height, every frame of an '
                        'animation added up, from the file header) an image sent to the model may '
                        'have; a larger one fails its own request before it is decoded')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace what the manifest of an earlier export lists, unchanged (nothing else)')
    parser.add_argument('--device', choices=tf_setup.DEVICE_CHOICES, default='auto',
                        help="where the model's sessions run (auto: a GPU when there is one)")
    return parser


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.quantize and args.format != 'tflite':
        parser.error(f'--quantize {args.quantize} applies to --format tflite, not {args.format}')
    check_int8_flags(parser, args)
    if args.center_crop and args.checkpoint_path:
        parser.error('--center_crop applies to --weights_path; a checkpoint brings its own pre-processing')
    if args.format == 'npz' and (args.class_names or args.center_crop):
        parser.error('--class_names and --center_crop apply to savedmodel, tflite and onnx: a weights file '
                     'holds arrays only')
    if not 1 <= args.max_pixels <= MAX_PIXELS_CAP:
        parser.error(f'--max_pixels must be between 1 and {MAX_PIXELS_CAP}, got {args.max_pixels}')
    if args.max_pixels != image_header.DEFAULT_MAX_PIXELS and args.format != 'savedmodel':
        why = ('a weights file holds arrays only' if args.format == 'npz' else
               f'{exports.MODEL_FILE_FORMATS[args.format]} takes decoded images: the caller decodes')
        parser.error(f'--max_pixels applies to --format savedmodel, not {args.format} ({why})')
    return args


def check_int8_flags(parser, args):
    """The calibration flags go with --quantize int8, which needs --train_file."""
    int8_flags = [flag for flag in ('train_file', 'representative_size', 'seed', 'val_file')
                  if getattr(args, flag) != parser.get_default(flag)]
    if args.quantize != serving.INT8:
        if int8_flags:
            parser.error(f'--{int8_flags[0]} applies to --quantize int8 (its calibration and check)')
        return
    if not args.train_file:
        parser.error('--quantize int8 needs --train_file LIST: the images that calibrate the '
                     "activations' ranges (a sample of --representative_size of them)")
    if not 1 <= args.representative_size <= MAX_REPRESENTATIVE:
        parser.error(f'--representative_size must be between 1 and {MAX_REPRESENTATIVE}, '
                     f'got {args.representative_size}')
    try:
        image_lists.check_seed(args.seed)
    except ToolkitError as error:
        parser.error(str(error))


def read_model(args):
    """(what it came from, serving.ExportedModel) for --checkpoint_path or --weights_path."""
    if args.checkpoint_path:
        prefix, info, layers = exports.read_checkpoint_layers(args.checkpoint_path)
        source, num_classes = prefix, info['num_classes']
        names = model_info.class_names_of(prefix, info)
        center_crop = info['preprocessing']['center_crop']
    else:
        layers = exports.read_weights_file(args.weights_path)
        source, num_classes = args.weights_path, int(layers['fc8']['biases'].shape[0])
        names, center_crop = None, args.center_crop
    if args.class_names:
        names = model_info.read_class_names_file(args.class_names, num_classes)
    if names is None:
        names = default_class_names(num_classes)  # caffe_classes for 1000 classes, else 'class i'
    return source, serving.ExportedModel(layers, names, center_crop, args.max_pixels,
                                         tf_setup.use_gpu(args.device))


def _megabytes(path):
    return f'{serving.folder_size(path) / 1e6:.1f} MB'


def export_npz(args, source, exported):
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)  # as every format does
    weight_files.save_weights(args.output, exported.layers)
    manifests.write_file_manifest(args.output, [args.output])
    print(f"wrote {args.output} ({_megabytes(args.output)}): {len(TRAINABLE_LAYERS)} layers of {source}, "
          f"{len(exported.class_names)} classes")
    if args.checkpoint_path:
        # The weights file holds arrays only; the names travel separately.
        print(f"class names: {', '.join(exported.class_names[:10])}"
              f"{' ...' if len(exported.class_names) > 10 else ''} (the weights file holds none: "
              "give predict.py --class_names with a classes.txt of 'label name' lines)")
    print(f"use: python predict.py --weights_path {args.output} photo.jpg")


def export_saved_model(args, source, exported):
    signatures = serving.write_saved_model(args.output, exported)
    print(f"wrote {args.output} (SavedModel, {_megabytes(args.output)}) from {source}: "
          f"{len(exported.class_names)} classes, centre crop {'on' if exported.center_crop else 'off'}, "
          f"at most {exported.max_pixels} pixels an image, assets {serving.LABELS_FILE}, "
          f"{model_info.MODEL_INFO} and the manifest {os.path.basename(manifests.SAVED_MODEL_MANIFEST)}")
    for name in (serving.SERVING_SIGNATURE, serving.IMAGES_SIGNATURE):
        print('  signature ' + serving.describe_signature(name, signatures[name]))
    if not os.path.basename(os.path.normpath(args.output)).isdigit():
        print(f"note: TF Serving expects models/<name>/<version number>; {args.output} is not a "
              "number, so serve its parent only after renaming it")
    print(f"use: python -c \"import tensorflow as tf; model = tf.saved_model.load('{args.output}'); "
          "print(model.signatures['serving_default'](image_bytes=tf.constant([open('photo.jpg', "
          "'rb').read()]))['classes'])\"")


def int8_flatbuffer(args, exported):
    """The int8 model, calibrated on --train_file; with --val_file, its agreement with float32
    printed first. Both lists are checked whole before the long conversion starts."""
    paths, _ = datagenerator.read_list(args.train_file, len(exported.class_names))
    val = datagenerator.read_list(args.val_file, len(exported.class_names)) if args.val_file else None
    representative = np.concatenate(list(serving.preprocessed_batches(
        serving.representative_sample(paths, args.representative_size, args.seed),
        exported.center_crop, list_file=args.train_file)))
    quantizations = (serving.INT8, None) if val else (serving.INT8,)
    flatbuffers = serving.convert_tflite(exported, quantizations, representative)
    print(f"calibrated on {len(representative)} of the {len(paths)} images of {args.train_file} (drawn "
          f"with --seed {args.seed})" if len(representative) < len(paths) else
          f"calibrated on the {len(paths)} images of {args.train_file}")
    if val:
        val_paths, val_labels = val
        agreement = serving.tflite_agreement(
            flatbuffers[serving.INT8], flatbuffers[None],
            serving.preprocessed_batches(val_paths, exported.center_crop, list_file=args.val_file),
            val_labels)
        print(describe_agreement(agreement, args.val_file, len(flatbuffers[serving.INT8]),
                                 len(flatbuffers[None])))
    return flatbuffers[serving.INT8]


def describe_agreement(agreement, list_file, int8_bytes, float_bytes):
    """Lines: top-1 agreement of int8 and float32 on `list_file`, their accuracies and sizes."""
    count = agreement.images

    def share(number):
        return f'{100 * number / count:.1f}%'
    return (f"int8 and float32 agree on the top-1 class of {agreement.same_top1} of {count} images of "
            f"{list_file} ({share(agreement.same_top1)}); top-1 accuracy float32 "
            f"{share(agreement.float_correct)}, int8 {share(agreement.quantized_correct)}; largest "
            f"probability difference {agreement.max_difference:.3f}\n"
            f"size: int8 {int8_bytes / 1e6:.1f} MB, float32 {float_bytes / 1e6:.1f} MB "
            f"({int8_bytes / float_bytes:.2f} of it)")


def export_tflite(args, source, exported):
    flatbuffer = int8_flatbuffer(args, exported) if args.quantize == serving.INT8 else None
    labels, info = serving.write_tflite(args.output, exported, quantize=args.quantize,
                                        flatbuffer=flatbuffer)
    print(f"wrote {args.output} (TFLite, {args.quantize or 'float32'}, {_megabytes(args.output)}) from "
          f"{source}, with {labels} and {info}")
    print(describe_model_file_io(exported)
          + ("; int8 inside, between a quantize op at the input and a dequantize op at the output"
             if args.quantize == serving.INT8 else ''))
    print(f"use: python -c \"from ai_edge_litert.interpreter import Interpreter; interpreter = "
          f"Interpreter('{args.output}'); interpreter.allocate_tensors(); "
          "print(interpreter.get_input_details())\"")


def describe_model_file_io(exported):
    """The input and output of a TFLite or ONNX file, in one line."""
    return (f"  input images float32 [n, {INPUT_SIZE}, {INPUT_SIZE}, 3], NHWC: decoded and "
            f"pre-processed ({'centre crop of a 256 resize' if exported.center_crop else 'resized to 227'}"
            ", in float32; BGR; ImageNet mean subtracted: docs/serving.md has the exact steps); output "
            f"probabilities float32 [n, {len(exported.class_names)}]")


def export_onnx(args, source, exported):
    labels, info = serving.write_onnx(args.output, exported)
    print(f"wrote {args.output} (ONNX, opset {serving.ONNX_OPSET}, float32, {_megabytes(args.output)}) "
          f"from {source}, with {labels} and {info} (the class names are in its metadata too)")
    print(describe_model_file_io(exported))
    print(f"use: python -c \"import onnxruntime; session = onnxruntime.InferenceSession('{args.output}'); "
          "print(session.get_inputs()[0])\"")


def check_deploy_packages(args):
    """The deploy-time packages this export needs, imported before any long work."""
    if args.format == 'onnx':
        serving.deploy_module('tf2onnx', '--format onnx')
    if args.quantize == serving.INT8 and args.val_file:
        serving.deploy_module('ai_edge_litert.interpreter', '--val_file (LiteRT runs both models)')


def main(argv=None):
    args = parse_args(argv)
    tf_setup.quiet_python_logging(args.verbose)  # first: disable_v2_behavior logs a deprecation
    tf.disable_v2_behavior()
    exports.check_output(args.output, args.format, args.overwrite)
    check_deploy_packages(args)
    source, exported = read_model(args)
    {'npz': export_npz, 'savedmodel': export_saved_model, 'tflite': export_tflite,
     'onnx': export_onnx}[args.format](args, source, exported)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
