"""The data sets `get_data.py` knows (`DATASETS`: adding one is adding a row), and how one becomes a
folder of images that all decode: `extract` (every member checked and the archive bounded before a
byte is written), then `clean` (drop what is not a usable image and say why). docs/data.md gives the
bounds and the reasons.
"""
import os
import shutil
import stat
import zipfile
import zlib
from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple

from finetune_alexnet import download
from finetune_alexnet import image_header
from finetune_alexnet import image_lists
from finetune_alexnet.errors import ToolkitError

DECODE_BATCH = 1000  # files per parallel decode pass; the progress bar moves once per pass
REPORT_NAME = 'dropped.txt'
STAGING_NAME = '.get_data_partial'
# Deflate reaches about 1000-fold only on runs of one byte; photos and real files stay far below
# 100-fold, so a member over RATIO_FLOOR bytes that expands more than MAX_RATIO-fold is a bomb.
MAX_RATIO = 100
RATIO_FLOOR = 2 ** 20
# The bounds of an archive that names no data set.
DEFAULT_MAX_EXTRACTED = 8 * 2 ** 30
DEFAULT_MAX_MEMBERS = 1_000_000

# Reasons a file is dropped, in the order the report lists them.
EMPTY = 'zero-byte file'
THUMBS = 'Thumbs.db (Windows thumbnail cache)'
NOT_IMAGE = 'not an image'
CORRUPT = 'truncated or corrupt image'
REASONS = (EMPTY, THUMBS, NOT_IMAGE, CORRUPT)


class Dataset(NamedTuple):
    name: str
    description: str
    url: str
    size: str                   # as announced, for --list
    archive: str                # file name the download is stored under
    sha256: Optional[str]       # verified when known
    root: str                   # folder in the archive holding one sub-folder per class
    classes: Tuple[str, ...]    # those sub-folders
    archive_bytes: Optional[int] = None             # the archive's exact size, when known
    max_extracted: int = DEFAULT_MAX_EXTRACTED      # the most its members may add up to, uncompressed
    max_members: int = DEFAULT_MAX_MEMBERS


# Bytes an archive spends on each member besides its data (a zip's local header and central-directory
# entry with the name twice; a tar header): at most this much, for names up to a few hundred bytes.
MEMBER_FRAMING_BYTES = 1024


def most_archive_bytes(dataset):
    """(bytes, what): the most an archive of `dataset` can be, the cap of a --url download: what its
    members may add up to (stored uncompressed) and each member's framing."""
    size = dataset.max_extracted + dataset.max_members * MEMBER_FRAMING_BYTES
    return size, f'the most a {dataset.name} archive can be (its bound on what it extracts to)'


