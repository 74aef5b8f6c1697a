"""finetune.py end to end on tiny runs: files written and read back by TensorFlow's and TensorBoard's
own readers, frozen layers, resume, the NaN guard, and every kind of bad input (signals are in
test_signals.py)."""
import dataclasses
import json
import os
import time

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorboard.backend.event_processing import event_accumulator

import bvlc_fixture
from alexnet import TRAINABLE_LAYERS
from finetune_alexnet import cli, preprocessing
from finetune_alexnet import weight_files
from finetune_alexnet.train import demo
from finetune_alexnet.train import inputs
from finetune_alexnet.train import loop
from finetune_alexnet.train import runs
from finetune_alexnet.train import settings as run_settings
import finetune
import tiny_runs
from tiny_runs import run_cli, run_here
from finetune_alexnet.cli import run as run_main

CONV = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """12 training and 5 validation images of the demo's two classes, with list files."""
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('data'), class_names=True)


def flags(dataset, run_dir, *extra, weights=None):
    args = ['--train_file', str(dataset / 'train.txt'), '--val_file', str(dataset / 'val.txt'),
            '--batch_size', '4', '--num_epochs', '2', '--display_step', '1', '--seed', '1',
            '--checkpoint_path', str(run_dir / 'ckpt'), '--filewriter_path', str(run_dir / 'tb'),
            '--cache_dir', str(run_dir / 'feature_cache')]  # each run computes its own features
    if weights:
        args += ['--weights_path', weights]
    else:  # no pretrained file: every layer from scratch
        args += ['--weights_path', str(run_dir / 'absent.npy'), '--skip_layers', 'all',
                 '--train_layers', 'all']
    return args + list(extra)


def read_state(run_dir):
    return json.loads((run_dir / 'ckpt' / 'run_state.json').read_text())


def log_dir(run_dir):
    """The run's own TensorBoard sub-folder, as its checkpoint folder records it."""
    return run_dir / 'tb' / read_state(run_dir)['run_name']


@pytest.fixture(scope='module')
def finetuned(tmp_path_factory, dataset, bvlc_npy):
    """One fine-tuning run of fc6-fc8 from the (fixture) pretrained weights, through the command line."""
    run_dir = tmp_path_factory.mktemp('run')
    result = run_cli(flags(dataset, run_dir, weights=bvlc_npy))
    return run_dir, result


@pytest.mark.slow
def test_run_prints_a_clean_summary(finetuned):
    _, result = finetuned
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr
    assert 'I0000' not in result.stderr and 'absl' not in result.stderr  # no TensorFlow chatter
    assert result.stderr.strip() == ''
    assert 'training images per class: disk 6, square 6' in result.stdout
    assert 'caching pool5 features' in result.stdout  # conv frozen, no augmentation
    assert 'done: best validation accuracy' in result.stdout


@pytest.mark.slow
def test_checkpoints_hold_the_model_and_no_graph(finetuned, bvlc_layers):
    run_dir, _ = finetuned
    files = sorted(os.listdir(run_dir / 'ckpt'))
    assert not [f for f in files if f.endswith('.meta')]
    for prefix in ('model_epoch1.ckpt', 'model_epoch2.ckpt', 'best.ckpt'):
        reader = tf.train.load_checkpoint(str(run_dir / 'ckpt' / prefix))
        shapes = reader.get_variable_to_shape_map()
        assert shapes['conv2/weights'] == [5, 5, 48, 256]
        assert shapes['fc8/weights'] == [4096, 2] and shapes['fc8/biases'] == [2]
        assert 'global_step' in shapes
    reader = tf.train.load_checkpoint(str(run_dir / 'ckpt' / 'model_epoch2.ckpt'))
    assert reader.get_tensor('global_step') == 2 * 3  # 12 images / batch 4, two epochs
    for layer in CONV:  # frozen: still exactly the loaded weights
        np.testing.assert_array_equal(reader.get_tensor(f'{layer}/weights'),
                                      bvlc_layers[layer]['weights'])
    for layer in ('fc6', 'fc7'):  # trained: moved away from them
        assert not np.array_equal(reader.get_tensor(f'{layer}/weights'), bvlc_layers[layer]['weights'])


