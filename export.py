"""Export a model to run outside this repository: weights file, SavedModel (TF Serving, TF 2), TFLite.

    python export.py --checkpoint_path runs/x --output cats_dogs.npz                        # weights (.npz)
    python export.py --checkpoint_path runs/x --format savedmodel --output models/cats_dogs/1
    python export.py --weights_path bvlc_alexnet.npy --format savedmodel --output models/alexnet/1
    python export.py --checkpoint_path runs/x --format tflite --quantize float16 --output cats_dogs.tflite

`npz` (the default) writes the pickle-free weights file that weight_files.save_weights writes
(`conv1/weights` ... `fc8/biases`, float32): `AlexNet(..., skip_layer=[], weights_path=...)` loads it,
and predict.py takes it with --weights_path. Only the model's variables are exported; the step
counter and optimizer slots stay behind in the checkpoint.

`savedmodel` and `tflite` carry the class names and pre-processing with them (serving.py describes
what they take and return). A checkpoint brings both in its model_info.json; a weights file is
named by caffe_classes for 1000 classes (else --class_names or 'class i': infer/classifier.py's
default_class_names).
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import os  # noqa: E402

import tensorflow.compat.v1 as tf  # noqa: E402

from finetune_alexnet import checkpoints  # noqa: E402
from finetune_alexnet import model_info  # noqa: E402
from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet.infer import serving  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from alexnet import INPUT_SIZE, TRAINABLE_LAYERS, variable_shapes  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402
from finetune_alexnet.infer.classifier import default_class_names  # noqa: E402

FORMATS = ('npz', 'savedmodel', 'tflite')
QUANTIZATIONS = {'tflite': (serving.FLOAT16,)}


def model_variable_shapes(num_classes):
    """{'conv1/weights': shape, ...}: AlexNet's variables by name, as checkpoints hold them."""
    return {f'{layer}/{kind}': shape for layer, kinds in variable_shapes(num_classes).items()
            for kind, shape in kinds.items()}


def read_checkpoint_layers(checkpoint):
    """(prefix, info, {layer: {'weights', 'biases'}}) of a fine-tuned checkpoint, shapes checked."""
    prefix, info = model_info.read_model_info(checkpoint)
    checkpoints.check_fits(prefix, model_variable_shapes(info['num_classes']), 'an AlexNet of this '
                           'model_info.json', 'is it a checkpoint written by finetune.py?')
    reader = tf.train.load_checkpoint(prefix)
    layers = {layer: {kind: reader.get_tensor(f'{layer}/{kind}') for kind in weight_files.WEIGHT_KINDS}
              for layer in TRAINABLE_LAYERS}
    return prefix, info, layers


def read_weights_file(path):
    """{layer: {'weights', 'biases'}} of a weights file holding every layer, shapes checked."""
    layers = weight_files.load_weights(path)
    missing = [layer for layer in TRAINABLE_LAYERS if layer not in layers]
    if missing:
        raise ToolkitError(f"{path}: layer(s) {', '.join(missing)} missing from the file (it holds "
                           f"{', '.join(sorted(layers))}); an export needs every layer")
    for layer, kinds in variable_shapes(int(layers['fc8']['biases'].shape[0])).items():
        for kind, shape in kinds.items():
            if layers[layer][kind].shape != shape:
                raise ToolkitError(f"{path}: layer {layer} {kind} has shape {layers[layer][kind].shape}, "
                                   f"expected {shape}")
    return layers


def check_output(output, export_format, overwrite):
    """Refuse, before any work, an output that would clobber something (unless `overwrite`)."""
    if export_format == 'savedmodel':
        if os.path.isfile(output):
            raise ToolkitError(f"{output}: is a file; a SavedModel is a folder (e.g. models/name/1)")
        if os.path.isdir(output) and os.listdir(output) and not overwrite:
            raise ToolkitError(f"{output}: folder exists and is not empty (pass --overwrite to replace "
                               "it, or give a new version number)")
        return
    run_folder.check_output_file(output, f'--output (--format {export_format} writes a file)')
    existing = [output] if os.path.exists(output) else []
    if export_format == 'tflite':
        existing += [path for path in serving.tflite_side_files(output) if os.path.exists(path)]
    if existing and not overwrite:
        raise ToolkitError(f"{existing[0]}: exists (pass --overwrite to replace it)")


