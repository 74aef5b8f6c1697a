"""The conventions every command follows (CONTRIBUTING.md): one `error:` line and status 2 for a user
mistake, argparse's own complaints included; quiet TensorFlow; nothing happens at import."""
import importlib
import os
import signal
import subprocess
import sys
import time

import pytest

from finetune_alexnet import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ['finetune', 'predict', 'make_lists', 'visualize', 'export', 'datagenerator',
            'alexnet', 'get_weights', 'get_data']


# A flag taking a number, per command (export has none).
NUMERIC_FLAG = {'finetune': '--batch_size', 'predict': '--top_k', 'make_lists': '--seed',
                'visualize': '--feature_image', 'datagenerator': '--num_classes',
                'alexnet': '--num_classes', 'get_weights': '--retries', 'get_data': '--seed'}
# A command with required arguments names those first, which is as good.
MISTAKES = [(command, ['--no_such_flag'], 'arguments') for command in COMMANDS]
MISTAKES += [(command, [flag, 'many'], f"argument {flag}: invalid int value: 'many'")
             for command, flag in NUMERIC_FLAG.items()]


@pytest.mark.parametrize('command, argv, message', MISTAKES)
def test_flag_mistakes_are_one_error_line_and_status_2(command, argv, message, capsys):
    module = importlib.import_module(command)
    assert cli.run(module.main, argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), captured.err
    assert message in lines[0] and '--help' in lines[0]
    assert 'usage:' not in captured.err


def test_finetune_train_layers_typo_is_one_line(capsys):
    import finetune
    assert cli.run(finetune.main, ['--train_layers', 'fc9']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: argument --train_layers: unknown layer fc9; valid: conv1')
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_importing_a_command_changes_nothing():
    """No threads, no environment variables, no reading of the importer's command line."""
    script = (
        'import os, sys, threading\n'
        'import tensorflow, matplotlib.pyplot  # their own import-time doings are not ours\n'
        'sys.argv = ["host", "--verbose", "--no_such_flag"]\n'
        'before_env, before_threads = dict(os.environ), threading.active_count()\n'
        f'for name in {COMMANDS!r}:\n'
        '    __import__(name)\n'
        'assert threading.active_count() == before_threads, threading.enumerate()\n'
        'changed = {k for k in set(os.environ) | set(before_env) if os.environ.get(k) != before_env.get(k)}\n'
        'assert not changed, changed\n'
        'print("ok")\n')
    result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr


@pytest.mark.slow
def test_commands_keep_tensorflow_quiet_unless_verbose():
    quiet = subprocess.run([sys.executable, 'alexnet.py', '--num_classes', '3'], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == '', quiet.stderr
    verbose = subprocess.run([sys.executable, 'alexnet.py', '--num_classes', '3', '--verbose'],
                             cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '0'})
    assert verbose.returncode == 0 and verbose.stdout == quiet.stdout


def test_keyboard_interrupt_is_one_line_and_status_130(capsys):
    def main(argv):
        raise KeyboardInterrupt
    assert cli.run(main, []) == 130
    assert capsys.readouterr().err == 'error: interrupted\n'


@pytest.mark.slow
def test_ctrl_c_while_tensorflow_loads_is_one_line_and_status_130():
    # A second into the command TensorFlow is still loading (it takes several here); should the
    # imports be done, main's own Ctrl-C handling must end the same way.
    process = subprocess.Popen([sys.executable, 'alexnet.py', '--num_classes', '3'], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert stderr == 'error: interrupted\n' and stdout == ''


# Numbers out of range, per command: argparse's float() takes 'nan' and 'inf', int() any size.
# Each is one error line naming the flag, before any work (nothing is written under the output).
OUT_OF_RANGE = [
    ('predict', ['--top_k', '0', 'x.jpg'], '--top_k'),
    ('predict', ['--batch_size', '-1', 'x.jpg'], '--batch_size'),
    ('predict', ['--max_mistakes', '-1', '--evaluate', 'list.txt'], '--max_mistakes'),
    ('predict', ['--max_pixels', '0', 'x.jpg'], '--max_pixels'),
    ('predict', ['--max_pixels', '-5', 'x.jpg'], '--max_pixels'),
    ('predict', ['--resize', '100', '--ten_crop', 'x.jpg'], '--resize'),
    ('predict', ['--resize', '10000000', '--ten_crop', 'x.jpg'], '--resize'),
    ('make_lists', ['folder', '--out_dir', 'OUT', '--val_fraction', 'nan'], '--val_fraction'),
    ('make_lists', ['folder', '--out_dir', 'OUT', '--val_fraction', 'inf'], '--val_fraction'),
    ('make_lists', ['folder', '--out_dir', 'OUT', '--val_fraction', '-0.5'], '--val_fraction'),
    ('make_lists', ['folder', '--out_dir', 'OUT', '--seed', '-1'], '--seed'),
    ('make_lists', ['folder', '--out_dir', 'OUT', '--seed', '99999999999999999999'], '--seed'),
    ('datagenerator', ['--check', 'list.txt', '--workers', '0'], '--workers'),
    ('datagenerator', ['--check', 'list.txt', '--workers', '99999999999'], '--workers'),
    ('datagenerator', ['--check', 'list.txt', '--num_classes', '0'], '--num_classes'),
    ('datagenerator', ['--check', 'list.txt', '--num_classes', str(2**31)], '--num_classes'),
    ('datagenerator', ['--check', 'list.txt', '--max_pixels', '0'], '--max_pixels'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--val_fraction', 'nan'], '--val_fraction'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--seed', '-3'], '--seed'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--seed', str(2**32)], '--seed'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--workers', '0'], '--workers'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--workers', '10000000000'], '--workers'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--timeout', 'nan'], '--timeout'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--timeout', 'inf'], '--timeout'),
    ('get_data', ['cats_vs_dogs', '--out_dir', 'OUT', '--retries', '-1'], '--retries'),
    ('get_weights', ['--output', 'OUT/w.npy', '--timeout', 'nan'], '--timeout'),
    ('get_weights', ['--output', 'OUT/w.npy', '--timeout', '-inf'], '--timeout'),
    ('get_weights', ['--output', 'OUT/w.npy', '--timeout', '0'], '--timeout'),
    ('get_weights', ['--output', 'OUT/w.npy', '--retries', '-1'], '--retries'),
    ('visualize', ['--out_dir', 'OUT', '--feature_image', '-1'], '--feature_image'),
    ('visualize', ['--out_dir', 'OUT', '--feature_image', '99999999999999999999'], '--feature_image'),
]


