"""run_state.json: written whole, read back the same, and every field checked on reading."""
import dataclasses
import json

import pytest

from finetune_alexnet import run_state
from finetune_alexnet.errors import ToolkitError

VALID = {'args': {'learning_rate': 0.01}, 'settings': {'batch_size': 4}, 'run_name': '2026-12-05_2029',
         'order_seed': 7, 'epochs_completed': 1, 'latest_checkpoint': 'model_epoch1.ckpt',
         'epoch_checkpoints': ['model_epoch1.ckpt'],
         'history': [{'epoch': 1, 'step': 3, 'val_accuracy': 0.5}],
         'best_val_accuracy': 0.5, 'best_epoch': 1, 'best_val_loss': 0.7, 'init_val_accuracy': None,
         'phase': None}


def test_a_state_written_reads_back_equal(tmp_path):
    state = run_state.RunState(**VALID)
    run_state.write(str(tmp_path), state)
    assert run_state.read(str(tmp_path)) == state
    assert json.loads((tmp_path / run_state.FILE_NAME).read_text()) == VALID
    assert state.last_step == 3
    assert run_state.read(str(tmp_path / 'elsewhere')) is None


@pytest.mark.parametrize('content, message', [
    ('null', 'expected a JSON object, found NoneType'),
    ('[]', 'expected a JSON object, found list'),
    (json.dumps({k: v for k, v in VALID.items() if k != 'latest_checkpoint'}),
     "the field 'latest_checkpoint' is missing"),
    (json.dumps(dict(VALID, surprise=1)), "unknown field 'surprise'"),
    (json.dumps(dict(VALID, epochs_completed='1')), "epochs_completed should be an integer, found '1'"),
    (json.dumps(dict(VALID, epochs_completed=True)), 'epochs_completed should be an integer, found True'),
    (json.dumps(dict(VALID, epochs_completed=-1)), 'epochs_completed should be >= 0, found -1'),
    (json.dumps(dict(VALID, history=None)), 'history should be a list, found None'),
    (json.dumps(dict(VALID, history=[1])), 'history should be a list of epoch records'),
    (json.dumps(dict(VALID, history=[{'epoch': 1}])), 'history should be a list of epoch records'),
    (json.dumps(dict(VALID, latest_checkpoint='../x.ckpt')), "'../x.ckpt' is not a checkpoint name"),
    (json.dumps(dict(VALID, epoch_checkpoints=['..'])), "'..' is not a checkpoint name"),
    (json.dumps(dict(VALID, run_name='../elsewhere')), "run_name '../elsewhere' is not a folder name"),
    (json.dumps(dict(VALID, run_name='/tmp/x')), "run_name '/tmp/x' is not a folder name"),
    (json.dumps(dict(VALID, best_val_loss='NaN')), 'best_val_loss should be'),
    (json.dumps(VALID).replace('0.7', 'Infinity'), 'best_val_loss should be finite'),
    ('{"epochs_completed": ', 'unreadable run state'),
])
def test_a_bad_run_state_is_refused_in_one_line_naming_the_field(tmp_path, content, message):
    (tmp_path / run_state.FILE_NAME).write_text(content)
    with pytest.raises(ToolkitError) as error:
        run_state.read(str(tmp_path))
    assert str(error.value).startswith(str(tmp_path / run_state.FILE_NAME) + ': ')
    assert message in str(error.value) and '\n' not in str(error.value)


def test_a_write_that_fails_leaves_the_previous_file(tmp_path, monkeypatch):
    state = run_state.RunState(**VALID)
    run_state.write(str(tmp_path), state)
    before = (tmp_path / run_state.FILE_NAME).read_text()

    def failing_dump(content, stream, **kwargs):
        stream.write('{"half": ')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(run_state.json, 'dump', failing_dump)
    with pytest.raises(OSError):
        run_state.write(str(tmp_path), dataclasses.replace(state, epochs_completed=2))
    assert (tmp_path / run_state.FILE_NAME).read_text() == before
