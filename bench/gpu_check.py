"""What only a GPU can show, measured in one command (under ten minutes) and written to one JSON file.

    python bench/gpu_check.py --output gpu_check.json

On a machine with a GPU and TensorFlow's CUDA build it records: where each op of an all-layer
training step ran (RunMetadata's step stats; every op that ran on the CPU is listed), images/s of the
fc, all-layer, mixed-precision, JPEG-pipeline and cached-feature steps (bench.py's rows), the
non-finite values of every layer under the float16 rewrite with real-scale (He-initialised)
activations, the time of a batch's host-to-device copy as float32 and as uint8, the all-layer step
with XLA off and on (and XLA with --seed's op determinism: images/s, or the line XLA refuses it
with), --num_gpus replicas against towers on every GPU it sees (two or more), and the GPU's peak
memory. Each section is written as soon as it is done, so a crash leaves the sections before it.

Without a GPU it runs the same sections on the CPU: float16 by TensorFlow's CPU emulation of the
rewrite, replicas and towers on two logical CPU devices. `--tiny` (batch 2, one timed step per
figure) is what the tests run, to check the file's shape. docs/speed.md says what the CPU emulation
verified and what only this command can show.
"""
import os
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet, oneDNN on

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (bench.py's rows, data and weights)

CPU_FLOAT16_LAYERS = 6  # conv1 .. pool2: what TensorFlow's CPU emulation of float16 runs
SECTIONS = ('placement', 'images_per_second', 'float16', 'copy', 'xla', 'replicas', 'memory')


def placement(device, batch, weights):
    """{device: ops that ran there} of one all-layer step, and the names of the CPU's ops."""
    import tensorflow.compat.v1 as tf
    from alexnet import TRAINABLE_LAYERS
    graph = tf.Graph()
    with graph.as_default():
        images_value, labels_value = bench.fixed_batch(batch)
        train = bench.training_graph(
            (tf.constant(images_value), tf.constant(labels_value)), None,
            num_classes=bench.NUM_CLASSES, train_layers=TRAINABLE_LAYERS, skip_layers=('fc8',),
            weights_path=weights, learning_rate=bench.STEP_LEARNING_RATE,
            model_device=device, use_gpu=device.startswith('/gpu'))
        initialize = tf.global_variables_initializer()
    with session_for(graph, device) as session:
        session.run(initialize)
        session.run(train.train_op)  # the first step builds the kernels; the second is traced
        metadata = tf.RunMetadata()
        session.run(train.train_op, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE),
                    run_metadata=metadata)
    ops = {}
    for stats in metadata.step_stats.dev_stats:
        names = sorted({node.node_name.split(':')[0] for node in stats.node_stats
                        if not node.node_name.startswith('_SOURCE')})
        ops.setdefault(stats.device, []).extend(names)
    counts = {name: len(names) for name, names in ops.items()}
    cpu_ops = sorted({name for device_name, names in ops.items() if 'CPU' in device_name.upper()
                      for name in names})
    return {'ops_per_device': counts, 'cpu_ops': cpu_ops}


def session_for(graph, device, **settings):
    import tensorflow.compat.v1 as tf
    from finetune_alexnet import tf_setup
    return tf.Session(graph=graph, config=tf_setup.session_config(
        use_gpu=device.startswith('/gpu'), **settings))


def images_per_second(spec_base):
    """bench.py's training-step rows, in this process."""
    rows = {'fc': ('fc', 'memory'), 'all': ('all', 'memory'), 'mixed_precision': ('all', 'mixed'),
            'pipeline': ('all', 'pipeline'), 'feature_cache': ('fc', 'cached')}
    return {name: bench.measure_tf_step({**spec_base, 'mode': mode, 'source': source})
            for name, (mode, source) in rows.items()}


def float16_rewrite_config(gpu):
    """The session of --mixed_precision on a GPU (float16); on the CPU, its emulation."""
    from tensorflow.core.protobuf import rewriter_config_pb2
    from finetune_alexnet import tf_setup
    config = tf_setup.session_config(use_gpu=gpu)
    options = config.graph_options.rewrite_options
    if gpu:
        options.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    else:
        options.auto_mixed_precision_cpu = rewriter_config_pb2.RewriterConfig.ON
    return config


