"""ImageNet's ILSVRC2012 validation set: its ground truth in BVLC label order, and published accuracies.

The BVLC weights number the 1000 classes by sorted WordNet id (`imagenet_wnids.WNIDS`, the order of
`caffe_classes.py`). The ground truth comes in three forms, told apart by content (docs/data.md):
Kaggle's `LOC_val_solution.csv`, the devkit's `ILSVRC2012_validation_ground_truth.txt` (ILSVRC2012
ids, mapped to wnids by its `meta.mat`, read with scipy only then), and Caffe's `val.txt`. Every
mistake is one ToolkitError naming the file and the first bad line.
"""
import collections
import csv
import os
import re

from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.imagenet_wnids import WNIDS

LABEL_OF_WNID = {wnid: label for label, wnid in enumerate(WNIDS)}
NUM_CLASSES = len(WNIDS)
KAGGLE_HEADER = ['ImageId', 'PredictionString']
META_NAME = 'meta.mat'  # the devkit keeps it beside the ground truth, in its data/ folder
_WNID = re.compile(r'n[0-9]{8}')
_IMAGE_ID = re.compile(r'ILSVRC2012_val_([0-9]{8})')
_NUMBER = re.compile(r'[0-9]+')  # str.isdigit() also takes '²', which int() refuses
_FORMS = ("Kaggle's LOC_val_solution.csv (ImageId,PredictionString), the devkit's "
          "ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012 id per line, with meta.mat) or "
          "Caffe's val.txt (image label)")

# What the model's publishers measured on the 50,000 validation images (docs/data.md): BVLC's model
# card, and the paper (Krizhevsky et al. 2012, table 2, "1 CNN": 40.7% / 18.2% error).
PUBLISHED_ACCURACY = {
    'center_crop': {'top1': 0.571, 'top5': 0.802, 'source': 'BVLC, centre crop'},
    'ten_crop': {'top1': 0.593, 'top5': 0.818, 'source': 'the paper, one CNN, ten crops'},
}

GroundTruth = collections.namedtuple('GroundTruth', 'labels lines path')
GroundTruth.__doc__ = """labels {image id: BVLC label}; lines {image id: line number in `path`}."""


def image_id(file_name):
    """'ILSVRC2012_val_00000001' from 'ILSVRC2012_val_00000001.JPEG' (the name without extension)."""
    return os.path.splitext(os.path.basename(file_name))[0]


def _read_lines(path, what):
    try:
        with open(path, encoding='utf-8-sig') as stream:  # -sig: a CSV saved by Excel starts with a BOM
            return stream.read().splitlines()
    except FileNotFoundError:
        raise ToolkitError(f'{path}: {what} not found') from None
    except IsADirectoryError:
        raise ToolkitError(f'{path}: is a folder; give the {what} file') from None
    except UnicodeDecodeError:
        raise ToolkitError(f'{path}: not a text file; expected {_FORMS}') from None
    except OSError as exc:
        raise ToolkitError(f'{path}: cannot read ({exc.strerror})') from None


def _numbered(lines):
    """(line number, stripped line) of the non-blank lines."""
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


def _add(truth, number, identifier, label):
    if identifier in truth.labels:
        raise ToolkitError(f'{truth.path}:{number}: {identifier} is listed twice (first on line '
                           f'{truth.lines[identifier]})')
    truth.labels[identifier], truth.lines[identifier] = label, number


