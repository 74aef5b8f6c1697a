"""Several workers through tf.distribute: the cluster read from TF_CONFIG or the flags, each worker's
rows of every batch, and real two-worker runs on 127.0.0.1 against one process (weights, validation,
TensorBoard), a SIGTERM to one worker then --resume, a worker killed outright, workers that disagree
(named with the setting and both values); clusters that never form (a worker or the chief never
starts, the chief's port held by another program), stop signals while waiting at start-up (in Python
and inside TensorFlow) and during a step that waits for a hung worker, and the watcher's deadline."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorboard.backend.event_processing import event_accumulator

import datagenerator
import make_tfrecords
import tiny_runs
from test_bench import import_bench_script
from test_tfrecords import epoch_batches
from finetune_alexnet import cli
from finetune_alexnet import preprocessing
from finetune_alexnet import signals
from finetune_alexnet import tfrecords
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.train import distribute

WORKER = os.path.join(tiny_runs.REPO, 'tests', 'distributed_worker.py')


# --- the cluster ----------------------------------------------------------------------------------

def tf_config(cluster, task_type, index):
    return {'TF_CONFIG': json.dumps({'cluster': cluster, 'task': {'type': task_type, 'index': index}})}


def test_the_cluster_comes_from_the_flags_or_tf_config_with_the_chief_first():
    assert distribute.cluster_from('a:1,b:2', 1, {}) == distribute.Cluster(('a:1', 'b:2'), 1)
    workers = {'worker': ['w0:2222', 'w1:2222']}
    assert distribute.cluster_from(None, None, tf_config(workers, 'worker', 1)) == \
        distribute.Cluster(('w0:2222', 'w1:2222'), 1)
    # Kubeflow's TFJob with a Chief replica: the chief is worker 0, the workers follow.
    with_chief = {'chief': ['c:2222'], 'worker': ['w0:2222', 'w1:2222']}
    assert distribute.cluster_from(None, None, tf_config(with_chief, 'chief', 0)) == \
        distribute.Cluster(('c:2222', 'w0:2222', 'w1:2222'), 0)
    cluster = distribute.cluster_from(None, None, tf_config(with_chief, 'worker', 1))
    assert cluster.index == 2 and not cluster.is_chief and cluster.name(0) == 'worker 0 (c:2222)'
    # One machine: nothing set, or a cluster of one (a TFJob with a single worker).
    assert distribute.cluster_from(None, None, {}) is None
    assert distribute.cluster_from(None, None, tf_config({'worker': ['w:1']}, 'worker', 0)) is None


@pytest.mark.parametrize('hosts, index, environ, expected', [
    ('a:1,b:2', None, {}, '--worker_hosts and --task_index go together'),
    ('a:1,b:2', 2, {}, '--task_index must be 0..1 for 2 workers, got 2'),
    ('a:1,b', 0, {}, "--worker_hosts: 'b' is not host:port"),
    ('a:1,a:1', 0, {}, '--worker_hosts names a worker twice'),
    ('a:1,b:70000', 0, {}, "'b:70000' is not host:port (a port 1-65535)"),
    ('a:1,b:2', 0, {'TF_CONFIG': '{}'}, '--worker_hosts and TF_CONFIG are both set'),
    (None, None, {'TF_CONFIG': '{"cluster": '}, 'TF_CONFIG is not a cluster and task as JSON'),
    (None, None, tf_config({'worker': ['a:1'], 'ps': ['p:1']}, 'worker', 0),
     "TF_CONFIG: job 'ps' is not supported"),
    (None, None, tf_config({'worker': ['a:1', 'b:1']}, 'evaluator', 0),
     "task type 'evaluator' is not supported"),
    (None, None, tf_config({'worker': ['a:1', 'b:1']}, 'worker', 5),
     "TF_CONFIG's task index must be 0..1 for its 2 worker(s), got 5"),
    (None, None, tf_config({'chief': ['c:1'], 'worker': ['a:1', 'b:1']}, 'worker', -1),
     "TF_CONFIG's task index must be 0..1 for its 2 worker(s), got -1"),
    (None, None, tf_config({'chief': ['c:1'], 'worker': ['a:1']}, 'chief', 1),
     "TF_CONFIG's task index must be 0..0 for its 1 chief(s), got 1"),
])
def test_a_wrong_cluster_is_one_line(hosts, index, environ, expected):
    with pytest.raises(ToolkitError, match=None) as error:
        distribute.cluster_from(hosts, index, environ)
    assert expected in str(error.value) and '\n' not in str(error.value)


def test_the_demo_is_refused_on_several_workers_before_it_writes_anything(tmp_path, capsys):
    demo_dir = tmp_path / 'demo'
    result = tiny_runs.run_here(capsys, ['--demo', '--demo_dir', demo_dir, '--worker_hosts',
                                         '127.0.0.1:1,127.0.0.1:2', '--task_index', '1'])
    assert result.returncode == 2
    assert tiny_runs.one_error_line(result.stderr) == (
        'error: the demo needs one machine: give every worker the same --train_file and --val_file')
    assert not demo_dir.exists()


@pytest.mark.parametrize('extra, expected', [
    (['--batch_size', '5'], '--batch_size 5 must split evenly over 2 workers'),
    (['--skip_bad_images'], '--skip_bad_images needs one machine'),
    (['--cache_features', 'on', '--train_layers', 'fc8', '--skip_layers', 'fc8'],
     '--cache_features on needs one machine'),
    (['--projector'], '--projector needs one machine'),
    (['--collective_timeout', '0'], '--collective_timeout must be in (0, 86400] seconds, got 0.0'),
])
def test_what_several_workers_cannot_do_is_refused_before_anything_starts(dataset, tmp_path, capsys,
                                                                          extra, expected):
    result = tiny_runs.run_here(capsys, tiny_runs.flags(dataset, tmp_path, '--worker_hosts',
                                                        '127.0.0.1:1,127.0.0.1:2', '--task_index', '0',
                                                        *extra))
    assert result.returncode == 2
    assert expected in tiny_runs.one_error_line(result.stderr)
    assert not tmp_path.joinpath('ckpt').exists()


# --- each worker's rows of every batch --------------------------------------------------------------

def test_worker_rows_split_every_batch_in_order_and_cover_the_epoch_once():
    rows = [preprocessing.worker_rows(11, 4, index, 2) for index in range(2)]
    assert rows[0].tolist() == [0, 1, 4, 5, 8, 9] and rows[1].tolist() == [2, 3, 6, 7, 10]
    four = [preprocessing.worker_rows(20, 8, index, 4) for index in range(4)]
    assert sorted(np.concatenate(four).tolist()) == list(range(20))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return tiny_runs.make_dataset(tmp_path_factory.mktemp('tiny'))


@pytest.mark.parametrize('source', ['list', 'shards'])
def test_two_workers_batches_are_the_rows_of_one_machines_batches(dataset, tmp_path, source):
    """Shuffled, cropped and flipped with the epoch's key, resumed 1 step in: worker 0 reads rows 0-1
    and worker 1 rows 2-3 of each of one machine's batches, bit for bit; validation's partial last
    batch (1 image) is worker 0's alone."""
    generator, files = datagenerator.ImageDataGenerator, {'training': dataset / 'train.txt',
                                                          'inference': dataset / 'val.txt'}
    if source == 'shards':
        assert cli.run(make_tfrecords.main, [str(dataset / 'train.txt'), str(dataset / 'val.txt'),
                                             '--out_dir', str(tmp_path), '--num_shards', '2']) == 0
        generator = tfrecords.ShardImageDataGenerator
        files = {'training': tmp_path / 'train-*', 'inference': tmp_path / 'val-*'}
    for mode, epoch, skip_steps in (('training', 3, 0), ('training', 4, 1), ('inference', -1, 0)):
        shuffle = mode == 'training'
        _, whole = epoch_batches(generator, files[mode], mode, True, shuffle, epoch, skip_steps * 4)
        parts = [epoch_batches(generator, files[mode], mode, True, shuffle, epoch, skip_steps * 2,
                               num_workers=2, worker_index=index)[1] for index in range(2)]
        assert len(parts[0]) == len(whole) > 0
        for step, (images, labels) in enumerate(whole):
            joined = [part[step] for part in parts if step < len(part)]
            np.testing.assert_array_equal(np.concatenate([p[0] for p in joined]), images)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in joined]), labels)
        if mode == 'inference':  # 5 images: batches of 4 and 1; worker 1 gets 2 + 0
            assert [len(batch[1]) for batch in parts[0]] == [2, 1]
            assert [len(batch[1]) for batch in parts[1]] == [2]


