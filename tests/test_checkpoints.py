"""CheckpointKeeper: epoch rotation, best.ckpt as links to the best epoch's files, run state."""
import json
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from finetune_alexnet import checkpoints


def saved_value(prefix):
    return tf.train.load_checkpoint(prefix).get_tensor('value')


def run_epochs(directory, values_and_best, keep=1):
    """Saves one epoch per (value, best) pair, the variable holding `value`."""
    with tf.Graph().as_default():
        variable = tf.get_variable('value', initializer=np.zeros(1000, np.float32))
        keeper = checkpoints.CheckpointKeeper(str(directory), keep)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            for epoch, (value, best) in enumerate(values_and_best, start=1):
                variable.load(np.full(1000, value, np.float32), session)
                keeper.save_epoch(session, epoch, {'epochs_completed': epoch}, best=best)


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
