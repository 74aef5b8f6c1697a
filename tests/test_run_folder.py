"""One run per checkpoint folder, output paths checked before any work, stale files removed at start,
and a full disk while saving (a small tmpfs where this machine allows mounting one)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import finetune
import tiny_runs
from finetune_alexnet import checkpoints
from finetune_alexnet import run_state
from finetune_alexnet import cli
from finetune_alexnet import run_folder
from finetune_alexnet.errors import ToolkitError


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('data'))


def test_a_second_lock_is_refused_with_the_holders_pid_and_start(tmp_path):
    with run_folder.RunLock(str(tmp_path)):
        with pytest.raises(ToolkitError) as error:
            run_folder.RunLock(str(tmp_path)).acquire()
    assert re.fullmatch(rf'{re.escape(str(tmp_path))}: another run is using this folder \(PID '
                        rf'{os.getpid()}, started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\); '
                        r'wait for it to finish, or choose another --checkpoint_path', str(error.value))
    with run_folder.RunLock(str(tmp_path)):  # released on exit
        pass


def test_the_os_releases_the_lock_of_a_killed_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from finetune_alexnet import run_folder; '
         'lock = run_folder.RunLock(sys.argv[1]).acquire(); print("locked", flush=True); time.sleep(600)',
         str(tmp_path)], cwd=tiny_runs.REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(ToolkitError, match=f'PID {holder.pid}, started '):
        run_folder.RunLock(str(tmp_path)).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_folder.RunLock(str(tmp_path)):
        assert f'PID {os.getpid()}' in (tmp_path / run_folder.LOCK_FILE).read_text()


@pytest.mark.slow
def test_two_runs_on_one_folder_the_second_is_refused(dataset, tmp_path, capsys):
    first = tiny_runs.popen(tiny_runs.flags(dataset, tmp_path, epochs=50))
    lock = tmp_path / 'ckpt' / run_folder.LOCK_FILE
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    second = tiny_runs.run_here(capsys, tiny_runs.flags(dataset, tmp_path, '--resume', epochs=50))
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=240)
    assert second.returncode == 2
    line = tiny_runs.one_error_line(second.stderr)
    assert line.startswith(f"error: {tmp_path / 'ckpt'}: another run is using this folder "
                           f'(PID {first.pid}, started ')
    assert first.returncode == 143  # the first run went on undisturbed until told to stop
    assert run_state.read(str(tmp_path / 'ckpt')).args['num_epochs'] == 50


@pytest.mark.parametrize('flag', ['--checkpoint_path', '--filewriter_path'])
def test_an_output_folder_that_is_a_file_is_refused_first(dataset, tmp_path, capsys, flag):
    blocker = tmp_path / 'blocker'
    blocker.write_text('not a folder')
    args = tiny_runs.flags(dataset, tmp_path)
    args[args.index(flag) + 1] = str(blocker)
    assert cli.run(finetune.main, args) == 2
    assert tiny_runs.one_error_line(capsys.readouterr().err) == \
        f'error: {blocker}: {flag} is a file, not a folder'
    under = tiny_runs.flags(dataset, tmp_path)
    under[under.index(flag) + 1] = str(blocker / 'run')
    assert cli.run(finetune.main, under) == 2
    assert tiny_runs.one_error_line(capsys.readouterr().err) == \
        f'error: {blocker / "run"}: {flag} cannot be created: {blocker} is a file, not a folder'
    assert sorted(os.listdir(tmp_path)) == ['blocker']  # nothing written anywhere


def test_output_file_checks(tmp_path):
    run_folder.check_output_file(str(tmp_path / 'out.csv'), '--csv')
    with pytest.raises(ToolkitError, match=r'out.csv: --csv is in a folder that does not exist'):
        run_folder.check_output_file(str(tmp_path / 'missing' / 'out.csv'), '--csv')
    with pytest.raises(ToolkitError, match=r': --output is a folder; give a file name'):
        run_folder.check_output_file(str(tmp_path), '--output')


def test_predict_refuses_an_output_in_a_missing_folder_before_any_work(dataset, tmp_path, capsys):
    import predict
    for flag in ('--csv', '--json', '--confusion_matrix'):
        target = tmp_path / 'missing' / 'out'
        assert cli.run(predict.main, ['--weights_path', str(tmp_path / 'absent.npy'), flag, str(target),
                                      '--evaluate', str(dataset / 'train.txt')]) == 2
        # Refused before the (absent) weights file is even read.
        assert tiny_runs.one_error_line(capsys.readouterr().err) == \
            f'error: {target}: {flag} is in a folder that does not exist ({target.parent})'


def test_stale_files_of_killed_saves_are_removed_at_start(tmp_path):
    names = ['model_epoch3.ckpt.data-00000-of-00001.tempstate9817', 'run_state.json.partial',
             'features_train.npy', '.metrics.jsonl.0123456789ab.partial', '.curves.png.ba9876543210.partial',
             'best.ckpt.index.partial', 'interrupted_step7.ckpt.index', 'interrupted_step9.ckpt.index',
             'interrupted_step9.ckpt.data-00000-of-00001', 'model_epoch2.ckpt.index', 'notes.txt']
    for name in names:
        (tmp_path / name).write_text('x')
    (tmp_path / 'model_epoch4.ckpt_temp').mkdir()  # TensorFlow's folder of a save in progress
    removed = run_folder.remove_stale_files(str(tmp_path), latest_checkpoint='interrupted_step9.ckpt')
    assert sorted(removed) == sorted(names[:7] + ['model_epoch4.ckpt_temp'])
    assert sorted(os.listdir(tmp_path)) == sorted(names[7:])


def test_a_folder_shared_with_the_users_files_keeps_them(tmp_path):
    """--checkpoint_path . in a folder of one's own: only names a run writes are stale (issue 21)."""
    users = ['draft.partial', 'features_2020.npy', 'photos_temp', 'scan.tempstate1', 'report.json.partial',
             '.report.json.0123456789ab.partial',
             'my_model.ckpt.index.partial', 'data_temp_backup']
    for name in users:
        (tmp_path / name).write_text('mine')
    (tmp_path / 'photos_temp_folder').mkdir()
    (tmp_path / 'photos_temp_folder' / 'cat.jpg').write_text('mine')
    assert run_folder.remove_stale_files(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path)) == sorted(users + ['photos_temp_folder'])
    assert (tmp_path / 'photos_temp_folder' / 'cat.jpg').read_text() == 'mine'


