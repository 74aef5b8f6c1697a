"""Image lists: find the labelled images in a folder, split them, write train.txt, val.txt, classes.txt
(the layouts, the two splits, what a list line holds: docs/data.md#your-own-images-make_listspy). A
name that a line cannot hold is refused by name, so what is written reads back the same
(datagenerator.read_list, model_info.read_class_names_file).
"""
import errno
import hashlib
import math
import os
import random
import re
import stat
import unicodedata
from collections import Counter
from typing import Dict, List, NamedTuple, Tuple

from finetune_alexnet import digests
from finetune_alexnet import imagenet
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.image_header import IMAGE_EXTENSIONS

LIST_NAMES = ('train.txt', 'val.txt', 'classes.txt')


class FolderScan(NamedTuple):
    """What scan_folder found: images with labels, and what it left out."""
    paths: List[str]          # absolute paths, sorted by class then name
    labels: List[int]         # one per path, an index into class_names
    class_names: List[str]    # sorted; the label of a class is its position here
    skipped_non_images: List[str]
    skipped_outside_classes: List[str]  # loose files next to the class sub-folders
    # 'path (why)': symlinks that dangle or lead back up the tree, FIFOs, sockets, devices
    skipped_entries: List[str] = []
    duplicates: List[List[str]] = []    # groups of paths with the same content


class FolderLists(NamedTuple):
    """What write_folder_lists did: the scan, the split, and the files it wrote by file name."""
    scan: FolderScan
    train: List[Tuple[str, int]]
    val: List[Tuple[str, int]]
    files: Dict[str, str]


def is_image(file_name):
    return file_name.lower().endswith(IMAGE_EXTENSIONS)


def is_hidden(name):
    # .DS_Store, .ipynb_checkpoints and the like are never data; not worth a note.
    return name.startswith('.')


def plural(count, noun):
    return f'{count} {noun}' if count == 1 else f'{count} {noun}s'


# --- what a list line can hold -----------------------------------------------------------------

# Every character str.splitlines() ends a line at: the list readers split a file with it, so a name
# holding one would be read back as two lines.
LINE_BREAKS = frozenset('\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029')


def line_problem(text):
    """Why `text` cannot be written into one line of a UTF-8 list file, or None."""
    breaks = sorted(set(text) & LINE_BREAKS)
    if breaks:
        return f"contains a line break ({', '.join(repr(char) for char in breaks)})"
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:  # bytes the file system holds, decoded as surrogates by Python
        return 'is not valid UTF-8'
    return None


def class_name_problem(name):
    """Why `name` cannot be a class name (classes.txt, model_info.json), or None: the classes.txt
    reader strips each name, and names are printed, so no whitespace at either end and no control
    character (a line break, a tab, a terminal escape)."""
    if not isinstance(name, str) or not name.strip():
        return 'is empty'
    if name != name.strip():
        return 'begins or ends with whitespace'
    controls = sorted({char for char in name if unicodedata.category(char) in ('Cc', 'Zl', 'Zp')})
    if controls:
        return f"contains a line break or control character ({', '.join(repr(c) for c in controls)})"
    return line_problem(name)


def check_path_fits_a_line(path):
    """A list line is `path label`: refuse a file name it cannot hold, by name."""
    problem = line_problem(path)
    if problem:
        raise ToolkitError(f'{path!r}: file name {problem} and cannot go in an image list; rename it')


def check_class_name(name, where):
    problem = class_name_problem(name)
    if problem:
        raise ToolkitError(f'{where!r}: class name {name!r} {problem} and cannot go in classes.txt; '
                           'rename it')


# --- scanning a folder --------------------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISSOCK, 'a socket'),
          (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'))


def not_a_regular_file(path):
    """None for a regular file or a symlink to one; else what it is ('a FIFO', 'a dangling symlink',
    'a symlink to a socket', ...). Only stat()ed, never opened: opening a FIFO waits for a writer."""
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
        mode = os.stat(path).st_mode
    except OSError as error:
        if os.path.islink(path):
            return 'a symlink loop' if error.errno == errno.ELOOP else 'a dangling symlink'
        return f'unreadable ({error.strerror})'
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), 'not a regular file')
    return f'a symlink to {kind}' if link else kind


