"""The data sets `get_data.py` knows, and how one becomes a folder of images that all decode.

A data set is a row of `DATASETS`: where its archive is, how big it is, its digest when known, and
its layout (the folder inside the archive that holds one sub-folder per class). Adding one is adding
a row. Getting one is: download (with `download`), `extract` (every member checked first, so that
none can land outside the destination: no absolute paths, no `..`, no links), then `clean`: drop what
is not a usable image (zero-byte files, `Thumbs.db` and other non-images, files that fail to decode
with the training pipeline's own decoder, checked in parallel) and say why, per reason.
"""
import os
import shutil
import stat
import zipfile
from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple

from finetune_alexnet import download
from finetune_alexnet import image_lists
from finetune_alexnet.errors import ToolkitError

COPY_BYTES = 1 << 20  # extracted a buffer at a time, however large the member
DECODE_BATCH = 1000  # files per parallel decode pass; the progress bar moves once per pass
REPORT_NAME = 'dropped.txt'
STAGING_NAME = '.get_data_partial'

# Reasons a file is dropped, in the order the report lists them.
EMPTY = 'zero-byte file'
THUMBS = 'Thumbs.db (Windows thumbnail cache)'
NOT_IMAGE = 'not an image'
CORRUPT = 'truncated or corrupt image'
REASONS = (EMPTY, THUMBS, NOT_IMAGE, CORRUPT)

_IMAGE_MAGIC = (b'\xff\xd8\xff', b'\x89PNG', b'GIF8', b'BM', b'RIFF')


class Dataset(NamedTuple):
    name: str
    description: str
    url: str
    size: str                   # as announced, for --list
    archive: str                # file name the download is stored under
    sha256: Optional[str]       # verified when known
    root: str                   # folder in the archive holding one sub-folder per class
    classes: Tuple[str, ...]    # those sub-folders


DATASETS = OrderedDict((dataset.name, dataset) for dataset in (
    Dataset(name='cats_vs_dogs',
            description="Microsoft's Kaggle Cats and Dogs: 25,000 photos, PetImages/Cat and PetImages/Dog",
            url='https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/'
                'kagglecatsanddogs_5340.zip',
            size='~790 MB', archive='kagglecatsanddogs_5340.zip', sha256=None,
            root='PetImages', classes=('Cat', 'Dog')),
))


def get(name):
    if name not in DATASETS:
        raise ToolkitError(f"unknown data set {name!r}; known: {', '.join(DATASETS)} (see --list)")
    return DATASETS[name]


def listing():
    """Lines for `get_data.py --list`."""
    width = max(len(name) for name in DATASETS)
    return [f'{d.name:<{width}}  {d.size:>8}  {d.description}\n{"":<{width}}  {"":>8}  {d.url}'
            for d in DATASETS.values()]


def _unsafe_reason(info):
    name = info.filename.replace('\\', '/')
    if name.startswith('/') or (len(name) > 1 and name[1] == ':'):
        return 'an absolute path'
    if '..' in name.split('/'):
        return "a '..' path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return 'a symbolic link'
    return None


def open_archive(path):
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ToolkitError(f'{path}: not a zip file, or truncated ({error}); delete it to download '
                           'it again') from None


def check_archive(path, dataset=None):
    """ToolkitError unless `path` is a zip whose every member stays inside the folder it is extracted
    to and, given `dataset`, which holds the dataset's class folders."""
    with open_archive(path) as archive:
        members = archive.infolist()
    for info in members:
        reason = _unsafe_reason(info)
        if reason:
            raise ToolkitError(f'{path}: member {info.filename!r} is {reason} and would land outside '
                               '--out_dir; refusing to extract this archive')
    if dataset:
        names = {info.filename.replace('\\', '/') for info in members}
        for class_folder in dataset.classes:
            prefix = f'{dataset.root}/{class_folder}/'
            if not any(name.startswith(prefix) for name in names):
                raise ToolkitError(f'{path}: holds no {prefix} folder; is it the {dataset.name} archive?')
    return members


def extract(path, destination, stream=None):
    """Extract every member of the zip at `path` into `destination`, after checking them all."""
    members = check_archive(path)
    root = os.path.realpath(destination)
    total = sum(info.file_size for info in members)
    progress = download.DownloadProgress('extracting', stream)
    progress.begin(0, total or None)
    done = 0
    with open_archive(path) as archive:
        for info in members:
            target = os.path.realpath(os.path.join(root, info.filename))
            if os.path.commonpath([root, target]) != root:  # belt and braces after check_archive
                raise ToolkitError(f'{path}: member {info.filename!r} would land outside --out_dir')
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                with archive.open(info) as source, open(target, 'wb') as sink:
                    shutil.copyfileobj(source, sink, COPY_BYTES)
            except (zipfile.BadZipFile, EOFError, OSError) as error:
                raise ToolkitError(f'{path}: cannot extract {info.filename} ({error}); the archive is '
                                   'damaged: delete it to download it again') from None
            done += info.file_size
            progress.update(done)
    progress.finish()