def read_kaggle_solution(path, lines):
    """GroundTruth from the `lines` of Kaggle's LOC_val_solution.csv; the first wnid of a row is
    its class."""
    rows = list(csv.reader(lines))
    if not rows or [field.strip() for field in rows[0]] != KAGGLE_HEADER:
        raise ToolkitError(f'{path}:1: expected the header {",".join(KAGGLE_HEADER)}')
    truth = GroundTruth({}, {}, path)
    for number, row in enumerate(rows[1:], 2):
        if not row or not ''.join(row).strip():
            continue
        if len(row) != 2 or not _IMAGE_ID.fullmatch(row[0].strip()) or not row[1].split():
            raise ToolkitError(f'{path}:{number}: expected ILSVRC2012_val_<8 digits>,<wnid> x1 y1 x2 y2 ...'
                               f'; found {",".join(row)[:80]!r}')
        wnid = row[1].split()[0]
        if wnid not in LABEL_OF_WNID:
            raise ToolkitError(f'{path}:{number}: {wnid!r} is not one of the 1000 ILSVRC2012 WordNet ids')
        _add(truth, number, row[0].strip(), LABEL_OF_WNID[wnid])
    if not truth.labels:
        raise ToolkitError(f'{path}: no images listed')
    return truth


def read_caffe_val(path, lines):
    """GroundTruth from the `lines` of Caffe's val.txt: `ILSVRC2012_val_00000001.JPEG 65`, BVLC
    labels already (read_ground_truth saw a first line of that form)."""
    truth = GroundTruth({}, {}, path)
    for number, line in _numbered(lines):
        fields = line.split()
        identifier = image_id(fields[0]) if len(fields) == 2 else ''
        if not _IMAGE_ID.fullmatch(identifier) or not _NUMBER.fullmatch(fields[1]):
            raise ToolkitError(f'{path}:{number}: expected ILSVRC2012_val_<8 digits>.JPEG <label>; '
                               f'found {line[:80]!r}')
        label = int(fields[1])
        if label >= NUM_CLASSES:
            raise ToolkitError(f'{path}:{number}: label {label} is outside 0..{NUM_CLASSES - 1}')
        _add(truth, number, identifier, label)
    return truth


def read_meta_mat(path):
    """{ILSVRC2012 id: wnid} for the 1000 classes (ids 1..1000) in the devkit's meta.mat."""
    if not os.path.isfile(path):
        raise ToolkitError(f"{path}: meta.mat not found; the devkit keeps it beside "
                           "ILSVRC2012_validation_ground_truth.txt in its data/ folder (or pass --meta)")
    try:
        import scipy.io
    except ImportError:
        raise ToolkitError(f"{path}: reading the devkit's meta.mat needs scipy (pip install scipy), or "
                           "give Kaggle's LOC_val_solution.csv or Caffe's val.txt as --labels") from None
    try:
        synsets = scipy.io.loadmat(path, squeeze_me=True)['synsets']
        records = [(int(synset['ILSVRC2012_ID']), str(synset['WNID'])) for synset in synsets.ravel()]
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... on a wrong file
        raise ToolkitError(f"{path}: not the devkit's meta.mat (a MATLAB file whose synsets have "
                           f"ILSVRC2012_ID and WNID; {type(exc).__name__}: {exc})") from None
    wnid_of = {}
    for identifier, wnid in records:
        if not 1 <= identifier <= NUM_CLASSES:
            continue  # ids past 1000 are the WordNet hierarchy's inner nodes, never a label
        if wnid not in LABEL_OF_WNID:
            raise ToolkitError(f'{path}: ILSVRC2012 id {identifier} is {wnid!r}, not one of the 1000 '
                               'ILSVRC2012 WordNet ids')
        wnid_of[identifier] = wnid
    if not wnid_of:
        raise ToolkitError(f'{path}: no synset with an ILSVRC2012_ID in 1..{NUM_CLASSES}')
    return wnid_of


