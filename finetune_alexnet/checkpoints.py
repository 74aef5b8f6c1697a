"""What a fine-tuning run saves in its run folder (model_epoch{N}.ckpt, best.ckpt,
interrupted_step{S}.ckpt, run_state.json: docs/run-folder.md), and how a run resumes from it
(docs/resume-and-failures.md).

TensorFlow writes each checkpoint to temporary files and renames them, and run_state.json is
replaced only after the save succeeded, so a crash while saving leaves the previous checkpoint
readable. A checkpoint is verified (every tensor read back against its index's sizes and CRC32C
checksums) before it is restored.
"""
import contextlib
import dataclasses
import errno
import glob
import os
import re
import shutil
import sys

import tensorflow.compat.v1 as tf

from finetune_alexnet import run_folder
from finetune_alexnet import run_state
from finetune_alexnet.errors import ToolkitError

RUN_STATE = run_state.FILE_NAME
BEST = 'best.ckpt'
INTERRUPTED = run_folder.INTERRUPTED  # interrupted_step{S}.ckpt


def epoch_prefix(directory, epoch):
    return os.path.join(directory, f'model_epoch{epoch}.ckpt')


def verify_checkpoint(prefix):
    """None if checkpoint `prefix` reads back whole (every tensor checked by TensorFlow's bundle
    reader against its index's offset, size and CRC32C), else (the damaged file, why)."""
    index = prefix + '.index'
    if not os.path.isfile(index):
        return index, 'missing'
    if os.path.getsize(index) == 0:
        return index, 'empty (zero bytes)'
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
    except (tf.errors.OpError, ValueError) as error:
        return index, _first_line(error)
    for name in names:
        try:
            reader.get_tensor(name)
        # A short file surfaces as IndexError ("Read less bytes than requested") from the reader's
        # Python wrapper, a checksum mismatch as DataLossError.
        except (tf.errors.OpError, ValueError, IndexError) as error:
            data_files = sorted(glob.glob(glob.escape(prefix) + '.data-*'))
            return (data_files[0] if len(data_files) == 1 else prefix + '.data-*'), \
                f'tensor {name}: {_first_line(error)}'
    return None


def _first_line(error):
    text = str(getattr(error, 'message', '') or error).strip()
    return f"{error.__class__.__name__}: {text.splitlines()[0] if text else ''}"


def check_intact(prefix):
    """Refuses a damaged checkpoint in one line naming the damaged file (predict.py and the export)."""
    damage = verify_checkpoint(prefix)
    if damage:
        raise ToolkitError(f'{damage[0]}: damaged checkpoint ({damage[1]})')


def restorable_checkpoint(directory, state):
    """(prefix, state) of the checkpoint to resume from: the latest, else (a warning names the
    damaged file) the newest intact epoch checkpoint run_state.json lists, `state` cut back to that
    epoch, so the epochs after it are trained again. Refuses in one line when none is intact."""
    candidates = [state.latest_checkpoint]
    candidates += sorted((name for name in state.epoch_checkpoints if name not in candidates),
                         key=checkpoint_epoch, reverse=True)
    damaged = []
    for name in candidates:
        prefix = os.path.join(directory, name)
        damage = verify_checkpoint(prefix)
        if damage is None:
            if damaged:
                print(f'warning: {damaged[0][0]} is damaged ({damaged[0][1]}); resuming from {name} '
                      'instead', file=sys.stderr)
                state = _cut_back(state, name)
            return prefix, state
        damaged.append(damage)
    listed = ', '.join(candidates)
    raise ToolkitError(f'{directory}: no intact checkpoint to resume ({listed}: {damaged[0][0]} is '
                       f'damaged: {damaged[0][1]}); remove the folder or choose another '
                       '--checkpoint_path to start afresh')


def checkpoint_epoch(name):
    """N of model_epoch{N}.ckpt; -1 for any other name."""
    match = re.fullmatch(r'model_epoch(\d+)\.ckpt', name)
    return int(match.group(1)) if match else -1


