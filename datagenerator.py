"""Batches of images for AlexNet from a list file, as a `tf.data` pipeline; a command to check a list.

`read_list` checks a whole list file (`path label` lines: docs/data.md#the-list-file-format) before
any graph is built. `ImageDataGenerator(...).data` yields (images uint8 [b, 227, 227, 3], one-hot
labels): the pipeline of image_reader.py, which TFRecord shards are read with too. An image that fails
to decode makes session.run raise one of `IMAGE_ERRORS`; `unreadable_images_error` names it. To check
a list up front (docs/data.md#check-a-list-before-training):

    python datagenerator.py --check train.txt [--num_classes 2] [--workers 8]
"""
import os
import sys

from finetune_alexnet import cli  # noqa: E402

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import re  # noqa: E402

import numpy as np  # noqa: E402

from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet import image_lists  # noqa: E402
from finetune_alexnet import image_reader  # noqa: E402
from finetune_alexnet.model_info import MAX_CLASSES  # noqa: E402
from finetune_alexnet import preprocessing  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402
from finetune_alexnet.image_lists import plural  # noqa: E402
from finetune_alexnet.image_reader import FileSource, IMAGE_ERRORS, summarize  # noqa: E402, F401

_INTEGER = re.compile(r'[+-]?[0-9]+')
# A thread each; more only costs memory (TensorFlow's thread counts are int32 besides).
MAX_WORKERS = max(1024, os.cpu_count() or 1)
_SHOWN_CHARS = 60  # a bad field is quoted up to this length in a message


def _shown(text):
    """repr(text), cut to a readable length: a message stays one short line whatever the file holds."""
    return repr(text) if len(text) <= _SHOWN_CHARS else repr(text[:_SHOWN_CHARS]) + '...'