DATASETS = OrderedDict((dataset.name, dataset) for dataset in (
    Dataset(name='cats_vs_dogs',
            description="Microsoft's Kaggle Cats and Dogs: 25,000 photos, PetImages/Cat and PetImages/Dog",
            url='https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/'
                'kagglecatsanddogs_5340.zip',
            size='~790 MB', archive='kagglecatsanddogs_5340.zip', sha256=None,
            root='PetImages', classes=('Cat', 'Dog'),
            # The size its server announces. JPEGs barely compress, so the 25,000 photos extract to
            # about that size again: 1.5 GiB and 50,000 members leave room for them, and bound what a
            # doctored archive can write.
            archive_bytes=824_887_076, max_extracted=int(1.5 * 2 ** 30), max_members=50_000),
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
    to, whose size is within the data set's caps (or the defaults; from the central directory alone)
    and, given `dataset`, which holds its class folders."""
    with open_archive(path) as archive:
        members = archive.infolist()
    for info in members:
        reason = _unsafe_reason(info)
        if reason:
            raise ToolkitError(f'{path}: member {info.filename!r} is {reason} and would land outside '
                               '--out_dir; refusing to extract this archive')
    name = f'the {dataset.name} data set' if dataset else 'an archive'
    max_total = dataset.max_extracted if dataset else DEFAULT_MAX_EXTRACTED
    max_members = dataset.max_members if dataset else DEFAULT_MAX_MEMBERS
    if len(members) > max_members:
        raise ToolkitError(f'{path}: holds {len(members):,} members, more than the {max_members:,} '
                           f'{name} may have; refusing to extract this archive')
    for info in members:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > MAX_RATIO:
            raise ToolkitError(f'{path}: member {info.filename!r} expands {ratio:,.0f}-fold '
                               f'({info.compress_size:,} to {info.file_size:,} bytes), more than the '
                               f'{MAX_RATIO}-fold a real file does (a zip bomb?); refusing to extract '
                               'this archive')
    total = sum(info.file_size for info in members)
    if total > max_total:
        raise ToolkitError(f'{path}: its members add up to {download.human_bytes(total)} ({total:,} '
                           f'bytes) uncompressed, more than the {download.human_bytes(max_total)} '
                           f'{name} may take; refusing to extract this archive')
    if dataset:
        names = {info.filename.replace('\\', '/') for info in members}
        for class_folder in dataset.classes:
            prefix = f'{dataset.root}/{class_folder}/'
            if not any(name.startswith(prefix) for name in names):
                raise ToolkitError(f'{path}: holds no {prefix} folder; is it the {dataset.name} archive?')
    return members


def _take_back(destination, existing):
    """Remove what an extraction added at the top of `destination` (all of it, when `existing` is
    None: the extraction made the folder)."""
    if existing is None:
        shutil.rmtree(destination, ignore_errors=True)
        return
    for entry in set(os.listdir(destination)) - existing:
        added = os.path.join(destination, entry)
        if os.path.isdir(added) and not os.path.islink(added):
            shutil.rmtree(added, ignore_errors=True)
        else:
            os.remove(added)


def extract(path, destination, stream=None, dataset=None):
    """Extract every member of the zip at `path` into `destination`, after checking them all and
    the free space; a failure removes what the extraction added and keeps the archive. (zipfile
    keeps each member inside `destination` and writes no more of it than its header declares.)"""
    members = check_archive(path, dataset)
    total = sum(info.file_size for info in members)
    download.check_free_space(f'{path}: extracting it', total, destination)
    existing = set(os.listdir(destination)) if os.path.isdir(destination) else None
    progress = download.DownloadProgress('extracting', stream)
    progress.begin(0, total or None)
    done = 0
    try:
        with open_archive(path) as archive:
            for info in members:
                try:
                    archive.extract(info, destination)
                except (zipfile.BadZipFile, EOFError, zlib.error) as error:
                    raise ToolkitError(f'{path}: cannot extract {info.filename} ({error}); the archive '
                                       'is damaged: delete it to download it again') from None
                except OSError as error:  # writing: reading the members fails as above
                    if download.is_disk_full(error):
                        raise ToolkitError(f'{destination}: the disk is full after extracting '
                                           f'{download.human_bytes(done)} of {download.human_bytes(total)} '
                                           f'from {path}; removed what was extracted and kept the '
                                           'archive: free some space and rerun') from None
                    raise ToolkitError(f'{os.path.join(destination, info.filename)}: cannot write it '
                                       f'({error.strerror or error}); removed what was extracted and '
                                       f'kept {path}') from None
                done += info.file_size
                progress.update(done)
    except BaseException:
        progress.finish()
        _take_back(destination, existing)
        raise
    progress.finish()


def _looks_like_image(path):
    with open(path, 'rb') as stream:
        return bool(image_header.image_type(stream.read(12)))


def _files_under(folder):
    for directory, sub_dirs, files in os.walk(folder):
        sub_dirs.sort()
        for name in sorted(files):
            yield os.path.join(directory, name)


def clean(folder, find_bad_images, workers=None, stream=None):
    """Delete every file under `folder` that is not a usable image; returns {reason: [paths]}.
    `find_bad_images(paths, workers)` (datagenerator's, handed in: the input pipeline sits a layer
    above this module) gives [(path, reason)] for the files that fail to decode."""
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
    (relative to `out_dir`). All in a staging folder moved into place at the end, so an existing
    `out_dir/<root>` is always complete and clean, and a rerun can reuse it."""
    staging = os.path.join(out_dir, STAGING_NAME)
    if os.path.exists(staging):
        shutil.rmtree(staging)  # left by an interrupted run: start the extraction over
    os.makedirs(staging)
    try:
        extract(archive_path, staging, stream, dataset)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    dropped = clean(os.path.join(staging, dataset.root), find_bad_images, workers, stream)
    write_report(os.path.join(out_dir, REPORT_NAME), dropped, relative_to=staging)
    for entry in sorted(os.listdir(staging)):
        target = os.path.join(out_dir, entry)
        if entry == dataset.root or not os.path.exists(target):
            os.replace(os.path.join(staging, entry), target)
    shutil.rmtree(staging)
    return read_report(os.path.join(out_dir, REPORT_NAME))
