"""What a run shows in TensorBoard: run names, the pictures' numbers against hand-made references, and,
end to end, two runs with different learning rates read back through a real `tensorboard` server's
HTTP API (runs, scalars, images, PR curves, HParams, projector)."""
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import cv2
import numpy as np
import pytest

import finetune
import tiny_runs
from finetune_alexnet import cli
from finetune_alexnet.train import summaries

TENSORBOARD = os.path.join(os.path.dirname(sys.executable), 'tensorboard')


def run_name(tmp_path, *flags):
    """The run name finetune.py gives a new run started with `flags` at 14:12 on 2026-11-29."""
    for name in ('train.txt', 'val.txt'):  # two classes, a default batch of images
        (tmp_path / name).write_text(''.join(f'{i}.jpg {i % 2}\n' for i in range(128)))
    settings = finetune.parse_settings(['--train_file', str(tmp_path / 'train.txt'), '--val_file',
                                        str(tmp_path / 'val.txt'), *flags])
    return summaries.short_run_name(settings, datetime.datetime(2026, 11, 29, 14, 12))


def test_a_run_name_is_the_time_and_up_to_three_changed_settings_in_short_form(tmp_path):
    assert run_name(tmp_path) == '2026-11-29_1412'
    assert run_name(tmp_path, '--learning_rate', '0.01', '--train_layers', 'fc7,fc8') == \
        '2026-11-29_1412_lr0.01_fc7-fc8'
    assert run_name(tmp_path, '--learning_rate', '0.01', '--train_layers', 'all') == \
        '2026-11-29_1412_lr0.01_all-layers'
    assert run_name(tmp_path, '--train_layers', 'all', '--skip_layers', 'all', '--optimizer',
                    'momentum', '--batch_size', '64') == '2026-11-29_1412_all-layers_scratch_bs64'
    # ('momentum' would pass 40 characters: the next setting that fits is shown instead)
    assert run_name(tmp_path, '--augment', '--lr_mult', 'fc8=10', '--class_weights', 'balanced',
                    '--train_layers', 'conv1,fc8', '--skip_layers', 'fc8') == \
        '2026-11-29_1412_conv1+fc8_aug_balanced'
    # Flags given at their default values change nothing.
    assert run_name(tmp_path, '--learning_rate', '0.001', '--train_layers', 'fc6,fc7,fc8') == \
        '2026-11-29_1412'


def test_a_run_name_fits_a_tensorboard_panel(tmp_path):
    every_layer = run_name(tmp_path, '--learning_rate', '0.0123456', '--train_layers', 'conv1,conv3,conv5,fc7',
                           '--skip_layers', 'conv1,conv3,conv5,fc7', '--weight_decay', '0.0005')
    assert len(every_layer) <= summaries.RUN_NAME_LENGTH
    assert every_layer.startswith('2026-11-29_1412_lr0.0123456_')


def test_run_names_are_one_folder_and_never_reuse_one(tmp_path):
    assert summaries.safe_run_name('a/b c') == 'a-b-c'
    assert summaries.new_run_folder(str(tmp_path), 'x') == 'x'
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x_2').mkdir()
    assert summaries.new_run_folder(str(tmp_path), 'x') == 'x_3'


# The numbers behind the pictures (confusion matrix, precision/recall, ranked mistakes) are checked in
# test_metrics.py; here, what the pictures and per-class scalars make of them.

def test_no_mistakes_no_grid():
    probabilities = np.array([[0.9, 0.1]])
    assert summaries.mistakes_grid(['x'] * 2, probabilities, np.array([0]), ['a', 'b']) is None