def read_list_lines(txt_file, num_classes=None, check_files=True):
    """read_list's (paths, labels), and the line number of each entry in the file (for messages)."""
    kind = image_lists.not_a_regular_file(txt_file) if os.path.lexists(txt_file) else None
    if kind and not kind.startswith('unreadable'):  # a FIFO would wait for a writer forever
        raise ToolkitError(f'{txt_file}: not a list file ({kind})')
    try:
        with open(txt_file, 'rb') as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise ToolkitError(f'{txt_file}: list file not found') from None
    except OSError as error:
        raise ToolkitError(f'{txt_file}: cannot read the list file: {error.strerror}') from None
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b'\n') + 1
        raise ToolkitError(f'{txt_file}, line {line}: not UTF-8 text') from None

    folder = os.path.dirname(os.path.abspath(txt_file))
    limit = MAX_CLASSES if num_classes is None else min(num_classes, MAX_CLASSES)
    paths, labels, line_numbers, problems = [], [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.rsplit(None, 1)
        if len(fields) < 2:
            problems.append(f"line {number}: expected 'path label', found {_shown(line)}")
            continue
        name, label = fields
        if not _INTEGER.fullmatch(label):
            problems.append(f'line {number}: label {_shown(label)} is not an integer')
            continue
        # Only a short number is converted: int() of thousands of digits is slow, then refused.
        value = int(label) if len(label.lstrip('+-0')) <= 12 else None
        if value is None or not 0 <= value < limit:
            shown = label if len(label) <= 24 else label[:21] + '...'
            problems.append(f'line {number}: label {shown} is outside 0..{limit - 1}')
            continue
        path = os.path.normpath(os.path.join(folder, os.path.expanduser(name)))
        if check_files and not os.path.isfile(path):
            problems.append(f'line {number}: image not found: {path}')
            continue
        paths.append(path)
        labels.append(value)
        line_numbers.append(number)
    if problems:
        raise ToolkitError(f'{txt_file}: {plural(len(problems), "bad line")}: ' + summarize(problems))
    if not paths:
        raise ToolkitError(f'{txt_file}: the list is empty (no `path label` lines)')
    return paths, np.array(labels, dtype=np.int64), line_numbers


def read_list(txt_file, num_classes=None, check_files=True):
    """(paths, labels): absolute image paths and an int64 array of labels, from a list file. A
    ToolkitError names the first few bad lines and counts the rest: labels that are not integers or
    lie outside [0, num_classes), missing images (unless not `check_files`), an empty list."""
    paths, labels, _ = read_list_lines(txt_file, num_classes, check_files)
    return paths, labels


def unreadable_images_error(paths, workers=None, line_numbers=None, list_file=None, hint=None,
                            max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """image_reader.unreadable_error for files (named with their list lines, given `line_numbers`):
    to raise after a decode error. Decodes `paths` again under the run's `max_pixels`."""
    return image_reader.unreadable_error(FileSource(paths, line_numbers, max_pixels), workers,
                                         list_file, hint)


def find_bad_images(paths, workers=None, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """[(path, reason)], in list order, for every file that is missing or fails to decode with the
    training pipeline's decoder, `workers` files at a time (image_reader.undecodable)."""
    paths = list(paths)
    reasons = image_reader.undecodable(FileSource(paths, max_pixels=max_pixels), workers)
    return [(paths[position], reasons[position]) for position in sorted(reasons)]


class ImageDataGenerator(image_reader.ImageReader):
    """image_reader.ImageReader (its docstring tells the arguments) of the list file `txt_file`."""

    @property
    def check_command(self):
        return f'python datagenerator.py --check {self.txt_file}'

    def _open(self):
        self.paths, self.labels, line_numbers = read_list_lines(self.txt_file, self.num_classes, True)
        return FileSource(self.paths, line_numbers, self.max_pixels)


def images_dataset(paths, batch_size, center_crop=False, skip_bad_images=False, ten_crop=False,
                   resize_size=preprocessing.RESIZE_SIZE, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """image_reader.prediction_batches of unlabelled files (`positions` index into `paths`). Missing
    files raise ToolkitError at once; an undecodable one makes session.run raise one of
    `IMAGE_ERRORS` (`find_bad_images` names it) unless `skip_bad_images`."""
    if not paths:
        raise ToolkitError('no images given')
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ToolkitError(f'{plural(len(missing), "image")} not found: ' + summarize(missing))
    return image_reader.prediction_batches(
        FileSource(paths, max_pixels=max_pixels), batch_size, center_crop=center_crop,
        skip_bad_images=skip_bad_images, ten_crop=ten_crop, resize_size=resize_size)


def _parse_args(argv):
    parser = cli.ArgumentParser(
        description='Check that every image of a list file exists and decodes, as training would '
                    'decode it. Prints the unreadable ones; exit status 1 if there are any, 2 if the '
                    'list file itself is wrong.')
    parser.add_argument('--check', required=True, metavar='LIST',
                        help='list file of `path label` lines')
    parser.add_argument('--num_classes', type=int, default=None,
                        help='also check that every label lies in 0..num_classes-1')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='files decoded at once (default: the number of CPU cores)')
    parser.add_argument('--max_pixels', type=int, default=image_header.DEFAULT_MAX_PIXELS,
                        help='report images larger than this (width x height, from the file '
                        'header) without decoding them')
    args = parser.parse_args(argv)
    if args.max_pixels < 1:
        parser.error('--max_pixels must be at least 1')
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f'--workers must be in 1..{MAX_WORKERS}, got {args.workers}')
    if args.num_classes is not None and not 1 <= args.num_classes <= MAX_CLASSES:
        parser.error(f'--num_classes must be in 1..{MAX_CLASSES}, got {args.num_classes}')
    return args


def main(argv=None):
    args = _parse_args(argv)
    paths, _, line_numbers = read_list_lines(args.check, args.num_classes, check_files=False)
    bad = image_reader.undecodable(FileSource(paths, max_pixels=args.max_pixels), args.workers)
    for position, reason in sorted(bad.items()):
        print(f'{args.check}:{line_numbers[position]}: {paths[position]}: {reason}')
    if bad:
        print(f'{args.check}: {len(bad)} of {len(paths)} images are unreadable', file=sys.stderr)
        return cli.EXIT_CHECK_FAILED
    print(f'{args.check}: all {len(paths)} images decode', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
