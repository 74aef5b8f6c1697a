"""Write list files as sharded TFRecord data sets, for finetune.py and predict.py --evaluate.

    python make_tfrecords.py lists/train.txt lists/val.txt --out_dir shards [--pre_resize]
    python finetune.py --train_file 'shards/train-*' --val_file 'shards/val-*' ...

Each list becomes shards named after it (`train-00000-of-00004.tfrecord`, ...), and classes.txt is
copied beside them. What a record holds, the order, the checks and --pre_resize:
docs/distributed.md#sharded-tfrecord-data-sets. The work is in finetune_alexnet/tfrecords.py.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import os  # noqa: E402

import tensorflow.compat.v1 as tf  # noqa: E402

import datagenerator  # noqa: E402
from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet import image_lists  # noqa: E402
from finetune_alexnet import model_info  # noqa: E402
from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet import signals  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet import tfrecords  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('lists', nargs='+', metavar='LIST',
                        help='list files of "path label" lines (train.txt, val.txt); each becomes '
                        'shards named after it')
    parser.add_argument('--out_dir', required=True, help='where the shards (and classes.txt) go')
    parser.add_argument('--class_names', help='classes.txt ("label name" lines) for image/class/text; '
                        'default: the classes.txt beside the first list, if any')
    parser.add_argument('--num_classes', type=int,
                        help='refuse labels outside 0..num_classes-1 (default: the classes in '
                        'classes.txt)')
    parser.add_argument('--num_shards', type=int,
                        help='shards per list (default: as many of 100 MB or more as the images fill)')
    parser.add_argument('--pre_resize', action='store_true',
                        help=f'store each image resized to {tfrecords.PRE_RESIZE_SIZE}x'
                        f'{tfrecords.PRE_RESIZE_SIZE}, JPEG quality {tfrecords.PRE_RESIZE_QUALITY}')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the order the records are written in')
    parser.add_argument('--keep_order', action='store_true',
                        help="write the records in the list's order, not shuffled: finetune.py then "
                        'reads the batches it reads from the list')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace existing shards of the same name in --out_dir')
    parser.add_argument('--skip_bad_images', action='store_true',
                        help='leave out images that fail to decode or are too large, and count them')
    parser.add_argument('--max_pixels', type=int, default=image_header.DEFAULT_MAX_PIXELS,
                        help='refuse images larger than this (width x height, from the file header)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='images decoded at once (default: the number of CPU cores)')
    return parser


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for flag in ('num_classes', 'num_shards', 'max_pixels', 'workers'):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f'--{flag} must be at least 1, got {value}')
    if args.num_shards is not None and args.num_shards > tfrecords.MAX_SHARDS:
        parser.error(f'--num_shards must be at most {tfrecords.MAX_SHARDS}, got {args.num_shards}')
    if args.keep_order and args.seed != parser.get_default('seed'):
        parser.error('--seed shuffles the records; --keep_order keeps the list order: give one')
    prefixes = [shard_prefix(path) for path in args.lists]
    repeated = sorted({prefix for prefix in prefixes if prefixes.count(prefix) > 1})
    if repeated:
        parser.error(f"two lists would both write the shards {repeated[0]}-*{tfrecords.EXTENSION}: "
                     'give lists with different names')
    return args


def shard_prefix(list_file):
    """train.txt -> 'train': the shards' names start with the list's."""
    return os.path.splitext(os.path.basename(list_file))[0] or 'data'


def class_names_file(args):
    """--class_names, else the classes.txt beside the first list, else None."""
    if args.class_names:
        if not os.path.isfile(args.class_names):
            raise ToolkitError(f'{args.class_names}: class names file not found')
        return args.class_names
    beside = os.path.join(os.path.dirname(os.path.abspath(args.lists[0])), model_info.CLASS_NAMES_FILE)
    return beside if os.path.isfile(beside) else None


def names_these_classes(path, class_names):
    """The classes.txt at `path` exists and names exactly `class_names`."""
    try:
        return model_info.read_class_names_file(path, len(class_names)) == list(class_names)
    except ToolkitError:
        return False


def main(argv=None):
    args = parse_args(argv)
    names_file = class_names_file(args)
    # With no --num_classes, as many classes as classes.txt names.
    class_names = model_info.read_class_names_file(names_file, args.num_classes) if names_file else None
    num_classes = len(class_names) if class_names else args.num_classes
    # Every check before any image is decoded: the lists whole, the output folder, existing shards.
    run_folder.check_output_folder(args.out_dir, '--out_dir')
    lists = {path: datagenerator.read_list(path, num_classes) for path in args.lists}
    for path, (paths, _) in lists.items():
        tfrecords.check_output(args.out_dir, shard_prefix(path), args.overwrite)
        if args.num_shards and args.num_shards > len(paths):
            raise ToolkitError(f'--num_shards {args.num_shards}: more shards than the {len(paths)} '
                               f'images of {path}')
    target = os.path.join(args.out_dir, model_info.CLASS_NAMES_FILE)
    copy_classes = class_names is not None and not names_these_classes(target, class_names)
    if copy_classes and os.path.exists(target) and not args.overwrite:
        raise ToolkitError(f'{target} names other classes; pass --overwrite to replace it, or choose '
                           'another --out_dir')
    if class_names is None:
        print('note: no classes.txt beside the list (nor --class_names): image/class/text is left empty')
    tf_setup.quiet_python_logging(args.verbose)
    tf.disable_v2_behavior()
    written = []
    with signals.StopRequests() as stop:
        for path, (paths, labels) in lists.items():
            result = tfrecords.write_shards(
                paths, labels, args.out_dir, shard_prefix(path), class_names=class_names,
                num_shards=args.num_shards, pre_resize=args.pre_resize, seed=args.seed,
                shuffle=not args.keep_order, overwrite=args.overwrite,
                skip_bad_images=args.skip_bad_images, max_pixels=args.max_pixels,
                workers=args.workers, stop=stop, source=path)
            if result.stopped:
                print(f'stopped: no shard of {path} was written (those written before are kept)',
                      file=sys.stderr)
                return stop.exit_status
            print(f'{path}: {result.images} images in {tfrecords.plural(len(result.files), "shard")} '
                  f'of {result.bytes / 1e6:.1f} MB in all, {shard_prefix(path)}-*{tfrecords.EXTENSION}')
            if result.skipped:
                print(f'note: left out {tfrecords.plural(len(result.skipped), "image")} of {path}: '
                      + tfrecords.summarize([f'{p}: {reason}' for p, reason in result.skipped]))
            written.append(os.path.join(args.out_dir, f'{shard_prefix(path)}-*'))
    if copy_classes:  # a full disk leaves no half-written copy behind
        with run_folder.replaced_atomically(target) as partial:
            image_lists.write_class_names(partial, class_names)
    if len(written) >= 2:
        print(f"train with: python finetune.py --train_file '{written[0]}' --val_file '{written[1]}'"
              f'{f" --num_classes {num_classes}" if num_classes else ""}')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