@pytest.mark.slow
def test_run_state_metrics_curves_and_model_info(finetuned):
    run_dir, _ = finetuned
    state = read_state(run_dir)
    assert state['epochs_completed'] == 2 and state['latest_checkpoint'] == 'model_epoch2.ckpt'
    assert state['args']['learning_rate'] == 0.001 and state['args']['skip_layers'] == ['fc8']
    lines = (run_dir / 'ckpt' / 'metrics.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r['epoch'] for r in records] == [1, 2]
    for record in records:
        assert record['val_images'] == 5  # the last partial batch (1 of 4) is counted
        assert record['val_accuracy'] * 5 == pytest.approx(round(record['val_accuracy'] * 5))
    curves = cv2.imread(str(run_dir / 'ckpt' / 'curves.png'))
    assert curves is not None and curves.shape[0] > 100
    info = json.loads((run_dir / 'ckpt' / 'model_info.json').read_text())
    assert info['num_classes'] == 2 and info['class_names'] == ['disk', 'square']


@pytest.mark.slow
def test_tensorboard_reads_the_summaries(finetuned):
    run_dir, _ = finetuned
    events = event_accumulator.EventAccumulator(str(log_dir(run_dir)), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    events.Reload()
    tags = events.Tags()
    assert tags['graph'] is True
    for tag in ('cross_entropy', 'accuracy', 'learning_rate', 'validation/cross_entropy',
                'validation/accuracy', 'images_per_second'):
        assert tag in tags['scalars'], tag
    assert [e.step for e in events.Scalars('validation/accuracy')] == [3, 6]
    assert [e.step for e in events.Scalars('cross_entropy')] == [1, 2, 3, 4, 5, 6]
    for layer in ('fc6', 'fc7', 'fc8'):
        for kind in ('weights', 'biases'):
            assert f'{layer}/{kind}' in tags['histograms']
            assert f'{layer}/{kind}/gradient' in tags['histograms']
    assert 'conv1/weights' not in tags['histograms']  # frozen layers are not summarised
    learning_rates = [e.value for e in events.Scalars('learning_rate')]
    assert learning_rates == pytest.approx([0.001] * 6)


# Next to the other tests of the `finetuned` run: pytest-xdist tends to hand one worker a module's
# neighbouring tests, and a module fixture runs once in every worker that needs it.
@pytest.mark.slow
def test_warm_start_reproduces_the_earlier_runs_validation_before_training(finetuned, dataset, tmp_path,
                                                                           bvlc_npy, capsys):
    """--init_checkpoint with a run folder takes its best.ckpt's model weights (fc8 included: the
    skip default becomes none), not its step: the first validation equals the earlier run's best."""
    earlier_dir, _ = finetuned
    earlier = read_state(earlier_dir)
    best = next(r for r in earlier['history'] if r['epoch'] == earlier['best_epoch'])
    code, out, err = run_in_process(flags(dataset, tmp_path, '--num_epochs', '1', '--train_layers', 'fc8',
                                          '--init_checkpoint', earlier_dir / 'ckpt', weights=bvlc_npy),
                                    capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith('warm start from'))
    assert str(earlier_dir / 'ckpt' / 'best.ckpt') in line
    loss, accuracy = float(line.split('loss ')[1].split()[0]), float(line.split('acc ')[1].split()[0])
    assert accuracy == pytest.approx(earlier['best_val_accuracy'], abs=1e-4)
    assert loss == pytest.approx(best['val_loss'], rel=1e-3)
    state = read_state(tmp_path)
    assert state['init_val_accuracy'] == pytest.approx(earlier['best_val_accuracy'])
    assert state['args']['skip_layers'] == []
    reader = tf.train.load_checkpoint(str(tmp_path / 'ckpt' / 'model_epoch1.ckpt'))
    assert reader.get_tensor('global_step') == 3  # a new run: its own steps, not the earlier 6
    before = tf.train.load_checkpoint(str(earlier_dir / 'ckpt' / 'best.ckpt'))
    np.testing.assert_array_equal(reader.get_tensor('fc7/weights'), before.get_tensor('fc7/weights'))


@pytest.mark.slow
def test_warm_start_refuses_a_checkpoint_whose_fc8_does_not_fit(finetuned, dataset, tmp_path, bvlc_npy,
                                                                capsys):
    earlier_dir, _ = finetuned
    names = tmp_path / 'names.txt'
    names.write_text('0 a\n1 b\n2 c\n')
    code, _, err = run_in_process(flags(dataset, tmp_path, '--num_classes', '3', '--class_names', names,
                                        '--init_checkpoint', earlier_dir / 'ckpt', weights=bvlc_npy), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert 'does not fit --init_checkpoint (fc8/weights has shape (4096, 2), expected (4096, 3)' in err
    assert 'add the layers that differ' in err


@pytest.mark.slow
def test_cached_features_give_the_same_forward_values(dataset, tmp_path, bvlc_npy, capsys):
    """With the weights held still (a vanishing learning rate), validating from cached pool5
    features and from the full network must give the same loss: the cache changes no value."""
    outcomes = {}
    for mode in ('off', 'on'):
        run_dir = tmp_path / mode
        result = run_here(capsys, flags(dataset, run_dir, '--cache_features', mode, '--num_epochs', '1',
                               '--learning_rate', '1e-30', weights=bvlc_npy))
        assert result.returncode == 0, result.stderr
        assert ('caching pool5 features' in result.stdout) == (mode == 'on')
        outcomes[mode] = json.loads((run_dir / 'ckpt' / 'metrics.jsonl').read_text())
    assert outcomes['on']['val_images'] == outcomes['off']['val_images'] == 5
    assert outcomes['on']['val_loss'] == pytest.approx(outcomes['off']['val_loss'], rel=1e-5)
    assert outcomes['on']['val_accuracy'] == outcomes['off']['val_accuracy']


@pytest.mark.slow
def test_resume_continues_the_global_step(dataset, tmp_path, capsys):
    first = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '1'))
    assert first.returncode == 0, first.stderr
    assert read_state(tmp_path)['epochs_completed'] == 1
    again = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '2'))
    assert again.returncode == 2 and 'already holds a run' in again.stderr  # nothing overwritten
    resumed = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '3', '--resume'))
    assert resumed.returncode == 0, resumed.stderr
    assert 'resumed model_epoch1.ckpt at step 3' in resumed.stdout
    state = read_state(tmp_path)
    assert state['epochs_completed'] == 3 and [r['step'] for r in state['history']] == [3, 6, 9]
    reader = tf.train.load_checkpoint(str(tmp_path / 'ckpt' / 'model_epoch3.ckpt'))
    assert reader.get_tensor('global_step') == 9


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_the_last_checkpoint(dataset, tmp_path, capsys):
    assert run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '1')).returncode == 0
    result = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '5', '--resume',
                           '--learning_rate', '1e30'))
    assert result.returncode == 2
    assert result.stderr.startswith('error: the loss became NaN or infinite at epoch 2')
    assert 'lower the learning rate' in result.stderr and 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    state = read_state(tmp_path)
    assert state['epochs_completed'] == 1
    reader = tf.train.load_checkpoint(str(tmp_path / 'ckpt' / 'model_epoch1.ckpt'))
    assert np.isfinite(reader.get_tensor('fc8/weights')).all()


