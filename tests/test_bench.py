"""bench/bench.py: a --quick run on a reduced set prints every row it was asked for, with real figures.

No speed is asserted (the machine is shared); what is checked is that every configuration ran (the
TensorFlow ones in --quick's shared worker process, the loop as finetune.py's own), the table holds
each asked-for row with a positive images/s equal to the one in the JSON file, and each ratio is the
quotient of the rows it names.
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest

import datagenerator
from finetune_alexnet import demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, 'bench', 'bench.py')
# Every kind of measurement: the step from memory, through the original's feed_dict loop and
# through finetune.py itself (a subprocess of its own), the recipe's steps, inference, and the input
# pipeline alone. One run serves the tests of its rows (each configuration costs a process).
REDUCED = 'fc/memory/*,fc/feed/*,fc/loop/*,fc/ema/8,fc/cutmix/8,fc/unfreeze/8,infer/tf/1,input/*'
EXPECTED = ['fc/memory/8', 'fc/loop/8', 'fc/feed/8', 'fc/ema/8', 'fc/cutmix/8', 'fc/unfreeze/8',
            'infer/tf/1', 'input/pipeline/8', 'input/opencv/8', 'input/core-list/8',
            'input/core-shards/8', 'input/core-resized/8', 'input/core-list-augment/8',
            'input/core-resized-augment/8']


def run_bench(*args):
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=900)


def table_rows(stdout):
    """{key: (batch, images/s, ratio)} from the Markdown table's body rows."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if len(cells) == 5 and '/' in cells[1] and cells[2].isdigit():
            rows[cells[1]] = (int(cells[2]), cells[3], cells[4])
    return rows


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    """bench.py --quick on the reduced set: (its result, its table's rows, its JSON, its folder)."""
    folder = tmp_path_factory.mktemp('bench')
    result = run_bench('--quick', '--no_torch', '--seconds', '0.5', '--only', REDUCED,
                       '--cache_dir', str(folder / 'cache'), '--json', str(folder / 'bench.json'))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(folder / 'bench.json') as stream:
        recorded = json.load(stream)
    return result, table_rows(result.stdout), recorded, folder


@pytest.mark.slow
def test_quick_run_prints_every_asked_row_with_positive_figures(quick_run):
    result, rows, recorded, folder = quick_run
    assert re.search(r'AlexNet fine-tuning speed, \d{4}-\d\d-\d\d: .+, \d+ cores; .*tensorflow 2\.',
                     result.stdout)
    assert list(rows) == EXPECTED
    assert recorded['failed'] == []
    for key, (batch, shown, _) in rows.items():
        assert batch == (1 if key == 'infer/tf/1' else 8)
        value = recorded['values'][key]
        assert math.isfinite(value) and value > 0
        assert float(shown) == pytest.approx(value, abs=0.051)
    values = recorded['values']
    for key, reference in (('fc/memory/8', 'fc/feed/8'), ('fc/loop/8', 'fc/feed/8'),
                           ('input/pipeline/8', 'input/opencv/8'),
                           ('input/core-shards/8', 'input/core-list/8'),
                           ('input/core-resized/8', 'input/core-list/8'),
                           ('input/core-resized-augment/8', 'input/core-list-augment/8')):
        ratio = float(rows[key][2].split('x ')[0])
        assert ratio == pytest.approx(values[key] / values[reference], abs=0.006)
    assert 'No PyTorch rows or equality check' in result.stdout
    # The shard rows read shards the run wrote from the JPEG list, as they are and pre-resized.
    shards = folder / 'cache' / 'shards'
    assert sorted(os.listdir(shards)) == ['list_32_core-resized', 'list_32_core-shards']


