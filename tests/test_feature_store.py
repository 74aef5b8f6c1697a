"""The shared on-disk pool5 feature store: keys, hits, misses after an image changed, damaged sets
rebuilt, least-recently-used eviction, and two processes writing one set at once."""
import json
import multiprocessing
import os
import shutil
import time

import numpy as np
import pytest

from finetune_alexnet import digests
from finetune_alexnet.train import feature_store
from test_make_lists import time_limit

SETTINGS = {'device': 'cpu', 'mixed_precision': False, 'xla': False, 'skip_bad_images': False}


@pytest.fixture
def images(tmp_path):
    paths = []
    for index in range(3):
        path = tmp_path / f'image{index}.jpg'
        path.write_bytes(bytes([index]) * (100 + index))
        paths.append(str(path))
    return paths


def arrays(count=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, 9216)).astype(np.float32),
            np.eye(2, dtype=np.float32)[rng.integers(0, 2, count)])


def key_of(images, labels=(0, 1, 0), digest='a' * 64):
    return feature_store.set_key(digest, images, labels, 2, SETTINGS)


def test_a_stored_set_is_read_back_exactly_and_memory_mapped(tmp_path, images):
    store = feature_store.FeatureStore(str(tmp_path / 'cache'), 2**30)
    key = key_of(images)
    assert store.load(key) == (None, None)  # a miss
    features, labels = arrays()
    store.save(key, features, labels)
    (loaded_features, loaded_labels), note = store.load(key)
    assert note is None
    assert isinstance(loaded_features, np.memmap)
    np.testing.assert_array_equal(loaded_features, features)
    np.testing.assert_array_equal(loaded_labels, labels)
    assert not [name for name in os.listdir(store.root) if name.startswith('.')]  # no staging left


def test_the_key_changes_with_what_determines_the_features(images):
    key = key_of(images)
    assert key_of(images) == key  # stable
    assert key_of(images, digest='b' * 64) != key  # other conv weights
    assert key_of(images, labels=(1, 1, 0)) != key
    assert feature_store.set_key('a' * 64, images, (0, 1, 0), 2, {**SETTINGS, 'mixed_precision': True}) != key
    assert key_of(images[:2], labels=(0, 1)) != key
    # An image rewritten (another size, or the same size with a new modification time): a miss.
    with open(images[1], 'wb') as stream:
        stream.write(b'x' * 50)
    assert key_of(images) != key
    changed = key_of(images)
    stat = os.stat(images[1])
    os.utime(images[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert key_of(images) != changed


def test_the_conv_digest_covers_names_shapes_and_values():
    base = {'conv1/weights': np.ones((2, 3), np.float32), 'conv1/biases': np.zeros(3, np.float32)}
    digest = feature_store.arrays_digest(base)
    assert feature_store.arrays_digest(dict(base)) == digest
    assert feature_store.arrays_digest({**base, 'conv1/biases': np.full(3, 1e-7, np.float32)}) != digest
    assert feature_store.arrays_digest({**base, 'conv1/weights': np.ones((3, 2), np.float32)}) != digest


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'delete_labels', 'bad_meta'])
def test_a_damaged_set_is_detected_removed_and_can_be_rebuilt(tmp_path, images, damage):
    store = feature_store.FeatureStore(str(tmp_path / 'cache'), 2**30)
    key = key_of(images)
    features, labels = arrays()
    store.save(key, features, labels)
    folder = os.path.join(store.root, key)
    path = os.path.join(folder, feature_store.FEATURES)
    if damage == 'truncate':
        with open(path, 'r+b') as stream:
            stream.truncate(os.path.getsize(path) - 100)
    elif damage == 'flip':  # same size, one byte of one feature changed
        with open(path, 'r+b') as stream:
            stream.seek(os.path.getsize(path) - 7)
            byte = stream.read(1)
            stream.seek(-1, os.SEEK_CUR)
            stream.write(bytes([byte[0] ^ 0xFF]))
    elif damage == 'delete_labels':
        os.remove(os.path.join(folder, feature_store.LABELS))
    else:
        with open(os.path.join(folder, feature_store.META), 'w') as stream:
            stream.write('{"format": 1, "bytes"')
    stored, note = store.load(key)
    assert stored is None and 'damaged' in note and folder in note
    assert not os.path.exists(folder)
    store.save(key, features, labels)  # the rebuild
    (loaded, _), note = store.load(key)
    assert note is None
    np.testing.assert_array_equal(loaded, features)