def loops_back(path, directory):
    """Whether the symlinked folder `path` leads to `directory` or a folder above it (a loop)."""
    target = os.path.realpath(path)
    here = os.path.realpath(directory)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def walk_class_folder(class_dir, skipped_entries, seen):
    """os.walk that follows symlinked folders, except into a folder it is already under (a loop
    such as `loop -> .` would list every image again, under another label) or one in `seen` (the
    real paths of the class folders and of every folder walked so far)."""
    for directory, sub_dirs, files in os.walk(class_dir, followlinks=True):
        kept = []
        for name in sorted(sub_dirs):
            path = os.path.join(directory, name)
            if is_hidden(name):
                continue
            if os.path.islink(path):
                if loops_back(path, directory):
                    skipped_entries.append(f'{printable(path)} (a symlink to a folder above it)')
                    continue
                if os.path.realpath(path) in seen:
                    skipped_entries.append(f'{printable(path)} (a symlink to a folder already listed)')
                    continue
            seen.add(os.path.realpath(path))
            kept.append(name)
        sub_dirs[:] = kept
        yield directory, files


def is_listable(path, skipped_entries):
    """Whether the file `path` may go in a list: a regular file, or a symlink to one. Anything else
    (a dangling symlink, a FIFO, a socket, a device) is noted in `skipped_entries` and left out."""
    kind = not_a_regular_file(path)
    if kind:
        skipped_entries.append(f'{printable(path)} ({kind})')
    return kind is None


def printable(path):
    """The path as a note shows it: quoted and escaped when it would break the line or the output."""
    return repr(path) if line_problem(path) else path


def scan_class_folders(folder, class_folders, loose_files, skipped_entries):
    """Scan the sub-folder layout: each sub-folder (searched recursively) is one class."""
    paths, labels, non_images = [], [], []
    for class_name in class_folders:
        check_class_name(class_name, os.path.join(folder, class_name))
    seen = {os.path.realpath(os.path.join(folder, name)) for name in class_folders}
    for label, class_name in enumerate(class_folders):
        class_dir = os.path.join(folder, class_name)
        found = 0
        for directory, files in walk_class_folder(class_dir, skipped_entries, seen):
            for file_name in sorted(files):
                path = os.path.join(directory, file_name)
                if is_hidden(file_name) or not is_listable(path, skipped_entries):
                    continue
                if not is_image(file_name):
                    non_images.append(path)
                    continue
                check_path_fits_a_line(path)
                paths.append(path)
                labels.append(label)
                found += 1
        if found == 0:
            # An empty class would still take a label and leave the model a class it never sees.
            raise ToolkitError(f'{class_dir}: class folder has no images')
    outside = [os.path.join(folder, name) for name in loose_files]
    return FolderScan(paths, labels, list(class_folders), non_images, outside, skipped_entries)


def scan_flat_folder(folder, files, skipped_entries):
    """Scan Kaggle's flat layout: `cat.0.jpg` is class 'cat'."""
    named, non_images = [], []
    for file_name in files:
        path = os.path.join(folder, file_name)
        if not is_listable(path, skipped_entries):
            continue
        if not is_image(file_name):
            non_images.append(path)
            continue
        # `photo.jpg` has no class part; guessing 'photo' would invent a class of one image.
        class_name, _, rest = file_name.partition('.')
        if not class_name or '.' not in rest:
            raise ToolkitError(f'{path}: flat layout needs names like cat.0.jpg (class, dot, id, extension)')
        check_path_fits_a_line(path)
        check_class_name(class_name, path)
        named.append((class_name, path))
    class_names = sorted({class_name for class_name, _ in named})
    label_of = {class_name: label for label, class_name in enumerate(class_names)}
    named.sort(key=lambda item: (label_of[item[0]], item[1]))
    paths = [path for _, path in named]
    labels = [label_of[class_name] for class_name, _ in named]
    return FolderScan(paths, labels, class_names, non_images, [], skipped_entries)