# --- real workers on 127.0.0.1 -----------------------------------------------------------------------

# The bench's helper: ports free now (a worker's server binds them a moment later).
free_ports = import_bench_script('workers').free_ports


def start_workers(flags, timeout=120, use_tf_config=False, signal_at=None):
    """Two finetune.py workers on 127.0.0.1; `signal_at` = (worker, epoch, step, signum)."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = {key: value for key, value in os.environ.items() if key != 'TF_CONFIG'}
        args = [*map(str, flags), '--collective_timeout', str(timeout)]
        if use_tf_config:
            env.update(tf_config({'worker': hosts}, 'worker', index))
        else:
            args += ['--worker_hosts', ','.join(hosts), '--task_index', str(index)]
        if signal_at and signal_at[0] == index:
            env['FINETUNE_TEST_SIGNAL'] = ':'.join(map(str, signal_at[1:]))
        processes.append(subprocess.Popen([sys.executable, WORKER, *args], cwd=tiny_runs.REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes, hosts


def finish(processes, timeout=400):
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append((process.returncode, stdout, stderr))
    return results


def all_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_same_weights(found_prefix, expected_prefix, atol=1e-5):
    found, expected = all_tensors(found_prefix), all_tensors(expected_prefix)
    assert sorted(found) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(found[name], value, rtol=0, atol=atol, err_msg=name)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / 'ckpt' / 'metrics.jsonl').read_text().splitlines()]


def tensorboard_values(run_dir):
    """{tag: [values]} of the run's scalars, and the PNG bytes of its images."""
    folder, = (run_dir / 'tb').iterdir()
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    events.Reload()
    scalars = {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()['scalars']}
    images = {tag: [event.encoded_image_string for event in events.Images(tag)]
              for tag in events.Tags()['images']}
    return scalars, images