def test_least_recently_used_sets_are_evicted_beyond_the_limit(tmp_path, images):
    features, labels = arrays()
    one_set = features.nbytes + labels.nbytes + 1000  # with the .npy headers and meta.json
    store = feature_store.FeatureStore(str(tmp_path / 'cache'), int(2.5 * one_set))
    keys = [key_of(images, digest=str(index) * 64) for index in range(3)]
    now = time.time()
    for age, key in zip((30, 20, 10), keys):
        store.save(key, features, labels)
        meta = os.path.join(store.root, key, feature_store.META)
        os.utime(meta, (now - age, now - age))
    assert sorted(name for _, _, name in store.sets()) == sorted(keys[1:])  # the oldest went
    store.load(keys[1])  # used: now the most recent
    store.save(keys[0], features, labels)
    assert {name for _, _, name in store.sets()} == {keys[0], keys[1]}  # keys[2] was least recent


def _write_and_read(root, key, seed, barrier, results):
    features, labels = arrays(count=200, seed=seed)
    store = feature_store.FeatureStore(root, 2**30)
    barrier.wait()
    store.save(key, features, labels)
    stored, note = store.load(key)
    results.put((note, None if stored is None else float(np.asarray(stored[0]).sum())))


def test_two_processes_storing_one_set_at_once_both_succeed(tmp_path, images):
    """Both write the same key at the same moment (here with different contents, to see whose copy
    won): each finishes, each reads a whole, checksummed set, and exactly one set remains."""
    root, key = str(tmp_path / 'cache'), key_of(images)
    context = multiprocessing.get_context('spawn')
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_write_and_read, args=(root, key, seed, barrier, results))
               for seed in (1, 2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [note for note, _ in outcomes] == [None, None]
    sums = {float(arrays(count=200, seed=seed)[0].sum()) for seed in (1, 2)}
    assert {total for _, total in outcomes} <= sums
    assert os.listdir(root) == [key]  # one set, no staging folder left behind
    (features, _), _ = feature_store.FeatureStore(root, 2**30).load(key)
    assert float(np.asarray(features).sum()) in sums


def test_an_unusable_cache_dir_is_one_line(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(feature_store.ToolkitError, match=f'--cache_dir {blocker}/sub: cannot create it'):
        feature_store.FeatureStore(str(blocker / 'sub'), 2**30)


def test_staging_left_by_a_killed_run_is_cleared_after_a_day(tmp_path, images):
    store = feature_store.FeatureStore(str(tmp_path / 'cache'), 2**30)
    old = os.path.join(store.root, '.abc.partial')
    fresh = os.path.join(store.root, '.def.partial')
    for folder in (old, fresh):
        os.makedirs(folder)
    day_ago = time.time() - feature_store.STALE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    store.save(key_of(images), *arrays())
    assert not os.path.exists(old) and os.path.exists(fresh)  # fresh: perhaps another run's, writing


# --- hostile sets: whatever the cache folder holds, a set is used whole or removed with a note ------

def stored_set(tmp_path, images):
    store = feature_store.FeatureStore(str(tmp_path / 'cache'), 2**30)
    key = key_of(images)
    store.save(key, *arrays())
    return store, key, os.path.join(store.root, key)


def edit_meta(folder, change):
    path = os.path.join(folder, feature_store.META)
    with open(path) as stream:
        meta = json.load(stream)
    change(meta)
    with open(path, 'w') as stream:
        json.dump(meta, stream)


def set_field(field, value):
    return lambda meta: meta.update({field: value})


HOSTILE_META = [
    ('format true', set_field('format', True), 'format is not 1'),
    ('format 2', set_field('format', 2), 'format is not 1'),
    ('extra field', set_field('path', '../../etc'), 'does not have the fields'),
    ('missing field', lambda meta: meta.pop('created'), 'does not have the fields'),
    ('shape negative', set_field('features_shape', [3, -1]), 'features_shape is not two sizes'),
    ('shape string', set_field('features_shape', 'big'), 'features_shape is not two sizes'),
    ('shape bools', set_field('features_shape', [True, True]), 'features_shape is not two sizes'),
    ('shape lies', lambda meta: meta.update(features_shape=[1, 3 * 9216]), 'meta.json says (1, 27648)'),
    ('bytes infinite', lambda meta: meta['bytes'].update({'features.npy': float('inf')}),
     'bytes is not one entry'),
    ('bytes huge', lambda meta: meta['bytes'].update({'features.npy': 10**30}), 'expected 10000000'),
    ('bytes other file', lambda meta: meta['bytes'].update({'../../x': 1}), 'bytes is not one entry'),
    ('sha not hex', lambda meta: meta['sha256'].update({'labels.npy': 'z' * 64}), 'sha256 is not one entry'),
    ('sha a number', lambda meta: meta['sha256'].update({'labels.npy': 7}), 'sha256 is not one entry'),
    ('created nan', set_field('created', float('nan')), 'created is not a time'),
    ('not an object', lambda meta: meta.clear(), 'does not have the fields'),
]


@pytest.mark.parametrize('change, message', [case[1:] for case in HOSTILE_META],
                         ids=[case[0] for case in HOSTILE_META])
def test_every_meta_field_is_checked(tmp_path, images, change, message):
    store, key, folder = stored_set(tmp_path, images)
    edit_meta(folder, change)
    stored, note = store.load(key)
    assert stored is None and note.startswith(f'cached features in {folder} were damaged (')
    assert message in note and '\n' not in note
    assert not os.path.exists(folder)


@pytest.mark.parametrize('content', [b'[' * 100000, b'\xff\xfe', b'{"format": ' + b'9' * 5000 + b'}',
                                     b'"a string"', b' ' * (feature_store.MAX_META_BYTES + 1)],
                         ids=['deep', 'not utf-8', 'long number', 'string', 'oversized'])
def test_damaged_meta_json_is_a_note_not_a_traceback(tmp_path, images, content):
    store, key, folder = stored_set(tmp_path, images)
    with open(os.path.join(folder, feature_store.META), 'wb') as stream:
        stream.write(content)
    stored, note = store.load(key)
    assert stored is None and 'damaged' in note and len(note) < 300
    assert not os.path.exists(folder)


def test_consistent_but_foreign_arrays_are_refused(tmp_path, images):
    """A meta.json that agrees with its files (sizes, checksums) still holds only float32 matrices."""
    store, key, folder = stored_set(tmp_path, images)
    for name, array in ((feature_store.LABELS, np.arange(3, dtype=np.float64)),
                        (feature_store.LABELS, np.array([{'code': 'x'}], dtype=object))):
        path = os.path.join(folder, name)
        np.save(path, array, allow_pickle=True)
        edit_meta(folder, lambda meta: (meta['bytes'].update({name: os.path.getsize(path)}),
                                        meta['sha256'].update({name: digests.file_sha256(path)})))
        stored, note = store.load(key)
        assert stored is None and 'damaged' in note
        assert not os.path.exists(folder)
        store, key, folder = stored_set(tmp_path, images)


def test_links_and_special_files_are_never_followed_and_nothing_outside_is_touched(tmp_path, images):
    store, key, folder = stored_set(tmp_path, images)
    outside = tmp_path / 'outside'
    shutil.copytree(folder, outside)  # a whole, valid set, outside the cache
    before = sorted((name, (outside / name).read_bytes()) for name in os.listdir(outside))

    # A file of the set that is a symlink to a file outside (same content, so every check passes).
    os.remove(os.path.join(folder, feature_store.FEATURES))
    os.symlink(outside / feature_store.FEATURES, os.path.join(folder, feature_store.FEATURES))
    stored, note = store.load(key)
    assert stored is None and 'features.npy is not a regular file' in note and not os.path.lexists(folder)

    # The set folder itself a symlink to the valid set outside.
    os.symlink(outside, folder)
    assert store.sets() == []  # neither counted nor evicted
    stored, note = store.load(key)
    assert stored is None and 'not a folder' in note and not os.path.lexists(folder)

    # meta.json a FIFO: opening it would wait for a writer forever.
    store, key, folder = stored_set(tmp_path, images)
    os.remove(os.path.join(folder, feature_store.META))
    os.mkfifo(os.path.join(folder, feature_store.META))
    with time_limit():
        stored, note = store.load(key)
    assert stored is None and 'meta.json is not a regular file' in note and not os.path.lexists(folder)

    # A stale staging entry that is a symlink to a folder outside: the link goes, not the folder.
    stale = os.path.join(store.root, '.abcdef.partial')
    os.symlink(outside, stale)
    day_ago = time.time() - feature_store.STALE_SECONDS - 60
    os.utime(stale, (day_ago, day_ago), follow_symlinks=False)
    store.evict()
    assert not os.path.lexists(stale)
    assert sorted((name, (outside / name).read_bytes()) for name in os.listdir(outside)) == before


def test_a_key_is_one_entry_of_the_root(tmp_path):
    store = feature_store.FeatureStore(str(tmp_path / 'cache'), 2**30)
    for key in ('../' + 'a' * 61, 'A' * 64, 'a' * 63):
        with pytest.raises(ValueError, match='not a feature set key'):
            store.load(key)
