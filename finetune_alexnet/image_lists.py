"""Image lists: find the labelled images in a folder, split them, write train.txt, val.txt, classes.txt.

A folder is in one of two layouts: one sub-folder per class (`cat/*.jpg`, searched recursively,
symlinked folders followed unless they loop back), or Kaggle's flat `cat.0.jpg` names. Labels follow
the sorted class names. The split is stratified: every class gives the same fraction to validation,
the same way for one seed. A list line is `path label` (the label is the last field, so a path may
hold spaces); classes.txt has one `label name` line per class. make_lists.py and get_data.py write
lists through `write_folder_lists`; finetune.py's demo and bench/ through `find_images`,
`split_stratified` and `write_lists`.
"""
import math
import os
import random
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
    skipped_links: List[str] = []       # 'path (why)': dangling symlinks, symlinks back up the tree
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


def check_path_fits_a_line(path):
    # A list line is `path label`; a line break inside a file name would split it in two.
    if '\n' in path or '\r' in path:
        raise ToolkitError(f'{path!r}: file name contains a line break and cannot go in an image list')


# --- scanning a folder --------------------------------------------------------------------------

def is_dangling(path):
    return os.path.islink(path) and not os.path.exists(path)


def loops_back(path, directory):
    """Whether the symlinked folder `path` leads to `directory` or a folder above it (a loop)."""
    target = os.path.realpath(path)
    here = os.path.realpath(directory)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def walk_class_folder(class_dir, skipped_links, seen):
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
                    skipped_links.append(f'{path} (a symlink to a folder above it)')
                    continue
                if os.path.realpath(path) in seen:
                    skipped_links.append(f'{path} (a symlink to a folder already listed)')
                    continue
            seen.add(os.path.realpath(path))
            kept.append(name)
        sub_dirs[:] = kept
        yield directory, files


def scan_class_folders(folder, class_folders, loose_files, skipped_links=None):
    """Scan the sub-folder layout: each sub-folder (searched recursively) is one class."""
    paths, labels, non_images = [], [], []
    skipped_links = [] if skipped_links is None else skipped_links
    seen = {os.path.realpath(os.path.join(folder, name)) for name in class_folders}
    for label, class_name in enumerate(class_folders):
        class_dir = os.path.join(folder, class_name)
        found = 0
        for directory, files in walk_class_folder(class_dir, skipped_links, seen):
            for file_name in sorted(files):
                path = os.path.join(directory, file_name)
                if is_hidden(file_name):
                    continue
                if is_dangling(path):
                    skipped_links.append(f'{path} (a dangling symlink)')
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
    return FolderScan(paths, labels, list(class_folders), non_images, outside, skipped_links)


def scan_flat_folder(folder, files, skipped_links=None):
    """Scan Kaggle's flat layout: `cat.0.jpg` is class 'cat'."""
    named, non_images = [], []
    skipped_links = [] if skipped_links is None else skipped_links
    for file_name in files:
        path = os.path.join(folder, file_name)
        if is_dangling(path):
            skipped_links.append(f'{path} (a dangling symlink)')
            continue
        if not is_image(file_name):
            non_images.append(path)
            continue
        # `photo.jpg` has no class part; guessing 'photo' would invent a class of one image.
        class_name, _, rest = file_name.partition('.')
        if not class_name or '.' not in rest:
            raise ToolkitError(f'{path}: flat layout needs names like cat.0.jpg (class, dot, id, extension)')
        check_path_fits_a_line(path)
        named.append((class_name, path))
    class_names = sorted({class_name for class_name, _ in named})
    label_of = {class_name: label for label, class_name in enumerate(class_names)}
    named.sort(key=lambda item: (label_of[item[0]], item[1]))
    paths = [path for _, path in named]
    labels = [label_of[class_name] for class_name, _ in named]
    return FolderScan(paths, labels, class_names, non_images, [], skipped_links)


def scan_folder(folder):
    """Find the labelled images in `folder` (either layout) and the files left out."""
    if not os.path.exists(folder):
        raise ToolkitError(f'{folder}: no such folder')
    if not os.path.isdir(folder):
        raise ToolkitError(f'{folder}: not a folder (give the folder that holds the images)')
    root = os.path.abspath(folder)
    entries = sorted(entry for entry in os.listdir(root) if not is_hidden(entry))
    skipped_links = []
    class_folders = []
    for name in entries:
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        if os.path.islink(path) and loops_back(path, root):
            skipped_links.append(f'{path} (a symlink to a folder above it)')
        else:
            class_folders.append(name)
    files = [name for name in entries if not os.path.isdir(os.path.join(root, name))]
    if class_folders:
        scan = scan_class_folders(root, class_folders, files, skipped_links)
    else:
        scan = scan_flat_folder(root, files, skipped_links)
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
    by_size = {}
    for path in paths:
        by_size.setdefault(os.path.getsize(path), []).append(path)
    by_digest = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        for path in group:
            by_digest.setdefault(digests.file_sha256(path), []).append(path)
    position = {path: number for number, path in enumerate(paths)}
    return sorted((group for group in by_digest.values() if len(group) > 1),
                  key=lambda group: position[group[0]])


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
    lines += [f'note: skipped {link}' for link in scan.skipped_links]
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