def float16(gpu, batch, weights):
    """Non-finite values of every layer's output under the float16 rewrite, He-scaled weights."""
    import tensorflow.compat.v1 as tf
    from alexnet import AlexNet
    from finetune_alexnet import weight_files
    images_value, _ = bench.fixed_batch(batch)
    graph = tf.Graph()
    with graph.as_default():
        # Fed, not a constant: grappler would fold a constant's layers before the rewrite runs.
        x = tf.placeholder(tf.float32, images_value.shape)
        model = AlexNet(x, 1.0, 1000, [], weights)
        initialize = tf.global_variables_initializer()
    layers = weight_files.load_weights(weights)
    with tf.Session(graph=graph, config=float16_rewrite_config(gpu)) as session:
        session.run(initialize)
        model.load_initial_weights(session, layers)
        # On a CPU the emulation's float16 kernels of conv3 and after end the process (a
        # segmentation fault in TensorFlow 2.21): there, norm2's block is as far as it goes.
        fetched = list(model.end_points)[:None if gpu else CPU_FLOAT16_LAYERS]
        outputs = session.run({name: model.end_points[name] for name in fetched}, {x: images_value})
    return {'conv1_max': float(outputs['conv1'].max()),
            'non_finite': {name: int((~np.isfinite(value)).sum()) for name, value in outputs.items()},
            'not_run': list(model.end_points)[len(fetched):]}


def copy(device, batch, seconds):
    """Seconds per step of a batch's copy to `device`: float32 (what the pipeline sends today) and
    uint8 (a quarter of the bytes), each reduced there so the copy is the work."""
    import tensorflow.compat.v1 as tf
    images_value, _ = bench.fixed_batch(batch)
    result = {}
    for dtype in ('float32', 'uint8'):
        value = (np.clip(images_value + 125, 0, 255).astype(np.uint8) if dtype == 'uint8'
                 else images_value)
        graph = tf.Graph()
        with graph.as_default():
            with tf.device('/cpu:0'):
                source = tf.placeholder(dtype, value.shape)
                host = tf.identity(source)
            with tf.device(device):
                total = tf.reduce_sum(tf.cast(host, tf.float32))
        with session_for(graph, device) as session:
            rate = bench.timed(lambda: session.run(total, {source: value}), 1, seconds)
        result[f'{dtype}_seconds'] = 1.0 / rate
        result[f'{dtype}_bytes'] = int(value.nbytes)
    return result


def xla(spec_base):
    """The all-layer step without XLA, with it, and with it under --seed's op determinism."""
    import tensorflow.compat.v1 as tf
    from finetune_alexnet import tf_setup
    results = {} if spec_base['device'] == 'gpu' else {
        'note': 'a CPU ignores XLA without TF_XLA_FLAGS=--tf_xla_cpu_global_jit (tf_setup.py)'}
    real = tf_setup.session_config
    for name, compiled, seeded in (('off', False, False), ('on', True, False),
                                   ('on_seeded', True, True)):
        tf_setup.session_config = lambda *args, **kwargs: real(*args, **{**kwargs, 'xla': compiled})
        try:
            spec = {**spec_base, 'mode': 'all', 'source': 'seeded' if seeded else 'memory'}
            results[name] = bench.measure_tf_step(spec)
        except (tf.errors.OpError, ValueError) as error:
            results[name] = 'error: ' + str(getattr(error, 'message', error)).strip().splitlines()[0]
        finally:
            tf_setup.session_config = real
            from tensorflow.python.framework import config as tf_config
            tf_config.disable_op_determinism()
    return results


