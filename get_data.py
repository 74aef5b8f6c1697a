"""Download a data set, keep the images that decode, and write the lists finetune.py reads.

    python get_data.py cats_vs_dogs --out_dir data [--val_fraction 0.1] [--seed 0]
    python get_data.py --list

The download is resumable, verified and bounded as get_weights.py's; the extraction is checked and
bounded, and every image is decoded with the training pipeline's own decoder (docs/data.md; what is
dropped, and why, goes to `dropped.txt`). The lists are make_lists.py's. A rerun reuses the download
and the extracted folder, and only writes the lists again.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import os  # noqa: E402

import tensorflow.compat.v1 as tf  # noqa: E402

import datagenerator  # noqa: E402
from finetune_alexnet import datasets  # noqa: E402
from finetune_alexnet import download  # noqa: E402
from finetune_alexnet import image_lists  # noqa: E402
from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dataset', nargs='?', help=f"the data set: {', '.join(datasets.DATASETS)}")
    parser.add_argument('--list', action='store_true', help='print the data sets this command knows')
    parser.add_argument('--out_dir', help='where the archive, the images and the lists go')
    parser.add_argument('--url', help='download the archive from this mirror instead')
    parser.add_argument('--sha256', help='demand this SHA-256 of the archive')
    parser.add_argument('--val_fraction', type=float, default=0.1, help='share of each class for validation')
    parser.add_argument('--seed', type=int, default=0, help='seed of the split and of the train order')
    parser.add_argument('--relative', action='store_true',
                        help='write paths relative to --out_dir instead of absolute paths')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='images decoded at once when checking them')
    download.add_connection_flags(parser)
    return parser


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.list:
        return args
    if not args.dataset:
        parser.error('name a data set (--list shows them)')
    args.dataset = datasets.get(args.dataset)
    if not args.out_dir:
        parser.error('--out_dir is required')
    image_lists.check_val_fraction(args.val_fraction)
    image_lists.check_seed(args.seed)
    if args.workers > datagenerator.MAX_WORKERS:
        parser.error(f'--workers must be at most {datagenerator.MAX_WORKERS}, got {args.workers}')
    args.sha256 = download.check_digest_flag('sha256', args.sha256) or args.dataset.sha256
    if args.workers < 1:
        parser.error(f'--workers must be at least 1, got {args.workers}')
    download.check_connection_flags(parser, args)
    return args


def fetch_and_prepare(args):
    """The clean image folder (downloading and extracting only what is not there yet); returns
    (folder, {reason: [file]} dropped)."""
    dataset, out_dir = args.dataset, args.out_dir
    folder = os.path.join(out_dir, dataset.root)
    report = os.path.join(out_dir, datasets.REPORT_NAME)
    if os.path.isdir(folder):
        print(f'{folder}: already extracted and checked; reusing it')
        return folder, datasets.read_report(report)
    url = args.url or dataset.url
    archive = os.path.join(out_dir, dataset.archive)
    hint = (f'download {url} by hand (a browser or curl) into {out_dir}/ and rerun this command: '
            'it uses the file it finds there')
    result = download.download(url, archive, sha256=args.sha256, timeout=args.timeout,
                               retries=args.retries, manual_hint=hint,
                               check=lambda path: datasets.check_archive(path, dataset),
                               limits=download.limits(args, dataset.archive_bytes, dataset.archive,
                                                              datasets.most_archive_bytes(dataset)))
    if result.reused:
        print(f'{archive}: already downloaded; reusing it')
    dropped = datasets.prepare(dataset, archive, out_dir, datagenerator.find_bad_images,
                               workers=args.workers)
    print(f'(the archive {archive} is no longer needed and can be deleted)')
    return folder, dropped


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for line in datasets.listing():
            print(line)
        return 0
    tf_setup.quiet_python_logging(args.verbose)  # first: disable_v2_behavior logs a deprecation
    tf.disable_v2_behavior()
    run_folder.check_output_folder(args.out_dir, '--out_dir')  # the one output check, before the download
    with run_folder.created_folder(args.out_dir, '--out_dir'):
        folder, dropped = fetch_and_prepare(args)
    lists = image_lists.write_folder_lists(folder, args.out_dir, args.val_fraction, args.seed, args.relative)

    for line in datasets.describe_dropped(dropped, os.path.join(args.out_dir, datasets.REPORT_NAME)):
        print(line)
    for line in image_lists.summary(lists):
        print(line)
    files = lists.files
    print(f"next: python finetune.py --train_file {files['train.txt']} --val_file {files['val.txt']} "
          f"--num_classes {len(lists.scan.class_names)} --weights_path bvlc_alexnet.npy")
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
