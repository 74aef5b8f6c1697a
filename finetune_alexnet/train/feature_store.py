"""A pool5 feature cache on disk shared by runs (`--cache_dir`, docs/training.md): a sweep computes its
features once. A set lives in a folder named by its key (`set_key`: what determines the features):
features.npy (memory-mapped when read), labels.npy and meta.json (shapes and both files' SHA-256),
written under a temporary name and renamed into place; past the size limit the least recently used
sets go. Nothing read back is trusted (docs/resume-and-failures.md): a damaged set is removed, with a
note, and recomputed; removal renames an entry of the root away and deletes that entry only.
"""
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time

import numpy as np

from finetune_alexnet import digests
from finetune_alexnet import preprocessing
from finetune_alexnet.errors import ToolkitError

FORMAT = 1
# Where the XDG convention puts caches: $XDG_CACHE_HOME, else ~/.cache.
# (The convention ignores a relative $XDG_CACHE_HOME.)
DEFAULT_DIR = os.path.join(
    os.environ.get('XDG_CACHE_HOME') if os.path.isabs(os.environ.get('XDG_CACHE_HOME', ''))
    else os.path.join(os.path.expanduser('~'), '.cache'), 'finetune_alexnet')
DEFAULT_MAX_GB = 20
META = 'meta.json'
FEATURES = 'features.npy'
LABELS = 'labels.npy'
STALE_SECONDS = 24 * 3600
MAX_META_BYTES = 64 * 1024  # ours is about 300 bytes
KEY = re.compile('[0-9a-f]{64}')
_META_FIELDS = ('format', 'features_shape', 'bytes', 'sha256', 'created')


def _regular_file_size(folder, name):
    """The size of `folder/name`, a regular file (lstat: a symlink does not count); ValueError if not."""
    try:
        info = os.lstat(os.path.join(folder, name))
    except OSError:
        raise ValueError(f'{name} is missing') from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f'{name} is not a regular file')
    return info.st_size


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_meta(folder):
    """meta.json of a set folder, every field checked; ValueError saying what is wrong."""
    if _regular_file_size(folder, META) > MAX_META_BYTES:
        raise ValueError(f'{META} is larger than {MAX_META_BYTES} bytes')
    with open(os.path.join(folder, META), 'rb') as stream:
        raw = stream.read(MAX_META_BYTES + 1)
    try:
        meta = json.loads(raw.decode('utf-8'))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValueError(f'{META} is not JSON') from None
    if not isinstance(meta, dict) or sorted(meta) != sorted(_META_FIELDS):
        raise ValueError(f'{META} does not have the fields {", ".join(_META_FIELDS)}')
    if not _is_count(meta['format']) or meta['format'] != FORMAT:
        raise ValueError(f'{META}: format is not {FORMAT}')
    shape = meta['features_shape']
    if not isinstance(shape, list) or len(shape) != 2 or not all(_is_count(size) for size in shape):
        raise ValueError(f'{META}: features_shape is not two sizes')
    for field, valid in (('bytes', _is_count),
                         ('sha256', lambda value: isinstance(value, str) and KEY.fullmatch(value))):
        entries = meta[field]
        if (not isinstance(entries, dict) or sorted(entries) != sorted((FEATURES, LABELS))
                or not all(valid(value) for value in entries.values())):
            raise ValueError(f'{META}: {field} is not one entry for each of {FEATURES}, {LABELS}')
    created = meta['created']
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        raise ValueError(f'{META}: created is not a time')
    return meta


def _check_matrix(name, array, rows=None):
    if array.dtype != np.float32 or array.ndim != 2 or (rows is not None and len(array) != rows):
        raise ValueError(f'{name} holds {array.dtype} {array.shape}, not the float32 matrix recorded')


def _remove_entry(path):
    """Deletes one entry of the root: a folder with what is in it, or a file or symlink itself."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)  # removes the links inside, never follows them
        else:
            os.remove(path)
    except OSError:
        pass


def arrays_digest(arrays):
    """SHA-256 of named arrays ({name: ndarray}), their names, dtypes and shapes included."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f'{name} {array.dtype.str} {array.shape}\n'.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def image_entries(paths, labels):
    """[absolute path, size, mtime_ns, label] of each image; a missing one shows as size -1."""
    entries = []
    for path, label in zip(paths, labels):
        path = os.path.abspath(path)
        try:
            info = os.stat(path)
            size, mtime = info.st_size, info.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        entries.append([path, size, mtime, int(label)])
    return entries


def set_key(conv_digest, paths, labels, num_classes, settings):
    """The key of one image list's features; `settings` holds what else changes the numbers."""
    description = {
        'format': FORMAT, 'conv_weights': conv_digest, 'num_classes': num_classes,
        'preprocessing': {'mean_rgb': list(preprocessing.IMAGENET_MEAN_RGB),
                          'input_size': preprocessing.INPUT_SIZE,
                          'resize_size': preprocessing.RESIZE_SIZE, 'crop': 'centre'},
        'settings': settings, 'images': image_entries(paths, labels)}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