@pytest.mark.parametrize('command, argv, flag', OUT_OF_RANGE,
                         ids=[f'{command} {" ".join(argv[-2:])}' for command, argv, _ in OUT_OF_RANGE])
def test_numbers_out_of_range_are_one_error_line_before_any_work(command, argv, flag, tmp_path, capsys):
    out = tmp_path / 'out'
    argv = [str(out) if arg == 'OUT' else arg.replace('OUT/', f'{out}/') for arg in argv]
    module = importlib.import_module(command)
    assert cli.run(module.main, argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and flag in lines[0], captured.err
    assert 'Traceback' not in captured.err and captured.out == ''
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize('command, argv', [
    ('predict.py', ['images/']),
    ('export.py', ['--format', 'npz', '--output', '{tmp}/out.npz']),
])
def test_a_reader_that_goes_away_ends_the_command_quietly(command, argv, tmp_path, bvlc_npy):
    """`predict.py ... | head -1`: the reader closes the pipe; the command ends with 141 (as killed
    by SIGPIPE) and says nothing, where Python would print a BrokenPipeError traceback."""
    process = subprocess.Popen(
        [sys.executable, command, *[arg.format(tmp=tmp_path) for arg in argv], '--weights_path',
         bvlc_npy], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the first line: every line the command prints meets a closed pipe
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 128 + signal.SIGPIPE, stderr
    assert 'Traceback' not in stderr and 'BrokenPipe' not in stderr and 'error' not in stderr, stderr