def _looks_like_image(path):
    with open(path, 'rb') as stream:
        head = stream.read(12)
    return head.startswith(_IMAGE_MAGIC) and (not head.startswith(b'RIFF') or head[8:12] == b'WEBP')


def _files_under(folder):
    for directory, sub_dirs, files in os.walk(folder):
        sub_dirs.sort()
        for name in sorted(files):
            yield os.path.join(directory, name)


def clean(folder, find_bad_images, workers=None, stream=None):
    """Delete every file under `folder` that is not a usable image; returns {reason: [paths]}.

    `find_bad_images(paths, workers)` decodes files the way training does and returns
    [(path, reason)] for those that fail (the input pipeline sits a layer above this module, so it
    is handed in).
    """
    dropped = {reason: [] for reason in REASONS}
    to_decode = []
    for path in _files_under(folder):
        name = os.path.basename(path)
        if name.lower() == 'thumbs.db':
            dropped[THUMBS].append(path)
        elif not image_lists.is_image(name) or image_lists.is_hidden(name):
            dropped[NOT_IMAGE].append(path)
        elif os.path.getsize(path) == 0:
            dropped[EMPTY].append(path)
        else:
            to_decode.append(path)

    progress = download.DownloadProgress('checking images', stream, amount=lambda n: f'{int(n):,} files')
    progress.begin(0, len(to_decode) or None)
    for start in range(0, len(to_decode), DECODE_BATCH):
        batch = to_decode[start:start + DECODE_BATCH]
        for path, _ in find_bad_images(batch, workers):
            dropped[CORRUPT if _looks_like_image(path) else NOT_IMAGE].append(path)
        progress.update(start + len(batch))
    progress.finish()

    for paths in dropped.values():
        for path in paths:
            os.remove(path)
    return {reason: sorted(paths) for reason, paths in dropped.items() if paths}


def write_report(path, dropped, relative_to):
    """One `reason<TAB>file` line per dropped file, so the user can see exactly what went."""
    with open(path, 'w', encoding='utf-8') as stream:
        for reason, paths in dropped.items():
            for file_path in paths:
                stream.write(f'{reason}\t{os.path.relpath(file_path, relative_to)}\n')


def read_report(path):
    """{reason: [file]} from `write_report`'s file; empty when there is none."""
    dropped = {}
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as stream:
            for line in stream:
                reason, _, file_path = line.rstrip('\n').partition('\t')
                dropped.setdefault(reason, []).append(file_path)
    return dropped


def describe_dropped(dropped, report):
    """Lines summing up `clean`'s {reason: [file]}: a count and an example per reason."""
    if not dropped:
        return ['dropped nothing: every file is an image that decodes']
    total = sum(len(files) for files in dropped.values())
    lines = [f'dropped {image_lists.plural(total, "file")} (listed in {report}):']
    for reason, files in dropped.items():
        example = files[0] if len(files) == 1 else f'{files[0]}, ...'
        lines.append(f'  {len(files):>6}  {reason} ({example})')
    return lines


def prepare(dataset, archive_path, out_dir, find_bad_images, workers=None, stream=None):
    """Extract and clean `archive_path` into `out_dir/<root>`; returns {reason: [file]} dropped
    (paths relative to `out_dir`, as the report file lists them).

    Everything happens in a staging folder that is moved into place only at the end, so an existing
    `out_dir/<root>` is always complete and clean, and a rerun can reuse it.
    """
    check_archive(archive_path, dataset)
    staging = os.path.join(out_dir, STAGING_NAME)
    if os.path.exists(staging):
        shutil.rmtree(staging)  # left by an interrupted run: start the extraction over
    os.makedirs(staging)
    extract(archive_path, staging, stream)
    dropped = clean(os.path.join(staging, dataset.root), find_bad_images, workers, stream)
    write_report(os.path.join(out_dir, REPORT_NAME), dropped, relative_to=staging)
    for entry in sorted(os.listdir(staging)):
        target = os.path.join(out_dir, entry)
        if entry == dataset.root or not os.path.exists(target):
            os.replace(os.path.join(staging, entry), target)
    shutil.rmtree(staging)
    return read_report(os.path.join(out_dir, REPORT_NAME))
