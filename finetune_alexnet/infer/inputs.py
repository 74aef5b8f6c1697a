"""What predict.py classifies: image files, folders and list files, in the order given.

A folder is searched recursively for images (image_header.IMAGE_EXTENSIONS), sorted by path; a `.txt`
file is a "path label" list as finetune.py reads it (datagenerator.read_list), so its images come with
their labels; any other file is an image. Images given directly or found in folders have no label
(None).
"""
import os

import datagenerator
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.image_header import IMAGE_EXTENSIONS

LIST_EXTENSION = '.txt'


def labelled_list(list_file, num_classes):
    """(paths, labels as ints) of a "path label" list, checked whole before anything is decoded."""
    paths, labels = datagenerator.read_list(list_file, num_classes)
    return list(paths), [int(label) for label in labels]


def collect_inputs(inputs, num_classes):
    """(paths, labels or None per path) from image files, folders and `.txt` list files, in order."""
    paths, labels = [], []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(item)
                           for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ToolkitError(f"{item}: no images in this folder ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
            labels += [None] * len(found)
        elif item.lower().endswith(LIST_EXTENSION) and os.path.isfile(item):
            listed, listed_labels = labelled_list(item, num_classes)
            paths += listed
            labels += listed_labels
        elif os.path.isfile(item):
            paths.append(item)
            labels.append(None)
        else:
            raise ToolkitError(f"{item}: no such image, folder or list file")
    return paths, labels


def read_inputs(paths, labels, positions):
    """(paths, labels, skipped paths): the inputs a run read (`positions`, from Classifier.run), in
    order, and those it left out (unreadable ones, with skip_bad_images)."""
    kept = [int(position) for position in positions]
    left_out = set(range(len(paths))) - set(kept)
    return ([paths[i] for i in kept], [labels[i] for i in kept],
            [path for i, path in enumerate(paths) if i in left_out])
