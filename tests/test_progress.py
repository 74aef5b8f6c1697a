"""What a fine-tuning run shows on a terminal: a progress line rewritten in place that a terminal can
hold (no stale characters, no wrapped rows, other lines on lines of their own), checked on real
pseudo-terminals played back through a terminal emulator (terminal_screen.py)."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest

import tiny_runs
from finetune_alexnet.train import progress
from terminal_screen import Screen


def open_terminal(columns, rows=24):
    """(master, slave) of a new pseudo-terminal `columns` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', rows, columns, 0, 0))
    return master, slave


def read_all(master, process=None, timeout=600):
    """Everything written to the terminal: until the writer closed it (process ended), or, without a
    process, what is there now."""
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout if process else 0.2)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b''.join(chunks).decode('utf-8', 'replace')


@pytest.fixture(autouse=True)
def no_columns_variable(monkeypatch):
    monkeypatch.delenv('COLUMNS', raising=False)  # the terminal's own width is what is tested


def bar_on_terminal(columns, updates, note=None):
    """The text an EpochProgress of 5 steps writes to a terminal `columns` wide for `updates`
    (step, images per second), with `note` printed after them."""
    master, slave = open_terminal(columns)
    with os.fdopen(slave, 'w') as stream:
        with progress.EpochProgress(1, 3, 5, display_step=1, stream=stream) as bar:
            for step, speed in updates:
                bar.update(step, 0.5, 0.5, speed)
            bar.note(note)
        text = read_all(master)
    os.close(master)
    return text


def test_a_shorter_rewrite_leaves_no_characters_of_the_longer_one():
    screen = Screen(200).play(bar_on_terminal(200, [(1, 10.0), (2, 9.9)]))
    assert screen.lines == ['epoch 1/3 [#########...............] 2/5  loss 0.5000  acc 0.500  '
                            '9.9 img/s']


def test_the_line_fits_a_narrow_terminal_instead_of_wrapping():
    text = bar_on_terminal(40, [(step, 123.4) for step in range(1, 6)])
    screen = Screen(40).play(text)
    assert screen.wrapped_rows == []
    assert len(screen.lines) == 1 and len(screen.lines[0]) <= 39
    assert screen.lines[0].startswith('epoch 1/3 5/5  loss 0.5000')  # the bar is what goes first


def test_a_note_during_an_epoch_starts_a_line_of_its_own():
    screen = Screen(200).play(bar_on_terminal(200, [(1, 10.0)], note='note: something'))
    assert screen.lines[1] == 'note: something' and screen.lines[0].startswith('epoch 1/3 [')


def test_off_a_terminal_the_lines_are_plain(tmp_path):
    path = tmp_path / 'log.txt'
    with open(path, 'w') as stream:
        with progress.EpochProgress(1, 3, 4, display_step=2, stream=stream) as bar:
            for step in range(1, 5):
                bar.update(step, 0.5, 0.5, 10.0)
            bar.note('note: plain')
    assert path.read_text().splitlines() == [
        'epoch 1/3 step 2/4  loss 0.5000  acc 0.500  10.0 img/s',
        'epoch 1/3 step 4/4  loss 0.5000  acc 0.500  10.0 img/s', 'note: plain']


@pytest.mark.slow
def test_finetune_on_a_40_column_terminal(tmp_path):
    """The real command on a pseudo-terminal 40 columns wide, its loss sent to NaN in epoch 1: the
    screen holds the bar on one row of at most 39 characters, then the error starting a row of its
    own, and the error does not claim a checkpoint that was never written."""
    data = tiny_runs.make_dataset(tmp_path / 'data')
    master, slave = open_terminal(40)
    process = subprocess.Popen(
        [sys.executable, 'finetune.py', *tiny_runs.flags(data, tmp_path, '--learning_rate', '1e30',
                                                         epochs=1)],
        cwd=tiny_runs.REPO, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        env={name: value for name, value in os.environ.items() if name != 'COLUMNS'})
    os.close(slave)
    text = read_all(master, process)
    process.wait(timeout=60)
    os.close(master)
    screen = Screen(40).play(text)
    assert process.returncode == 2, text
    bar_rows = [number for number, line in enumerate(screen.lines) if line.startswith('epoch ')]
    assert len(bar_rows) == 1, text  # rewritten in place: no rows piled up by updates
    bar = screen.lines[bar_rows[0]]
    assert bar.startswith('epoch 1/1 1/3  loss ') and len(bar) <= 39, text
    assert bar_rows[0] not in screen.wrapped_rows, text  # (longer lines of text may wrap)
    row = bar_rows[0] + 1
    error = screen.lines[row]
    while row in screen.wrapped_rows:  # the error's own line, wrapped as the terminal shows it
        row += 1
        error += screen.lines[row]
    assert error.startswith('error: the loss became NaN or infinite at epoch 1, step 2'), text
    assert 'last good checkpoint' not in text and 'no checkpoint was saved yet' in text