def replicas(gpu, batch, seconds, devices=None):
    """images/s of the all-layer step over every GPU (two logical CPU devices without one): --num_gpus
    replicas (MirroredStrategy), against towers with their variables on the first device (the
    path a worker of several still takes; num_workers=2 there only halves the gradients)."""
    import tensorflow as tf2
    import tensorflow.compat.v1 as tf
    from alexnet import TRAINABLE_LAYERS
    devices = devices or (len(tf2.config.list_physical_devices('GPU')) if gpu else 2)
    if devices < 2:
        return {'devices': devices, 'note': 'one GPU: nothing to compare'}
    images_value, labels_value = bench.fixed_batch(batch * devices)
    results = {'devices': devices, 'batch': batch * devices}
    for name, workers in (('replicas', 1), ('towers', 2)):
        graph = tf.Graph()
        with graph.as_default():
            images = tf.Variable(images_value, trainable=False)
            labels = tf.Variable(labels_value, trainable=False)
            train = bench.training_graph(
                (images.read_value(), labels.read_value()), None, num_classes=bench.NUM_CLASSES,
                train_layers=TRAINABLE_LAYERS, skip_layers=TRAINABLE_LAYERS,
                learning_rate=bench.STEP_LEARNING_RATE, num_devices=devices, num_workers=workers,
                use_gpu=gpu, model_device='/gpu:0' if gpu else '/cpu:0')
            initialize = tf.global_variables_initializer()
        with session_for(graph, '/gpu:0' if gpu else '/cpu:0',
                         logical_cpus=None if gpu else devices) as session:
            session.run(initialize)
            results[name] = bench.timed(lambda: session.run(train.train_op), batch * devices, seconds)
    return results


def memory(gpu):
    import tensorflow as tf2
    if not gpu:
        return {'peak_bytes': None, 'note': 'no GPU'}
    return {'peak_bytes': int(tf2.config.experimental.get_memory_info('GPU:0')['peak'])}


def write_json(path, content):
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, suffix='.part')
    with os.fdopen(handle, 'w') as stream:
        json.dump(content, stream, indent=1)
    os.replace(temporary, path)


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--output', required=True, help='the JSON file to write')
    parser.add_argument('--tiny', action='store_true',
                        help='batch 2 and one timed step per figure: the file\'s shape, not its numbers')
    parser.add_argument('--cache_dir', default=os.path.join(tempfile.gettempdir(), 'alexnet-bench'),
                        help='weights and JPEGs written once, shared with bench.py')
    args = parser.parse_args(argv)
    from finetune_alexnet import tf_setup
    tf_setup.quiet_python_logging(args.verbose)
    import tensorflow as tf2
    import tensorflow.compat.v1 as tf
    tf.disable_v2_behavior()
    gpu = bool(tf2.config.list_physical_devices('GPU'))
    device = '/gpu:0' if gpu else '/cpu:0'
    batch, seconds = (2, 0) if args.tiny else (128, 8.0)
    os.makedirs(args.cache_dir, exist_ok=True)
    weights = bench.write_weights(os.path.join(args.cache_dir, 'weights.npz'))
    list_file = bench.write_jpegs(os.path.join(args.cache_dir, 'jpegs'), 4 * batch)
    spec_base = {'batch': batch, 'device': 'gpu' if gpu else 'cpu', 'weights': weights,
                 'seconds': seconds, 'list_file': list_file}
    report = {'machine': bench.machine(), 'gpu': gpu, 'tensorflow': tf.__version__,
              'batch': batch, 'tiny': args.tiny}
    work = {
        'placement': lambda: placement(device, batch, weights),
        'images_per_second': lambda: images_per_second(spec_base),
        'float16': lambda: float16(gpu, batch, weights),
        'copy': lambda: copy(device, batch, seconds),
        'xla': lambda: xla(spec_base),
        'replicas': lambda: replicas(gpu, batch, seconds),
        'memory': lambda: memory(gpu),
    }
    for section in SECTIONS:
        start = time.perf_counter()
        report[section] = work[section]()
        report[section + '_seconds'] = round(time.perf_counter() - start, 1)
        write_json(args.output, report)
        print(f'{section}: {json.dumps(report[section])[:300]}')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