def test_unknown_configuration_is_one_error_line(tmp_path):
    result = run_bench('--only', 'fc/nothing/*', '--cache_dir', str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert result.stderr.startswith('error: --only fc/nothing/* matches no configuration')
    assert os.listdir(tmp_path) == []  # refused before any image or weight was written


def test_bad_batches_flag_is_one_error_line(tmp_path):
    result = run_bench('--batches', '32,big', '--cache_dir', str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --batches 32,big: a comma list of whole numbers'


def test_equality_line_holds_the_largest_relative_difference():
    # The PyTorch peer is optional (and absent here); the comparison of its values with ours is
    # checked on made-up values: logits [2, 3] and a loss, before and after a step.
    sys.path.insert(0, os.path.join(REPO, 'bench'))
    try:
        import bench
    finally:
        sys.path.remove(os.path.join(REPO, 'bench'))
    ours = [[[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]], 2.5, [[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]], 2.4]
    peer = [[[1.0, -4.0, 2.0], [0.5, 0.0, 3.0002]], 2.5, [[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]], 2.4001]
    configs = {'check/tf': {}, 'check/torch': {}}
    values = {'check/tf': ours, 'check/torch': peer}
    args = type('Args', (), {'device': 'cpu', 'torch': True, 'walls': {}})()
    text = bench.table(configs, values, set(), args)
    # 0.0002 / max |logits| 4 = 5e-5 beats the loss's 0.0001 / max(1, 2.4) = 4.2e-5.
    assert values['check/difference'] == pytest.approx(5e-5, rel=1e-6)
    assert 'differ by 5.0e-05' in text and 'equal to 0.0001' in text
    values['check/torch'] = [peer[0], 2.5, peer[2], 2.4005]  # 0.0005 / 2.4 = 2.1e-4
    text = bench.table(configs, values, set(), args)
    assert 'differ by 2.1e-04' in text and 'DIFFERENT to 0.0001' in text


@pytest.mark.slow
def test_recipe_rows_are_timed_against_the_plain_step(quick_run):
    _, rows, recorded, _ = quick_run
    recipe_rows = ['fc/memory/8', 'fc/ema/8', 'fc/cutmix/8', 'fc/unfreeze/8']
    assert [key for key in rows if key in recipe_rows] == recipe_rows
    values = recorded['values']
    for key in ('fc/ema/8', 'fc/cutmix/8', 'fc/unfreeze/8'):
        ratio, meaning = rows[key][2].split('x ')
        assert meaning == 'plain SGD' and values[key] > 0
        assert float(ratio) == pytest.approx(values[key] / values['fc/memory/8'], abs=0.006)


def import_bench_script(name):
    sys.path.insert(0, os.path.join(REPO, 'bench'))
    try:
        return __import__(name)
    finally:
        sys.path.remove(os.path.join(REPO, 'bench'))


def test_the_end_to_end_rows_data_is_the_demo_split_80_20_by_class(tmp_path):
    """The e2e/* rows' lists (the reduced quick run above leaves those rows out: each is a run)."""
    bench = import_bench_script('bench')
    lists = bench.write_demo_lists(str(tmp_path), 20)
    assert sorted(lists) == ['classes.txt', 'train.txt', 'val.txt']
    train, val = (datagenerator.read_list(lists[name]) for name in ('train.txt', 'val.txt'))
    assert sorted(train[1]) == [0] * 8 + [1] * 8 and sorted(val[1]) == [0, 0, 1, 1]
    assert not set(train[0]) & set(val[0]) and all(os.path.isfile(path) for path in train[0] + val[0])
    assert open(lists['classes.txt']).read().split() == ['0', demo_data.CLASS_NAMES[0], '1',
                                                         demo_data.CLASS_NAMES[1]]


def test_recipe_comparison_intervals_are_the_textbook_ones():
    recipe = import_bench_script('recipe')
    mean, low, high = recipe.t_interval([0.8, 0.9, 0.85])
    # mean 0.85, sample sd 0.05, t(0.975, 2) = 4.303: 0.85 +- 4.303 x 0.05 / sqrt(3)
    assert mean == pytest.approx(0.85)
    assert (low, high) == pytest.approx((0.85 - 0.12422, 0.85 + 0.12422), abs=1e-4)
    histories = {'plain': {0: [{'val_accuracy': 0.5, 'val_images': 40},
                               {'val_accuracy': 0.75, 'val_images': 40}],
                           1: [{'val_accuracy': 0.9, 'val_images': 40}]},
                 'modern': {0: [{'val_accuracy': 0.8, 'val_images': 40}],
                            1: [{'val_accuracy': 0.95, 'val_images': 40}]}}
    summary = recipe.summarise(histories)
    assert summary['plain']['final'] == [0.75, 0.9] and summary['plain']['pooled'] == (66, 80)
    assert summary['plain']['pooled_wilson'] == pytest.approx(
        recipe.metrics.wilson_interval(66, 80))
    assert summary['difference']['final'] == pytest.approx([0.05, 0.05])
    text = recipe.table(summary, None)
    assert '| plain | 0.750, 0.900 | 0.825 [' in text and '66/80 = 0.825 [' in text
    assert 'modern - plain, final accuracy, paired by seed: 0.050 [0.050, 0.050]' in text


def test_recipe_comparison_refuses_bad_seeds_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'bench', 'recipe.py'), '--seeds',
                             '0,x', '--work_dir', str(tmp_path / 'work')], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --seeds 0,x: a comma list of whole numbers'
    assert not (tmp_path / 'work').exists()


