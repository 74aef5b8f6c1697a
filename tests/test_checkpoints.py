"""CheckpointKeeper: epoch rotation, best.ckpt as links to the best epoch's files, run state."""
import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import datagenerator
from finetune_alexnet import checkpoints
from finetune_alexnet import run_state
from finetune_alexnet.errors import ToolkitError


def saved_value(prefix):
    return tf.train.load_checkpoint(prefix).get_tensor('value')


def new_state(**fields):
    return run_state.RunState(args={}, settings={}, run_name='run', order_seed=1, **fields)


def run_epochs(directory, values_and_best, keep=1):
    """Saves one epoch per (value, best) pair, the variable holding `value`."""
    with tf.Graph().as_default():
        variable = tf.get_variable('value', initializer=np.zeros(1000, np.float32))
        keeper = checkpoints.CheckpointKeeper(str(directory), keep)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            for epoch, (value, best) in enumerate(values_and_best, start=1):
                variable.load(np.full(1000, value, np.float32), session)
                keeper.save_epoch(session, epoch, new_state(epochs_completed=epoch), best=best)


def test_best_outlives_the_rotation_of_its_epoch_checkpoint(tmp_path):
    run_epochs(tmp_path, [(1.0, True), (2.0, False)])
    assert not os.path.exists(tmp_path / 'model_epoch1.ckpt.index')  # keep=1 removed epoch 1
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'best.ckpt')), np.full(1000, 1.0))
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'model_epoch2.ckpt')), np.full(1000, 2.0))
    state = json.loads((tmp_path / checkpoints.RUN_STATE).read_text())
    assert state['latest_checkpoint'] == 'model_epoch2.ckpt'
    assert state['epoch_checkpoints'] == ['model_epoch2.ckpt']


def test_best_is_the_same_files_as_the_best_epoch(tmp_path):
    run_epochs(tmp_path, [(1.0, True), (2.0, False), (3.0, True)], keep=2)
    for suffix in ('.index', '.data-00000-of-00001'):
        assert os.path.samefile(tmp_path / f'best.ckpt{suffix}', tmp_path / f'model_epoch3.ckpt{suffix}')
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'best.ckpt')), np.full(1000, 3.0))
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'model_epoch2.ckpt')), np.full(1000, 2.0))
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith('best')) == [
        'best.ckpt.data-00000-of-00001', 'best.ckpt.index']


def test_best_is_copied_where_links_are_refused(tmp_path, monkeypatch):
    def refuse(source, target):
        raise PermissionError(1, 'Operation not permitted')
    monkeypatch.setattr(os, 'link', refuse)
    run_epochs(tmp_path, [(1.0, True), (2.0, True)], keep=1)
    assert not os.path.samefile(tmp_path / 'best.ckpt.index', tmp_path / 'model_epoch2.ckpt.index')
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'best.ckpt')), np.full(1000, 2.0))


@pytest.mark.parametrize('leftover', ['best.ckpt.index.partial', 'best.ckpt.data-00000-of-00001.partial'])
def test_a_partial_file_left_by_a_crash_is_replaced(tmp_path, leftover):
    (tmp_path / leftover).write_bytes(b'half written')
    run_epochs(tmp_path, [(4.0, True)])
    assert not os.path.exists(tmp_path / leftover)
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'best.ckpt')), np.full(1000, 4.0))


def test_saving_an_epoch_again_leaves_best_linked_to_it_unchanged(tmp_path):
    """A run that crashed after saving epoch 1 but before run_state.json said so saves epoch 1
    again on --resume: TensorFlow must write new files rather than through best.ckpt's links."""
    run_epochs(tmp_path, [(1.0, True)])
    run_epochs(tmp_path, [(5.0, False)])
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'model_epoch1.ckpt')), np.full(1000, 5.0))
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'best.ckpt')), np.full(1000, 1.0))


# --- damaged checkpoints, run_state.json validation, resume settings, a full disk ---

def small_checkpoint(directory, epochs=2, keep=2):
    """Epoch checkpoints of a 1000-float variable; returns the run state the keeper wrote."""
    run_epochs(directory, [(float(epoch), False) for epoch in range(1, epochs + 1)], keep=keep)
    return run_state.read(str(directory))


def truncate(path, size=None):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 if size is None else size])