def get_args_parser():
    parser = cli.ArgumentParser(
        description='Export AlexNet: a fine-tuned checkpoint or a weights file, as a weights file '
        '(npz), a SavedModel folder for TF Serving and TensorFlow 2 (savedmodel: takes encoded image '
        'files, returns probabilities, class names and scores), or a TFLite file (tflite: TFLite has '
        'no JPEG decoder op, so it takes decoded, pre-processed float32 [n, 227, 227, 3] BGR images, '
        'mean subtracted; its labels are written beside it).')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint_path', '--checkpoint',
                        help='checkpoint prefix (runs/x/best.ckpt) or its folder (best.ckpt, else latest)')
    source.add_argument('--weights_path', help='a weights file (.npy or .npz) holding every layer, '
                        'e.g. bvlc_alexnet.npy for the ImageNet classifier')
    parser.add_argument('--format', choices=FORMATS, default='npz',
                        help='npz: weights file; savedmodel: a folder (a TF Serving version folder '
                        'such as models/cats_dogs/1); tflite: a .tflite file')
    parser.add_argument('--output', required=True,
                        help='the file (npz, tflite) or folder (savedmodel) to write')
    parser.add_argument('--quantize', choices=sorted({q for qs in QUANTIZATIONS.values() for q in qs}),
                        help='tflite only: store the weights as float16 (half the size)')
    parser.add_argument('--class_names', help='classes.txt of "label name" lines, overriding the names')
    parser.add_argument('--center_crop', action='store_true',
                        help='with --weights_path: the exported model classifies the centre 227 crop '
                        'of a 256 resize (a checkpoint brings its own setting)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    return parser


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.quantize and args.quantize not in QUANTIZATIONS.get(args.format, ()):
        parser.error(f'--quantize {args.quantize} applies to --format tflite, not {args.format}')
    if args.center_crop and args.checkpoint_path:
        parser.error('--center_crop applies to --weights_path; a checkpoint brings its own pre-processing')
    if args.format == 'npz' and (args.class_names or args.center_crop):
        parser.error('--class_names and --center_crop apply to savedmodel and tflite: a weights file '
                     'holds arrays only')
    return args


def read_model(args):
    """(what it came from, serving.ExportedModel) for --checkpoint_path or --weights_path."""
    if args.checkpoint_path:
        prefix, info, layers = read_checkpoint_layers(args.checkpoint_path)
        source, num_classes = prefix, info['num_classes']
        names = model_info.class_names_of(prefix, info)
        center_crop = info['preprocessing']['center_crop']
    else:
        layers = read_weights_file(args.weights_path)
        source, num_classes = args.weights_path, int(layers['fc8']['biases'].shape[0])
        names, center_crop = None, args.center_crop
    if args.class_names:
        names = model_info.read_class_names_file(args.class_names, num_classes)
    if names is None:
        names = default_class_names(num_classes)  # caffe_classes for 1000 classes, else 'class i'
    return source, serving.ExportedModel(layers, names, center_crop)


def _megabytes(path):
    return f'{serving.folder_size(path) / 1e6:.1f} MB'


def export_npz(args, source, exported):
    weight_files.save_weights(args.output, exported.layers)
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
          f"assets {serving.LABELS_FILE} and {model_info.MODEL_INFO}")
    for name in (serving.SERVING_SIGNATURE, serving.IMAGES_SIGNATURE):
        print('  signature ' + serving.describe_signature(name, signatures[name]))
    if not os.path.basename(os.path.normpath(args.output)).isdigit():
        print(f"note: TF Serving expects models/<name>/<version number>; {args.output} is not a "
              "number, so serve its parent only after renaming it")
    print(f"use: python -c \"import tensorflow as tf; model = tf.saved_model.load('{args.output}'); "
          "print(model.signatures['serving_default'](image_bytes=tf.constant([open('photo.jpg', "
          "'rb').read()]))['classes'])\"")


def export_tflite(args, source, exported):
    labels, info = serving.write_tflite(args.output, exported, quantize=args.quantize)
    print(f"wrote {args.output} (TFLite, {args.quantize or 'float32'}, {_megabytes(args.output)}) from "
          f"{source}, with {labels} and {info}")
    print(f"  input images float32 [n, {INPUT_SIZE}, {INPUT_SIZE}, 3]: decoded and pre-processed "
          f"(resize to 227{', centre crop of a 256 resize' if exported.center_crop else ''}, BGR, "
          "ImageNet mean subtracted; TFLite has no JPEG decoder op); output probabilities float32 "
          f"[n, {len(exported.class_names)}]")
    print(f"use: python -c \"import tensorflow as tf; interpreter = tf.lite.Interpreter('{args.output}'); "
          "interpreter.allocate_tensors(); print(interpreter.get_input_details())\"")


def main(argv=None):
    args = parse_args(argv)
    tf_setup.quiet_python_logging(args.verbose)  # first: disable_v2_behavior logs a deprecation
    tf.disable_v2_behavior()
    check_output(args.output, args.format, args.overwrite)
    source, exported = read_model(args)
    {'npz': export_npz, 'savedmodel': export_saved_model, 'tflite': export_tflite}[args.format](
        args, source, exported)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