def scan_folder(folder):
    """Find the labelled images in `folder` (either layout) and the files left out."""
    if not os.path.exists(folder):
        raise ToolkitError(f'{folder}: no such folder')
    if not os.path.isdir(folder):
        raise ToolkitError(f'{folder}: not a folder (give the folder that holds the images)')
    root = os.path.abspath(folder)
    entries = sorted(entry for entry in os.listdir(root) if not is_hidden(entry))
    skipped_entries = []
    class_folders = []
    for name in entries:
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        if os.path.islink(path) and loops_back(path, root):
            skipped_entries.append(f'{printable(path)} (a symlink to a folder above it)')
        else:
            class_folders.append(name)
    files = [name for name in entries if not os.path.isdir(os.path.join(root, name))]
    if class_folders:
        scan = scan_class_folders(root, class_folders, files, skipped_entries)
    else:
        scan = scan_flat_folder(root, files, skipped_entries)
    scan = scan._replace(duplicates=find_duplicates(scan.paths))

    # Messages name the folder as the user typed it.
    if not scan.paths:
        raise ToolkitError(f'{folder}: no images found (looked for {" ".join(IMAGE_EXTENSIONS)})')
    if len(scan.class_names) < 2:
        raise ToolkitError(f'{folder}: found only one class ({scan.class_names[0]!r}); need at least two')
    return scan


def find_duplicates(paths):
    """Groups of paths whose files have the same content (sha256), in list order; only files of
    equal size are read."""
    sizes = [os.path.getsize(path) for path in paths]
    count = Counter(sizes)
    by_digest = {}
    for path, size in zip(paths, sizes):
        if count[size] > 1:
            by_digest.setdefault(digests.file_sha256(path), []).append(path)
    return [group for group in by_digest.values() if len(group) > 1]


def find_images(folder):
    """Return (paths, labels, class_names) for the labelled images in `folder`."""
    scan = scan_folder(folder)
    return scan.paths, scan.labels, scan.class_names


def scan_notes(scan):
    """Lines about what a scan left out or found twice."""
    lines = []
    if scan.skipped_non_images:
        lines.append(f'note: skipped {plural(len(scan.skipped_non_images), "non-image file")} '
                     f'(extensions other than {" ".join(IMAGE_EXTENSIONS)})')
    if scan.skipped_outside_classes:
        lines.append(f'note: skipped {plural(len(scan.skipped_outside_classes), "file")} '
                     'outside the class sub-folders')
    lines += [f'note: skipped {entry}' for entry in scan.skipped_entries]
    if scan.duplicates:
        label_of = dict(zip(scan.paths, scan.labels))
        lines.append(f'note: {plural(len(scan.duplicates), "group")} of files with the same content '
                     '(kept; remove copies so that validation does not test on training images):')
        for group in scan.duplicates:
            classes = sorted({scan.class_names[label_of[path]] for path in group})
            across = f" (in different classes: {', '.join(classes)})" if len(classes) > 1 else ''
            lines.append(f"  {' = '.join(group)}{across}")
    return lines


# --- the stratified split -----------------------------------------------------------------------

# Seeds are what NumPy and the other seeded tools take, so one number means one thing everywhere
# (random.Random would take any integer, and give -1 the split of 1).
MAX_SEED = 2**32 - 1


def check_val_fraction(val_fraction):
    if not 0 < val_fraction < 1:  # also refuses NaN
        raise ToolkitError(f'--val_fraction {val_fraction} is outside (0, 1)')


def check_seed(seed, flag='--seed'):
    if not 0 <= seed <= MAX_SEED:
        raise ToolkitError(f'{flag} {seed} is outside 0..{MAX_SEED}')