def flip_byte(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage, culprit', [
    (lambda prefix: truncate(prefix.with_name(prefix.name + '.data-00000-of-00001')), '.data-'),
    (lambda prefix: truncate(prefix.with_name(prefix.name + '.data-00000-of-00001'), 0), '.data-'),
    (lambda prefix: flip_byte(prefix.with_name(prefix.name + '.data-00000-of-00001'), 1500), '.data-'),
    (lambda prefix: truncate(prefix.with_name(prefix.name + '.index'), 0), '.index'),
    (lambda prefix: truncate(prefix.with_name(prefix.name + '.index')), '.index'),
])
def test_verify_names_the_damaged_file(tmp_path, damage, culprit):
    small_checkpoint(tmp_path)
    prefix = tmp_path / 'model_epoch2.ckpt'
    assert checkpoints.verify_checkpoint(str(prefix)) is None
    damage(prefix)
    damaged_file, reason = checkpoints.verify_checkpoint(str(prefix))
    assert culprit in damaged_file and damaged_file.startswith(str(prefix)) and reason
    with pytest.raises(ToolkitError, match=r'^' + re.escape(damaged_file) + ': damaged checkpoint'):
        checkpoints.check_intact(str(prefix))
    assert checkpoints.verify_checkpoint(str(tmp_path / 'model_epoch1.ckpt')) is None


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    state = small_checkpoint(tmp_path, epochs=3, keep=3)
    state.history = [{'epoch': epoch, 'step': epoch, 'val_accuracy': accuracy}
                     for epoch, accuracy in ((1, 0.5), (2, 0.9), (3, 0.7))]
    truncate(tmp_path / 'model_epoch3.ckpt.data-00000-of-00001')
    prefix, cut = checkpoints.restorable_checkpoint(str(tmp_path), state)
    assert prefix == str(tmp_path / 'model_epoch2.ckpt')
    assert cut.epochs_completed == 2 and [r['epoch'] for r in cut.history] == [1, 2]
    assert cut.best_epoch == 2 and cut.best_val_accuracy == 0.9
    assert cut.epoch_checkpoints == ['model_epoch1.ckpt', 'model_epoch2.ckpt']
    assert 'model_epoch3.ckpt.data-00000-of-00001 is damaged' in capsys.readouterr().err
    for name in ('model_epoch1.ckpt', 'model_epoch2.ckpt'):
        flip_byte(tmp_path / f'{name}.data-00000-of-00001', 100)
    with pytest.raises(ToolkitError, match='no intact checkpoint to resume'):
        checkpoints.restorable_checkpoint(str(tmp_path), state)


def test_a_fall_back_past_the_best_epoch_relinks_best_or_removes_it(tmp_path, capsys):
    # Epoch 3 was the best; damaging it damages best.ckpt too (the same files). Falling back to
    # epoch 2 makes epoch 2 the best again, and best.ckpt its files, while epoch 2 is kept.
    run_epochs(tmp_path, [(1.0, True), (2.0, True), (3.0, True)], keep=3)
    state = run_state.read(str(tmp_path))
    state.history = [{'epoch': epoch, 'step': epoch, 'val_accuracy': accuracy}
                     for epoch, accuracy in ((1, 0.5), (2, 0.7), (3, 0.9))]
    state.best_epoch, state.best_val_accuracy = 3, 0.9
    truncate(tmp_path / 'model_epoch3.ckpt.data-00000-of-00001')
    assert checkpoints.verify_checkpoint(str(tmp_path / 'best.ckpt')) is not None
    _, cut = checkpoints.restorable_checkpoint(str(tmp_path), state)
    assert cut.best_epoch == 2
    checkpoints.repair_best(str(tmp_path), 3, cut)
    for suffix in ('.index', '.data-00000-of-00001'):
        assert os.path.samefile(tmp_path / f'best.ckpt{suffix}', tmp_path / f'model_epoch2.ckpt{suffix}')
    np.testing.assert_array_equal(saved_value(str(tmp_path / 'best.ckpt')), np.full(1000, 2.0))
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"warning: {tmp_path / 'best.ckpt'} held epoch 3, which is trained again; it holds epoch 2 again")
    # A best epoch no longer kept cannot be linked: best.ckpt goes (the folder then means latest).
    checkpoints.repair_best(str(tmp_path), 3, dataclasses.replace(cut, epoch_checkpoints=['model_epoch1.ckpt']))
    assert not list(tmp_path.glob('best.ckpt*'))
    assert 'removed it (the best epoch before it is no longer kept)' in capsys.readouterr().err
    # A best epoch at or before the one resumed from is left alone.
    (tmp_path / 'best.ckpt.index').write_bytes(b'kept')
    checkpoints.repair_best(str(tmp_path), 2, cut)
    assert (tmp_path / 'best.ckpt.index').read_bytes() == b'kept'