@pytest.mark.slow
def test_two_logical_devices_train(dataset, tmp_path):
    result = run_cli(flags(dataset, tmp_path, '--num_epochs', '1', '--num_gpus', '2',
                           '--device', 'cpu'))
    assert result.returncode == 0, result.stderr
    assert read_state(tmp_path)['history'][0]['step'] == 3


@pytest.mark.slow
def test_unreadable_image_is_named_or_skipped(dataset, tmp_path, capsys):
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(open(dataset / 'images' / 'disk' / 'disk.0000.jpg', 'rb').read()[:300])
    lines = [f'{dataset}/{line}' for line in (dataset / 'train.txt').read_text().splitlines()]
    lines[2] = f'{broken} 0'
    bad_list = tmp_path / 'train_bad.txt'
    bad_list.write_text('\n'.join(lines) + '\n')
    args = flags(dataset, tmp_path, '--num_epochs', '1')
    args[args.index('--train_file') + 1] = str(bad_list)
    result = run_here(capsys, args)
    assert result.returncode == 2
    assert str(broken) in result.stderr and 'line 3' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    args[args.index('--checkpoint_path') + 1] = str(tmp_path / 'skip')
    skipped = run_here(capsys, args + ['--skip_bad_images'])
    assert skipped.returncode == 0, skipped.stderr
    assert 'skipped 1 unreadable image of 12' in skipped.stdout


@pytest.mark.parametrize('extra, message', [
    (['--learning_rate', '0'], '--learning_rate must be positive'),
    (['--num_epochs', '0'], '--num_epochs must be at least 1'),
    (['--dropout_rate', '1'], '--dropout_rate must be in [0, 1)'),
    (['--batch_size', '3', '--num_gpus', '2'], 'must divide evenly over --num_gpus'),
    (['--num_classes', '1'], '--num_classes must be at least 2'),
    (['--skip_layers', 'fc8,fc7', '--train_layers', 'fc8'], 'would stay random and frozen'),
    (['--skip_layers', 'fc7', '--train_layers', 'fc7,fc8'], 'add fc8 to --skip_layers'),
    (['--batch_size', '64'], '--batch_size 64 is more than the 12 training images of '),
    (['--num_classes', '3'], 'classes.txt names 2 classes: leave --num_classes out'),
    (['--momentum', '1.5'], '--momentum must be in [0, 1)'),
    (['--keep_checkpoints', '0'], '--keep_checkpoints must be at least 1'),
    (['--class_weights', '1,2,3'], '--class_weights lists 3 weights for --num_classes 2'),
    (['--class_weights', 'heavy'], "expected 'none', 'balanced' or a comma list of numbers"),
    (['--lr_mult', 'fc9=2'], "unknown layer 'fc9'"),
    (['--lr_mult', 'fc8=-1'], 'the multiplier must be positive'),
    (['--lr_mult', 'conv1=2'], '--lr_mult names conv1, which --train_layers does not train'),
    (['--early_stopping', '-1'], '--early_stopping must be >= 0'),
    (['--init_checkpoint', '/nonexistent/run'], '/nonexistent/run: checkpoint not found'),
    (['--init_checkpoint', '/nonexistent/run', '--skip_layers', 'all', '--train_layers', 'all'],
     '--init_checkpoint with every layer in --skip_layers would load nothing'),
    (['--seed', '-1'], '--seed must be in 0..4294967295, got -1'),
    (['--seed', str(2**32)], '--seed must be in 0..4294967295'),
    (['--num_classes', str(2**31)], '--num_classes must be at most 2147483647'),
    (['--cache_max_gb', 'inf'], '--cache_max_gb must be a positive number, got inf'),
    (['--cache_max_gb', 'nan'], '--cache_max_gb must be a positive number, got nan'),
    (['--learning_rate', 'nan'], '--learning_rate must be positive, got nan'),
    (['--weight_decay', 'inf'], '--weight_decay must be >= 0, got inf'),
])
def test_bad_flags_fail_in_one_line(dataset, tmp_path, bvlc_npy, capsys, extra, message):
    code = run_main(finetune.main, flags(dataset, tmp_path, *extra, weights=bvlc_npy))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bad_layer_name_from_the_shell_and_missing_weights(dataset, tmp_path, capsys):
    result = run_cli(flags(dataset, tmp_path, '--train_layers', 'fc9'))  # the status a shell sees
    assert result.returncode == 2 and 'unknown layer fc9' in result.stderr
    assert 'Traceback' not in result.stderr
    result = run_here(capsys, flags(dataset, tmp_path, weights=str(tmp_path / 'nope.npy')))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert f'{tmp_path / "nope.npy"}: weights file not found' in result.stderr
    assert '--weights_path' in result.stderr


