"""A miniature ILSVRC2012 validation set: a few images per class, in every ground-truth form users hold.

The facts below come from the ImageNet files themselves, not from the toolkit: each synset's WordNet
id, its Caffe label (line of Caffe's synsets.txt) and Caffe name (synset_words.txt), and where known
its ILSVRC2012 id in the devkit's meta.mat (1, 2, 3: kit fox, English setter, Siberian husky; 490:
sea snake, the class of ILSVRC2012_val_00000001, which Caffe's val.txt labels 65). Tench and toilet
tissue (Caffe labels 0 and 999, the two ends) get made-up ILSVRC2012 ids: only the miniature meta.mat
uses them. ILSVRC2012 ids do not follow the wnid order, so a reader that took the id as the label
would mislabel every image.
"""
import csv
import os
import pathlib

import numpy as np

import image_files

# (wnid, ILSVRC2012 id in meta.mat, Caffe label, Caffe name)
SYNSETS = [
    ('n02119789', 1, 278, 'kit fox, Vulpes macrotis'),
    ('n02100735', 2, 212, 'English setter'),
    ('n02110185', 3, 250, 'Siberian husky'),
    ('n01751748', 490, 65, 'sea snake'),
    ('n01440764', 7, 0, 'tench, Tinca tinca'),
    ('n15075141', 1000, 999, 'toilet tissue, toilet paper, bathroom tissue'),
]
INNER_NODE = ('n00001740', 1001)  # 'entity': meta.mat's synsets past 1000 are never labels
CAFFE_LABEL = {wnid: label for wnid, _, label, _ in SYNSETS}
CAFFE_NAME = {wnid: name for wnid, _, _, name in SYNSETS}
ILSVRC_ID = {wnid: identifier for wnid, identifier, _, _ in SYNSETS}


def image_name(number):
    return f'ILSVRC2012_val_{number:08d}.JPEG'


def class_order(per_class, seed=0):
    """The wnid of image 1, 2, ...: `per_class` images of each synset, shuffled as the real set is."""
    order = [wnid for wnid, _, _, _ in SYNSETS for _ in range(per_class)]
    np.random.default_rng(seed).shuffle(order)
    return order


def write_images(folder, wnids, foldered, size=24, seed=0):
    """Image k (1-based) of class wnids[k-1], flat or in wnid folders; {image name: path}."""
    paths = {}
    for number, wnid in enumerate(wnids, 1):
        directory = os.path.join(folder, wnid) if foldered else folder
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, image_name(number))
        image_files.write_jpeg(pathlib.Path(path), image_files.random_rgb(size, size + 8, seed=seed + number))
        paths[image_name(number)] = path
    return paths


def write_kaggle_solution(path, wnids):
    """LOC_val_solution.csv: header, then rows in no particular order, a box or two per image."""
    rows = [(f'ILSVRC2012_val_{number:08d}', wnid) for number, wnid in enumerate(wnids, 1)]
    rows.reverse()
    with open(path, 'w', newline='') as stream:
        writer = csv.writer(stream)
        writer.writerow(['ImageId', 'PredictionString'])
        for index, (identifier, wnid) in enumerate(rows):
            boxes = f'{wnid} 10 20 200 180 ' + (f'{wnid} 5 5 50 60 ' if index % 2 else '')
            writer.writerow([identifier, boxes])
    return path


def write_devkit_ground_truth(path, wnids):
    """ILSVRC2012_validation_ground_truth.txt: line k, the ILSVRC2012 id of image k."""
    with open(path, 'w') as stream:
        stream.writelines(f'{ILSVRC_ID[wnid]}\n' for wnid in wnids)
    return path


def write_meta_mat(path):
    """meta.mat as the devkit lays it out (needs scipy): a synsets struct array, [n, 1]."""
    import scipy.io
    fields = [('ILSVRC2012_ID', 'O'), ('WNID', 'O'), ('words', 'O'), ('num_children', 'O'),
              ('children', 'O')]
    entries = [(identifier, wnid, name, 0, []) for wnid, identifier, _, name in SYNSETS]
    entries.append((INNER_NODE[1], INNER_NODE[0], 'entity', len(SYNSETS),
                    [identifier for _, identifier, _, _ in SYNSETS]))
    synsets = np.zeros((len(entries), 1), dtype=fields)
    for row, (identifier, wnid, name, num_children, children) in enumerate(entries):
        synsets[row, 0] = (np.array([[identifier]], np.uint16), np.array([wnid]), np.array([name]),
                           np.array([[num_children]], np.uint8),
                           np.array([children], np.uint16).reshape(1, -1))
    scipy.io.savemat(path, {'synsets': synsets})
    return path


def write_caffe_val(path, wnids):
    """Caffe's val.txt: `ILSVRC2012_val_00000001.JPEG 65`, Caffe labels."""
    with open(path, 'w') as stream:
        stream.writelines(f'{image_name(number)} {CAFFE_LABEL[wnid]}\n'
                          for number, wnid in enumerate(wnids, 1))
    return path
