"""SIGTERM, SIGHUP and Ctrl-C stop a real finetune.py after saving; a second signal aborts cleanly.

The handling is one handler for the three signals, so SIGHUP is checked in this process and the
end-to-end runs (a subprocess each: a signal must reach a real process) use SIGINT and SIGTERM."""
import os
import signal
import threading
import time

import pytest
import tensorflow.compat.v1 as tf

import tiny_runs
from finetune_alexnet import checkpoints
from finetune_alexnet import run_state
from finetune_alexnet import signals


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('data'))


def wait_for(path, process, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline and process.poll() is None:
        if path.exists():
            return
        time.sleep(0.1)
    raise AssertionError(f'{path} did not appear (exit status {process.poll()})')


def assert_consistent(ckpt):
    """run_state.json points at a checkpoint that reads back whole; nothing it does not list is left."""
    state = run_state.read(str(ckpt))
    assert checkpoints.verify_checkpoint(str(ckpt / state.latest_checkpoint)) is None
    return state


@pytest.mark.parametrize('first, second', [(signal.SIGHUP, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT),
                                           (signal.SIGINT, signal.SIGHUP)])
def test_stop_requests_flag_the_first_signal_and_abort_on_the_second(capsys, first, second):
    before = {signum: signal.getsignal(signum) for signum in signals.HANDLED}
    with pytest.raises(signals.Aborted) as aborted:
        with signals.StopRequests() as stop:
            assert not stop.requested
            # To this thread: the OS may hand a process-wide signal to one of TensorFlow's threads,
            # and Python's handler then runs in the main thread a moment later, not on return.
            signal.pthread_kill(threading.get_ident(), first)
            assert stop.requested and stop.exit_status == 128 + first
            said = signals.name(first)
            assert capsys.readouterr().err == \
                f'\n{said}: saving a checkpoint after this step ({said} again to abort)\n'
            signal.pthread_kill(threading.get_ident(), second)
    assert aborted.value.exit_status == 128 + second
    assert {signum: signal.getsignal(signum) for signum in signals.HANDLED} == before  # put back


class SignalsWhenCollected:
    """Sends this thread a signal from __del__: the handler then runs inside a finalizer."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        signal.pthread_kill(threading.get_ident(), self.signum)


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_an_abort_that_a_finalizer_swallowed_is_raised_on_leaving():
    # In-process (no leave_at_once), Aborted is raised from the handler; inside __del__ Python only
    # reports it and carries on, so leaving the block must raise it again.
    with pytest.raises(signals.Aborted) as aborted:
        with signals.StopRequests():
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            SignalsWhenCollected(signal.SIGHUP)  # collected at once
            carried_on = True
    assert carried_on and aborted.value.exit_status == 128 + signal.SIGHUP


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_epoch_1_saves_a_resumable_checkpoint(dataset, tmp_path, capsys, signum):
    process = tiny_runs.popen(tiny_runs.flags(dataset, tmp_path, epochs=50))
    # model_info.json is written as training starts: the signal lands in epoch 1, before any save.
    wait_for(tmp_path / 'ckpt' / 'model_info.json', process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signum, stderr
    said = signals.name(signum)  # Ctrl-C for SIGINT
    assert stderr.strip() == f'{said}: saving a checkpoint after this step ({said} again to abort)'
    assert 'continue with --resume' in stdout
    state = assert_consistent(tmp_path / 'ckpt')
    assert state.latest_checkpoint.startswith('interrupted_step') and state.epochs_completed == 0
    step = int(tf.train.load_checkpoint(str(tmp_path / 'ckpt' / state.latest_checkpoint))
               .get_tensor('global_step'))
    assert step < 3 and state.latest_checkpoint == f'interrupted_step{step}.ckpt'
    # The resume finishes epoch 1 from the saved step: the same number of steps as without the stop.
    resumed = tiny_runs.run_here(capsys, tiny_runs.flags(dataset, tmp_path, '--resume', epochs=1))
    assert resumed.returncode == 0, resumed.stderr
    assert tiny_runs.read_state(tmp_path)['history'][-1]['step'] == 3
    assert not list((tmp_path / 'ckpt').glob('interrupted*'))  # the epoch's save replaced it


@pytest.mark.slow
def test_a_second_signal_aborts_in_one_line_and_leaves_the_run_resumable(dataset, tmp_path, capsys):
    # Ctrl-C twice: Python's own KeyboardInterrupt must not surface (SIGTERM's abort is checked above
    # in this process, through the same handler). A command's process leaves at once, in one line,
    # wherever the second signal lands (once it landed in a weakref callback, which swallowed it).
    signum = signal.SIGINT
    process = tiny_runs.popen(tiny_runs.flags(dataset, tmp_path, epochs=50))
    wait_for(tmp_path / 'ckpt' / 'run_state.json', process)  # epoch 1 is saved
    process.send_signal(signum)
    # Two signals that arrive before Python's handler has run are one signal (the OS does not queue
    # them), so the second is sent once the first is acknowledged: during the save it started.
    acknowledged = []
    for line in process.stderr:
        acknowledged.append(line)
        if 'saving a checkpoint after this step' in line:
            break
    process.send_signal(signum)
    # Read on through the same stream: communicate() reads the pipe itself and would miss what the
    # loop above has buffered. stdout (a few lines) cannot fill its pipe meanwhile.
    stderr = ''.join(acknowledged) + process.stderr.read()
    stdout = process.stdout.read()
    process.wait(timeout=240)
    assert process.returncode == 128 + signum, stderr
    assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith('error:')]
    name = signal.Signals(signum).name
    assert errors == [f'error: {name} again: aborted without saving; the last complete checkpoint '
                      'is kept, continue it with --resume'], stderr + stdout[-600:]
    assert_consistent(tmp_path / 'ckpt')
    # A second run in the folder removes whatever the aborted save left half-written.
    resumed = tiny_runs.run_here(capsys, tiny_runs.flags(dataset, tmp_path, '--resume', epochs=2))
    assert resumed.returncode == 0, resumed.stderr
    left = os.listdir(tmp_path / 'ckpt')
    assert not [name for name in left if 'tempstate' in name or name.endswith('.partial')
                or name.startswith('interrupted')], left
    assert [record['step'] for record in tiny_runs.read_state(tmp_path)['history']][-1] == 6