def test_other_settings_are_named_with_old_and_new_values(tmp_path):
    saved = {'batch_size': 4, 'optimizer': 'sgd', 'train_file_sha256': 'aa', 'augment': False}
    checkpoints.check_same_settings(str(tmp_path), saved, dict(saved))
    with pytest.raises(ToolkitError) as error:
        checkpoints.check_same_settings(str(tmp_path), saved, dict(saved, batch_size=2,
                                                                   train_file_sha256='bb'))
    assert "batch_size 4 -> 2; train_file_sha256 'aa' -> 'bb'" in str(error.value)
    assert 'optimizer' not in str(error.value)


@pytest.mark.parametrize('where', ['checkpoint', 'run_state'])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    """A failing write (ENOSPC) in the save or in run_state.json: one message, no partial file, and
    the previous checkpoint and run_state.json still resumable."""
    with tf.Graph().as_default():
        variable = tf.get_variable('value', initializer=np.zeros(1000, np.float32))
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), 2)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            variable.load(np.full(1000, 1.0, np.float32), session)
            state = new_state(epochs_completed=1)
            keeper.save_epoch(session, 1, state)
            before = (tmp_path / checkpoints.RUN_STATE).read_text()
            if where == 'checkpoint':
                def full_disk_save(saver, sess, prefix, **kwargs):
                    # What TensorFlow leaves when the disk fills mid-write: a temporary data file.
                    with open(prefix + '.data-00000-of-00001.tempstate123', 'wb') as stream:
                        stream.write(b'\0' * 4096)
                    raise tf.errors.ResourceExhaustedError(None, None, f'{prefix}.data-00000-of-'
                                                           '00001.tempstate123; No space left on device')
                monkeypatch.setattr(tf.train.Saver, 'save', full_disk_save)
            else:
                real_dump = json.dump

                def full_disk_dump(content, stream, **kwargs):
                    real_dump(content, stream, **kwargs)
                    raise OSError(28, 'No space left on device')
                monkeypatch.setattr(run_state.json, 'dump', full_disk_dump)
            variable.load(np.full(1000, 2.0, np.float32), session)
            with pytest.raises(checkpoints.DiskFull) as error:
                keeper.save_epoch(session, 2, dataclasses.replace(state, epochs_completed=2))
    message = str(error.value)
    assert message.startswith(f'{tmp_path}: disk full while saving model_epoch2.ckpt (needs about ')
    assert '(needs about 4,000 bytes, ' in message  # the variable: 1000 float32
    assert ' free); model_epoch1.ckpt and run_state.json are intact' in message
    left = sorted(os.listdir(tmp_path))
    assert not [name for name in left if 'model_epoch2' in name or 'tempstate' in name
                or name.endswith('.partial')], left
    assert (tmp_path / checkpoints.RUN_STATE).read_text() == before
    state = run_state.read(str(tmp_path))
    prefix, _ = checkpoints.restorable_checkpoint(str(tmp_path), state)
    np.testing.assert_array_equal(saved_value(prefix), np.full(1000, 1.0))


# --- end to end through finetune.py: exact resume, resume checks, damaged run folders ---

import importlib  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402

import finetune  # noqa: E402
import tiny_runs  # noqa: E402
from finetune_alexnet import cli  # noqa: E402
from finetune_alexnet.train import progress  # noqa: E402


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('data'))


def all_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def stop_at(monkeypatch, epoch, step, signum=signal.SIGTERM):
    """Send this process `signum` (a real signal) right after training step `step` of `epoch`."""
    real_update = progress.EpochProgress.update

    def update(bar, done, *args):
        real_update(bar, done, *args)
        if bar.epoch == epoch and done == step:
            os.kill(os.getpid(), signum)
    monkeypatch.setattr(progress.EpochProgress, 'update', update)