def test_bad_list_files_fail_cleanly(dataset, tmp_path, capsys):
    bad = tmp_path / 'labels.txt'
    bad.write_text(f'{dataset}/images/disk/disk.0000.jpg 0\n{dataset}/images/disk/disk.0001.jpg 7\n')
    args = flags(dataset, tmp_path, '--num_classes', '2')
    args[args.index('--train_file') + 1] = str(bad)
    assert run_main(finetune.main, args) == 2
    err = capsys.readouterr().err
    assert f'{bad}:2: label 7' in err and len(err.strip().splitlines()) == 1
    args[args.index('--train_file') + 1] = str(tmp_path / 'missing.txt')
    assert run_main(finetune.main, args) == 2
    assert 'missing.txt' in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_on_the_pretrained_weights(tmp_path, bvlc_npy):
    result = run_cli(['--demo', '--demo_dir', str(tmp_path / 'demo'), '--num_epochs', '1',
                      '--weights_path', bvlc_npy, '--checkpoint_path', str(tmp_path / 'ckpt'),
                      '--filewriter_path', str(tmp_path / 'tb')])
    assert result.returncode == 0, result.stderr
    assert 'training images per class: disk 96, square 96' in result.stdout
    assert 'training fc8,fc7,fc6' in result.stdout and 'random initialisation' not in result.stdout
    listed = (tmp_path / 'demo' / 'train.txt').read_text().splitlines()
    assert len(listed) == 192 and cv2.imread(listed[0].rsplit(' ', 1)[0]) is not None
    assert (tmp_path / 'demo' / 'classes.txt').read_text() == '0 disk\n1 square\n'


def test_demo_without_weights_trains_every_layer_from_scratch(tmp_path):
    settings = finetune.parse_settings(['--demo_dir', str(tmp_path / 'demo'), '--weights_path',
                                        str(tmp_path / 'absent.npy'), '--num_epochs', '2',
                                        '--checkpoint_path', str(tmp_path / 'ckpt')])
    assert settings.train_layers == settings.skip_layers == TRAINABLE_LAYERS
    assert settings.num_epochs == 2  # a flag given on the command line wins over the demo's settings
    assert settings.batch_size == 32 and settings.optimizer == 'momentum' and settings.seed == 0
    assert settings.demo and settings.train_file == str(tmp_path / 'demo' / 'train.txt')
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_epochs = 3  # settings are values: nothing changes them after parsing


def test_label_counts_warn_when_one_class_dominates(capsys):
    runs.print_label_counts(np.array([0] * 9 + [1]), ['cat', 'dog'])
    out = capsys.readouterr().out
    assert 'training images per class: cat 9, dog 1' in out
    assert 'warning: cat holds 90% of the training images' in out


def test_gpu_asked_for_but_absent(dataset, tmp_path, capsys):
    if tf.config.list_physical_devices('GPU'):
        pytest.skip('this machine has a GPU')
    assert run_main(finetune.main, flags(dataset, tmp_path, '--device', 'gpu')) == 2
    assert 'asks for 1 GPU(s), TensorFlow sees 0' in capsys.readouterr().err


@pytest.mark.slow
def test_mixed_precision_run_then_resumed_without_it(dataset, tmp_path, bvlc_npy, capsys):
    """On a CPU --mixed_precision is grappler's bfloat16 rewrite plus loss scaling: the run trains,
    logs its loss scale and saves it; a resume without the flag leaves the loss scale behind."""
    result = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '1', '--mixed_precision',
                           '--cache_features', 'off', weights=bvlc_npy))
    assert result.returncode == 0, result.stderr
    state = read_state(tmp_path)
    assert state['epochs_completed'] == 1 and np.isfinite(state['history'][0]['val_loss'])
    reader = tf.train.load_checkpoint(str(tmp_path / 'ckpt' / 'model_epoch1.ckpt'))
    assert reader.get_tensor('global_step') == 3
    scale_names = [name for name in reader.get_variable_to_shape_map() if 'current_loss_scale' in name]
    assert len(scale_names) == 1 and reader.get_tensor(scale_names[0]) == 2.0**15
    events = event_accumulator.EventAccumulator(str(log_dir(tmp_path)))
    events.Reload()
    assert [e.value for e in events.Scalars('loss_scale')] == [2.0**15] * 3
    resumed = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '2', '--resume',
                            '--cache_features', 'off', weights=bvlc_npy))
    assert resumed.returncode == 0, resumed.stderr
    assert read_state(tmp_path)['history'][-1]['step'] == 6


@pytest.mark.slow
def test_resume_with_a_model_that_does_not_fit_the_checkpoint(dataset, tmp_path, capsys):
    assert run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '1')).returncode == 0
    resumed = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '2', '--resume', '--mixed_precision'))
    assert resumed.returncode == 2 and 'Traceback' not in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1
    assert 'model_epoch1.ckpt: does not fit this run' in resumed.stderr
    assert 'resume with the flags the run was started with' in resumed.stderr
    assert '(current_loss_scale is not in it; good_steps is not in it)' in resumed.stderr
    # Another optimizer is refused from run_state.json's settings, before any checkpoint is read.
    momentum = run_here(capsys, flags(dataset, tmp_path, '--num_epochs', '2', '--resume', '--optimizer',
                             'momentum'))
    assert momentum.returncode == 2 and len(momentum.stderr.strip().splitlines()) == 1
    assert "other settings (optimizer 'sgd' -> 'momentum')" in momentum.stderr
    assert read_state(tmp_path)['epochs_completed'] == 1  # nothing lost


# --- what each flag reaches: the settings no other test would notice being dropped or swapped ---

