"""A pool5 feature cache on disk shared by runs (`--cache_dir`): a sweep computes its features once.

A set's features depend only on the conv weights, the images and how they are pre-processed, so
they are stored under a key made of exactly that:

    the SHA-256 of conv1-conv5's weights as loaded into the session (whichever file or checkpoint
    they came from, so a resumed or warm-started run finds the same key), the pre-processing
    (mean, sizes, centre crop), what changes the arithmetic (device kind, mixed precision, XLA), and
    each image's absolute path, size, modification time and label, in list order.

A changed image changes its size or modification time, so the key: the set is recomputed. Each set
is a folder `<key>/` holding features.npy (memory-mapped when read), labels.npy and meta.json
(shapes and the SHA-256 of both files). It is written under a temporary name and renamed into place
whole, so a reader never sees half a set, and two runs writing the same set at once both succeed
(the second rename finds the folder there and drops its copy). A set whose files are missing,
truncated or fail their checksum is removed and rebuilt. After each write, least-recently-used sets
are removed until the cache is within its size limit (use touches meta.json).
"""
import hashlib
import json
import os
import re
import shutil
import tempfile
import time

import numpy as np

from finetune_alexnet import digests
from finetune_alexnet import preprocessing
from finetune_alexnet.errors import ToolkitError

FORMAT = 1
# Where the XDG convention puts caches: $XDG_CACHE_HOME, else ~/.cache.
DEFAULT_DIR = os.path.join(
    os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'finetune_alexnet')
DEFAULT_MAX_GB = 20
META = 'meta.json'
FEATURES = 'features.npy'
LABELS = 'labels.npy'
STALE_SECONDS = 24 * 3600


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
        return os.path.join(self.root, key)

    def load(self, key):
        """((features, labels), None) for a stored set, features memory-mapped; (None, None) when
        there is none; (None, note) when it was damaged (a file missing, truncated, or not matching
        its checksum): it is removed so the caller's rebuild takes its place, and `note` says why.
        """
        folder = self._folder(key)
        if not os.path.isdir(folder):
            return None, None
        try:
            with open(os.path.join(folder, META)) as stream:
                meta = json.load(stream)
            for name in (FEATURES, LABELS):
                path = os.path.join(folder, name)
                if os.path.getsize(path) != meta['bytes'][name]:
                    raise ValueError(f'{name} has {os.path.getsize(path)} bytes, expected '
                                     f"{meta['bytes'][name]}")
                if digests.file_sha256(path) != meta['sha256'][name]:
                    raise ValueError(f'{name} does not match its checksum')
            features = np.load(os.path.join(folder, FEATURES), mmap_mode='r')
            labels = np.load(os.path.join(folder, LABELS))
            if features.shape != tuple(meta['features_shape']) or len(labels) != len(features):
                raise ValueError('shapes differ from meta.json')
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.remove(key)
            return None, f'cached features in {folder} were damaged ({error}); recomputing them'
        os.utime(os.path.join(folder, META))  # the least-recently-used order
        return (features, labels), None

    def save(self, key, features, labels):
        """Stores a set atomically, then trims the cache to its limit (never this set)."""
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
                os.rename(staging, self._folder(key))
            except OSError:
                if not os.path.isdir(self._folder(key)):
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
        shutil.rmtree(doomed, ignore_errors=True)

    def sets(self):
        """[(last use, bytes, key)] of every complete set."""
        found = []
        for name in os.listdir(self.root):
            meta = os.path.join(self.root, name, META)
            if not re.fullmatch('[0-9a-f]{64}', name) or not os.path.isfile(meta):
                continue
            folder = os.path.join(self.root, name)
            try:
                size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
                found.append((os.path.getmtime(meta), size, name))
            except OSError:  # removed meanwhile by another run
                continue
        return sorted(found)

    def evict(self, keep=None):
        """Removes least-recently-used sets until the total is within max_bytes; returns their keys.

        Staging folders that a killed run left behind (over a day old) go too.
        """
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            try:
                stale = (name.endswith(('.partial', '.removed'))
                         and time.time() - os.path.getmtime(path) > STALE_SECONDS)
            except OSError:
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
        sets = self.sets()
        total = sum(size for _, size, _ in sets)
        removed = []
        for _, size, key in sets:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            self.remove(key)
            total -= size
            removed.append(key)
        return removed