@pytest.fixture
def small_disk(tmp_path):
    """A 300 MiB tmpfs: room for one checkpoint of the 2-class AlexNet (217 MiB), not two."""
    folder = tmp_path / 'disk'
    folder.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=300m', 'tmpfs', str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip('cannot mount a tmpfs here; test_checkpoints simulates a full disk instead')
    yield folder
    subprocess.run(['umount', str(folder)], check=True)


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_line_and_leaves_the_run_resumable(dataset, tmp_path, capsys,
                                                                              small_disk):
    args = tiny_runs.flags(dataset, tmp_path, epochs=2)
    args[args.index('--checkpoint_path') + 1] = str(small_disk / 'ckpt')
    result = tiny_runs.run_here(capsys, args)
    assert result.returncode == 2
    line = tiny_runs.one_error_line(result.stderr)
    match = re.fullmatch(rf"error: {re.escape(str(small_disk / 'ckpt'))}: disk full while saving "
                         r'model_epoch2.ckpt \(needs about ([\d,]+) bytes, ([\d,]+) free\); '
                         r'model_epoch1.ckpt and run_state.json are intact: free some space and '
                         r'continue with --resume', line)
    assert match, line
    needed, free = (int(group.replace(',', '')) for group in match.groups())
    assert needed > 200 * 2**20 and free < needed
    left = sorted(os.listdir(small_disk / 'ckpt'))
    assert not [name for name in left if 'epoch2' in name or 'tempstate' in name
                or name.endswith('.partial')], left
    state = run_state.read(str(small_disk / 'ckpt'))
    assert state.latest_checkpoint == 'model_epoch1.ckpt' and state.epochs_completed == 1
    assert checkpoints.verify_checkpoint(str(small_disk / 'ckpt' / 'model_epoch1.ckpt')) is None
    # Space freed (the file system grown): the run resumes from epoch 1 and finishes.
    subprocess.run(['mount', '-o', 'remount,size=700m', str(small_disk)], check=True)
    resumed = tiny_runs.run_here(capsys, args + ['--resume'])
    assert resumed.returncode == 0, resumed.stderr
    assert [record['step'] for record in run_state.read(str(small_disk / 'ckpt')).history] == [3, 6]


def test_an_output_is_replaced_in_one_rename_or_not_at_all(tmp_path):
    """predict.py's CSV, JSON, confusion matrix and features files: a failed write leaves the file
    that was there (the user's, or an earlier output) whole, and no temporary file behind."""
    target = tmp_path / 'predictions.json'
    target.write_text('the earlier output\n')
    with pytest.raises(OSError):
        with run_folder.replaced_atomically(str(target)) as partial:
            with open(partial, 'w') as stream:
                stream.write('half of a new')
            raise OSError(28, 'No space left on device')
    assert target.read_text() == 'the earlier output\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ['predictions.json']
    with run_folder.replaced_atomically(str(target)) as partial:
        with open(partial, 'w') as stream:
            stream.write('the new output\n')
        assert target.read_text() == 'the earlier output\n'  # untouched until the rename
    assert target.read_text() == 'the new output\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ['predictions.json']
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the umask's mode, as open() gives