def run_in_process(args, capsys):
    """finetune.main in this process, as the shell would run it: (exit status, stdout, stderr)."""
    code = run_main(finetune.main, [str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def resolved(argv):
    return finetune.parse_settings(argv)


def test_dropout_rate_is_fed_as_a_keep_probability(dataset, tmp_path):
    """--dropout_rate 0.3 must keep 70% of fc6's units in a training step (tf.nn.dropout in TF2 takes
    a drop rate; AlexNet's keep_prob is the probability of keeping)."""
    settings = resolved(flags(dataset, tmp_path, '--dropout_rate', '0.3'))
    assert settings.keep_probability == pytest.approx(0.7)
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 227, 227, 3])
        keep_prob = tf.placeholder_with_default(1.0, [])
        from alexnet import AlexNet
        model = AlexNet(x, keep_prob, 2, skip_layer=[])
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            images = np.random.default_rng(0).uniform(-50, 50, (4, 227, 227, 3))
            fc6, dropped = session.run([model.end_points['fc6'], model.end_points['dropout6']],
                                       {x: images, keep_prob: settings.keep_probability})
    active = fc6 > 0
    kept = (dropped[active] != 0).mean()
    assert kept == pytest.approx(0.7, abs=0.02)
    np.testing.assert_allclose(dropped[active][dropped[active] != 0],
                               fc6[active][dropped[active] != 0] / 0.7, rtol=1e-5)


def test_every_optimisation_flag_reaches_the_training_graph(dataset, tmp_path):
    args = resolved(flags(dataset, tmp_path, '--weight_decay', '5e-4', '--momentum', '0.8',
                          '--optimizer', 'momentum', '--lr_decay_epochs', '2',
                          '--lr_decay_factor', '0.5', '--learning_rate', '0.02'))
    config = runs.training_config(args, gpu=False, steps_per_epoch=7)
    assert (config.weight_decay, config.momentum, config.optimizer) == (5e-4, 0.8, 'momentum')
    assert config.decay_steps == 14 and config.decay_factor == 0.5  # epochs x steps per epoch
    assert config.learning_rate == 0.02 and config.num_classes == 2


@pytest.mark.slow
def test_learning_rate_decays_by_epochs_and_class_names_are_kept(dataset, tmp_path, capsys):
    names = tmp_path / 'names.txt'
    names.write_text('0 round thing\n1 square thing\n')
    code, out, err = run_in_process(flags(dataset, tmp_path, '--num_epochs', '3', '--lr_decay_epochs',
                                          '1', '--lr_decay_factor', '0.5', '--learning_rate', '0.01',
                                          '--class_names', names), capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / 'ckpt' / 'metrics.jsonl').read_text().splitlines()]
    # Each epoch is logged with the rate its own 3 steps used: one decay per epoch, staircase.
    assert [r['learning_rate'] for r in records] == pytest.approx([0.01, 0.005, 0.0025])
    assert not any('learning_rate_last' in r for r in records)  # constant within each epoch
    # ... the rates TensorBoard's per-step scalar shows for the steps of each epoch.
    runs_folder = tmp_path / 'tb'
    events = event_accumulator.EventAccumulator(str(next(runs_folder.iterdir())))
    events.Reload()
    per_step = {event.step: event.value for event in events.Scalars('learning_rate')}
    for record in records:
        steps = range(record['step'] - 2, record['step'] + 1)
        assert [per_step[step] for step in steps] == pytest.approx([record['learning_rate']] * 3)
    info = json.loads((tmp_path / 'ckpt' / 'model_info.json').read_text())
    assert info['class_names'] == ['round thing', 'square thing']


def test_validation_takes_the_centre_crop_when_training_augments(dataset, tmp_path):
    args = resolved(flags(dataset, tmp_path, '--augment'))
    train_data, val_data, _ = inputs.make_datasets(args, order_seed=1)
    with tf.Session() as session:
        iterator = tf.data.make_initializable_iterator(val_data.data)
        images, _ = iterator.get_next()
        session.run(iterator.initializer)
        first = session.run(images)[0]
    path = (dataset / val_data.paths[0]) if not os.path.isabs(val_data.paths[0]) else val_data.paths[0]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    resized = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_LINEAR)
    # The pipeline's pixels: the centre crop rounded to whole levels (either one within 1e-3 of a
    # half, where OpenCV's float32 sums and TensorFlow's may part).
    assert first.dtype == np.uint8
    assert np.abs(first - resized[14:241, 14:241].astype(np.float64)).max() <= 0.5 + 1e-3


def test_first_loss_far_from_ln_classes_is_flagged():
    assert loop.first_loss_note(0.70, 2) is None
    assert 'the first loss, 9.500, is far from ln(2) = 0.693' in loop.first_loss_note(9.5, 2)


def test_demo_flags_given_any_way_win(tmp_path):
    """Flags given as --flag=value or abbreviated still override the demo's settings."""
    args = finetune.parse_settings(['--demo_dir', str(tmp_path / 'demo'), '--batch_size=64', '--num_ep',
                                    '7', '--weights_path', str(tmp_path / 'absent.npy'),
                                    '--checkpoint_path', str(tmp_path / 'ckpt')])
    assert (args.batch_size, args.num_epochs, args.display_step) == (64, 7, 3)


@pytest.mark.slow
def test_seed_repeats_a_run_bit_for_bit(dataset, tmp_path, capsys):
    """Two runs with one --seed, every layer learning, end with identical weights: op determinism
    makes the multi-threaded gradient kernels sum in a fixed order."""
    finals = []
    for name in ('first', 'second'):
        code, _, err = run_in_process(flags(dataset, tmp_path / name, '--num_epochs', '1',
                                            '--seed', '7'), capsys)
        assert code == 0, err
        reader = tf.train.load_checkpoint(str(tmp_path / name / 'ckpt' / 'model_epoch1.ckpt'))
        finals.append({layer: reader.get_tensor(f'{layer}/weights') for layer in TRAINABLE_LAYERS})
    for layer in TRAINABLE_LAYERS:
        np.testing.assert_array_equal(finals[0][layer], finals[1][layer], err_msg=layer)


