"""One worker against two on this machine: what tf.distribute's collective costs.

    python bench/workers.py [--batch_size 32] [--images 512] [--epochs 2] [--quick]
                            [--work_dir DIR] [--json FILE]

Each configuration is finetune.py as users run it (subprocesses) on a generated two-class set of
320x240 JPEGs, training every layer (from random weights: the step costs what it costs with the
pretrained ones), with the same global batch: one process with every core; two workers on 127.0.0.1
(--worker_hosts), each with half of the cores (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS); and
one process with half of the cores, what one worker's share alone does. Images/s is the last epoch's
`images_per_second` from metrics.jsonl (the whole cluster's images over the chief's time for the
epoch's steps, start-up excluded). On one machine two workers share its cores and memory bandwidth,
so the ratio measures the collective's overhead (every step all-reduces every gradient, 61 M
values), not a speed-up; across machines each worker has its own. Figures go in
bench/RESULTS.md with the CPU model this prints.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))

from bench import machine  # noqa: E402
from finetune_alexnet import cli  # noqa: E402
from finetune_alexnet import demo_data  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402

EVERY_LAYER = ['--train_layers', 'all', '--skip_layers', 'all']


def parse_args(argv):
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch_size', type=int, default=32, help='the global batch')
    parser.add_argument('--images', type=int, default=512, help='training images (two classes)')
    parser.add_argument('--epochs', type=int, default=2, help='epochs per run; the last is reported')
    parser.add_argument('--quick', action='store_true', help='16 images, batch 4, one epoch: a check')
    parser.add_argument('--work_dir', help='where the data set and runs go (default: a temporary '
                        'folder, removed)')
    parser.add_argument('--json', help='also write the figures to this file')
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch_size, args.epochs = 16, 4, 1
    if args.batch_size < 2 or args.batch_size % 2 or args.images < args.batch_size or args.epochs < 1:
        raise ToolkitError('--batch_size must be even (two workers split it), --images at least one '
                           'batch, --epochs at least 1')
    return args


def make_data(folder, images):
    """Two classes of demo JPEGs and the lists: `images` for training, a batch's worth for validation."""
    demo_data.make_demo_images(os.path.join(folder, 'images'), images_per_class=images // 2 + 2)
    lines = {'train': [], 'val': []}
    for label, name in enumerate(demo_data.CLASS_NAMES):
        files = sorted(os.listdir(os.path.join(folder, 'images', name)))
        lines['train'] += [f'images/{name}/{file} {label}' for file in files[:images // 2]]
        lines['val'] += [f'images/{name}/{file} {label}' for file in files[images // 2:]]
    for kind, entries in lines.items():
        with open(os.path.join(folder, f'{kind}.txt'), 'w') as stream:
            stream.write('\n'.join(entries) + '\n')


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(('127.0.0.1', 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run(folder, name, args, workers, threads):
    """The last epoch's images/s of finetune.py on `workers` processes of `threads` threads each."""
    run_dir = os.path.join(folder, name)
    flags = ['--train_file', os.path.join(folder, 'train.txt'), '--val_file',
             os.path.join(folder, 'val.txt'), '--batch_size', str(args.batch_size), '--num_epochs',
             str(args.epochs), '--seed', '0', '--checkpoint_path', os.path.join(run_dir, 'ckpt'),
             '--filewriter_path', os.path.join(run_dir, 'tb'), '--keep_checkpoints', '1',
             '--weights_path', os.path.join(folder, 'absent.npy'), *EVERY_LAYER]
    env = {**os.environ, 'TF_NUM_INTRAOP_THREADS': str(threads), 'TF_NUM_INTEROP_THREADS': str(threads)}
    env.pop('TF_CONFIG', None)
    commands = [[sys.executable, os.path.join(ROOT, 'finetune.py'), *flags]]
    if workers > 1:
        hosts = ','.join(f'127.0.0.1:{port}' for port in free_ports(workers))
        commands = [[*commands[0], '--worker_hosts', hosts, '--task_index', str(index)]
                    for index in range(workers)]
    processes = [subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise ToolkitError(f'{name}: finetune.py failed: {stderr.strip().splitlines()[-1:]}')
    with open(os.path.join(run_dir, 'ckpt', 'metrics.jsonl')) as stream:
        return json.loads(stream.read().splitlines()[-1])['images_per_second']


def main(argv=None):
    args = parse_args(argv)
    cores = os.cpu_count() or 2
    half = max(1, cores // 2)
    folder = args.work_dir or tempfile.mkdtemp(prefix='bench_workers_')
    os.makedirs(folder, exist_ok=True)
    try:
        make_data(folder, args.images)
        values = {'one process': run(folder, 'one', args, 1, cores),
                  'two workers': run(folder, 'two', args, 2, half),
                  'one process, half the cores': run(folder, 'half', args, 1, half)}
    finally:
        if not args.work_dir:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"Several workers on one machine, {time.strftime('%Y-%m-%d')}: {machine()}; load average "
          f"{os.getloadavg()[0]:.2f}; every layer trained, global batch {args.batch_size}, "
          f"{args.images} images, epoch {args.epochs} of {args.epochs}")
    print()
    print('| configuration | threads per process | images/s | ratio |')
    print('| --- | --- | --- | --- |')
    threads = {'one process': cores, 'two workers': half, 'one process, half the cores': half}
    for name, value in values.items():
        ratio = f"{value / values['one process']:.2f}x one process" if name != 'one process' else ''
        print(f'| {name} | {threads[name]} | {value:.1f} | {ratio} |')
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump({'machine': machine(), 'batch_size': args.batch_size,
                       'values': values}, stream, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