@pytest.fixture(scope='module')
def one_machine(tmp_path_factory, dataset):
    """The reference: one process, global batch 4, two epochs, every layer from scratch, seeded."""
    run_dir = tmp_path_factory.mktemp('one_machine')
    assert cli.run(__import__('finetune').main, tiny_runs.flags(dataset, run_dir)) == 0
    return run_dir


def fc8_flags(dataset, run_dir, weights, *extra):
    """fc8 alone on the fixture's weights, from images: for the tests whose subject is how workers
    stop and resume. A two-worker run costs two thirds of the CPU of every layer from scratch
    (21 against 31 CPU-s), whose all-reduce test_two_workers_train_and_validate_as_one_machine checks."""
    return tiny_runs.flags(dataset, run_dir, '--train_layers', 'fc8', '--cache_features', 'off', *extra,
                           weights=weights)


@pytest.fixture(scope='module')
def fc8_machine(tmp_path_factory, dataset, bvlc_npy):
    """The reference of the stop and resume tests: fc8_flags' run in one process."""
    run_dir = tmp_path_factory.mktemp('fc8_machine')
    assert cli.run(__import__('finetune').main, fc8_flags(dataset, run_dir, bvlc_npy)) == 0
    return run_dir


@pytest.mark.slow
def test_two_workers_train_and_validate_as_one_machine(dataset, tmp_path, one_machine):
    """Weights after two epochs equal to 1e-5, the same validation numbers and pictures; the chief
    alone wrote the run folder and TensorBoard."""
    results = finish(start_workers(tiny_runs.flags(dataset, tmp_path))[0])
    for code, stdout, stderr in results:
        assert code == 0, stderr
    assert 'worker 0 (127.0.0.1:' in results[0][1] and 'the chief: it writes the run folder' in results[0][1]
    assert '2 images of every batch, gradients all-reduced by RING' in results[1][1]
    assert_same_weights(tmp_path / 'ckpt' / 'model_epoch2.ckpt', one_machine / 'ckpt' / 'model_epoch2.ckpt')
    for found, expected in zip(metrics(tmp_path), metrics(one_machine), strict=True):
        assert found['val_images'] == expected['val_images'] == 5
        assert found['val_accuracy'] == expected['val_accuracy']
        assert found['train_accuracy'] == expected['train_accuracy']
        # Weights equal to ~1e-5 after steps whose loss reaches 9 give losses equal to ~1e-5 of
        # their size: the gradients were summed in another order, nothing else differs.
        for key in ('val_loss', 'train_loss'):
            assert found[key] == pytest.approx(expected[key], rel=1e-4), key
    assert sorted(os.listdir(tmp_path / 'ckpt')) == sorted(os.listdir(one_machine / 'ckpt'))
    assert len(list((tmp_path / 'tb').iterdir())) == 1  # the chief's run folder only
    scalars, images = tensorboard_values(tmp_path)
    expected_scalars, expected_images = tensorboard_values(one_machine)
    assert sorted(scalars) == sorted(expected_scalars)
    for tag in scalars:
        if tag.startswith(('validation', 'pr_curve')):
            np.testing.assert_allclose(scalars[tag], expected_scalars[tag], rtol=1e-4, err_msg=tag)
    # The confusion matrix and the worst mistakes come from every worker's outputs, in list order.
    assert images == expected_images