def test_the_demo_replaces_its_own_previous_run_and_nothing_else(tmp_path, monkeypatch):
    folders = {'checkpoint_path': tmp_path / 'runs' / 'demo'}
    monkeypatch.setitem(run_settings.DEMO_DEFAULTS, 'checkpoint_path', str(folders['checkpoint_path']))

    def leave_a_run(demo):
        ckpt = folders['checkpoint_path']
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / 'events.out.tfevents.1.host').write_text('x')  # the run's TensorBoard events
        (ckpt / 'model_epoch1.ckpt.index').write_text('x')
        (ckpt / 'run_state.json').write_text(json.dumps(
            {'latest_checkpoint': 'model_epoch1.ckpt', 'epochs_completed': 1, 'history': [],
             'best_val_accuracy': None, 'best_epoch': None, 'args': {'demo': demo}, 'settings': {},
             'run_name': 'demo', 'order_seed': 0}))

    leave_a_run(demo=False)  # a run of the user's own in the demo's folder: kept
    demo.clear_previous_demo_run()
    assert (folders['checkpoint_path'] / 'run_state.json').exists()
    leave_a_run(demo=True)  # an earlier demo run: replaced
    demo.clear_previous_demo_run()
    assert [p.name for p in folders['checkpoint_path'].iterdir()] == ['.lock']  # the lock file stays
    leave_a_run(demo=True)  # a demo still running there (holding the folder's lock): left alone
    from finetune_alexnet import run_folder
    # flock treats each open of the file on its own, so this process's own lock is a holder too.
    with run_folder.RunLock(str(folders['checkpoint_path'])):
        demo.clear_previous_demo_run()
    assert (folders['checkpoint_path'] / 'run_state.json').exists()


# ---- experiments: early stopping, weights files, class weights, warm starts (TensorBoard: test_summaries.py)

def test_early_stopping_stops_at_the_right_epoch(dataset, tmp_path, bvlc_npy, capsys):
    """A vanishing learning rate holds validation accuracy still: best at epoch 1, so with
    --early_stopping 2 the run stops after epoch 3 of 6, and says so."""
    code, out, err = run_in_process(flags(dataset, tmp_path, '--num_epochs', '6', '--early_stopping',
                                          '2', '--learning_rate', '1e-30', weights=bvlc_npy), capsys)
    assert code == 0, err
    state = read_state(tmp_path)
    assert state['epochs_completed'] == 3 and state['best_epoch'] == 1
    assert [r['epoch'] for r in state['history']] == [1, 2, 3]
    assert 'early stopping after epoch 3: no better validation accuracy for 2 epoch(s) since epoch 1' in out
    assert 'epoch 4' not in out


def test_fc8_is_kept_from_any_weights_file_with_num_classes_outputs(dataset, tmp_path, capsys):
    """Our own 2-class export loads whole with --num_classes 2 (the file decides, not the number 1000);
    a 3-class file is refused in one line naming the file."""
    two = bvlc_fixture.random_weights(num_classes=2, seed=4)
    weights_file = tmp_path / 'two_classes.npz'
    weight_files.save_weights(weights_file, two)
    code, _, err = run_in_process(flags(dataset, tmp_path / 'run', '--num_epochs', '1', '--skip_layers',
                                        'none', '--train_layers', 'fc7', weights=str(weights_file)), capsys)
    assert code == 0, err
    reader = tf.train.load_checkpoint(str(tmp_path / 'run' / 'ckpt' / 'model_epoch1.ckpt'))
    np.testing.assert_array_equal(reader.get_tensor('fc8/weights'), two['fc8']['weights'])  # loaded, frozen
    weight_files.save_weights(tmp_path / 'three.npz', bvlc_fixture.random_weights(num_classes=3, seed=4))
    code, _, err = run_in_process(flags(dataset, tmp_path / 'other', '--skip_layers', 'none',
                                        weights=str(tmp_path / 'three.npz')), capsys)
    assert code == 2
    assert f'{tmp_path / "three.npz"}: its fc8 has 3 classes, --num_classes is 2' in err


def test_class_weights_balanced_reach_the_graph_and_the_warning_suggests_them(dataset, tmp_path, capsys):
    args = resolved(flags(dataset, tmp_path, '--class_weights', 'balanced', '--lr_mult', 'fc8=10'))
    config = runs.training_config(args, gpu=False, steps_per_epoch=3, train_labels=[0, 0, 0, 1])
    assert config.class_weights == pytest.approx((4 / 6, 2.0)) and config.lr_mult == (('fc8', 10.0),)
    runs.print_label_counts(np.array([0] * 9 + [1]), ['class 0', 'class 1'])
    assert '--class_weights balanced' in capsys.readouterr().out


def test_a_resumed_run_continues_in_its_own_tensorboard_folder(dataset, tmp_path, bvlc_npy, capsys):
    code, _, err = run_in_process(flags(dataset, tmp_path, '--num_epochs', '1', '--run_name', 'first try',
                                        weights=bvlc_npy), capsys)
    assert code == 0, err
    assert read_state(tmp_path)['run_name'] == 'first-try'
    code, out, err = run_in_process(flags(dataset, tmp_path, '--num_epochs', '2', '--resume',
                                          weights=bvlc_npy), capsys)
    assert code == 0, err
    assert os.listdir(tmp_path / 'tb') == ['first-try']
    events = event_accumulator.EventAccumulator(str(tmp_path / 'tb' / 'first-try'))
    events.Reload()
    assert [e.step for e in events.Scalars('validation/accuracy')] == [3, 6]