def test_per_class_scalars_skip_undefined_numbers_and_the_pictures_are_drawn(tmp_path):
    paths = []
    for index in range(6):
        path = str(tmp_path / f'{index}.png')
        cv2.imwrite(path, np.full((20, 20, 3), 40 * index, np.uint8))
        paths.append(path)
    outputs = summaries.ValidationOutputs()
    one_hot = np.eye(3)[[0, 1, 1, 1, 1, 0]] * 0.8 + 0.05
    outputs.add(one_hot, [0, 0, 0, 1, 1, 2])
    summary = summaries.validation_summary(outputs, paths, None, 3)
    values = {value.tag: value for value in summary.value}
    assert values['validation_precision/class_0'].simple_value == pytest.approx(1 / 2)
    assert values['validation_recall/class_0'].simple_value == pytest.approx(1 / 3)
    assert values['validation_recall/class_2'].simple_value == 0.0
    assert 'validation_precision/class_2' not in values  # never predicted: undefined, and not logged
    picture = values['validation/confusion_matrix'].image
    decoded = cv2.imdecode(np.frombuffer(picture.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (picture.height, picture.width) and picture.height > 100
    assert 'validation/worst_mistakes' in values


def test_mistakes_grid_shows_the_images_in_order(tmp_path):
    paths = []
    for index, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):  # BGR: red, green, blue
        path = str(tmp_path / f'{index}.png')
        cv2.imwrite(path, np.full((50, 70, 3), colour, np.uint8))
        paths.append(path)
    probabilities = np.array([[0.4, 0.6], [0.1, 0.9], [0.8, 0.2]])
    labels = np.array([0, 0, 1])
    grid = summaries.mistakes_grid(paths, probabilities, labels, ['cat', 'dog'], size=32)
    assert grid.shape == (32 + 28, 3 * 32, 3)
    # Most confident first: the green image (dog 0.9), the blue one (cat 0.8), the red one (dog 0.6).
    np.testing.assert_array_equal(grid[16, 16], [0, 255, 0])
    np.testing.assert_array_equal(grid[16, 48], [0, 0, 255])
    np.testing.assert_array_equal(grid[16, 80], [255, 0, 0])
    assert (grid[32:, :] < 128).any()  # captions drawn below


def test_hparam_values_are_plain_values(tmp_path):
    for name in ('train.txt', 'val.txt'):
        (tmp_path / name).write_text('a.jpg 0\nb.jpg 1\n')
    settings = finetune.parse_settings(['--train_file', str(tmp_path / 'train.txt'), '--val_file',
                                        str(tmp_path / 'val.txt'), '--train_layers', 'fc7,fc8',
                                        '--lr_mult', 'fc8=10'])
    values = summaries.hparam_values(settings, class_weight_values=(2 / 3, 2.0))
    assert values['class_weight_values'] == '0.6667,2'
    assert summaries.hparam_values(settings)['class_weight_values'] == 'none'
    assert values['train_layers'] == 'fc7,fc8' and values['lr_mult'] == 'fc8=10'
    assert values['seed'] == 'none' and values['learning_rate'] == 0.001 and values['augment'] is False


# ---- end to end, through TensorBoard's own server --------------------------------------------------

@pytest.fixture(scope='module')
def small_dataset(tmp_path_factory):
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('data'), images_per_class=7,
                                  train_per_class=4, val_images=6, seed=5, class_names=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class TensorBoard:
    def __init__(self, logdir):
        self.port = free_port()
        self.process = subprocess.Popen(
            [TENSORBOARD, '--logdir', str(logdir), '--host', '127.0.0.1', '--port', str(self.port),
             '--load_fast', 'false', '--reload_interval', '1'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(self, path, **query):
        url = f'http://127.0.0.1:{self.port}{path}'
        if query:
            url += '?' + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def json(self, path, **query):
        return json.loads(self.get(path, **query))

    def wait_for_runs(self, count, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                runs = self.json('/data/runs')
                if len(runs) >= count:
                    return runs
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError('TensorBoard did not list the runs in time')

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory, small_dataset, bvlc_npy):
    """Two runs into one TensorBoard root, learning rates 1e-6 and 1e-5, with --projector."""
    root = tmp_path_factory.mktemp('sweep')
    outputs = {}
    for rate in ('1e-06', '1e-05'):
        assert cli.run(finetune.main, [
            '--train_file', str(small_dataset / 'train.txt'),
            '--val_file', str(small_dataset / 'val.txt'), '--batch_size', '4', '--num_epochs', '2',
            '--seed', '1', '--learning_rate', rate, '--weights_path', bvlc_npy, '--projector',
            '--checkpoint_path', str(root / f'ckpt_{rate}'), '--filewriter_path', str(root / 'tb'),
            '--cache_dir', str(root / 'cache')]) == 0
        state = json.loads((root / f'ckpt_{rate}' / 'run_state.json').read_text())
        outputs[rate] = state
    board = TensorBoard(root / 'tb')
    try:
        board.wait_for_runs(2)
        yield board, outputs, root
    finally:
        board.close()


@pytest.mark.slow
def test_each_run_is_its_own_tensorboard_run(two_runs):
    board, states, _ = two_runs
    runs = board.json('/data/runs')
    names = {rate: state['run_name'] for rate, state in states.items()}
    assert sorted(runs) == sorted(names.values())
    assert '_lr1e-06_' in names['1e-06'] and '_lr1e-05_' in names['1e-05']
    for rate, name in names.items():
        accuracy = board.json('/data/plugin/scalars/scalars', run=name, tag='validation/accuracy')
        history = states[rate]['history']
        assert [step for _, step, _ in accuracy] == [r['step'] for r in history] == [2, 4]
        assert [value for _, _, value in accuracy] == pytest.approx([r['val_accuracy'] for r in history])
        rates = board.json('/data/plugin/scalars/scalars', run=name, tag='learning_rate')
        assert rates and [value for _, _, value in rates] == pytest.approx([float(rate)] * len(rates))
        best = board.json('/data/plugin/scalars/scalars', run=name, tag='hparams/best_val_accuracy')
        assert best[-1][2] == pytest.approx(states[rate]['best_val_accuracy'])


@pytest.mark.slow
def test_pictures_and_per_class_numbers_come_from_the_validation_pass(two_runs):
    board, states, root = two_runs
    name = states['1e-05']['run_name']
    tags = board.json('/data/plugin/images/tags')[name]
    assert 'validation/confusion_matrix' in tags
    entries = board.json('/data/plugin/images/images', run=name, tag='validation/confusion_matrix',
                         sample=0)
    assert [entry['step'] for entry in entries] == [2, 4]
    png = board.get('/data/plugin/images/individualImage?' + entries[-1]['query'])
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape[0] > 100
    # Per-class recall against the last epoch's accuracy: with 3 + 3 images, the mean of the two
    # recalls is the accuracy.
    recalls = [board.json('/data/plugin/scalars/scalars', run=name, tag=f'validation_recall/{c}')[-1][2]
               for c in ('disk', 'square')]
    assert np.mean(recalls) == pytest.approx(states['1e-05']['history'][-1]['val_accuracy'])
    curves = board.json('/data/plugin/pr_curves/pr_curves', run=name, tag='pr_curve/disk')[name]
    assert [curve['step'] for curve in curves] == [2, 4]
    last = curves[-1]
    # At the lowest threshold every image is called "disk": the 3 disks are true positives, the 3
    # squares false positives, so precision is 1/2 and recall 1.
    assert last['true_positives'][0] == 3 and last['false_positives'][0] == 3
    assert last['precision'][0] == pytest.approx(0.5) and last['recall'][0] == pytest.approx(1.0)
    if states['1e-05']['history'][-1]['val_accuracy'] < 1:
        assert 'validation/worst_mistakes' in tags


@pytest.mark.slow
def test_hparams_dashboard_compares_the_runs(two_runs):
    board, states, _ = two_runs
    experiment = board.json('/data/plugin/hparams/experiment', request=json.dumps({'experimentName': ''}))
    hparams = {info['name'] for info in experiment['hparamInfos']}
    assert {'learning_rate', 'optimizer', 'batch_size', 'train_layers', 'skip_layers', 'augment',
            'dropout_rate', 'seed', 'class_weights', 'weight_decay', 'momentum'} <= hparams
    metrics = {info['name']['tag'] for info in experiment['metricInfos']}
    assert {'hparams/best_val_accuracy', 'validation/accuracy', 'validation/cross_entropy'} <= metrics
    request = {'experimentName': '', 'allowedStatuses': ['STATUS_SUCCESS', 'STATUS_UNKNOWN',
                                                         'STATUS_RUNNING', 'STATUS_FAILURE'],
               'colParams': [{'hparam': 'learning_rate'},
                             {'metric': {'tag': 'hparams/best_val_accuracy'}}],
               'startIndex': 0, 'sliceSize': 10}
    groups = board.json('/data/plugin/hparams/session_groups', request=json.dumps(request))
    found = {}
    for group in groups['sessionGroups']:
        best = [m['value'] for m in group['metricValues']
                if m['name']['tag'] == 'hparams/best_val_accuracy']
        found[group['hparams']['learning_rate']] = best[0]
    assert found == pytest.approx({float(rate): state['best_val_accuracy']
                                   for rate, state in states.items()})


@pytest.mark.slow
def test_projector_serves_fc7_features_sprite_and_metadata(two_runs, small_dataset):
    board, states, root = two_runs
    name = states['1e-06']['run_name']
    assert name in board.json('/data/plugin/projector/runs')
    info = board.json('/data/plugin/projector/info', run=name)
    embedding = info['embeddings'][0]
    assert embedding['tensorName'] == summaries.PROJECTOR_TENSOR
    assert embedding['tensorShape'] == [6, 4096]
    tensor = np.frombuffer(board.get('/data/plugin/projector/tensor', run=name,
                                     name=summaries.PROJECTOR_TENSOR), np.float32).reshape(6, 4096)
    assert np.isfinite(tensor).all() and (tensor >= 0).all() and tensor.max() > 0  # ReLU outputs
    metadata = board.get('/data/plugin/projector/metadata', run=name,
                         name=summaries.PROJECTOR_TENSOR).decode().splitlines()
    assert metadata[0] == 'path\ttrue\tpredicted' and len(metadata) == 7
    assert [line.split('\t')[1] for line in metadata[1:]] == ['disk'] * 3 + ['square'] * 3
    first_disk = sorted(os.listdir(small_dataset / 'images' / 'disk'))[4]
    assert metadata[1].split('\t')[0] == str(small_dataset / 'images' / 'disk' / first_disk)
    sprite = cv2.imdecode(np.frombuffer(board.get('/data/plugin/projector/sprite_image', run=name,
                                                  name=summaries.PROJECTOR_TENSOR), np.uint8),
                          cv2.IMREAD_COLOR)
    size = embedding['sprite']['singleImageDim']
    assert sprite.shape[:2] == (3 * size[0], 3 * size[1])  # 6 thumbnails on a 3 x 3 grid