def validation_count(class_size, val_fraction):
    """How many of a class's images go to validation."""
    if class_size < 2:
        return 0
    # Round half up (not Python's round-half-even) so the count is what a reader computes by hand;
    # the small epsilon absorbs float error such as 20 * 0.35 = 7.000000000000001.
    wanted = math.floor(class_size * val_fraction + 0.5 + 1e-9)
    # Every class keeps at least one image on each side, so validation covers every class.
    return min(max(wanted, 1), class_size - 1)


def split_stratified(paths, labels, val_fraction, seed):
    """Split images into (train, val) lists of (path, label) pairs, every class by the same fraction,
    the same for a seed. Validation keeps the input order; training is shuffled, as a streaming shuffle
    buffer smaller than the data set would otherwise see one class at a time."""
    check_val_fraction(val_fraction)
    rng = random.Random(seed)
    members_of = {}
    for index, label in enumerate(labels):
        members_of.setdefault(label, []).append(index)
    train, val = [], []
    for label in sorted(members_of):
        members = members_of[label]
        rng.shuffle(members)
        count = validation_count(len(members), val_fraction)
        val += members[:count]
        train += members[count:]
    rng.shuffle(train)
    return [(paths[i], labels[i]) for i in train], [(paths[i], labels[i]) for i in sorted(val)]


# --- the hash split -----------------------------------------------------------------------------

SPLITS = ('stratified', 'hash')
# retrain.py's constant: the hash is reduced modulo 2**27 before it becomes a percentage.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1


def hash_name(path):
    """What the hash split hashes: the file's name without its folder (retrain.py hashes the globbed
    path, so its split changes when the data set moves) and without any `_nohash_...` part, so that
    `leaf3_nohash_0.jpg` and `leaf3_nohash_1.jpg` (one subject) land together, across classes too."""
    return re.sub(r'_nohash_.*$', '', os.path.basename(path))