def check_val_fraction(val_fraction):
    if not 0 < val_fraction < 1:  # also refuses NaN
        raise ToolkitError(f'--val_fraction {val_fraction} is outside (0, 1)')


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
    """Split images into (train, val) lists of (path, label) pairs, every class by the same fraction.

    Deterministic for a seed. Validation keeps the input order; training is shuffled (with the seed)
    because a streaming shuffle buffer smaller than the data set would otherwise see one class at a time.
    """
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


# --- writing the lists --------------------------------------------------------------------------

def list_path(path, list_folder, relative):
    """The path as written in a list file: absolute, or relative to the list file's folder."""
    if not relative:
        return os.path.abspath(path)
    path = os.path.relpath(os.path.abspath(path), list_folder)
    # List readers skip '#' comment lines, strip whitespace and expand '~'; './' keeps such names intact.
    return os.path.join('.', path) if path[0] in '#~' or path[0].isspace() else path


def write_list(list_file, pairs, relative=False):
    """Write one `path label` line per (path, label) pair."""
    list_folder = os.path.dirname(os.path.abspath(list_file))
    try:
        with open(list_file, 'w', encoding='utf-8') as handle:
            for path, label in pairs:
                handle.write(f'{list_path(path, list_folder, relative)} {label}\n')
    except OSError as exc:
        raise ToolkitError(f'{list_file}: cannot write ({exc.strerror})') from None


def write_class_names(classes_file, class_names):
    """Write one `label name` line per class."""
    try:
        with open(classes_file, 'w', encoding='utf-8') as handle:
            for label, class_name in enumerate(class_names):
                handle.write(f'{label} {class_name}\n')
    except OSError as exc:
        raise ToolkitError(f'{classes_file}: cannot write ({exc.strerror})') from None


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


def write_folder_lists(folder, out_dir, val_fraction, seed, relative=False):
    """Scan `folder`, split it by `val_fraction` with `seed`, write the three files into out_dir."""
    scan = scan_folder(folder)
    train, val = split_stratified(scan.paths, scan.labels, val_fraction, seed)
    list_files = write_lists(out_dir, train, val, scan.class_names, relative)
    return FolderLists(scan, train, val, list_files)


def count_table(train, val, class_names):
    """Lines of the per-class train/val count table."""
    train_counts = Counter(label for _, label in train)
    val_counts = Counter(label for _, label in val)
    width = max(len(name) for name in class_names + ['class'])
    lines = [f'{"label":>5}  {"class":<{width}}  {"train":>6}  {"val":>6}']
    for label, class_name in enumerate(class_names):
        lines.append(f'{label:>5}  {class_name:<{width}}  {train_counts[label]:>6}  {val_counts[label]:>6}')
    lines.append(f'{"":>5}  {"total":<{width}}  {len(train):>6}  {len(val):>6}')
    return lines


def summary(lists):
    """The count table of a FolderLists and the files it wrote."""
    return count_table(lists.train, lists.val, lists.scan.class_names) + [
        'wrote ' + ', '.join(lists.files.values())]


# --- ImageNet's validation set ------------------------------------------------------------------

def write_imagenet_val(image_folder, labels_file, meta_file, out_dir, relative=False):
    """val.txt of the ILSVRC2012 validation images in `image_folder`, in BVLC label order, from the
    ground truth `labels_file` (see imagenet.read_ground_truth); returns the lines to print."""
    ground_truth = imagenet.read_ground_truth(labels_file, meta_file)
    pairs, missing = imagenet.find_validation_images(image_folder, ground_truth, IMAGE_EXTENSIONS)
    for path, _ in pairs:
        check_path_fits_a_line(path)
    make_out_dir(out_dir)
    val_file = os.path.join(out_dir, 'val.txt')
    write_list(val_file, pairs, relative)
    lines = [f'note: {plural(missing, "image")} of {labels_file} not in {image_folder}'] if missing else []
    classes = len({label for _, label in pairs})
    lines.append(f'wrote {val_file}: {plural(len(pairs), "image")} of {classes} '
                 f'{"class" if classes == 1 else "classes"}')
    return lines
