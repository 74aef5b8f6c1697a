"""Today's fine-tuning recipe against hand-written formulas: label smoothing, the weights' moving
average, warm-up and cosine, mixup and CutMix, the two-phase run; then end to end through finetune.py
(exact resume mid-phase-2, the averages in validation, predict.py and export.py)."""
import datetime
import json
import math

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorboard.backend.event_processing import event_accumulator

import finetune
import tiny_runs
from alexnet import TRAINABLE_LAYERS
from finetune_alexnet import checkpoints
from finetune_alexnet import cli
from finetune_alexnet import model_info
from finetune_alexnet import run_state
from finetune_alexnet import tf_setup
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.train import graph as training
from finetune_alexnet.train import loop
from finetune_alexnet.train import runs
from finetune_alexnet.train import summaries
from test_training import features_batch, features_graph, log_softmax


# --- label smoothing ---------------------------------------------------------------------------

@pytest.mark.parametrize('num_devices, class_weights', [(1, (0.5, 2.0, 1.0)), (2, None),
                                                        (2, (0.5, 2.0, 1.0))])
def test_smoothed_loss_is_the_formula_and_validation_stays_plain(num_devices, class_weights):
    features, labels = features_batch(size=5)  # over 2 towers: a padding row, which must weigh 0
    epsilon, classes = 0.2, 3
    with tf.Graph().as_default():
        tf.set_random_seed(4)
        graph = features_graph(label_smoothing=epsilon, num_devices=num_devices,
                               class_weights=class_weights)
        with tf.Session(config=tf_setup.session_config(logical_cpus=2)) as session:
            session.run(tf.global_variables_initializer())
            loss, logits, loss_sum = session.run([graph.loss, graph.logits, graph.loss_sum],
                                                 {graph.x: features, graph.y: labels})
    targets = (1 - epsilon) * labels + epsilon / classes
    per_example = -(targets * log_softmax(logits)).sum(axis=1)
    weights = np.array(class_weights or (1.0, 1.0, 1.0))[labels.argmax(axis=1)]
    assert loss == pytest.approx((weights * per_example).mean(), rel=1e-5)
    assert loss_sum == pytest.approx(-(labels * log_softmax(logits)).sum(), rel=1e-5)
    assert abs(loss - (weights * -(labels * log_softmax(logits)).sum(axis=1)).mean()) > 1e-3


# --- the moving average of the weights -----------------------------------------------------------

def test_moving_average_follows_the_recurrence_and_validation_swaps_it_in():
    decay, steps = 0.8, 4
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        graph = features_graph(ema_decay=decay, optimizer='momentum', learning_rate=0.05)
        trained = {v.op.name: v for v in graph.var_list}
        averages = {name: graph.shared.ema.average(v) for name, v in trained.items()}
        assert set(trained) == {'fc7/weights', 'fc7/biases', 'fc8/weights', 'fc8/biases'}
        assert graph.averages.variables == tuple(graph.var_list)  # fc6 is not trained: no average
        assert averages['fc8/weights'].op.name == 'fc8/weights/ExponentialMovingAverage'
        saved = checkpoints.graph_variable_shapes(tf.get_default_graph())
        assert 'fc8/weights/ExponentialMovingAverage' in saved and 'fc6/weights/Exp' not in str(saved)
        assert not [name for name in saved if name.endswith('_raw')]  # the swap's spare copies
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            loop.start_averages(session, graph)
            weights = [session.run(trained)]
            for step in range(steps):
                features, labels = features_batch(seed=step)
                session.run(graph.train_op, {graph.x: features, graph.y: labels})
                weights.append(session.run(trained))
            found = session.run(averages)
            with loop.averaged_weights(session, graph):
                swapped = session.run(trained)
            after = session.run(trained)
    for name in trained:
        shadow = weights[0][name].astype(np.float64)  # started at the starting weights
        for step in range(1, steps + 1):
            shadow = decay * shadow + (1 - decay) * weights[step][name]
        assert np.abs(weights[-1][name] - shadow).max() > 1e-6, name  # the average lags: a real test
        np.testing.assert_allclose(found[name], shadow, rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(swapped[name], found[name])
        np.testing.assert_array_equal(after[name], weights[-1][name])


# --- warm-up and cosine --------------------------------------------------------------------------

def rates_at(steps, **config):
    with tf.Graph().as_default():
        graph = features_graph(**config)
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            rates = []
            for step in steps:
                graph.global_step.load(step, session)
                rates.append(float(session.run(graph.learning_rate)))
    return rates


def test_warmup_then_cosine_at_chosen_steps():
    steps = [0, 1, 3, 4, 5, 10, 12, 19, 20]
    found = rates_at(steps, learning_rate=0.1, lr_schedule='cosine', warmup_steps=4, total_steps=20)
    expected = [0.1 * (s + 1) / 4 if s < 4 else 0.1 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 16))
                for s in steps]
    np.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-9)
    assert found[3] == pytest.approx(0.1) and found[-1] == pytest.approx(0.0, abs=1e-9)


