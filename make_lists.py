"""Write train.txt, val.txt and classes.txt for a folder of labelled images.

    python make_lists.py FOLDER --out_dir DIR [--val_fraction 0.1] [--seed 0] [--relative]
    python make_lists.py FOLDER --out_dir DIR --split hash     # stays put as images are added
    python make_lists.py --imagenet_val DIR --labels FILE [--meta meta.mat] --out_dir lists

FOLDER holds one sub-folder per class (`FOLDER/cat/*.jpg`) or Kaggle's flat `FOLDER/cat.0.jpg` names.
The layouts, the splits, the list format and what a name may hold: docs/data.md#your-own-images-make_listspy;
--imagenet_val: docs/data.md#the-imagenet-validation-set. The work is in finetune_alexnet/image_lists.py.
"""

import sys

from finetune_alexnet import cli
from finetune_alexnet import image_lists
from finetune_alexnet import run_folder


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', nargs='?',
                        help='images in class sub-folders, or flat cat.0.jpg/dog.0.jpg names')
    parser.add_argument('--out_dir', required=True, help='where train.txt, val.txt and classes.txt go')
    parser.add_argument('--val_fraction', type=float, default=0.1, help='share of each class for validation')
    parser.add_argument('--split', choices=image_lists.SPLITS, default='stratified',
                        help="stratified: each class's exact fraction, random for --seed; hash: by a "
                        "hash of each file name (retrain.py's rule, `_nohash_` variants together), so "
                        "adding images never moves an existing one between the lists")
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the split and of the train order (with --split hash: the train '
                        'order only)')
    parser.add_argument('--relative', action='store_true',
                        help='write paths relative to --out_dir instead of absolute paths')
    imagenet_flags = parser.add_argument_group('ImageNet validation set')
    imagenet_flags.add_argument('--imagenet_val', metavar='DIR',
                                help='instead of FOLDER: the ILSVRC2012 validation images (flat or in '
                                'wnid folders); writes only val.txt, in BVLC label order')
    imagenet_flags.add_argument('--labels', metavar='FILE',
                                help="with --imagenet_val: LOC_val_solution.csv, the devkit's "
                                "ILSVRC2012_validation_ground_truth.txt, or Caffe's val.txt")
    imagenet_flags.add_argument('--meta', metavar='MAT',
                                help="the devkit's meta.mat, if not beside the ground truth (needs scipy)")
    return parser


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.imagenet_val is None:
        if args.folder is None:
            parser.error('give a FOLDER of images, or --imagenet_val DIR --labels FILE')
        if args.labels or args.meta:
            parser.error('--labels and --meta go with --imagenet_val')
        image_lists.check_val_fraction(args.val_fraction)  # before a long scan
        image_lists.check_seed(args.seed)
        return args
    if args.folder is not None:
        parser.error(f'give either FOLDER ({args.folder}) or --imagenet_val, not both')
    if not args.labels:
        parser.error('--imagenet_val needs --labels: the ground truth of the validation images')
    for flag in ('val_fraction', 'seed', 'split'):
        if getattr(args, flag) != parser.get_default(flag):
            parser.error(f'--{flag} splits a FOLDER into train and val; --imagenet_val lists every image')
    return args


def main(argv=None):
    args = parse_args(argv)
    run_folder.check_output_folder(args.out_dir, '--out_dir')  # before the scan, however long
    if args.imagenet_val is not None:
        lines = image_lists.write_imagenet_val(args.imagenet_val, args.labels, args.meta, args.out_dir,
                                               args.relative)
    else:
        lists = image_lists.write_folder_lists(args.folder, args.out_dir, args.val_fraction, args.seed,
                                               args.relative, method=args.split)
        lines = image_lists.scan_notes(lists.scan)
        if args.split == 'hash':
            lines += image_lists.split_notes(lists.train, lists.val, lists.scan.class_names)
        lines += image_lists.summary(lists)
    for line in lines:
        print(line)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
