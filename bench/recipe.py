"""Does today's recipe beat the paper's on finetune.py's demo? Validation accuracy over seeds.

    python bench/recipe.py [--seeds 0,1,2] [--num_epochs N] [--quick] [--work_dir DIR] [--json FILE]

Each run is `finetune.py --demo` as a user runs it (a subprocess; the demo's data set is written
once into --work_dir), with `--seed S` and, for the modern recipe, MODERN's flags. Without
bvlc_alexnet.npy in the working directory the demo trains every layer from random initialisation
(with momentum): the question is then what the recipe does for a small network trained from scratch,
not for fine-tuning pretrained features. Reported per recipe: the final and the best epoch's
validation accuracy of each seed, their mean with a t-interval over seeds, the pooled final accuracy
(every seed's validation images together) with its Wilson interval, and the paired difference
(modern - plain) per seed with its t-interval. Figures go in bench/RESULTS.md, as they come out.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from finetune_alexnet import cli
from finetune_alexnet import metrics
from finetune_alexnet.errors import ToolkitError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_EPOCHS = 5  # finetune.py's demo default (settings.DEMO_DEFAULTS)

PLAIN = ()
# The demo has 6 steps per epoch, 30 in its 5 epochs: a decay of 0.9 averages about the last 10
# steps (0.999, right for long runs, would validate weights barely moved from their random start).
MODERN = ('--label_smoothing', '0.1', '--ema_decay', '0.9', '--lr_schedule', 'cosine',
          '--warmup_epochs', '1', '--mixup', '0.2')
RECIPES = {'plain': PLAIN, 'modern': MODERN}
# Two-sided 95% quantiles of Student's t for 1..9 degrees of freedom (no SciPy needed).
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t_interval(values):
    """(mean, low, high): the 95% t-interval of the mean of `values` (one value: no interval)."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float('nan'), float('nan')
    half = T_95[min(len(values) - 1, 9)] * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def run(recipe, seed, args):
    """One demo run; its metrics.jsonl records (one per epoch)."""
    folder = os.path.join(args.work_dir, 'runs', f'{recipe}_seed{seed}')
    command = [sys.executable, os.path.join(ROOT, 'finetune.py'), '--demo', '--demo_dir',
               os.path.join(args.work_dir, 'demo_data'), '--seed', str(seed),
               '--checkpoint_path', os.path.join(folder, 'checkpoints'),
               '--filewriter_path', os.path.join(folder, 'tensorboard'),
               '--weights_path', args.weights_path, '--keep_checkpoints', '1', *RECIPES[recipe]]
    if args.num_epochs:
        command += ['--num_epochs', str(args.num_epochs)]
    metrics_file = os.path.join(folder, 'checkpoints', 'metrics.jsonl')
    if finished_epochs(metrics_file) != (args.num_epochs or DEMO_EPOCHS):
        # A finished run is kept, so an interrupted comparison goes on; anything else is run again.
        shutil.rmtree(folder, ignore_errors=True)
        result = subprocess.run(command, capture_output=True, text=True, cwd=args.work_dir)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [f'exit status {result.returncode}']
            raise ToolkitError(f'{recipe} seed {seed}: finetune.py: {lines[-1]}')
    with open(metrics_file) as stream:
        return [json.loads(line) for line in stream]


def finished_epochs(metrics_file):
    if not os.path.exists(metrics_file):
        return 0
    with open(metrics_file) as stream:
        return sum(1 for line in stream if line.strip())


def summarise(records):
    """{recipe: {...}} from {recipe: {seed: records}}: per-seed accuracies, t- and Wilson intervals."""
    summary = {}
    for recipe, by_seed in records.items():
        final = [history[-1]['val_accuracy'] for history in by_seed.values()]
        best = [max(record['val_accuracy'] for record in history) for history in by_seed.values()]
        images = [history[-1]['val_images'] for history in by_seed.values()]
        correct = sum(round(accuracy * count) for accuracy, count in zip(final, images))
        summary[recipe] = {'seeds': list(by_seed), 'final': final, 'best': best,
                           'final_t': t_interval(final), 'best_t': t_interval(best),
                           'pooled': (correct, sum(images)),
                           'pooled_wilson': metrics.wilson_interval(correct, sum(images))}
    if set(summary) == set(RECIPES):
        differences = [m - p for m, p in zip(summary['modern']['final'], summary['plain']['final'])]
        summary['difference'] = {'final': differences, 'final_t': t_interval(differences)}
    return summary


def table(summary, args):
    def interval(values):
        mean, low, high = values
        return f'{mean:.3f}' + ('' if math.isnan(low) else f' [{low:.3f}, {high:.3f}]')
    lines = [f"Plain against today's recipe on the demo ({time.strftime('%Y-%m-%d')}; {machine()}); "
             f"modern: {' '.join(MODERN)}", '',
             '| recipe | final accuracy per seed | mean final [95% t] | pooled final [95% Wilson] '
             '| mean best epoch [95% t] |', '| --- | --- | --- | --- | --- |']
    for recipe in RECIPES:
        if recipe not in summary:
            continue
        row = summary[recipe]
        correct, total = row['pooled']
        low, high = row['pooled_wilson']
        per_seed = ', '.join(f'{value:.3f}' for value in row['final'])
        lines.append(f"| {recipe} | {per_seed} | {interval(row['final_t'])} | {correct}/{total} = "
                     f"{correct / total:.3f} [{low:.3f}, {high:.3f}] | {interval(row['best_t'])} |")
    if 'difference' in summary:
        lines += ['', f"modern - plain, final accuracy, paired by seed: "
                  f"{interval(summary['difference']['final_t'])}"]
    return '\n'.join(lines)


def machine():
    try:
        lscpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ''
    model = next((line.split(':', 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith('Model name')), 'unknown CPU')
    return f'{model}, {os.cpu_count()} cores'


def parse_args(argv):
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', default='0,1,2', help='comma list of --seed values')
    parser.add_argument('--num_epochs', type=int, help="epochs per run (default: the demo's 5)")
    parser.add_argument('--quick', action='store_true', help='two epochs, one seed: a smoke run')
    parser.add_argument('--weights_path', default=os.path.join(ROOT, 'bvlc_alexnet.npy'),
                        help="the demo's pretrained weights (absent: every layer from scratch)")
    parser.add_argument('--work_dir', default=os.path.join(tempfile.gettempdir(), 'alexnet-recipe'),
                        help='the demo data and every run (a finished run is reused)')
    parser.add_argument('--json', help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(',')]
    except ValueError:
        raise ToolkitError(f'--seeds {args.seeds}: a comma list of whole numbers') from None
    if args.quick:
        args.seeds, args.num_epochs = args.seeds[:1], 2  # the modern recipe warms up over one
    if args.num_epochs is not None and args.num_epochs < 1:
        raise ToolkitError('--num_epochs must be at least 1')
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.work_dir, exist_ok=True)
    records = {}
    for seed in args.seeds:
        for recipe in RECIPES:
            started = time.perf_counter()
            records.setdefault(recipe, {})[seed] = history = run(recipe, seed, args)
            print(f"{recipe} seed {seed}: final accuracy {history[-1]['val_accuracy']:.3f} "
                  f'({time.perf_counter() - started:.0f} s)', file=sys.stderr, flush=True)
    summary = summarise(records)
    text = table(summary, args)
    print(text)
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump({'machine': machine(), 'modern': list(MODERN), 'summary': summary,
                       'table': text}, stream, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