def test_warmup_before_the_step_decay():
    found = rates_at(range(14), learning_rate=0.1, decay_steps=6, decay_factor=0.5, warmup_steps=3)
    expected = [0.1 * 0.5 ** (s // 6) * min(1, (s + 1) / 3) for s in range(14)]
    np.testing.assert_allclose(found, expected, rtol=1e-6)


def test_the_flags_become_steps(tmp_path):
    dataset = tiny_runs.make_dataset(tmp_path / 'data')
    settings = finetune.parse_settings(tiny_runs.flags(
        dataset, tmp_path, '--lr_schedule', 'cosine', '--warmup_epochs', '0.25', '--num_epochs', '4',
        '--mixup', '0.2', '--label_smoothing', '0.1', '--ema_decay', '0.99'))
    config = runs.training_config(settings, gpu=False, steps_per_epoch=8, order_seed=17)
    assert (config.warmup_steps, config.total_steps, config.lr_schedule) == (2, 32, 'cosine')
    assert (config.mixup, config.mix_seed, config.label_smoothing, config.ema_decay) == \
        (0.2, 17, 0.1, 0.99)
    assert runs.warmup_steps(0.01, 8) == 1 and runs.warmup_steps(0, 8) == 0


# --- mixup and CutMix ------------------------------------------------------------------------------

def mixing_graph(size=6, **config):
    images = tf.placeholder(tf.float32, [None, 227, 227, 3])
    labels = tf.placeholder(tf.float32, [None, 3])
    return training.build_training_graph(images, labels, training.TrainingConfig(
        num_classes=3, train_layers=('fc8',), skip_layers=TRAINABLE_LAYERS, **config))


def image_batch(size=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-100, 100, (size, 227, 227, 3)).astype(np.float32),
            np.eye(3, dtype=np.float32)[rng.integers(0, 3, size)])


def draws(session, graph, step, images, labels, training_step=True):
    graph.global_step.load(step, session)
    return session.run(graph.mix, {graph.x: images, graph.y: labels, graph.training: training_step})


def expected_mix(images, labels, draw):
    """The mixed batch computed in NumPy from the draw the graph reports."""
    perm = draw['permutation']
    assert sorted(perm) == list(range(len(images)))
    if draw['cutmix']:
        top, bottom, left, right = draw['box']
        cut = int(227 * math.sqrt(1 - draw['lam']))
        assert 0 <= top <= bottom <= 227 and 0 <= left <= right <= 227
        assert bottom - top <= cut and right - left <= cut
        mixed = images.copy()
        mixed[:, top:bottom, left:right] = images[perm][:, top:bottom, left:right]
        weight = 1 - (bottom - top) * (right - left) / 227**2  # the box's true area
        assert draw['label_weight'] == pytest.approx(weight, rel=1e-6)
    else:
        weight = draw['lam']
        mixed = weight * images + (1 - weight) * images[perm]
    return mixed, weight * labels + (1 - weight) * labels[perm]


@pytest.mark.parametrize('kind', ['mixup', 'cutmix', 'both'])
def test_mixed_images_and_labels_are_the_numpy_computation(kind):
    config = {'mixup': {'mixup': 0.4}, 'cutmix': {'cutmix': 1.0},
              'both': {'mixup': 0.4, 'cutmix': 1.0}}[kind]
    images, labels = image_batch()
    with tf.Graph().as_default():
        graph = mixing_graph(mix_seed=5, **config)
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            kinds = set()
            for step in range(12):
                draw = draws(session, graph, step, images, labels)
                kinds.add(bool(draw['cutmix']))
                mixed, mixed_labels = expected_mix(images, labels, draw)
                np.testing.assert_allclose(draw['images'], mixed, rtol=1e-5, atol=1e-3)
                np.testing.assert_allclose(draw['labels'], mixed_labels, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(draw['labels'].sum(axis=1), 1, rtol=1e-6)
            again = draws(session, graph, 11, images, labels)  # a step's draw is fixed: resumable
            validation = draws(session, graph, 11, images, labels, training_step=False)
    assert kinds == {'mixup': {False}, 'cutmix': {True}, 'both': {False, True}}[kind]
    np.testing.assert_array_equal(again['images'], draw['images'])
    np.testing.assert_array_equal(validation['images'], images)  # validation is untouched
    np.testing.assert_array_equal(validation['labels'], labels)


def lambdas(alpha, seed, steps):
    images, _ = image_batch(size=2)
    with tf.Graph().as_default():
        graph = mixing_graph(mixup=alpha, mix_seed=seed)
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            found = []
            for step in steps:
                graph.global_step.load(step, session)
                found.append(float(session.run(graph.mix['lam'], {graph.x: images})))
    return np.array(found)


def test_lambda_is_beta_distributed_and_the_seed_and_step_choose_it():
    alpha, count = 0.4, 300
    lams = lambdas(alpha, 1, range(count))
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); U-shaped for a < 1.
    assert lams.mean() == pytest.approx(0.5, abs=0.06)
    assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.25)
    assert ((lams < 0.1) | (lams > 0.9)).mean() > 0.3
    assert len(set(lams.tolist())) == count
    np.testing.assert_array_equal(lambdas(alpha, 1, [5, 7]), lams[[5, 7]])  # the same in a new graph
    assert not np.isin(lambdas(alpha, 2, [5, 7]), lams).any()  # another run's seed: other draws


