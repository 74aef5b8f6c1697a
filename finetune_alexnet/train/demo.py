"""The built-in demo: a generated two-class data set, and a run folder of its own (TensorBoard events
included) that each demo run replaces (only when it holds an earlier demo run: nothing of the user's
is removed)."""
import os
import shutil

from finetune_alexnet import demo_data
from finetune_alexnet import image_lists
from finetune_alexnet import run_folder
from finetune_alexnet import run_state
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.train import settings as run_settings

IMAGES_PER_CLASS = 120


def make_demo_lists(flags):
    """Writes the demo's images, train.txt, val.txt and classes.txt into --demo_dir; clears the
    demo's previous run when its own folders are used. Returns (train_file, val_file, num_classes)."""
    folder = demo_data.make_demo_images(os.path.join(flags.demo_dir, 'images'),
                                        images_per_class=IMAGES_PER_CLASS, seed=0)
    paths, labels, class_names = image_lists.find_images(folder)
    train, val = image_lists.split_stratified(paths, labels, val_fraction=0.2, seed=0)
    image_lists.write_lists(flags.demo_dir, train, val, class_names)
    if flags.checkpoint_path is None and not flags.resume and not flags.find_lr:
        clear_previous_demo_run()  # (the range test writes no run, so it replaces none)
    return (os.path.join(flags.demo_dir, 'train.txt'), os.path.join(flags.demo_dir, 'val.txt'),
            len(class_names))


def clear_previous_demo_run():
    """Empty the demo's own run folder, but only when it holds a demo run (nothing else of yours)."""
    checkpoint_path = run_settings.DEMO_DEFAULTS['checkpoint_path']
    try:
        state = run_state.read(checkpoint_path)
    except ToolkitError:
        state = None
    if (state is None and os.path.exists(checkpoint_path)
            and set(os.listdir(checkpoint_path)) - {run_folder.LOCK_FILE}):
        return  # not recognisably a demo run: leave it, and let the usual check refuse it
    if state is not None and not state.args.get('demo'):
        return
    if os.path.isdir(checkpoint_path):
        lock = run_folder.RunLock(checkpoint_path)
        try:
            lock.acquire()
        except ToolkitError:
            return  # a demo is running there now: its lock refuses this run, naming it
        try:  # everything but the lock file, which must stay (see RunLock.release)
            for name in set(os.listdir(checkpoint_path)) - {run_folder.LOCK_FILE}:
                path = os.path.join(checkpoint_path, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        finally:
            lock.release()
