"""Tiny fine-tuning runs for the tests of stopping, resuming and damaging runs: a 12-image data set,
the flags of a run on it, and helpers to run finetune.py in a subprocess or in this process."""
import json
import os
import subprocess
import sys
import types

from finetune_alexnet import demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dataset(folder, images_per_class=9, train_per_class=6, val_images=5, seed=3,
                 class_names=False):
    """The demo's two classes, `train_per_class` of each for training and `val_images` of the rest for
    validation (by default 12 and 5: a partial last batch of 4), with list files (and classes.txt)."""
    demo_data.make_demo_images(str(folder / 'images'), images_per_class=images_per_class, seed=seed)
    train, val = [], []
    for label, name in enumerate(demo_data.CLASS_NAMES):
        files = sorted(os.listdir(folder / 'images' / name))
        train += [f'images/{name}/{f} {label}' for f in files[:train_per_class]]
        val += [f'images/{name}/{f} {label}' for f in files[train_per_class:]]
    (folder / 'train.txt').write_text('\n'.join(train) + '\n')
    (folder / 'val.txt').write_text('\n'.join(val[:val_images]) + '\n')
    if class_names:
        (folder / 'classes.txt').write_text(''.join(f'{label} {name}\n' for label, name
                                                    in enumerate(demo_data.CLASS_NAMES)))
    return folder


def flags(dataset, run_dir, *extra, weights=None, batch_size=4, epochs=2):
    """A seeded run without dropout: from scratch (every layer), or fc6-fc8 from `weights`."""
    args = ['--train_file', str(dataset / 'train.txt'), '--val_file', str(dataset / 'val.txt'),
            '--batch_size', str(batch_size), '--num_epochs', str(epochs), '--display_step', '1',
            '--seed', '1', '--dropout_rate', '0',
            '--checkpoint_path', str(run_dir / 'ckpt'), '--filewriter_path', str(run_dir / 'tb')]
    if weights:
        args += ['--weights_path', str(weights)]
    else:
        args += ['--weights_path', str(run_dir / 'absent.npy'), '--skip_layers', 'all',
                 '--train_layers', 'all']
    return args + list(extra)


def run_cli(args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, 'finetune.py', *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def run_here(capsys, args):
    """finetune.py's main in this process (no interpreter start-up), seen as run_cli sees a process.

    A subprocess costs seconds of TensorFlow start-up: use one only where the test is about the
    process (signals, exit status from the shell, settings fixed at TensorFlow's start)."""
    import finetune
    from finetune_alexnet import cli
    code = cli.run(finetune.main, [str(arg) for arg in args])
    captured = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def popen(args):
    return subprocess.Popen([sys.executable, 'finetune.py', *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_state(run_dir):
    return json.loads((run_dir / 'ckpt' / 'run_state.json').read_text())


def one_error_line(stderr):
    """The stderr of a refused command: exactly one `error:` line and no traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert 'Traceback' not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith('error: '), stderr
    return lines[0]