def test_mixing_refuses_cached_features():
    with tf.Graph().as_default(), pytest.raises(ValueError, match='mix images'):
        features_graph(mixup=0.2)


# --- two phases: freeze, then unfreeze -------------------------------------------------------------

def test_each_phase_trains_its_layers_at_their_rates():
    """Phase 1 trains fc8 alone; phase 2 fc6-fc8, fc7 at --lr_mult 0.1; slots exist from the start."""
    features, labels = features_batch()
    rate = 0.01
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        graph = features_graph(train_layers=('fc8',), unfreeze_layers=('fc6', 'fc7'),
                               lr_mult=(('fc7', 0.1),), learning_rate=rate)
        weights = {layer: graph.model.variables[layer]['weights'] for layer in ('fc6', 'fc7', 'fc8')}
        gradients = dict(zip(weights, tf.gradients(graph.loss, list(weights.values()))))
        assert sorted(graph.phases) == [1, 2] and graph.phase == 1
        assert [v.op.name for v in graph.phases[1].var_list] == ['fc8/weights', 'fc8/biases']
        assert [v.op.name for v in graph.phases[2].var_list] == [
            f'{layer}/{kind}' for layer in ('fc6', 'fc7', 'fc8') for kind in ('weights', 'biases')]
        phase_variable = graph.shared.phase_variable
        feed = {graph.x: features, graph.y: labels}
        with tf.Session(config=tf_setup.session_config()) as session:
            session.run(tf.global_variables_initializer())
            before, grads = session.run([weights, gradients], feed)
            session.run(graph.train_op, feed)
            middle, grads_2, phase_1 = session.run([weights, gradients, phase_variable], feed)
            session.run(graph.for_phase(2).train_op, feed)
            after, phase_2 = session.run([weights, phase_variable])
    np.testing.assert_array_equal(middle['fc6'], before['fc6'])
    np.testing.assert_array_equal(middle['fc7'], before['fc7'])
    np.testing.assert_allclose(middle['fc8'], before['fc8'] - rate * grads['fc8'], rtol=1e-5, atol=1e-8)
    assert np.abs(grads_2['fc7']).max() > 1e-4
    np.testing.assert_allclose(after['fc6'], middle['fc6'] - rate * grads_2['fc6'], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(after['fc7'], middle['fc7'] - 0.1 * rate * grads_2['fc7'], rtol=1e-5,
                               atol=1e-8)
    np.testing.assert_allclose(after['fc8'], middle['fc8'] - rate * grads_2['fc8'], rtol=1e-5, atol=1e-8)
    assert (phase_1, phase_2) == (1, 2)


def test_phase_two_slots_exist_before_it_starts():
    with tf.Graph().as_default():
        graph = features_graph(train_layers=('fc8',), unfreeze_layers=('fc7',), optimizer='momentum')
        names = checkpoints.graph_variable_shapes(tf.get_default_graph())
    assert 'fc7/weights/Momentum' in names and 'fc8/weights/Momentum' in names
    assert 'fc6/weights/Momentum' not in names and 'training_phase' in names
    assert graph.shared.optimizer.get_slot(graph.phases[2].var_list[0], 'momentum') is not None


def test_settings_know_each_epochs_phase_and_input(tmp_path):
    dataset = tiny_runs.make_dataset(tmp_path / 'data')
    args = tiny_runs.flags(dataset, tmp_path, '--num_epochs', '4', '--unfreeze_at', '3',
                           '--unfreeze_layers', 'conv5', '--train_layers', 'fc8',
                           weights=str(tmp_path / 'w.npy'))
    settings = finetune.parse_settings(args)
    assert [settings.phase_of(epoch) for epoch in range(1, 5)] == [1, 1, 2, 2]
    assert settings.phase_layers(1) == ('fc8',) and settings.phase_layers(2) == ('conv5', 'fc8')
    assert settings.phase_uses_cache(1) and not settings.phase_uses_cache(2)
    mixed = finetune.parse_settings(args + ['--mixup', '0.2'])
    assert not mixed.use_feature_cache  # mixed images make other pool5 features every epoch


# --- flags, run state, names ---------------------------------------------------------------------

@pytest.mark.parametrize('extra, message', [
    (['--label_smoothing', '1'], '--label_smoothing must be in [0, 1), got 1.0'),
    (['--label_smoothing', 'nan'], '--label_smoothing must be in [0, 1), got nan'),
    (['--ema_decay', '-0.1'], '--ema_decay must be in [0, 1) (0: off), got -0.1'),
    (['--ema_decay', 'inf'], '--ema_decay must be in [0, 1)'),
    (['--warmup_epochs', '2'], '--warmup_epochs must be >= 0 and less than --num_epochs 2, got 2.0'),
    (['--warmup_epochs', 'nan'], '--warmup_epochs must be >= 0'),
    (['--lr_schedule', 'cosine', '--lr_decay_epochs', '1'], "--lr_decay_epochs is the step schedule's"),
    (['--lr_schedule', 'linear'], "invalid choice: 'linear'"),
    (['--mixup', '-1'], '--mixup must be a number >= 0 (0: off), got -1.0'),
    (['--cutmix', 'inf'], '--cutmix must be a number >= 0 (0: off), got inf'),
    (['--unfreeze_at', '1'], '--unfreeze_at must be 0 (off) or an epoch from 2 to --num_epochs 2'),
    (['--unfreeze_at', '3'], '--unfreeze_at must be 0 (off) or an epoch from 2 to --num_epochs 2'),
    (['--unfreeze_layers', 'fc6'], '--unfreeze_layers needs --unfreeze_at'),
    (['--unfreeze_at', '2', '--unfreeze_layers', 'fc9'], 'unknown layer fc9'),
    (['--unfreeze_at', '2'], '--unfreeze_layers conv1,conv2,conv3,conv4,conv5,fc6,fc7,fc8 adds no layer'),
    (['--cache_features', 'on', '--train_layers', 'fc8', '--skip_layers', 'fc8', '--mixup', '1'],
     '--cache_features on needs every conv layer frozen and no --augment, --mixup or --cutmix'),
])
def test_bad_recipe_flags_fail_in_one_line_before_anything_is_written(tmp_path, capsys, extra, message):
    dataset = tiny_runs.make_dataset(tmp_path / 'data')
    code = cli.run(finetune.main, tiny_runs.flags(dataset, tmp_path, *extra))
    line = tiny_runs.one_error_line(capsys.readouterr().err)
    assert code == 2 and message in line, line
    assert not (tmp_path / 'ckpt').exists()


def test_lr_mult_may_name_the_layers_phase_two_trains(tmp_path, capsys):
    dataset = tiny_runs.make_dataset(tmp_path / 'data')
    weights = str(tmp_path / 'w.npy')
    base = ['--train_layers', 'fc8', '--skip_layers', 'fc8']
    args = tiny_runs.flags(dataset, tmp_path, weights=weights) + base
    settings = finetune.parse_settings(args + ['--unfreeze_at', '2', '--lr_mult', 'conv1=0.1'])
    assert settings.lr_mult == (('conv1', 0.1),) and settings.unfreeze_layers == TRAINABLE_LAYERS
    assert cli.run(finetune.main, args + ['--lr_mult', 'conv1=0.1']) == 2
    assert 'which --train_layers does not train' in capsys.readouterr().err
    assert cli.run(finetune.main, args + ['--unfreeze_at', '2', '--unfreeze_layers', 'fc7',
                                          '--lr_mult', 'conv1=0.1']) == 2
    assert 'which --train_layers nor --unfreeze_layers trains' in capsys.readouterr().err


def test_resume_refuses_a_changed_recipe_and_old_runs_compare_as_off(tmp_path):
    saved = {'batch_size': 4, 'mixup': 0.2, 'lr_schedule': 'cosine', 'cosine_epochs': 4}
    current = {'batch_size': 4, **runs.RECIPE_DEFAULTS, 'mixup': 0.4, 'lr_schedule': 'cosine',
               'cosine_epochs': 6}
    with pytest.raises(ToolkitError) as error:
        checkpoints.check_same_settings(str(tmp_path), saved, current, runs.RECIPE_DEFAULTS)
    assert 'mixup 0.2 -> 0.4' in str(error.value) and 'cosine_epochs 4 -> 6' in str(error.value)
    old = {'batch_size': 4}  # a run from before these options: it trained with none of them
    checkpoints.check_same_settings(str(tmp_path), old, {'batch_size': 4, **runs.RECIPE_DEFAULTS},
                                    runs.RECIPE_DEFAULTS)
    with pytest.raises(ToolkitError, match=r'ema_decay 0\.0 -> 0\.999'):
        checkpoints.check_same_settings(str(tmp_path), old, {**runs.RECIPE_DEFAULTS, 'ema_decay': 0.999},
                                        runs.RECIPE_DEFAULTS)


@pytest.mark.parametrize('phase, ok', [(None, True), (1, True), (2, True), (3, False), ('2', False),
                                       (True, False)])
def test_run_state_phase_is_checked(tmp_path, phase, ok):
    content = {'args': {}, 'settings': {}, 'run_name': 'run', 'order_seed': 1, 'epochs_completed': 0,
               'latest_checkpoint': None, 'history': [], 'phase': phase}
    if ok:
        assert run_state.from_json(content, 'run_state.json').phase == phase
    else:
        with pytest.raises(ToolkitError, match=r'^run_state.json: phase should be '):
            run_state.from_json(content, 'run_state.json')


def test_run_names_and_hparams_show_the_recipe(tmp_path):
    dataset = tiny_runs.make_dataset(tmp_path / 'data')
    settings = finetune.parse_settings(tiny_runs.flags(
        dataset, tmp_path, '--label_smoothing', '0.1', '--mixup', '0.2', '--lr_schedule', 'cosine',
        weights=str(tmp_path / 'w.npy')))
    now = datetime.datetime(2026, 1, 2, 3, 4)
    assert summaries.short_run_name(settings, now) == '2026-01-02_0304_cosine_ls0.1_mixup0.2'
    later = finetune.parse_settings(tiny_runs.flags(
        dataset, tmp_path, '--unfreeze_at', '2', '--unfreeze_layers', 'conv5', '--ema_decay', '0.99',
        weights=str(tmp_path / 'w.npy')))
    assert summaries.short_run_name(later, now) == '2026-01-02_0304_unfreeze2_ema0.99_bs4'
    values = summaries.hparam_values(settings)
    assert (values['label_smoothing'], values['mixup'], values['lr_schedule']) == (0.1, 0.2, 'cosine')
    assert values['unfreeze_layers'] == 'none' and values['unfreeze_at'] == 0
    assert values['ema_decay'] == 0.0 and values['cutmix'] == 0.0 and values['warmup_epochs'] == 0.0


def test_model_info_ema_flag_reads_back_and_is_checked(tmp_path):
    path = model_info.write_model_info(str(tmp_path), 2, None, center_crop=False, ema=True)
    assert json.loads(open(path).read())['ema'] is True
    plain = model_info.write_model_info(str(tmp_path / 'plain'), 2, None, center_crop=False)
    assert 'ema' not in json.loads(open(plain).read())
    info = json.loads(open(path).read())
    info['ema'] = 'yes'
    with pytest.raises(ToolkitError, match='ema should be true or false'):
        model_info._check_model_info(path, info)


# --- end to end: a two-phase run with every option, stopped mid-phase-2 and resumed -----------------

RECIPES = {
    # phase 1 (fc8) on cached pool5 features, phase 2 (conv5 too) on images
    'cached_then_images': ['--train_layers', 'fc8', '--unfreeze_layers', 'conv5,fc8',
                           '--optimizer', 'momentum'],
    # mixing needs images in both phases
    'mixing': ['--train_layers', 'fc8', '--unfreeze_layers', 'fc7', '--mixup', '0.4',
               '--cutmix', '1.0'],
}
COMMON = ['--num_epochs', '3', '--unfreeze_at', '2', '--ema_decay', '0.7', '--label_smoothing', '0.1',
          '--lr_schedule', 'cosine', '--warmup_epochs', '0.5', '--learning_rate', '1e-5',
          '--cache_dir', 'none']


def recipe_flags(dataset, run_dir, weights, recipe, *extra):
    return tiny_runs.flags(dataset, run_dir, *COMMON, *RECIPES[recipe], *extra, weights=weights)


def all_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def straight_runs(tmp_path_factory, dataset, bvlc_npy):
    """An uninterrupted three-epoch run of each recipe: phase 1 is epoch 1, phase 2 epochs 2 and 3."""
    folders = {}
    for recipe in RECIPES:
        folders[recipe] = tmp_path_factory.mktemp(recipe)
        assert cli.run(finetune.main, recipe_flags(dataset, folders[recipe], bvlc_npy, recipe)) == 0
    return folders


@pytest.mark.slow
@pytest.mark.parametrize('recipe, epoch', [('cached_then_images', 3), ('mixing', 3),
                                           ('cached_then_images', 1)])
def test_a_two_phase_run_stopped_mid_phase_resumes_exactly(
        dataset, straight_runs, tmp_path, monkeypatch, capsys, bvlc_npy, recipe, epoch):
    """Stopped after the first step of epoch 3 (phase 2) or 1 (phase 1, on cached features)."""
    from test_checkpoints import stop_at
    stopped, step, phase = tmp_path / 'stopped', (epoch - 1) * 3 + 1, 1 if epoch == 1 else 2
    with monkeypatch.context() as patch:
        stop_at(patch, epoch=epoch, step=1)
        assert cli.run(finetune.main, recipe_flags(dataset, stopped, bvlc_npy, recipe)) == 143
    assert f'interrupted_step{step}.ckpt at step {step}' in capsys.readouterr().out
    state = tiny_runs.read_state(stopped)
    assert state['phase'] == phase and state['latest_checkpoint'] == f'interrupted_step{step}.ckpt'
    assert all_tensors(stopped / 'ckpt' / f'interrupted_step{step}.ckpt')['training_phase'] == phase
    assert cli.run(finetune.main, recipe_flags(dataset, stopped, bvlc_npy, recipe, '--resume')) == 0
    expected = all_tensors(straight_runs[recipe] / 'ckpt' / 'model_epoch3.ckpt')
    found = all_tensors(stopped / 'ckpt' / 'model_epoch3.ckpt')
    assert sorted(found) == sorted(expected)
    assert found['global_step'] == 9 and found['training_phase'] == 2
    assert 'conv5/weights/ExponentialMovingAverage' in found or recipe == 'mixing'
    for name, value in expected.items():
        np.testing.assert_allclose(found[name], value, rtol=0, atol=1e-6, err_msg=name)
    history = tiny_runs.read_state(stopped)['history']
    assert [record['phase'] for record in history] == [1, 2, 2]


@pytest.mark.slow
def test_the_phases_show_in_tensorboard_and_each_trains_its_layers(straight_runs, bvlc_layers):
    run_dir = straight_runs['cached_then_images']
    state = tiny_runs.read_state(run_dir)
    events = event_accumulator.EventAccumulator(str(run_dir / 'tb' / state['run_name']))
    events.Reload()
    phases = {event.step: event.value for event in events.Scalars('phase')}
    assert phases == {step: 1.0 if step <= 3 else 2.0 for step in range(1, 10)}
    rates = {event.step: event.value for event in events.Scalars('learning_rate')}
    # Warm-up over 2 steps (0.5 x 3), then cosine to 0 at step 9: the rate step s + 1 used.
    expected = {s + 1: 1e-5 * (s + 1) / 2 if s < 2 else 1e-5 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 7))
                for s in range(9)}
    for step, rate in expected.items():
        assert rates[step] == pytest.approx(rate, rel=1e-5), step
    assert state['settings']['unfreeze_at'] == 2 and state['settings']['cosine_epochs'] == 3
    epoch1 = all_tensors(run_dir / 'ckpt' / 'model_epoch1.ckpt')
    epoch3 = all_tensors(run_dir / 'ckpt' / 'model_epoch3.ckpt')
    np.testing.assert_array_equal(epoch1['conv5/weights'], bvlc_layers['conv5']['weights'])
    np.testing.assert_array_equal(epoch1['fc7/weights'], bvlc_layers['fc7']['weights'])
    assert np.abs(epoch3['conv5/weights'] - epoch1['conv5/weights']).max() > 0  # phase 2 trained it
    np.testing.assert_array_equal(epoch3['fc7/weights'], bvlc_layers['fc7']['weights'])  # never