@pytest.mark.slow
@pytest.mark.parametrize('path', ['images', 'cached_features'])
def test_a_run_stopped_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(
        dataset, tmp_path, monkeypatch, capsys, bvlc_npy, path):
    """3 steps per epoch, stopped after step 2 of epoch 2: the resume must train step 3 of epoch 2 on
    that epoch's last batch, not restart the epoch's order and train its first again."""
    weights = bvlc_npy if path == 'cached_features' else None
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    assert cli.run(finetune.main, tiny_runs.flags(dataset, straight, weights=weights)) == 0
    assert ('caching pool5 features' in capsys.readouterr().out) == (path == 'cached_features')
    with monkeypatch.context() as patch:
        stop_at(patch, epoch=2, step=2)
        assert cli.run(finetune.main, tiny_runs.flags(dataset, stopped, weights=weights)) == 143
    out = capsys.readouterr()
    assert 'SIGTERM: saving a checkpoint after this step' in out.err
    assert 'interrupted_step5.ckpt at step 5; continue with --resume' in out.out
    assert tiny_runs.read_state(stopped)['latest_checkpoint'] == 'interrupted_step5.ckpt'
    assert cli.run(finetune.main, tiny_runs.flags(dataset, stopped, '--resume', weights=weights)) == 0
    expected = all_tensors(straight / 'ckpt' / 'model_epoch2.ckpt')
    found = all_tensors(stopped / 'ckpt' / 'model_epoch2.ckpt')
    assert sorted(found) == sorted(expected) and found['global_step'] == 6
    for name, value in expected.items():
        np.testing.assert_allclose(found[name], value, rtol=0, atol=1e-6, err_msg=name)
    assert not list((stopped / 'ckpt').glob('interrupted*'))  # the epoch's save replaced it
    state = tiny_runs.read_state(stopped)
    assert [record['step'] for record in state['history']] == [3, 6]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, dataset):
    """A two-epoch run (both epoch checkpoints kept)."""
    run_dir = tmp_path_factory.mktemp('finished')
    assert cli.run(finetune.main, tiny_runs.flags(dataset, run_dir)) == 0
    return run_dir


def linked_copy(run_dir, tmp_path):
    """A copy of the run whose files are hard links (cheap): damage a file by replacing it, never in place."""
    shutil.copytree(run_dir / 'ckpt', tmp_path / 'ckpt', copy_function=os.link)
    return tmp_path


def replace_file(path, change):
    data = bytearray(path.read_bytes())
    data = change(data)
    path.unlink()  # breaks the hard link: the original run stays intact
    path.write_bytes(bytes(data))


def test_resume_with_other_settings_is_refused_naming_each(dataset, finished_run, tmp_path, capsys):
    run_dir = linked_copy(finished_run, tmp_path)
    changed = tmp_path / 'train.txt'
    changed.write_text(''.join(line.replace('images/', str(dataset / 'images') + '/') + '\n'
                               for line in (dataset / 'train.txt').read_text().splitlines()[:-4]))
    args = tiny_runs.flags(dataset, run_dir, '--resume', '--num_epochs', '3', batch_size=2)
    args[args.index('--train_file') + 1] = str(changed)
    before = (run_dir / 'ckpt' / 'run_state.json').read_text()
    assert cli.run(finetune.main, args) == 2
    line = tiny_runs.one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {run_dir / 'ckpt' / 'run_state.json'}: the run was started with "
                           'other settings (batch_size 4 -> 2; train_file_sha256 ')
    assert "optimizer" not in line and 'resume with the run' in line
    assert (run_dir / 'ckpt' / 'run_state.json').read_text() == before


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_latest_checkpoint(dataset, finished_run, tmp_path, capsys):
    run_dir = linked_copy(finished_run, tmp_path)
    best_epoch = tiny_runs.read_state(run_dir)['best_epoch']
    replace_file(run_dir / 'ckpt' / 'model_epoch2.ckpt.data-00000-of-00001', lambda data: data[:1000])
    result = tiny_runs.run_here(capsys, tiny_runs.flags(dataset, run_dir, '--resume', '--num_epochs', '3'))
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr
    warning, *best_warning = result.stderr.strip().splitlines()
    assert warning.startswith(f"warning: {run_dir / 'ckpt' / 'model_epoch2.ckpt.data-00000-of-00001'} "
                              "is damaged (tensor conv1/")
    assert warning.endswith('Read less bytes than requested); resuming from model_epoch1.ckpt instead')
    # best.ckpt never holds an epoch that is trained again (see the unit test for how it is mended).
    assert best_warning == ([f"warning: {run_dir / 'ckpt' / 'best.ckpt'} held epoch 2, which is trained "
                             'again; it holds epoch 1 again'] if best_epoch == 2 else [])
    state = tiny_runs.read_state(run_dir)
    assert [record['step'] for record in state['history']] == [3, 6, 9]
    metrics = [json.loads(line) for line in (run_dir / 'ckpt' / 'metrics.jsonl').read_text().splitlines()]
    assert [record['epoch'] for record in metrics] == [1, 2, 3]  # epoch 2's first record replaced
    assert tf.train.load_checkpoint(str(run_dir / 'ckpt' / 'model_epoch3.ckpt')).get_tensor(
        'global_step') == 9