def hash_percentage(path):
    """retrain.py's number in [0, 100] for a file: its side depends on nothing else."""
    digest = hashlib.sha1(hash_name(path).encode('utf-8', 'surrogateescape')).hexdigest()
    return (int(digest, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)


def split_by_hash(paths, labels, val_fraction, seed):
    """Split images into (train, val) lists of (path, label) pairs by retrain.py's rule: a file goes
    to validation when its `hash_percentage` is below 100 * val_fraction, so the fraction holds on
    average, not per class (`split_notes`). Validation keeps the input order; `seed` shuffles training."""
    check_val_fraction(val_fraction)
    train, val = [], []
    for path, label in zip(paths, labels):
        side = val if hash_percentage(path) < 100.0 * val_fraction else train
        side.append((path, label))
    random.Random(seed).shuffle(train)
    return train, val


def split_notes(train, val, class_names):
    """Notes on the classes a split left without training or without validation images."""
    counts = {side: Counter(label for _, label in pairs) for side, pairs in (('train', train),
                                                                             ('val', val))}
    lines = []
    for label, name in enumerate(class_names):
        for side, other in (('val', 'train'), ('train', 'val')):
            if not counts[side][label]:
                lines.append(f"note: class {name!r} has no {'validation' if side == 'val' else 'training'}"
                             f" images (the hash put all {counts[other][label]} in {other}.txt)")
    return lines


# --- writing the lists --------------------------------------------------------------------------

def list_path(path, list_folder, relative):
    """The path as written in a list file: absolute, or relative to the list file's folder."""
    if not relative:
        return os.path.abspath(path)
    path = os.path.relpath(os.path.abspath(path), list_folder)
    # List readers skip '#' comment lines, strip whitespace, drop a byte-order mark and expand '~';
    # './' keeps such names intact.
    return os.path.join('.', path) if path[0] in '#~\ufeff' or path[0].isspace() else path


def _write_lines(path, lines):
    try:
        with open(path, 'w', encoding='utf-8') as handle:
            handle.writelines(f'{line}\n' for line in lines)
    except OSError as exc:
        raise ToolkitError(f'{path}: cannot write ({exc.strerror})') from None


def write_list(list_file, pairs, relative=False):
    """Write one `path label` line per (path, label) pair."""
    folder = os.path.dirname(os.path.abspath(list_file))
    _write_lines(list_file, (f'{list_path(path, folder, relative)} {label}' for path, label in pairs))


def write_class_names(classes_file, class_names):
    """Write one `label name` line per class."""
    _write_lines(classes_file, (f'{label} {name}' for label, name in enumerate(class_names)))


def make_out_dir(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f'{out_dir}: cannot create folder ({exc.strerror})') from None


def write_lists(out_dir, train, val, class_names, relative=False):
    """Write train.txt, val.txt and classes.txt into out_dir; return their paths by file name."""
    make_out_dir(out_dir)
    list_files = {name: os.path.join(out_dir, name) for name in LIST_NAMES}
    write_list(list_files['train.txt'], train, relative)
    write_list(list_files['val.txt'], val, relative)
    write_class_names(list_files['classes.txt'], class_names)
    return list_files


def write_folder_lists(folder, out_dir, val_fraction, seed, relative=False, method='stratified'):
    """Scan `folder`, split it by `val_fraction` with `seed` (`method`: 'stratified' or 'hash'),
    write the three files into out_dir."""
    if method not in SPLITS:
        raise ToolkitError(f"--split {method!r}: choose one of {', '.join(SPLITS)}")
    scan = scan_folder(folder)
    splitter = split_by_hash if method == 'hash' else split_stratified
    train, val = splitter(scan.paths, scan.labels, val_fraction, seed)
    list_files = write_lists(out_dir, train, val, scan.class_names, relative)
    return FolderLists(scan, train, val, list_files)


def summary(lists):
    """The per-class train/val count table of a FolderLists, and the files it wrote."""
    train_counts = Counter(label for _, label in lists.train)
    val_counts = Counter(label for _, label in lists.val)
    class_names = lists.scan.class_names
    width = max(len(name) for name in class_names + ['class'])
    lines = [f'{"label":>5}  {"class":<{width}}  {"train":>6}  {"val":>6}']
    for label, class_name in enumerate(class_names):
        lines.append(f'{label:>5}  {class_name:<{width}}  {train_counts[label]:>6}  {val_counts[label]:>6}')
    lines.append(f'{"":>5}  {"total":<{width}}  {len(lists.train):>6}  {len(lists.val):>6}')
    return lines + ['wrote ' + ', '.join(lists.files.values())]


# --- ImageNet's validation set ------------------------------------------------------------------

def write_imagenet_val(image_folder, labels_file, meta_file, out_dir, relative=False):
    """val.txt of the ILSVRC2012 validation images in `image_folder`, in BVLC label order, from the
    ground truth `labels_file` (see imagenet.read_ground_truth); returns the lines to print."""
    ground_truth = imagenet.read_ground_truth(labels_file, meta_file)
    pairs, missing = imagenet.find_validation_images(image_folder, ground_truth, IMAGE_EXTENSIONS)
    skipped_entries = []
    pairs = [(path, label) for path, label in pairs if is_listable(path, skipped_entries)]
    for path, _ in pairs:
        check_path_fits_a_line(path)
    make_out_dir(out_dir)
    val_file = os.path.join(out_dir, 'val.txt')
    write_list(val_file, pairs, relative)
    lines = [f'note: skipped {entry}' for entry in skipped_entries]
    if missing:
        lines.append(f'note: {plural(missing, "image")} of {labels_file} not in {image_folder}')
    classes = len({label for _, label in pairs})
    lines.append(f'wrote {val_file}: {plural(len(pairs), "image")} of {classes} '
                 f'{"class" if classes == 1 else "classes"}')
    return lines
