"""Get the pretrained BVLC AlexNet weights, and prove they are AlexNet's.

    python get_weights.py                                   # bvlc_alexnet.npy from the Toronto mirror
    python get_weights.py --source berkeley                 # BVLC's .caffemodel, converted to .npz
    python get_weights.py --caffemodel FILE --output OUT.npz    # convert a local .caffemodel
    python get_weights.py --url URL [--sha256 HEX | --sha1 HEX] # any mirror

A download is resumable, verified and bounded (docs/weights.md, "How downloads behave"), and is
renamed to OUTPUT only once it loads as AlexNet (all eight layers, every shape). A conversion writes
the pickle-free `.npz` that `--weights_path` takes everywhere.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import os  # noqa: E402

from alexnet import TRAINABLE_LAYERS, variable_shapes  # noqa: E402
from finetune_alexnet import caffemodel  # noqa: E402
from finetune_alexnet import digests  # noqa: E402
from finetune_alexnet import download  # noqa: E402
from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402

TORONTO_URL = 'http://www.cs.toronto.edu/~guerzhoy/tf_alexnet/bvlc_alexnet.npy'
BERKELEY_URL = 'http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel'
# Published by BVLC in Caffe's models/bvlc_alexnet/readme.md (`sha1:`).
BERKELEY_SHA1 = '9116a64c0fbe4459d18f4bb6b56d647b63920377'
# The most each source may send: the Toronto file's announced size; BVLC publishes none for the
# .caffemodel: its 60,965,224 float32 parameters and at most 1 MiB of layer definitions and framing.
TORONTO_SIZE = 243_861_814
BERKELEY_MAX_SIZE = 243_860_896 + 2 ** 20
# A --url download's cap without --max_download_mb: AlexNet's weights in either format, 1 MiB included.
WEIGHTS_MOST = {'toronto': (BERKELEY_MAX_SIZE, "the most AlexNet's weights (.npy or .npz) can be"),
                'berkeley': (BERKELEY_MAX_SIZE, "the most AlexNet's .caffemodel can be")}
CAFFEMODEL_NAME = 'bvlc_alexnet.caffemodel'


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--source', choices=('toronto', 'berkeley'), default='toronto',
                        help="toronto: the converted bvlc_alexnet.npy; berkeley: BVLC's own "
                             ".caffemodel, converted here to .npz")
    parser.add_argument('--url', help='download from this mirror instead (a .npy for --source '
                                      'toronto, a .caffemodel for --source berkeley)')
    parser.add_argument('--caffemodel', metavar='FILE',
                        help='convert this local .caffemodel (no download)')
    parser.add_argument('--output', help='the weights file to write (default: bvlc_alexnet.npy, '
                                         'or bvlc_alexnet.npz for a converted .caffemodel)')
    parser.add_argument('--sha256', help='demand this SHA-256 of the downloaded (or --caffemodel) file')
    parser.add_argument('--sha1', help='demand this SHA-1 (default for --source berkeley: BVLC\'s '
                                       'published ' + BERKELEY_SHA1 + ')')
    download.add_connection_flags(parser)
    return parser


def parse_args(argv):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    args.sha256 = download.check_digest_flag('sha256', args.sha256)
    args.sha1 = download.check_digest_flag('sha1', args.sha1)
    if args.caffemodel and (args.url or args.source != 'toronto'):
        parser.error('--caffemodel converts a local file: drop --url and --source')
    download.check_connection_flags(parser, args)
    converting = bool(args.caffemodel) or args.source == 'berkeley'
    if args.output is None:
        args.output = 'bvlc_alexnet.npz' if converting else weight_files.DEFAULT_WEIGHTS_PATH
    if converting and not args.output.endswith('.npz'):
        parser.error(f'--output {args.output}: a converted model is written as .npz (pickle-free); '
                     'name it OUT.npz')
    if not os.path.isfile(args.output):  # a complete file there is checked and reused, not written
        run_folder.check_output_file(args.output, '--output')
    return args


def check_alexnet(path, layers):
    """ToolkitError naming the first missing layer or wrong shape; returns fc8's class count."""
    num_classes = weight_files.class_count(layers)
    weight_files.check_shapes(path, layers, variable_shapes(num_classes))
    return num_classes


def check_weights_file(path):
    """Load a weights file with the safe loader and check all eight layers; returns its class count."""
    return check_alexnet(path, weight_files.load_weights(path))


def report(path, num_classes, sha256=None):
    size = os.path.getsize(path)
    sha256 = sha256 or digests.file_sha256(path)
    print(f'{path}: {size:,} bytes ({download.human_bytes(size)}), SHA-256 {sha256}')
    print(f'{path}: all {len(TRAINABLE_LAYERS)} layers load and have AlexNet\'s shapes '
          f'(fc8: {num_classes} classes)')


def convert(source, output, sha256=None, sha1=None):
    """Convert a .caffemodel to our .npz, then read the .npz back and check it."""
    if sha256 or sha1:
        download.verify_digests(source, sha256, sha1)
    print(f'converting {source}')
    layers = caffemodel.read_alexnet(source)
    check_alexnet(source, layers)
    weight_files.save_weights(output, layers)
    del layers
    report(output, check_weights_file(output))


def fetch(url, output, args, check, manual_hint, limits, sha256=None, sha1=None):
    result = download.download(url, output, sha256=sha256, sha1=sha1, check=check,
                               timeout=args.timeout, retries=args.retries, manual_hint=manual_hint,
                               limits=limits)
    if result.reused:
        print(f'{output} is already there (complete and verified): nothing downloaded')
    return result


def main(argv=None):
    args = parse_args(argv)
    tf_setup.quiet_python_logging(args.verbose)
    if args.caffemodel:
        convert(args.caffemodel, args.output, args.sha256, args.sha1)
    elif args.source == 'berkeley':
        url = args.url or BERKELEY_URL
        sha1 = args.sha1 if (args.sha1 or args.sha256) else BERKELEY_SHA1
        local = os.path.join(os.path.dirname(os.path.abspath(args.output)), CAFFEMODEL_NAME)
        hint = (f'download {url} by hand (a browser or curl) and run: python get_weights.py '
                f'--caffemodel {CAFFEMODEL_NAME} --output {args.output}')
        # The digest proves the download; the conversion then proves it is AlexNet.
        limits = download.limits(args, BERKELEY_MAX_SIZE, CAFFEMODEL_NAME, WEIGHTS_MOST['berkeley'])
        fetch(url, local, args, check=None, manual_hint=hint, limits=limits, sha256=args.sha256,
              sha1=sha1)
        convert(local, args.output)
        print(f'(the downloaded {local} can be deleted now)')
    else:
        url = args.url or TORONTO_URL
        hint = (f'download {url} by hand (a browser or curl) and pass its path to finetune.py '
                'and predict.py with --weights_path')
        proved = {}

        def check(path):  # runs on the .part, so a file that is not AlexNet is never renamed
            proved['num_classes'] = check_weights_file(path)

        limits = download.limits(args, TORONTO_SIZE, 'bvlc_alexnet.npy', WEIGHTS_MOST['toronto'])
        result = fetch(url, args.output, args, check=check, manual_hint=hint, limits=limits,
                       sha256=args.sha256, sha1=args.sha1)
        report(args.output, proved['num_classes'], result.sha256)
    print(f'next: python finetune.py --weights_path {args.output} --train_file ... --val_file ...')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