def _cut_back(state, name):
    """The run state as it was when epoch checkpoint `name` was the latest."""
    epoch = checkpoint_epoch(name)
    history = [record for record in state.history if record['epoch'] <= epoch]
    best = max(history, key=lambda record: record.get('val_accuracy', float('-inf')), default=None)
    losses = [record['val_loss'] for record in history if 'val_loss' in record]
    return dataclasses.replace(
        state, epochs_completed=epoch, history=history, latest_checkpoint=name,
        best_val_accuracy=best['val_accuracy'] if best else None,
        best_epoch=best['epoch'] if best else None, best_val_loss=min(losses) if losses else None,
        phase=history[-1].get('phase', state.phase) if history else state.phase,
        epoch_checkpoints=[kept for kept in state.epoch_checkpoints if checkpoint_epoch(kept) <= epoch])


def check_fits(prefix, expected_shapes, purpose="this run's model",
               advice='resume with the flags the run was started with'):
    """Refuses, in one line, a checkpoint that lacks a variable of `expected_shapes` ({name: shape})
    or holds another shape, naming the first two differences (TensorFlow's own message would be a
    page long); variables it holds beyond those are left behind. For resume, predict.py, export."""
    try:
        saved = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise ToolkitError(f'{prefix}: unreadable checkpoint ({_first_line(error)})') from None
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


class DiskFull(ToolkitError):
    """No space left while saving: partial files were removed, the previous checkpoint stands."""


def _is_disk_full(error):
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    # TensorFlow maps ENOSPC to RESOURCE_EXHAUSTED; its message carries the C library's words.
    return isinstance(error, tf.errors.OpError) and (
        isinstance(error, tf.errors.ResourceExhaustedError) or 'No space left' in str(error.message))


def _remove_files_of(prefix):
    """Every file a save of `prefix` may have left: the checkpoint's own and TensorFlow's temporaries."""
    for path in glob.glob(glob.escape(prefix) + '*'):
        rest = path[len(prefix):]
        if rest.startswith(('.index', '.data-', '_temp')) or 'tempstate' in rest:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def link_best(directory, prefix):
    """best.ckpt.* in `directory` become hard links to the files of checkpoint `prefix` (no second
    save of ~230 MB; no later save changes a linked file, as saves rename new files into place).
    Each is swapped in with an atomic rename, the index last (a reader opens it first)."""
    best = os.path.join(directory, BEST)
    sources = sorted(glob.glob(glob.escape(prefix) + '.*'), key=lambda path: path.endswith('.index'))
    suffixes = [source[len(prefix):] for source in sources]
    for source, suffix in zip(sources, suffixes):
        partial = f'{best}{suffix}.partial'
        if os.path.lexists(partial):
            os.remove(partial)
        try:
            os.link(source, partial)
        except OSError as error:  # no hard links here (some network and FAT file systems)
            if _is_disk_full(error):
                raise
            shutil.copyfile(source, partial)
        os.replace(partial, best + suffix)
    for stale in glob.glob(glob.escape(best) + '.*'):
        if stale[len(best):] not in suffixes:
            os.remove(stale)


def repair_best(directory, best_epoch_before, state):
    """After a fall-back (restorable_checkpoint) from a state whose best epoch was
    `best_epoch_before` to `state`: a best.ckpt of an epoch trained again becomes the cut-back
    state's best epoch if its checkpoint is kept and intact, else it is removed."""
    if best_epoch_before is None or best_epoch_before <= state.epochs_completed:
        return
    best, epoch = os.path.join(directory, BEST), state.best_epoch
    said = f'warning: {best} held epoch {best_epoch_before}, which is trained again;'
    prefix = epoch_prefix(directory, epoch) if epoch else None
    if epoch and os.path.basename(prefix) in state.epoch_checkpoints \
            and verify_checkpoint(prefix) is None:
        link_best(directory, prefix)
        print(f'{said} it holds epoch {epoch} again', file=sys.stderr)
        return
    _remove_files_of(best)
    print(f'{said} removed it (the best epoch before it is no longer kept)', file=sys.stderr)


