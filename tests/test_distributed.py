"""Several workers through tf.distribute: the cluster read from TF_CONFIG or the flags, each worker's
rows of every batch, and real two-worker runs on 127.0.0.1 against one process (weights, validation,
TensorBoard), a SIGTERM to one worker then --resume, a worker killed outright, workers that disagree."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
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
        dataset, tmp_path, one_machine, capsys):
    """Worker 1 (not the chief) gets SIGTERM after step 2 of epoch 2: both stop after that step, the
    chief saves; both resumed (from TF_CONFIG this time) train step 6 and end with one machine's
    uninterrupted weights. The batch and the order being global, a copy resumed on one machine
    ends there too."""
    flags = tiny_runs.flags(dataset, tmp_path)
    chief, other = finish(start_workers(flags, signal_at=(1, 2, 2, signal.SIGTERM))[0])
    assert chief[0] == other[0] == 143, (chief[2], other[2])
    assert 'interrupted_step5.ckpt at step 5; continue with --resume' in chief[1]
    assert 'worker 1 (127.0.0.1:' in chief[2] and 'received SIGTERM: every worker stops' in chief[2]
    assert 'stopped at step 5; the chief saves the run' in other[1]
    assert tiny_runs.read_state(tmp_path)['latest_checkpoint'] == 'interrupted_step5.ckpt'
    alone = tmp_path / 'alone'
    shutil.copytree(tmp_path / 'ckpt', alone / 'ckpt')
    resumed = tiny_runs.run_here(capsys, tiny_runs.flags(dataset, alone, '--resume'))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(alone / 'ckpt' / 'model_epoch2.ckpt', one_machine / 'ckpt' / 'model_epoch2.ckpt')
    results = finish(start_workers([*flags, '--resume'], use_tf_config=True)[0])
    for code, stdout, stderr in results:
        assert code == 0, stderr
        assert 'resumed interrupted_step5.ckpt at step 5' in stdout
    assert_same_weights(tmp_path / 'ckpt' / 'model_epoch2.ckpt', one_machine / 'ckpt' / 'model_epoch2.ckpt')
    assert [record['step'] for record in tiny_runs.read_state(tmp_path)['history']] == [3, 6]


@pytest.mark.slow
def test_a_killed_worker_ends_the_other_within_the_timeout_and_resume_goes_on(dataset, tmp_path,
                                                                              one_machine):
    """Worker 1 is killed (SIGKILL) after step 1 of epoch 2: the chief stops in one line naming it,
    within seconds, long before the deadline; both restarted with --resume go on from epoch 1's checkpoint to one machine's weights."""
    timeout = 600  # the deadline is for workers that hang; a dead one is found by knocking
    flags = tiny_runs.flags(dataset, tmp_path)
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
    assert_same_weights(tmp_path / 'ckpt' / 'model_epoch2.ckpt', one_machine / 'ckpt' / 'model_epoch2.ckpt')


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
        assert f'worker 1 ({hosts[1]}) was started with other settings or data than the chief' in \
            tiny_runs.one_error_line(stderr)
