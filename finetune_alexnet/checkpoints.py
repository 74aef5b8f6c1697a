"""What a fine-tuning run leaves in its checkpoint folder, and how a run resumes from it.

    model_epoch{N}.ckpt.*   every variable (model, optimizer slots, global step) after epoch N;
                            the last `keep` of them are kept
    best.ckpt.*             the epoch with the best validation accuracy so far: hard links to that
                            epoch's files (a copy where the file system has no links), so it costs
                            no second save and survives the epoch checkpoint's removal
    interrupted.ckpt.*      written on Ctrl-C, mid-epoch
    run_state.json          epoch, global step, best accuracy, arguments, metrics history, and which
                            checkpoint is the latest; rewritten atomically after each save
    model_info.json         what prediction needs: classes, class names, pre-processing

No `.meta` graph files are written: the graph is rebuilt from code, and a graph never holds weights.
TensorFlow writes each checkpoint to temporary files and renames them, and run_state.json is replaced
only after the save succeeded, so a crash while saving leaves the previous checkpoint readable.
"""
import glob
import json
import os
import shutil

import tensorflow.compat.v1 as tf

from finetune_alexnet.errors import ToolkitError

RUN_STATE = 'run_state.json'
BEST = 'best.ckpt'
INTERRUPTED = 'interrupted.ckpt'


def epoch_prefix(directory, epoch):
    return os.path.join(directory, f'model_epoch{epoch}.ckpt')


def write_json_atomically(path, content):
    partial = path + '.partial'
    with open(partial, 'w') as stream:
        json.dump(content, stream, indent=2)
        stream.write('\n')
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)


def read_run_state(directory):
    """The saved run state, or None when the folder holds no run."""
    path = os.path.join(directory, RUN_STATE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as stream:
            state = json.load(stream)
    except (OSError, ValueError) as error:
        raise ToolkitError(f"{path}: unreadable run state ({error}); remove it to start afresh") from None
    latest = state.get('latest_checkpoint')
    if not latest or not tf.train.checkpoint_exists(os.path.join(directory, latest)):
        raise ToolkitError(f"{path}: its checkpoint {latest!r} is missing; remove {RUN_STATE} to "
                           "start afresh")
    return state


def check_fits(prefix, expected_shapes, purpose="this run's model",
               advice='resume with the flags the run was started with'):
    """Refuses, in one line, a checkpoint that lacks a variable of `expected_shapes` ({name: shape})
    or holds another shape, naming the first two differences; one definition for resume, predict.py
    and the export.

    Resuming with another --num_classes, --optimizer or --mixed_precision than the run was started
    with does that; TensorFlow's own message would be a page long. (Variables in the checkpoint but not
    expected, such as a loss scale when --mixed_precision is dropped, are simply left behind.)
    """
    try:
        saved = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise ToolkitError(f"{prefix}: unreadable checkpoint ({error.__class__.__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''})") from None
    problems = []
    for name, shape in expected_shapes.items():
        if name not in saved:
            problems.append(f'{name} is not in it')
        elif list(saved[name]) != list(shape):
            problems.append(f'{name} has shape {tuple(saved[name])}, expected {tuple(shape)}')
    if problems:
        more = f' and {len(problems) - 2} more' if len(problems) > 2 else ''
        raise ToolkitError(f"{prefix}: does not fit {purpose} ({'; '.join(problems[:2])}{more}); "
                           f'{advice}')


def graph_variable_shapes(graph):
    """{name: shape} of every global variable of `graph`: what a checkpoint must hold to restore it."""
    return {variable.op.name: variable.shape.as_list()
            for variable in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)}


class CheckpointKeeper:
    """Saves epoch, best and interrupted checkpoints of one run, and its run state."""

    def __init__(self, directory, keep):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        # Weights stay out of any graph file (write_meta_graph=False below) and paths are relative,
        # so a checkpoint folder can be moved.
        self._epoch_saver = tf.train.Saver(max_to_keep=keep, save_relative_paths=True)
        self._single_saver = tf.train.Saver(max_to_keep=None, save_relative_paths=True)

    def restore_latest(self, session, state):
        prefix = os.path.join(self.directory, state['latest_checkpoint'])
        check_fits(prefix, graph_variable_shapes(session.graph))
        self._epoch_saver.restore(session, prefix)
        kept = [os.path.join(self.directory, name) for name in state.get('epoch_checkpoints', [])]
        kept = [prefix for prefix in kept if tf.train.checkpoint_exists(prefix)]
        # Carry on pruning the kept epoch checkpoints where the interrupted run left off.
        self._epoch_saver.recover_last_checkpoints(kept)

    def save_epoch(self, session, epoch, state, best=False):
        """Saves epoch `epoch`; with `best`, best.ckpt becomes this checkpoint too."""
        prefix = self._epoch_saver.save(session, epoch_prefix(self.directory, epoch),
                                        write_meta_graph=False, write_state=True)
        state['epoch_checkpoints'] = [os.path.basename(p) for p in self._epoch_saver.last_checkpoints]
        if best:
            self._link_best(prefix)
        self._commit(prefix, state)
        self._remove_interrupted()

    def _link_best(self, prefix):
        """best.ckpt.* become other names for the files of checkpoint `prefix`.

        The epoch checkpoint was just written, so linking saves a second serialisation of ~230 MB.
        TensorFlow writes checkpoints to temporary files and renames them, and the epoch saver only
        unlinks old ones, so no later save can change a linked file. Each best file is swapped in
        with an atomic rename, the index last (a reader opens it first).
        """
        best = os.path.join(self.directory, BEST)
        sources = sorted(glob.glob(glob.escape(prefix) + '.*'), key=lambda path: path.endswith('.index'))
        suffixes = [source[len(prefix):] for source in sources]
        for source, suffix in zip(sources, suffixes):
            partial = f'{best}{suffix}.partial'
            if os.path.lexists(partial):
                os.remove(partial)
            try:
                os.link(source, partial)
            except OSError:  # no hard links here (some network and FAT file systems)
                shutil.copyfile(source, partial)
            os.replace(partial, best + suffix)
        for stale in glob.glob(glob.escape(best) + '.*'):
            if stale[len(best):] not in suffixes:
                os.remove(stale)

    def save_interrupted(self, session, state):
        prefix = self._single_saver.save(session, os.path.join(self.directory, INTERRUPTED),
                                         write_meta_graph=False, write_state=False)
        self._commit(prefix, state)

    def _commit(self, prefix, state):
        state['latest_checkpoint'] = os.path.basename(prefix)
        write_json_atomically(os.path.join(self.directory, RUN_STATE), state)

    def _remove_interrupted(self):
        for name in os.listdir(self.directory):
            if name.startswith(INTERRUPTED + '.'):
                os.remove(os.path.join(self.directory, name))
