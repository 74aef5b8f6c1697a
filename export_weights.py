"""Export a fine-tuned checkpoint as a weights file in the BVLC layout: `python export_weights.py
--checkpoint runs/x/best.ckpt --output cats_dogs.npz`.

The output is the pickle-free `.npz` that weights.save_weights writes (`conv1/weights`, `conv1/biases`,
... `fc8/biases`, float32): `AlexNet(..., num_classes, skip_layer=[], weights_path=...)` loads all eight
layers from it, and predict.py takes it with --weights_path. Only the model's variables are exported;
the step counter and the optimizer's slots stay behind in the checkpoint.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import os  # noqa: E402

import tensorflow.compat.v1 as tf  # noqa: E402

from finetune_alexnet import checkpoints  # noqa: E402
from finetune_alexnet import model_info  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from alexnet import INPUT_SIZE, TRAINABLE_LAYERS, AlexNet  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402


def model_variable_shapes(num_classes):
    """{'conv1/weights': shape, ...} of AlexNet with `num_classes`, read off a throwaway graph."""
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [None, INPUT_SIZE, INPUT_SIZE, 3])
        model = AlexNet(images, 1.0, num_classes, skip_layer=[])
        return {variable.op.name: variable.shape.as_list()
                for layer in TRAINABLE_LAYERS for variable in model.variables[layer].values()}


def read_checkpoint_layers(checkpoint):
    """(prefix, info, {layer: {'weights', 'biases'}}) of a fine-tuned checkpoint, shapes checked."""
    prefix, info = model_info.read_model_info(checkpoint)
    checkpoints.check_fits(prefix, model_variable_shapes(info['num_classes']), 'an AlexNet of this '
                           'model_info.json', 'is it a checkpoint written by finetune.py?')
    reader = tf.train.load_checkpoint(prefix)
    layers = {layer: {kind: reader.get_tensor(f'{layer}/{kind}') for kind in weight_files.WEIGHT_KINDS}
              for layer in TRAINABLE_LAYERS}
    return prefix, info, layers


def export_checkpoint(checkpoint, output):
    """Write the checkpoint's eight layers to `output`; returns (prefix, info)."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ToolkitError(f"{output}: folder {folder} does not exist")
    prefix, info, layers = read_checkpoint_layers(checkpoint)
    weight_files.save_weights(output, layers)
    return prefix, info


def main(argv=None):
    parser = cli.ArgumentParser(
        description='Write a fine-tuned checkpoint as a pickle-free weights file (BVLC layout, .npz).')
    parser.add_argument('--checkpoint_path', '--checkpoint', required=True,
                        help='checkpoint prefix (runs/x/best.ckpt) or its folder (best.ckpt, else latest)')
    parser.add_argument('--output', required=True, help='the weights file to write, e.g. model.npz')
    args = parser.parse_args(argv)
    tf_setup.quiet_python_logging(args.verbose)  # first: disable_v2_behavior logs a deprecation
    tf.disable_v2_behavior()
    prefix, info = export_checkpoint(args.checkpoint_path, args.output)
    print(f"wrote {args.output}: {len(TRAINABLE_LAYERS)} layers of {prefix}, "
          f"{info['num_classes']} classes")
    if info['class_names']:
        # The weights file holds arrays only; the names travel separately.
        print(f"class names: {', '.join(info['class_names'])} (the weights file holds none: give "
              "predict.py --class_names with a classes.txt of 'label name' lines)")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