@pytest.mark.slow
def test_the_balanced_loss_of_one_step_is_scikit_learns_weighted_mean(tmp_path, capsys):
    """12 disks against 4 squares, one step of all 16 at a vanishing rate: the logged training loss is
    the mean over images of each image's cross-entropy times n / (K * count) of its class."""
    data = tiny_runs.make_dataset(tmp_path / 'data', images_per_class=13, train_per_class=12,
                                  val_images=2)
    lines = (data / 'train.txt').read_text().splitlines()
    (data / 'train.txt').write_text('\n'.join(lines[:12] + lines[12:16]) + '\n')
    code, out, err = run_in_process(flags(data, tmp_path, '--num_epochs', '1', '--batch_size', '16',
                                          '--learning_rate', '1e-12', '--class_weights', 'balanced',
                                          '--dropout_rate', '0'), capsys)
    assert code == 0, err
    assert 'class weights of the loss: class 0 0.667, class 1 2' in out
    logged = json.loads((tmp_path / 'ckpt' / 'metrics.jsonl').read_text())['train_loss']
    # The model's logits on the 16 images, from the checkpoint (a 1e-12 step changes nothing).
    settings = finetune.parse_settings(flags(data, tmp_path / 'probe', '--batch_size', '16'))
    with tf.Graph().as_default():
        train_data, _, _ = inputs.make_datasets(settings, order_seed=1)
        iterator = tf.data.make_initializable_iterator(train_data.data)
        images, labels = iterator.get_next()
        from alexnet import AlexNet
        model = AlexNet(preprocessing.normalize(images), 1.0, 2, skip_layer=TRAINABLE_LAYERS)
        with tf.Session() as session:
            tf.train.Saver(tf.global_variables()).restore(
                session, str(tmp_path / 'ckpt' / 'model_epoch1.ckpt'))
            session.run(iterator.initializer, {train_data.epoch: 1, train_data.skip: 0})
            logits, one_hot = session.run([model.fc8, labels])
    logits = logits.astype(np.float64)
    cross_entropy = np.log(np.exp(logits).sum(axis=1)) - (logits * one_hot).sum(axis=1)
    classes = one_hot.argmax(axis=1)
    counts = np.bincount(classes, minlength=2)
    assert counts.tolist() == [12, 4]
    weights = len(classes) / (2 * counts)  # scikit-learn's 'balanced', written out
    assert logged == pytest.approx(np.mean(weights[classes] * cross_entropy), rel=1e-4)


# ---- what the toolkit can know, it does not ask for (issue 28)

def lists(folder, train_labels, val_labels, class_names=None):
    """train.txt and val.txt of the given labels (the images need not exist to parse settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, labels in (('train.txt', train_labels), ('val.txt', val_labels)):
        (folder / name).write_text(''.join(f'{name}{i}.jpg {label}\n' for i, label in enumerate(labels)))
    if class_names:
        (folder / 'classes.txt').write_text(''.join(f'{i} {n}\n' for i, n in enumerate(class_names)))
    return ['--train_file', str(folder / 'train.txt'), '--val_file', str(folder / 'val.txt'),
            '--checkpoint_path', str(folder / 'run')]


def test_the_class_count_comes_from_the_data(tmp_path):
    by_labels = finetune.parse_settings(lists(tmp_path / 'a', [0, 1, 2, 0] * 40, [3, 1]))
    assert by_labels.num_classes == 4 and by_labels.class_names is None  # the largest label + 1
    assert by_labels.num_classes_source.startswith('the labels of ')
    named = finetune.parse_settings(lists(tmp_path / 'b', [0, 1] * 80, [1, 0], ['a', 'b', 'c']))
    assert named.num_classes == 3  # classes.txt names a class no image shows yet
    assert named.class_names == str(tmp_path / 'b' / 'classes.txt') == named.num_classes_source
    checked = finetune.parse_settings(lists(tmp_path / 'c', [0, 1] * 80, [1], ['a', 'b']) +
                                      ['--num_classes', '2'])
    assert checked.num_classes == 2 and checked.num_classes_source == '--num_classes 2'


@pytest.mark.parametrize('train, val, names, extra, message', [
    ([0, 1, 2] * 50, [0], ['a', 'b'], [], 'train.txt:3: label 2, but {d}/classes.txt names only 2 '
     'classes (0..1): add "2 <name>" to {d}/classes.txt, or correct the label'),
    ([0, 1] * 80, [0], ['a', 'b', 'c'], ['--num_classes', '2'], '--num_classes 2, but {d}/classes.txt '
     'names 3 classes: leave --num_classes out (the toolkit reads it from {d}/classes.txt)'),
    ([0, 1] * 80, [4], None, ['--num_classes', '3'], 'val.txt:1: label 4 is outside 0..2 '
     '(--num_classes 3): leave --num_classes out (the labels say 5 classes), or correct the label'),
    ([0, 1] * 80, [0], None, ['--num_classes', '5'], '--num_classes 5, but the labels of '),
    ([0] * 160, [0], None, [], 'is 0: fine-tuning needs at least 2 classes'),
])
def test_a_class_count_the_data_contradict_is_one_line_naming_both(tmp_path, capsys, train, val,
                                                                   names, extra, message):
    data = tmp_path / 'data'
    assert cli.run(finetune.main, lists(data, train, val, names) + extra) == 2
    line = tiny_runs.one_error_line(capsys.readouterr().err)
    assert message.format(d=data) in line


def test_the_default_batch_shrinks_to_fit_a_small_training_set(tmp_path, capsys):
    settings = finetune.parse_settings(lists(tmp_path / 'data', [0, 1] * 36, [0, 1]))
    assert settings.batch_size == 64 and 'batch_size' not in settings.changed_settings
    out = capsys.readouterr().out
    assert out.strip() == (f"note: {tmp_path / 'data' / 'train.txt'} holds 72 training images, fewer "
                           'than the default --batch_size 128: using --batch_size 64')
    full = finetune.parse_settings(lists(tmp_path / 'full', [0, 1] * 64, [0, 1]))
    assert full.batch_size == 128 and 'note' not in capsys.readouterr().out


def test_resume_takes_the_runs_own_flags_and_extends_with_num_epochs(dataset, tmp_path, capsys):
    """A forgotten --num_epochs on --resume is the run's, never the default 10; a given one extends."""
    args = tiny_runs.flags(dataset, tmp_path, '--learning_rate', '0.003', epochs=1)
    assert tiny_runs.run_here(capsys, args).returncode == 0
    folder = ['--checkpoint_path', str(tmp_path / 'ckpt'), '--resume']
    again = tiny_runs.run_here(capsys, folder)
    assert again.returncode == 0, again.stderr
    assert tiny_runs.read_state(tmp_path)['epochs_completed'] == 1  # a finished run stays finished
    settings = finetune.parse_settings(folder + ['--num_epochs', '3'])
    first = tiny_runs.read_state(tmp_path)['args']
    assert (settings.num_epochs, settings.learning_rate, settings.batch_size) == (3, 0.003, 4)
    assert (settings.train_file, settings.train_layers, settings.seed) == \
        (first['train_file'], tuple(first['train_layers']), 1)
    assert settings.filewriter_path == first['filewriter_path']  # its events stay where they were
    refused = tiny_runs.run_here(capsys, folder + ['--batch_size', '2'])
    assert refused.returncode == 2 and 'batch_size' in refused.stderr