def test_no_intact_checkpoint_is_one_line(dataset, finished_run, tmp_path, capsys):
    run_dir = linked_copy(finished_run, tmp_path)
    for name in ('model_epoch1.ckpt', 'model_epoch2.ckpt'):
        replace_file(run_dir / 'ckpt' / f'{name}.data-00000-of-00001',
                     lambda data: data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:])
    result = tiny_runs.run_here(capsys, tiny_runs.flags(dataset, run_dir, '--resume', '--num_epochs', '3'))
    assert result.returncode == 2
    line = tiny_runs.one_error_line(result.stderr)
    assert line.startswith(f"error: {run_dir / 'ckpt'}: no intact checkpoint to resume "
                           '(model_epoch2.ckpt, model_epoch1.ckpt: ')
    assert 'model_epoch2.ckpt.data-00000-of-00001 is damaged' in line
    assert sorted(p.name for p in (run_dir / 'ckpt').glob('model_epoch*')) == [
        'model_epoch1.ckpt.data-00000-of-00001', 'model_epoch1.ckpt.index',
        'model_epoch2.ckpt.data-00000-of-00001', 'model_epoch2.ckpt.index']


@pytest.mark.parametrize('content, message', [
    ('null', 'expected a JSON object, found NoneType'),
    ('[]', 'expected a JSON object, found list'),
    ('{"epochs_completed": 2}', "the field 'args' is missing"),
])
def test_resume_with_a_broken_run_state_is_one_line(dataset, finished_run, tmp_path, capsys,
                                                      content, message):
    run_dir = linked_copy(finished_run, tmp_path)
    (run_dir / 'ckpt' / 'run_state.json').unlink()
    (run_dir / 'ckpt' / 'run_state.json').write_text(content)
    assert cli.run(finetune.main, tiny_runs.flags(dataset, run_dir, '--resume', '--num_epochs', '3')) == 2
    line = tiny_runs.one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {run_dir / 'ckpt' / 'run_state.json'}: ") and message in line
    assert not (run_dir / 'ckpt' / 'model_epoch3.ckpt.index').exists()


@pytest.mark.parametrize('command', ['predict', 'export'])
def test_predict_and_export_name_the_damaged_file(dataset, finished_run, tmp_path, capsys, command):
    run_dir = linked_copy(finished_run, tmp_path)
    damaged = run_dir / 'ckpt' / 'best.ckpt.data-00000-of-00001'
    replace_file(damaged, lambda data: data[:-10])
    args = (['--checkpoint_path', str(run_dir / 'ckpt'), str(dataset / 'images' / 'disk')]
            if command == 'predict' else
            ['--checkpoint_path', str(run_dir / 'ckpt'), '--output', str(tmp_path / 'out.npz')])
    assert cli.run(importlib.import_module(command).main, args) == 2
    line = tiny_runs.one_error_line(capsys.readouterr().err)
    assert line.startswith(f'error: {damaged}: damaged checkpoint (tensor ')
    assert not (tmp_path / 'out.npz').exists()


def test_an_unseeded_run_resumes_with_its_own_shuffle_orders(dataset, tmp_path, monkeypatch, capsys):
    """Without --seed the orders come from a seed drawn once per run and kept in run_state.json:
    skipping the consumed part of another order would train some images twice and others never."""
    args = tiny_runs.flags(dataset, tmp_path, '--keep_checkpoints', '1')
    del args[args.index('--seed'):args.index('--seed') + 2]
    with monkeypatch.context() as patch:
        stop_at(patch, epoch=1, step=2)
        assert cli.run(finetune.main, args) == 143
    order_seed = tiny_runs.read_state(tmp_path)['order_seed']
    assert isinstance(order_seed, int)
    seeds = []
    real_init = datagenerator.ImageDataGenerator.__init__

    def recording_init(generator, *init_args, **kwargs):
        seeds.append(kwargs.get('seed'))
        real_init(generator, *init_args, **kwargs)
    monkeypatch.setattr(datagenerator.ImageDataGenerator, '__init__', recording_init)
    assert cli.run(finetune.main, args + ['--resume', '--num_epochs', '1']) == 0
    assert seeds[0] == order_seed  # the training generator (validation is not shuffled)
    assert tiny_runs.read_state(tmp_path)['order_seed'] == order_seed
    capsys.readouterr()


def test_export_into_a_folder_is_one_line_and_leaves_nothing(finished_run, tmp_path, capsys):
    import export
    folder = tmp_path / 'out'
    folder.mkdir()
    assert cli.run(export.main, ['--checkpoint_path', str(finished_run / 'ckpt'),
                                 '--output', str(folder)]) == 2
    assert tiny_runs.one_error_line(capsys.readouterr().err) == \
        f'error: {folder}: --output (--format npz writes a file) is a folder; give a file name'
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ['out']
