"""Shared fixtures: TF1 graph mode for every test, weight files in the real file's layout, and the
order the files run in (the longest first)."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's start-up notices out of the output
# finetune.py keeps pool5 features in $XDG_CACHE_HOME/finetune_alexnet: the tests' runs (and the
# commands they start) must not fill the user's own cache.
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='finetune_alexnet_test_cache_')
atexit.register(shutil.rmtree, os.environ['XDG_CACHE_HOME'], True)
# glibc gives each freed block over 32 MiB back to the kernel, which zeroes the pages again at the next
# allocation: with AlexNet's 150 MB fc6 tensors initialised, loaded, saved and converted in every
# test, system time was a quarter of the suite's CPU, and this cuts it by a third. Freed memory
# stays in the heap, up to 1 GiB of it, in the processes started from here on: glibc reads this when
# a process starts, so it reaches the xdist workers (started after this file loads) and every
# command a test runs.
os.environ.setdefault('GLIBC_TUNABLES', 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824')

import pytest  # noqa: E402

from finetune_alexnet import tf_setup  # noqa: E402

if 'PYTEST_XDIST_WORKER' not in os.environ:
    # The process that reports (workers' stderr is not shown): TensorFlow's C++ runtime logs notices
    # as it loads, whatever TF_CPP_MIN_LOG_LEVEL says, and pytest would print them after its summary.
    # The commands drop them through the same filter.
    tf_setup.hide_native_log_lines()

import tensorflow.compat.v1 as tf  # noqa: E402

import bvlc_fixture  # noqa: E402

tf.get_logger().setLevel('ERROR')  # as the commands do: no deprecation notices in the output
tf.disable_v2_behavior()  # what every entry point of the toolkit does

# The files that take longest (pytest --durations on 2 cores), longest first. --dist loadfile hands
# each file whole to one worker, in collection order: these start first, so the files handed out
# last are short ones and no worker is left running a long file while the other idles. (Whole
# files: a file's module-scoped fixtures, some of a minute or more, are built once.)
LONGEST_FILES = ('test_distributed.py', 'test_tfrecords.py', 'test_bench.py', 'test_training.py',
                 'test_finetune.py', 'test_recipe.py', 'test_checkpoints.py', 'test_export.py',
                 'test_signals.py', 'test_export_runtimes.py', 'test_cli.py', 'test_datagenerator.py',
                 'test_run_folder.py', 'test_summaries.py', 'test_caffemodel.py',
                 'test_working_directory.py', 'test_visualize.py', 'test_predict.py')


def pytest_collection_modifyitems(items):
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a file's order kept


@pytest.fixture(scope='session')
def bvlc_layers():
    """Random weights of the full 1000-class model, as {layer: {'weights', 'biases'}}."""
    return bvlc_fixture.random_weights(num_classes=1000, seed=0)


@pytest.fixture(scope='session')
def bvlc_npy(tmp_path_factory, bvlc_layers):
    """A full-size (233 MiB) bvlc_alexnet.npy fixture: Python 2 pickle, dict of [weights, biases]."""
    path = tmp_path_factory.mktemp('weights') / 'bvlc_alexnet.npy'
    return bvlc_fixture.write_bvlc_npy(str(path), bvlc_layers)