def test_resume_without_a_run_folder_names_the_latest_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_settings, 'DEFAULT_RUNS', str(tmp_path / 'runs'))
    for name, age in (('older', 100), ('newer', 10)):
        (tmp_path / 'runs' / name).mkdir(parents=True)
        state = tmp_path / 'runs' / name / 'run_state.json'
        state.write_text('{}')
        os.utime(state, (time.time() - age, time.time() - age))
    assert cli.run(finetune.main, ['--resume']) == 2
    assert tiny_runs.one_error_line(capsys.readouterr().err) == (
        'error: --resume needs the run to continue: --checkpoint_path RUN_FOLDER (the latest is '
        f"{tmp_path / 'runs' / 'newer'})")

@pytest.mark.parametrize('extra, gpus, message', [
    (['--xla'], 1, "--xla with --seed on a GPU: XLA's deterministic GPU ops are not known to compile "
                   "max pooling's gradient; drop --xla, or --seed for a run that need not repeat "
                   'bit for bit'),
    (['--num_gpus', '8'], 2, '--num_gpus 8 asks for more GPUs than TensorFlow sees (2): use '
                             '--num_gpus 2, or --device cpu to split over CPU devices')])
def test_gpu_settings_that_cannot_run_are_one_line_before_anything_is_written(
        dataset, tmp_path, capsys, monkeypatch, extra, gpus, message):
    from test_tf_setup import fake_gpus
    fake_gpus(monkeypatch, gpus)
    result = run_here(capsys, tiny_runs.flags(dataset, tmp_path, '--batch_size', '8', *extra))
    assert result.returncode == 2
    assert result.stderr.strip() == f'error: {message}'
    assert not (tmp_path / 'ckpt').exists() and not (tmp_path / 'tb').exists()


@pytest.mark.slow
def test_a_cached_first_phase_on_two_devices_trains_as_on_one(dataset, tmp_path, capsys, bvlc_npy):
    """--unfreeze_at with phase 1 on cached pool5 features and phase 2 on images, over two logical
    CPU devices: the cache holds every image's features (not the first device's part against the
    whole batch's labels), so epoch 1 equals one device's. (A rate of 1e-30 keeps the weights: the
    random weights' giant gradients would amplify rounding between the two into anything.)"""
    records = {}
    for devices in ('1', '2'):
        run_dir = tmp_path / devices
        result = run_here(capsys, flags(dataset, run_dir, '--num_gpus', devices, '--device', 'cpu',
                                        '--train_layers', 'fc7,fc8', '--unfreeze_at', '2',
                                        '--unfreeze_layers', 'conv5,fc6', '--learning_rate', '1e-30',
                                        '--dropout_rate', '0',
                                        weights=bvlc_npy))
        assert result.returncode == 0, result.stderr
        assert 'caching pool5 features' in result.stdout
        records[devices] = [json.loads(line) for line in
                            (run_dir / 'ckpt' / 'metrics.jsonl').read_text().splitlines()]
    for key in ('train_loss', 'val_loss'):
        assert records['2'][0][key] == pytest.approx(records['1'][0][key], rel=1e-5)
    assert records['2'][0]['val_accuracy'] == records['1'][0]['val_accuracy']