@pytest.mark.slow
def test_validation_predict_and_export_use_the_averages(straight_runs, dataset, tmp_path, capsys):
    """The epoch's validation loss is the averaged model's, and so are predict.py's and export.py's."""
    from finetune_alexnet.infer import exports
    from finetune_alexnet import weight_files
    from finetune_alexnet.infer.classifier import Classifier
    run_dir = straight_runs['cached_then_images']
    prefix = run_dir / 'ckpt' / 'model_epoch3.ckpt'
    info = json.loads((run_dir / 'ckpt' / 'model_info.json').read_text())
    assert info['ema'] is True
    tensors = all_tensors(prefix)
    averaged = {layer: {kind: tensors[f'{layer}/{kind}/ExponentialMovingAverage'
                                      if f'{layer}/{kind}/ExponentialMovingAverage' in tensors
                                      else f'{layer}/{kind}'] for kind in ('weights', 'biases')}
                for layer in TRAINABLE_LAYERS}
    assert np.abs(averaged['conv5']['weights'] - tensors['conv5/weights']).max() > 1e-9
    weights_file = str(tmp_path / 'averaged.npz')
    weight_files.save_weights(weights_file, averaged)
    lines = (dataset / 'val.txt').read_text().split()
    paths, labels = [str(dataset / path) for path in lines[::2]], np.array(lines[1::2], int)
    with Classifier(checkpoint=str(prefix)) as from_checkpoint:
        found = from_checkpoint.run(paths).probabilities
    with Classifier(weights_path=weights_file, center_crop=False) as from_arrays:
        reference = from_arrays.run(paths, layers=['fc8'])
    np.testing.assert_allclose(found, reference.probabilities, rtol=1e-5, atol=1e-6)
    raw_file = str(tmp_path / 'raw.npz')
    weight_files.save_weights(raw_file, {layer: {kind: tensors[f'{layer}/{kind}'] for kind in kinds}
                                         for layer, kinds in averaged.items()})
    with Classifier(weights_path=raw_file, center_crop=False) as from_raw:
        raw_logits = from_raw.run(paths, layers=['fc8']).outputs['fc8']

    def loss_of(logits):
        return -log_softmax(logits)[np.arange(len(labels)), labels].mean()
    record = [r for r in tiny_runs.read_state(run_dir)['history'] if r['epoch'] == 3][0]
    print('val_loss', record['val_loss'], loss_of(reference.outputs['fc8']), loss_of(raw_logits))
    assert record['val_loss'] == pytest.approx(loss_of(reference.outputs['fc8']), rel=1e-5)
    assert abs(record['val_loss'] - loss_of(raw_logits)) > 1e-4 * record['val_loss']  # not the raw
    _, _, layers = exports.read_checkpoint_layers(str(prefix))
    for layer in TRAINABLE_LAYERS:
        np.testing.assert_array_equal(layers[layer]['weights'], averaged[layer]['weights'])