class FeatureStore:
    """The sets under `root`, at most `max_bytes` in all (least recently used removed first)."""

    def __init__(self, root, max_bytes):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.max_bytes = max_bytes
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as error:
            raise ToolkitError(f'--cache_dir {root}: cannot create it ({error.strerror})') from None
        if not os.access(self.root, os.W_OK):
            raise ToolkitError(f'--cache_dir {root}: not writable')

    def _folder(self, key):
        if not KEY.fullmatch(key):  # a key names one entry of the root, nothing else
            raise ValueError(f'not a feature set key: {key!r}')
        return os.path.join(self.root, key)

    def load(self, key):
        """((features, labels), None) for a stored set, features memory-mapped; (None, None) when
        there is none; (None, note saying why) when it was damaged: it is removed."""
        folder = self._folder(key)
        if not os.path.lexists(folder):
            return None, None
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise ValueError('not a folder (a symlink or a file is never followed)')
            meta = read_meta(folder)
            for name in (FEATURES, LABELS):
                size = _regular_file_size(folder, name)
                if size != meta['bytes'][name]:
                    raise ValueError(f"{name} has {size} bytes, expected {meta['bytes'][name]}")
                if digests.file_sha256(os.path.join(folder, name)) != meta['sha256'][name]:
                    raise ValueError(f'{name} does not match its checksum')
            features = np.load(os.path.join(folder, FEATURES), mmap_mode='r', allow_pickle=False)
            labels = np.load(os.path.join(folder, LABELS), allow_pickle=False)
            _check_matrix(FEATURES, features)
            _check_matrix(LABELS, labels, rows=len(features))
            if list(features.shape) != meta['features_shape']:
                raise ValueError(f'{FEATURES} has shape {features.shape}, meta.json says '
                                 f"{tuple(meta['features_shape'])}")
        except (OSError, ValueError) as error:
            self.remove(key)
            return None, f'cached features in {folder} were damaged ({error}); recomputing them'
        os.utime(os.path.join(folder, META))  # the least-recently-used order
        return (features, labels), None

    def save(self, key, features, labels):
        """Stores a set atomically, then trims the cache to its limit (never this set)."""
        folder = self._folder(key)
        staging = tempfile.mkdtemp(prefix=f'.{key[:16]}.', suffix='.partial', dir=self.root)
        try:
            meta = {'format': FORMAT, 'features_shape': list(features.shape), 'bytes': {},
                    'sha256': {}, 'created': time.time()}
            for name, array in ((FEATURES, features), (LABELS, labels)):
                path = os.path.join(staging, name)
                np.save(path, np.ascontiguousarray(array))
                meta['bytes'][name] = os.path.getsize(path)
                meta['sha256'][name] = digests.file_sha256(path)
            with open(os.path.join(staging, META), 'w') as stream:
                json.dump(meta, stream)
            try:
                os.rename(staging, folder)
            except OSError:
                if not os.path.isdir(folder):
                    raise
                # Another run stored the same set first: its copy serves.
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)
        self.evict(keep=key)

    def remove(self, key):
        """Removes a set: renamed away first, so no reader finds it half deleted."""
        folder = self._folder(key)
        doomed = f'{folder}.{os.getpid()}.removed'
        try:
            os.rename(folder, doomed)
        except OSError:
            return
        _remove_entry(doomed)

    def sets(self):
        """[(last use, bytes, key)] of every complete set: real folders only, sizes from lstat."""
        found = []
        for name in os.listdir(self.root):
            if not KEY.fullmatch(name):
                continue
            folder = os.path.join(self.root, name)
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    continue  # load() removes it when its key comes up
                _regular_file_size(folder, META)
                size = sum(os.lstat(os.path.join(folder, f)).st_size for f in os.listdir(folder))
                found.append((os.lstat(os.path.join(folder, META)).st_mtime, size, name))
            except (OSError, ValueError):  # incomplete, or removed meanwhile by another run
                continue
        return sorted(found)

    def evict(self, keep=None):
        """Removes least-recently-used sets until the total is within max_bytes (and staging folders
        a killed run left, over a day old)."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            try:
                stale = (name.endswith(('.partial', '.removed'))
                         and time.time() - os.lstat(path).st_mtime > STALE_SECONDS)
            except OSError:
                continue
            if stale:
                _remove_entry(path)
        sets = self.sets()
        total = sum(size for _, size, _ in sets)
        for _, size, key in sets:
            if total <= self.max_bytes:
                break
            if key != keep:
                self.remove(key)
                total -= size