@pytest.mark.slow
def test_two_workers_validate_the_same_weights_to_one_machines_numbers(dataset, tmp_path, one_machine):
    """Warm-started from one machine's best checkpoint (epoch 2), the workers' split validation before
    any step prints what one machine recorded for those weights."""
    record = metrics(one_machine)[-1]
    flags = [*tiny_runs.flags(dataset, tmp_path, epochs=1), '--init_checkpoint', one_machine / 'ckpt',
             '--skip_layers', 'none']
    for code, stdout, stderr in finish(start_workers(flags)[0]):
        assert code == 0, stderr
        assert (f"validation loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} before "
                'training') in stdout


def test_a_port_in_use_is_one_line_naming_the_worker(dataset, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        hosts = f'127.0.0.1:{taken.getsockname()[1]},127.0.0.1:{free_ports(1)[0]}'
        result = tiny_runs.run_here(capsys, tiny_runs.flags(
            dataset, tmp_path, '--worker_hosts', hosts, '--task_index', '0', '--collective_timeout', '5'))
    assert result.returncode == 2
    assert tiny_runs.one_error_line(result.stderr) == \
        f"error: worker 0 ({hosts.split(',')[0]}): cannot listen there: Could not start gRPC server"
    assert not (tmp_path / 'ckpt').exists()


@pytest.mark.slow
def test_a_sigterm_to_one_worker_stops_both_and_resume_equals_the_uninterrupted_run(
        dataset, tmp_path, bvlc_npy, fc8_machine, capsys):
    """Worker 1 (not the chief) gets SIGTERM after step 2 of epoch 2: both stop after that step, the
    chief saves; both resumed (from TF_CONFIG this time) train step 6 and end with one machine's
    uninterrupted weights. The batch and the order being global, a copy resumed on one machine
    ends there too. (fc8 on the fixture's weights: fc8_flags.)"""
    flags = fc8_flags(dataset, tmp_path, bvlc_npy)
    chief, other = finish(start_workers(flags, signal_at=(1, 2, 2, signal.SIGTERM))[0])
    assert chief[0] == other[0] == 143, (chief[2], other[2])
    assert 'interrupted_step5.ckpt at step 5; continue with --resume' in chief[1]
    assert 'worker 1 (127.0.0.1:' in chief[2] and 'received SIGTERM: every worker stops' in chief[2]
    assert 'stopped at step 5; the chief saves the run' in other[1]
    assert tiny_runs.read_state(tmp_path)['latest_checkpoint'] == 'interrupted_step5.ckpt'
    alone = tmp_path / 'alone'
    shutil.copytree(tmp_path / 'ckpt', alone / 'ckpt')
    resumed = tiny_runs.run_here(capsys, fc8_flags(dataset, alone, bvlc_npy, '--resume'))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(alone / 'ckpt' / 'model_epoch2.ckpt', fc8_machine / 'ckpt' / 'model_epoch2.ckpt')
    results = finish(start_workers([*flags, '--resume'], use_tf_config=True)[0])
    for code, stdout, stderr in results:
        assert code == 0, stderr
        assert 'resumed interrupted_step5.ckpt at step 5' in stdout
    assert_same_weights(tmp_path / 'ckpt' / 'model_epoch2.ckpt', fc8_machine / 'ckpt' / 'model_epoch2.ckpt')
    assert [record['step'] for record in tiny_runs.read_state(tmp_path)['history']] == [3, 6]


@pytest.mark.slow
def test_a_killed_worker_ends_the_other_within_the_timeout_and_resume_goes_on(dataset, tmp_path,
                                                                              bvlc_npy, fc8_machine):
    """Worker 1 is killed (SIGKILL) after step 1 of epoch 2: the chief stops in one line naming it,
    within seconds, long before the deadline; both restarted with --resume go on from epoch 1's
    checkpoint to one machine's weights (fc8 on the fixture's weights: fc8_flags)."""
    timeout = 600  # the deadline is for workers that hang; a dead one is found by knocking
    flags = fc8_flags(dataset, tmp_path, bvlc_npy)
    processes, hosts = start_workers(flags, timeout=timeout, signal_at=(1, 2, 1, signal.SIGKILL))
    killed_at = None
    while killed_at is None:
        if processes[1].poll() is not None:
            killed_at = time.monotonic()
        time.sleep(0.05)
    stdout, stderr = processes[0].communicate(timeout=180)
    waited = time.monotonic() - killed_at
    assert processes[1].returncode == -signal.SIGKILL
    assert processes[0].returncode == 2
    assert tiny_runs.one_error_line(stderr) == (
        f'error: worker 1 ({hosts[1]}) is gone (no longer accepting connections): restart every '
        'worker with --resume to continue from the last checkpoint')
    # Two knocks 5 s apart find it; the rest is the process's exit (generous: CI's cores are shared).
    assert waited < 60, waited
    assert tiny_runs.read_state(tmp_path)['latest_checkpoint'] == 'model_epoch1.ckpt'
    for code, stdout, stderr in finish(start_workers([*flags, '--resume'])[0]):
        assert code == 0, stderr
        assert 'resumed model_epoch1.ckpt at step 3' in stdout
    assert_same_weights(tmp_path / 'ckpt' / 'model_epoch2.ckpt', fc8_machine / 'ckpt' / 'model_epoch2.ckpt')


@pytest.mark.parametrize('use_gpu, expected', [(True, 'NCCL'), (False, 'RING')])
def test_workers_all_reduce_by_nccl_on_gpus_and_by_ring_on_cpus(use_gpu, expected):
    """The strategy's own communication setting (left to AUTO, TensorFlow would take RING on GPUs
    too); building it starts no server."""
    with tf.Graph().as_default():
        workers = distribute.Workers(distribute.Cluster(('127.0.0.1:1', '127.0.0.1:2'), 1), use_gpu, 5.0)
    assert workers.strategy.extended._communication_options.implementation.value == expected
    assert workers.strategy.extended.worker_devices[0].endswith('GPU:0' if use_gpu else 'CPU:0')


def test_the_stop_vote_is_decided_from_what_every_worker_sent():
    """A signal that lands during the vote waits for the next one (so every worker decides alike);
    a signal to another worker stops this one, whose own first signal then is not a second."""
    workers = distribute.Workers.__new__(distribute.Workers)
    workers.cluster, workers.index = distribute.Cluster(('a:1', 'b:2'), 0), 0
    stop = signals.StopRequests()
    sent = []

    def gather(session, values, others=0, arrives=None):
        sent.append(values[0])
        if arrives:
            stop._handle(arrives, None)  # the signal comes while the others are being waited for
        return np.array([[values[0]], [others]], float)

    workers.gather = lambda session, values: gather(session, values, arrives=signal.SIGTERM)
    assert workers.agree_to_stop(None, stop) is False and stop.requested  # obeyed at the next vote
    workers.gather = lambda session, values: gather(session, values)
    assert workers.agree_to_stop(None, stop) is True and sent == [0, signal.SIGTERM]

    stop = signals.StopRequests()
    workers.gather = lambda session, values: gather(session, values, others=signal.SIGINT)
    assert workers.agree_to_stop(None, stop) is True
    assert stop.signum == signal.SIGINT and stop.exit_status == 130 and stop.received is None
    stop._handle(signal.SIGTERM, None)  # Kubernetes signals every pod: this one's first, no abort
    assert stop.aborted is None and stop.received == signal.SIGTERM and stop.exit_status == 130


@pytest.mark.slow
def test_workers_starting_from_other_weights_are_refused_naming_the_worker(dataset, tmp_path,
                                                                          one_machine):
    """The same flags, but each worker's --init_checkpoint file holds other weights."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    processes = []
    for index, epoch in enumerate((1, 2)):
        flags = [*tiny_runs.flags(dataset, tmp_path, epochs=1), '--skip_layers', 'none',
                 '--init_checkpoint', one_machine / 'ckpt' / f'model_epoch{epoch}.ckpt']
        processes.append(subprocess.Popen(
            [sys.executable, WORKER, *map(str, flags), '--worker_hosts', ','.join(hosts),
             '--task_index', str(index), '--collective_timeout', '120'], cwd=tiny_runs.REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for code, stdout, stderr in finish(processes):
        assert code == 2
        assert tiny_runs.one_error_line(stderr) == (
            f'error: worker 1 ({hosts[1]}) starts from other weights than the chief: give every '
            'worker the same --weights_path and --init_checkpoint files')
    assert not (tmp_path / 'ckpt' / 'run_state.json').exists()


@pytest.mark.slow
def test_workers_started_with_other_flags_are_refused_naming_the_worker(dataset, tmp_path):
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    flags = tiny_runs.flags(dataset, tmp_path)
    processes = []
    for index, rate in enumerate(('0.001', '0.01')):
        processes.append(subprocess.Popen(
            [sys.executable, WORKER, *flags, '--learning_rate', rate, '--worker_hosts', ','.join(hosts),
             '--task_index', str(index), '--collective_timeout', '120'], cwd=tiny_runs.REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for code, stdout, stderr in finish(processes):
        assert code == 2
        assert tiny_runs.one_error_line(stderr) == (
            f'error: worker 1 ({hosts[1]}) was started with other settings than the chief: '
            '--learning_rate: 0.001 on worker 0 (the chief), 0.01 on worker 1: start every worker '
            'with the same flags')


def workers_gathering(cluster_size, values_of):
    """Workers whose gather answers as `cluster_size` workers would, worker i sending
    values_of(i, sent) where this one (the chief) sent `sent`."""
    workers = distribute.Workers.__new__(distribute.Workers)
    workers.cluster = distribute.Cluster(tuple(f'h{i}:1' for i in range(cluster_size)), 0)
    workers.index, workers.num_workers = 0, cluster_size
    workers.gather = lambda session, values: np.array(
        [np.asarray(values_of(index, np.asarray(values, np.float64).ravel()), np.float64)
         for index in range(cluster_size)])
    return workers


@pytest.mark.parametrize('changed, expected', [
    ({'learning_rate': 0.01},
     'worker 2 (h2:1) was started with other settings than the chief: --learning_rate: 0.001 on '
     'worker 0 (the chief), 0.01 on worker 2: start every worker with the same flags'),
    ({'train_layers': ['fc8'], 'learning_rate': 0.5},  # the first in name order
     'worker 2 (h2:1) was started with other settings than the chief: --learning_rate: 0.001 on '
     'worker 0 (the chief), 0.5 on worker 2: start every worker with the same flags'),
    ({'val_file_sha256': 'f' * 64},
     "worker 2 (h2:1) reads other data than the chief: the digest of its --val_file is "
     "ffffffffffffffff..., the chief's 0123456789abcdef...: give every worker the same list files "
     '(and images) or shards'),
    ({'gpu': True}, 'worker 2 (h2:1) was started with other settings than the chief: a GPU in use: '
     'false on worker 0 (the chief), true on worker 2: start every worker with the same flags'),
])
def test_a_worker_unlike_the_chief_is_told_which_setting_differs_and_how(changed, expected):
    """Worker 1 agrees; worker 2 sends, for each gather, what its own settings give."""
    chief = {'learning_rate': 0.001, 'train_layers': ['fc7', 'fc8'], 'gpu': False,
             'val_file_sha256': '0123456789abcdef' * 4}
    other = {**chief, **changed}
    names = sorted(chief)

    def values_of(index, sent):
        settings = other if index == 2 else chief
        if len(sent) == len(names):  # the digest of every setting, in name order
            return [distribute.settings_digest(settings[name]) for name in names]
        text = sent.astype(np.uint8).tobytes().rstrip(b'\0').decode()
        name = next(name for name in names if json.dumps(chief[name]) == text)
        mine = json.dumps(settings[name]).encode().ljust(distribute.VALUE_BYTES, b'\0')
        return np.frombuffer(mine, np.uint8)

    workers = workers_gathering(3, values_of)
    keys = np.full(3, distribute.settings_digest(names))
    error = workers._disagreement(None, chief, names, keys)
    assert str(error) == expected


def test_a_worker_of_another_version_is_told_so():
    workers = workers_gathering(2, lambda index, sent: sent)
    error = workers._disagreement(None, {'a': 1}, ['a'], np.array([1.0, 2.0]))
    assert str(error) == ('worker 1 (h1:1) runs another version of this toolkit (its settings have '
                          'other names): install the same version on every worker')


# --- a cluster that never forms -------------------------------------------------------------------

class Greeter:
    """A port that greets every connection with an HTTP/2 SETTINGS frame, then says nothing: to the
    start-up knock it looks like a TensorFlow worker, to TensorFlow's collectives it never answers.
    `connections` counts who came (the knock, then TensorFlow's own channel)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen()
        self.address = f'127.0.0.1:{self.listener.getsockname()[1]}'
        self.connections, self._open = 0, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(connection)
            connection.sendall(b'\x00\x00\x00\x04\x00\x00\x00\x00\x00')

    def close(self):
        for connection in [self.listener, *self._open]:
            connection.close()


def lone_worker(dataset, run_dir, hosts, index, timeout):
    """One worker of `hosts` started alone (its peers are whatever the test put at their ports)."""
    flags = [*tiny_runs.flags(dataset, run_dir), '--worker_hosts', ','.join(hosts),
             '--task_index', str(index), '--collective_timeout', str(timeout)]
    return subprocess.Popen([sys.executable, WORKER, *map(str, flags)], cwd=tiny_runs.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def never_answered(hosts, index, why, timeout=12):
    return (f'error: 1 of the 2 workers has not answered within --collective_timeout {timeout} s '
            f'(worker {index} ({hosts[index]}): {why}): start every worker with the same flags, '
            'check the addresses in --worker_hosts or TF_CONFIG, or raise --collective_timeout')


@pytest.mark.slow
def test_a_cluster_that_never_forms_ends_within_the_timeout_naming_who_is_missing(dataset, tmp_path):
    """Three lone workers at once, --collective_timeout 12: worker 1 whose chief never starts,
    the chief whose worker 1 never starts, worker 1 whose chief's port another program holds. Each
    says at 10 s who is missing, and ends in one line naming it (address and index)."""
    squatter = socket.socket()
    squatter.bind(('127.0.0.1', 0))
    squatter.listen()  # accepts connections (the kernel does), never speaks
    try:
        ports = free_ports(4)
        cases = [([f'127.0.0.1:{ports[0]}', f'127.0.0.1:{ports[1]}'], 1, 0, 'nothing listens there'),
                 ([f'127.0.0.1:{ports[2]}', f'127.0.0.1:{ports[3]}'], 0, 1, 'nothing listens there'),
                 ([f'127.0.0.1:{squatter.getsockname()[1]}', f'127.0.0.1:{free_ports(1)[0]}'], 1, 0,
                  'something listens there, but not a TensorFlow worker')]
        processes = [lone_worker(dataset, tmp_path / str(case), hosts, index, 12)
                     for case, (hosts, index, _, _) in enumerate(cases)]
        for process, (hosts, index, missing, why) in zip(processes, cases):
            stdout, stderr = process.communicate(timeout=150)  # start-up, 12 s, and a wide margin
            assert process.returncode == 2, stderr
            assert tiny_runs.one_error_line(stderr) == never_answered(hosts, missing, why)
            # At 10 s (later where a busy machine let the knocks fall behind).
            assert re.fullmatch(rf'waiting for worker {missing} \({hosts[missing]}\) to start: '
                                r'1\d s of --collective_timeout 12 s', stdout.splitlines()[0]), stdout
    finally:
        squatter.close()
    assert not any(tmp_path.glob('*/ckpt/run_state.json'))


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, 'never happened'
        time.sleep(0.1)


@pytest.mark.slow
def test_a_stop_signal_while_waiting_for_the_others_ends_the_worker_at_once(dataset, tmp_path):
    """SIGTERM during the start-up knocks (Python), Ctrl-C inside TensorFlow's first collective
    (the chief's port greets like TensorFlow, then never answers: TensorFlow retries it for ever):
    each ends in one line with 128 + N within seconds. A third such worker, left alone, ends at
    --collective_timeout 8 s (+ the watcher's slack) in one line, although TensorFlow never stops
    retrying."""
    greeters = [Greeter(), Greeter()]
    try:
        knocking = lone_worker(dataset, tmp_path / 'a', [f'127.0.0.1:{free_ports(1)[0]}',
                                                         f'127.0.0.1:{free_ports(1)[0]}'], 1, 120)
        inside = lone_worker(dataset, tmp_path / 'b', [greeters[0].address,
                                                       f'127.0.0.1:{free_ports(1)[0]}'], 1, 120)
        alone = lone_worker(dataset, tmp_path / 'c', [greeters[1].address,
                                                      f'127.0.0.1:{free_ports(1)[0]}'], 1, 8)
        line = knocking.stdout.readline()  # its first 'waiting for ...' (10 s into the knocks)
        while line and not line.startswith('waiting for worker 0'):
            line = knocking.stdout.readline()
        knocking.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        stdout, stderr = knocking.communicate(timeout=60)
        assert time.monotonic() - signalled < 30
        assert knocking.returncode == 143
        assert tiny_runs.one_error_line(stderr) == (
            'error: SIGTERM while waiting for the other workers: stopped before training started')

        wait_for(lambda: greeters[0].connections >= 2, 150)  # TensorFlow's channel: in the collective
        time.sleep(1)
        inside.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        stdout, stderr = inside.communicate(timeout=60)
        assert time.monotonic() - signalled < 30
        assert inside.returncode == 130
        assert tiny_runs.one_error_line(stderr) == (
            'error: Ctrl-C while waiting for the other workers: stopped before training started')

        stdout, stderr = alone.communicate(timeout=150)
        assert alone.returncode == 2
        assert tiny_runs.one_error_line(stderr) == (
            'error: the workers did not finish a step together within --collective_timeout 8 s '
            '(TensorFlow still waited at the deadline); every worker still answers, so one is stuck '
            'or slow (raise --collective_timeout if steps take longer): restart every worker with '
            '--resume to continue from the last checkpoint')
    finally:
        for greeter in greeters:
            greeter.close()


@pytest.mark.slow
def test_a_signal_during_a_step_that_waits_for_a_hung_worker_ends_the_worker_after_the_grace(
        dataset, tmp_path, bvlc_npy):
    """Worker 1 stops itself (SIGSTOP) after step 1: its port still accepts connections, so it is
    not gone, and the chief's next step waits for it. A SIGTERM to the chief then lets the step
    finish for the grace (10 s, or twice the longest wait so far); it cannot, so the chief ends in
    one line with 143, long before --collective_timeout 300."""
    processes, hosts = start_workers(fc8_flags(dataset, tmp_path, bvlc_npy), timeout=300,
                                     signal_at=(1, 1, 1, signal.SIGSTOP))
    chief, other = processes
    try:
        wait_for(lambda: open(f'/proc/{other.pid}/stat').read().split(') ')[1][0] == 'T', 200)
        time.sleep(3)  # the chief is inside its next collective by now
        chief.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        stdout, stderr = chief.communicate(timeout=150)
        waited = time.monotonic() - signalled
    finally:
        other.kill()
        other.communicate()
    assert chief.returncode == 143, stderr
    line = tiny_runs.one_error_line(stderr)
    grace = int(re.search(r'within (\d+) s', line).group(1))
    assert line == (f'error: SIGTERM while waiting for the other workers, who did not finish the step '
                    f'within {grace} s: stopped without saving; the last complete checkpoint is kept, '
                    'continue it with --resume')
    assert distribute.SIGNAL_GRACE <= grace < 300
    assert waited < grace + 60  # the grace, and the process's exit on a busy machine
