"""caffe_classes.class_names: the label order and names of the BVLC Caffe weights."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe_classes import class_names  # noqa: E402


def test_there_are_1000_names_of_plain_strings():
    assert len(class_names) == 1000
    assert all(isinstance(name, str) and name == name.strip() and name for name in class_names)


def test_known_labels_have_the_classic_caffe_names():
    assert class_names[0] == 'tench, Tinca tinca'
    assert class_names[281] == 'tabby, tabby cat'
    assert class_names[999] == 'toilet tissue, toilet paper, bathroom tissue'
    # The sample photos in images/ are checked against these labels.
    assert class_names[967] == 'espresso'
    assert class_names[504] == 'coffee mug'
    assert class_names[657] == 'missile'


def test_only_crane_is_a_duplicate_name():
    # The classic list really has one repeated name: 134 is the bird, 517 the machine (different
    # WordNet synsets, same lemma). 'maillot' is not a duplicate: 638 is 'maillot', 639 'maillot, tank suit'.
    assert len(set(class_names)) == 999
    assert [index for index, name in enumerate(class_names) if name == 'crane'] == [134, 517]
    assert class_names[638] == 'maillot'
    assert class_names[639] == 'maillot, tank suit'


def test_names_are_lemmas_joined_by_comma_space():
    # Decoders that show only the first lemma split on ', '; no name may have stray separators.
    for name in class_names:
        assert all(part and part == part.strip() for part in name.split(', ')), name
