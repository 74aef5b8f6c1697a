"""A run's output folders: checked before any work (`check_output_folder`, `check_output_file`), held
by one run at a time (`RunLock`), tidied at start (`remove_stale_files`). docs/resume-and-failures.md
says what a user sees of each.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import shutil

from finetune_alexnet.errors import ToolkitError

LOCK_FILE = '.lock'
INTERRUPTED = 'interrupted'  # interrupted_step{S}.ckpt: checkpoints.py saves them, a start tidies them
_CHECKPOINT = rf'(?:model_epoch\d+|best|{INTERRUPTED}_step\d+)\.ckpt'
# What a killed run leaves, by the names a run writes and nothing else: TensorFlow's temporaries of
# our checkpoints, our own half-written files (`replaced_atomically`'s and older ones), the feature cache.
_STALE_NAME = re.compile(
    rf'{_CHECKPOINT}(?:\..*tempstate.*|_temp(?:_.*)?)'
    rf'|(?:{_CHECKPOINT}\..+|run_state\.json|metrics\.jsonl|model_info\.json)\.partial'
    r'|curves\.png\.partial\.png'
    r'|\.(?:run_state\.json|metrics\.jsonl|model_info\.json|curves\.png)\.[0-9a-f]{12}\.partial'
    r'|features_(?:train|val)\.npy')


def nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_folder(path, flag):
    """Refuses `path` (given as `flag`) unless it is a writable folder, or one that can be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ToolkitError(f'{path}: {flag} is a file, not a folder')
    existing = nearest_existing(path)
    if not os.path.isdir(existing):
        raise ToolkitError(f'{path}: {flag} cannot be created: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ToolkitError(f'{path}: {flag} is not writable ({existing} is read-only for this user)')


def check_output_file(path, flag):
    """Refuses output file `path` (given as `flag`) unless its folder exists and it can be written."""
    if os.path.isdir(path):
        raise ToolkitError(f'{path}: {flag} is a folder; give a file name')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ToolkitError(f'{path}: {flag} is in a folder that does not exist ({folder})')
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path)
                                                    and not os.access(path, os.W_OK)):
        raise ToolkitError(f'{path}: {flag} is not writable')


@contextlib.contextmanager
def created_folder(path, flag):
    """Creates folder `path` (and its missing parents) for the `with` block; if the block fails, the
    folders it created go again where they are still empty (a failed download leaves no empty
    --out_dir behind), and what existed before stays."""
    missing, probe = [], os.path.abspath(path)
    while not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ToolkitError(f'{flag} {path}: cannot create it ({error.strerror})') from None
    try:
        yield path
    except BaseException:
        for folder in missing:  # the deepest first
            try:
                os.rmdir(folder)
            except OSError:  # holds something now (a resumable .part): kept, and its parents too
                break
        raise


class RunLock:
    """Holds `<folder>/.lock` for the life of a run (a context manager); refuses a second holder.

    An OS file lock (`fcntl.flock`): the OS releases it when the holder exits or dies (even by kill
    -9), so a stale lock cannot block a later run; the file only records who holds it.
    """

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self._stream = None

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        stream = self._locked_stream()
        stream.seek(0)
        stream.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
        stream.write(f'PID {os.getpid()}, started {started}\n')
        stream.flush()
        self._stream = stream
        return self

    def _locked_stream(self):
        """The lock file, locked by this process; ToolkitError naming the holder when another has it."""
        # 'a+': opening must not wipe the holder's record before we know whether we get the lock.
        stream = open(self.path, 'a+')
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                stream.close()
                raise
            stream.seek(0)
            holder = stream.read().strip() or 'another process'
            stream.close()
            raise ToolkitError(f'{self.folder}: another run is using this folder ({holder}); wait '
                               'for it to finish, or choose another --checkpoint_path') from None
        return stream

    def check_free(self):
        """Refuse, as `acquire` would, when a running run holds the folder; changes nothing."""
        if os.path.isfile(self.path):
            self._locked_stream().close()  # closing unlocks

    def release(self):
        if self._stream is not None:
            # Unlocked by closing; the file stays (removing it would let a third run lock a new
            # inode while a second still waits on the old one).
            self._stream.close()
            self._stream = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


@contextlib.contextmanager
def replaced_atomically(path):
    """Yields a temporary path beside `path` to write the whole output to; on success it replaces
    `path` in one rename, on failure it is removed: a file already at `path` (an earlier output, or
    anything of the user's) is never left half overwritten."""
    folder, name = os.path.split(os.path.abspath(path))
    # A fresh name nobody else uses (not mkstemp: its file would keep mode 0600, not the umask's).
    partial = os.path.join(folder, f'.{name}.{secrets.token_hex(6)}.partial')
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.lexists(partial):
            os.remove(partial)


def write_json_atomically(path, content):
    """`content` as indented JSON at `path`, through `replaced_atomically` and flushed to the disk
    before the rename: a crash leaves the old file or the new one, never half of either."""
    with replaced_atomically(path) as partial, open(partial, 'w') as stream:
        json.dump(content, stream, indent=2)
        stream.write('\n')
        stream.flush()
        os.fsync(stream.fileno())


def is_stale_name(name):
    """A name in a run folder that only a killed save or run leaves behind (see _STALE_NAME)."""
    return bool(_STALE_NAME.fullmatch(name))


def remove_stale_files(folder, latest_checkpoint=None):
    """Removes what killed saves left in `folder`, and interrupted checkpoints but
    `latest_checkpoint` (the one run_state.json points at); returns the names removed. Safe because
    the caller holds the folder's lock and only names a run writes are matched.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        interrupted = (name.startswith(INTERRUPTED + '_step')
                       and not (latest_checkpoint and name.startswith(latest_checkpoint + '.')))
        if not (interrupted or is_stale_name(name)):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
        removed.append(name)
    return removed