@pytest.mark.slow
def test_workers_bench_times_one_process_against_two_workers(tmp_path):
    """bench/workers.py: three real runs (one process, two workers on 127.0.0.1, one process on half
    the cores), each row's images/s as recorded in its run's metrics.jsonl and the ratio to the first."""
    result = subprocess.run([sys.executable, os.path.join(REPO, 'bench', 'workers.py'), '--quick',
                             '--work_dir', str(tmp_path), '--json',
                             str(tmp_path / 'workers.json')],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r'Several workers on one machine, \d{4}-\d\d-\d\d: .+, \d+ cores; ', result.stdout)
    values = json.loads((tmp_path / 'workers.json').read_text())['values']
    assert list(values) == ['one process', 'two workers', 'one process, half the cores']
    for name, folder in zip(values, ('one', 'two', 'half')):
        record = json.loads((tmp_path / folder / 'ckpt' / 'metrics.jsonl').read_text().splitlines()[-1])
        assert values[name] == record['images_per_second'] > 0
    rows = {cells[0]: cells for cells in (
        [cell.strip() for cell in line.strip().strip('|').split('|')] for line in result.stdout.splitlines()
        if line.startswith('| ') and not line.startswith(('| configuration', '| ---')))}
    assert float(rows['two workers'][2]) == pytest.approx(values['two workers'], abs=0.051)
    ratio = float(rows['two workers'][3].split('x ')[0])
    assert ratio == pytest.approx(values['two workers'] / values['one process'], abs=0.006)
    # The two workers' run folder is the chief's alone.
    assert len(os.listdir(tmp_path / 'two' / 'tb')) == 1


@pytest.mark.slow
def test_gpu_check_tiny_writes_every_section_on_the_cpu(tmp_path):
    """bench/gpu_check.py's JSON, by its CPU fallback: every section, the step's ops all on the
    CPU (listed), positive rates, LRN finite under the emulated float16 rewrite as far as the
    emulation runs, a uint8 copy of a quarter of the bytes, replicas against towers."""
    output = tmp_path / 'check.json'
    result = subprocess.run([sys.executable, os.path.join(REPO, 'bench', 'gpu_check.py'), '--tiny',
                             '--output', str(output), '--cache_dir', str(tmp_path / 'cache')],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    gpu_check = import_bench_script('gpu_check')
    assert all(section in report for section in gpu_check.SECTIONS)
    assert report['gpu'] is False and report['batch'] == 2
    placement = report['placement']
    assert list(placement['ops_per_device']) == ['/job:localhost/replica:0/task:0/device:CPU:0']
    assert len(placement['cpu_ops']) == placement['ops_per_device'][
        '/job:localhost/replica:0/task:0/device:CPU:0'] > 50
    rates = report['images_per_second']
    assert sorted(rates) == ['all', 'fc', 'feature_cache', 'mixed_precision', 'pipeline']
    assert all(value > 0 for value in rates.values())
    float16 = report['float16']
    assert float16['conv1_max'] > 256  # real-scale activations, beyond float16's squared range
    assert list(float16['non_finite']) == ['conv1', 'norm1', 'pool1', 'conv2', 'norm2', 'pool2']
    assert not any(float16['non_finite'].values())
    assert float16['not_run'][0] == 'conv3'
    assert report['copy']['uint8_bytes'] * 4 == report['copy']['float32_bytes']
    assert report['copy']['float32_seconds'] > 0 and report['copy']['uint8_seconds'] > 0
    assert all(isinstance(report['xla'][name], float) for name in ('off', 'on', 'on_seeded'))
    assert report['replicas']['devices'] == 2
    assert report['replicas']['replicas'] > 0 and report['replicas']['towers'] > 0
    assert report['memory']['peak_bytes'] is None