class CheckpointKeeper:
    """Saves epoch, best and interrupted checkpoints of one run, and its run state. With `writes`
    False (a worker other than the chief, which owns the run folder) it restores, and saves nothing."""

    def __init__(self, directory, keep, writes=True):
        self.directory = directory  # made by the first save: a worker that only restores writes nothing
        self.writes = writes
        # Relative paths, so a run folder can be moved. The keeper prunes old epochs itself, after
        # run_state.json has moved on from them (the Saver's own pruning would delete them before).
        self.keep = keep
        self._kept = []  # epoch checkpoints kept, oldest first (run_state.json's epoch_checkpoints)
        self._saver = tf.train.Saver(max_to_keep=None, save_relative_paths=True)

    def restore(self, session, prefix, state):
        """Restore checkpoint `prefix` (see restorable_checkpoint) and carry on the run's pruning."""
        check_fits(prefix, graph_variable_shapes(session.graph))
        self._saver.restore(session, prefix)
        self._kept = [name for name in state.epoch_checkpoints
                      if tf.train.checkpoint_exists(os.path.join(self.directory, name))]

    def save_epoch(self, session, epoch, state, best=False):
        """Saves epoch `epoch`; with `best`, best.ckpt becomes this checkpoint too."""
        if not self.writes:
            return
        target = epoch_prefix(self.directory, epoch)
        os.makedirs(self.directory, exist_ok=True)
        with self._space_check(session, target, state):
            prefix = self._saver.save(session, target, write_meta_graph=False, write_state=True)
            name = os.path.basename(prefix)
            listed = [kept for kept in self._kept if kept != name] + [name]
            kept, dropped = listed[-self.keep:], listed[:-self.keep]
            if best:
                link_best(self.directory, prefix)
            run_state.write(self.directory, dataclasses.replace(state, latest_checkpoint=name,
                                                                epoch_checkpoints=kept))
        self._kept = state.epoch_checkpoints = kept
        state.latest_checkpoint = name
        self._remove_interrupted(keep=None)
        for old in dropped:  # only now that run_state.json no longer lists them
            _remove_files_of(os.path.join(self.directory, old))

    def save_interrupted(self, session, state, step):
        """Saves interrupted_step{step}.ckpt (a fresh name per step: rewriting the one run_state.json
        points at could leave it half old, half new) and points run_state.json at it; returns its
        prefix (None: the keeper writes nothing)."""
        if not self.writes:
            return None
        target = os.path.join(self.directory, f'{INTERRUPTED}_step{step}.ckpt')
        if state.latest_checkpoint == os.path.basename(target):
            return target  # no step since that checkpoint: it holds exactly this state
        os.makedirs(self.directory, exist_ok=True)
        with self._space_check(session, target, state):
            prefix = self._saver.save(session, target, write_meta_graph=False, write_state=False)
            run_state.write(self.directory,
                            dataclasses.replace(state, latest_checkpoint=os.path.basename(prefix)))
        state.latest_checkpoint = os.path.basename(prefix)
        self._remove_interrupted(keep=os.path.basename(prefix))
        return prefix

    @contextlib.contextmanager
    def _space_check(self, session, target, state):
        """Turns a full disk during a save into one line, and removes what the save left half-written."""
        try:
            yield
        except (OSError, tf.errors.OpError) as error:
            if not _is_disk_full(error):
                raise
            _remove_files_of(target)
            for partial in glob.glob(os.path.join(glob.escape(self.directory), '*.partial')):
                os.remove(partial)
            free = shutil.disk_usage(self.directory).free
            needed = sum(variable.shape.num_elements() * variable.dtype.base_dtype.size
                         for variable in session.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES))
            previous = state.latest_checkpoint
            kept = (f'{previous} and {RUN_STATE} are intact: free some space and continue with '
                    '--resume' if previous else 'no earlier checkpoint of this run')
            raise DiskFull(f'{self.directory}: disk full while saving {os.path.basename(target)} '
                           f'(needs about {needed:,} bytes, {free:,} free); '
                           f'{kept}') from None

    def _remove_interrupted(self, keep):
        """Removes interrupted checkpoints other than `keep` (None: all), which nothing points at."""
        for name in os.listdir(self.directory):
            if name.startswith(INTERRUPTED + '_step') and (keep is None or not name.startswith(keep + '.')):
                os.remove(os.path.join(self.directory, name))


def check_same_settings(directory, saved, current, defaults=None):
    """Refuses --resume when a setting that shapes the run differs (`saved`: run_state.json's, `current`:
    this invocation's), naming each with old and new value; one a run saved before the setting
    existed is compared as `defaults` gives it, else not at all."""
    saved = {**(defaults or {}), **saved}
    differences = [f'{key} {saved.get(key)!r} -> {value!r}' for key, value in current.items()
                   if key in saved and saved[key] != value]
    if differences:
        raise ToolkitError(f"{os.path.join(directory, RUN_STATE)}: the run was started with other "
                           f"settings ({'; '.join(differences)}); resume with the run's own flags and "
                           'list files, or start a new run in another --checkpoint_path')
