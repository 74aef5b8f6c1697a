"""What predict.py classifies: image files, folders and list files, in the order given.

A folder is searched recursively for images, sorted by path; what is not a regular file (a FIFO
waits for a writer forever) is left out with a note, never opened. A `.txt` file is a "path label"
list (datagenerator.read_list); images given directly or found in folders have no label (None).
"""
import os

import datagenerator
from finetune_alexnet import image_lists
from finetune_alexnet import tfrecords
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.image_header import IMAGE_EXTENSIONS

LIST_EXTENSION = '.txt'


def labelled_list(list_file, num_classes):
    """(paths, labels as ints) of a "path label" list, checked whole before anything is decoded."""
    paths, labels = datagenerator.read_list(list_file, num_classes)
    return list(paths), [int(label) for label in labels]


def evaluation_inputs(source, num_classes):
    """(paths, labels, records) of what --evaluate names: a list file (records None), or TFRecord
    shards (a folder or a pattern): then `records` is their tfrecords.ShardIndex and `paths` the
    records' file names."""
    if not tfrecords.is_shards(source):
        return (*labelled_list(source, num_classes), None)
    index = tfrecords.index_shards(tfrecords.find_shards(source), num_classes, source)
    return list(index.filenames), [int(label) for label in index.labels], index


def images_in_folder(folder, skipped):
    """The image files under `folder`, sorted; those that are not regular files (nor symlinks to one)
    are left out and appended to `skipped` as 'path (what it is)'."""
    found, left_out = [], []
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            if name.lower().endswith(IMAGE_EXTENSIONS) and image_lists.is_listable(path, left_out):
                found.append(path)
    skipped += sorted(left_out)
    return sorted(found)


def collect_inputs(inputs, num_classes, skipped):
    """(paths, labels or None per path) from image files, folders and `.txt` list files, in order;
    what a folder holds that is not a regular file is appended to `skipped` (images_in_folder)."""
    paths, labels = [], []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found = images_in_folder(item, skipped)
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
        elif os.path.lexists(item):
            raise ToolkitError(f"{item}: not an image, folder or list file "
                               f"({image_lists.not_a_regular_file(item)})")
        else:
            raise ToolkitError(f"{item}: no such image, folder or list file")
    return paths, labels


def read_inputs(paths, labels, positions):
    """(paths, labels, skipped paths): the inputs a run read (`positions`, from Classifier.run), in
    order, and those it left out (unreadable ones, with skip_bad_images)."""
    kept = [int(position) for position in positions]
    left_out = sorted(set(range(len(paths))) - set(kept))
    return [paths[i] for i in kept], [labels[i] for i in kept], [paths[i] for i in left_out]