def read_devkit_ground_truth(path, meta_path, lines):
    """GroundTruth from the `lines` of ILSVRC2012_validation_ground_truth.txt (read_ground_truth saw
    one), mapped through meta.mat.

    `meta_path` None: the meta.mat beside the ground truth, as the devkit's data/ folder holds it.
    """
    entries = _numbered(lines)
    for number, line in entries:
        if not _NUMBER.fullmatch(line):
            raise ToolkitError(f'{path}:{number}: expected one ILSVRC2012 id (1..1000) per line; '
                               f'found {line[:80]!r}')
    # Line k is image k: a blank line would shift every image after it (trailing ones are harmless).
    if len(entries) != entries[-1][0]:
        blank = next(number for number, line in enumerate(lines, 1) if not line.strip())
        raise ToolkitError(f'{path}:{blank}: blank line; line k must hold the id of image k')
    if meta_path is None:
        meta_path = os.path.join(os.path.dirname(os.path.abspath(path)), META_NAME)
    wnid_of = read_meta_mat(meta_path)
    truth = GroundTruth({}, {}, path)
    for number, line in entries:
        identifier = int(line)
        if identifier not in wnid_of:
            raise ToolkitError(f'{path}:{number}: ILSVRC2012 id {identifier} is not one of the classes '
                               f'in {meta_path}')
        _add(truth, number, f'ILSVRC2012_val_{number:08d}', LABEL_OF_WNID[wnid_of[identifier]])
    return truth


def read_ground_truth(path, meta_path=None):
    """GroundTruth from any of the three forms, told apart by the first non-blank line."""
    lines = _read_lines(path, 'ground-truth file')
    entries = _numbered(lines)
    if not entries:
        raise ToolkitError(f'{path}: empty; expected {_FORMS}')
    first = entries[0][1]
    if first.startswith('ImageId'):
        form = read_kaggle_solution
    elif _NUMBER.fullmatch(first):
        return read_devkit_ground_truth(path, meta_path, lines)
    elif len(first.split()) == 2 and _IMAGE_ID.fullmatch(image_id(first.split()[0])):
        form = read_caffe_val
    else:
        raise ToolkitError(f'{path}:{entries[0][0]}: not a ground-truth file; expected {_FORMS}')
    if meta_path is not None:
        raise ToolkitError(f"--meta {meta_path}: only the devkit's ILSVRC2012_validation_ground_truth.txt "
                           f'needs meta.mat; {path} names its classes itself')
    return form(path, lines)


def find_validation_images(folder, ground_truth, extensions):
    """[(path, label)] in image order for the images under `folder` that the ground truth labels.

    Returns (pairs, images the ground truth lists but `folder` lacks). An image with no ground truth,
    found twice, or in a wnid folder of another class raises ToolkitError naming it.
    """
    if not os.path.isdir(folder):
        raise ToolkitError(f'{folder}: no such folder' if not os.path.exists(folder)
                           else f'{folder}: not a folder (give the folder of the validation images)')
    found = {}
    for directory, sub_dirs, files in os.walk(folder):
        sub_dirs[:] = sorted(name for name in sub_dirs if not name.startswith('.'))
        for file_name in sorted(files):
            if file_name.startswith('.') or not file_name.lower().endswith(extensions):
                continue
            path = os.path.join(directory, file_name)
            identifier = image_id(file_name)
            if identifier not in ground_truth.labels:
                raise ToolkitError(f'{path}: not in {ground_truth.path} (is this the ILSVRC2012 '
                                   'validation set, and the ground truth of all of it?)')
            if identifier in found:
                raise ToolkitError(f'{path}: image {identifier} is also at {found[identifier]}')
            label = ground_truth.labels[identifier]
            class_folder = os.path.basename(directory)
            if _WNID.fullmatch(class_folder) and class_folder != WNIDS[label]:
                raise ToolkitError(f'{path}: in folder {class_folder}, but {ground_truth.path}:'
                                   f'{ground_truth.lines[identifier]} says {WNIDS[label]} (label {label})')
            found[identifier] = path
    if not found:
        raise ToolkitError(f'{folder}: no validation images ({" ".join(extensions)}) found in it')
    order = sorted(found)  # ILSVRC2012_val_<8 digits>: sorted names are image order
    missing = len(ground_truth.labels) - len(found)
    return [(found[identifier], ground_truth.labels[identifier]) for identifier in order], missing
