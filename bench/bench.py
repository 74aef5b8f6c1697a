"""How fast the toolkit fine-tunes AlexNet on this machine, against the obvious alternatives, in one run.

    python bench/bench.py [--quick] [--repeats 3] [--json results.json] [--no_finetune]

Measures, all in the same run (bench/RESULTS.md holds a recorded run and what was chosen):

1. a fine-tune step, fc6-fc8 trained (conv frozen) and all layers, at batch 32 and 128, from an
   in-memory batch;
2. the same from the real JPEG pipeline (500x375 JPEGs written once, bench_pipeline.write_images),
   bare and as finetune.py's loop runs it (summaries riding along every 20 steps);
3. the original script's loop as the baseline: batches pulled into NumPy and fed back through
   feed_dict, summaries by a second pass every 20 steps;
4. inference at batch 1 and 128; the fc6-fc8 step from cached pool5 features;
5. the input pipeline alone;
6. the peer: the same AlexNet fine-tuned in PyTorch on the CPU (bench/torch_alexnet.py; skipped with
   a note when torch is not installed);
7. the settings tried for speed: oneDNN off, thread pools, XLA, native grouped convolution,
   TensorFlow's LRN kernel instead of the toolkit's matrix-product LRN; and that logits and losses agree to 1e-4 across them and with PyTorch;
8. end to end, a 10-epoch frozen-conv `finetune.py` run with --cache_features on and off.

Each contender lives in a worker process (TensorFlow reads oneDNN and XLA settings once, at load, and
its thread pools are per process), started once and kept waiting on a pipe. The rounds interleave
every contender of every worker, in a new random order each round, so a machine that gets busier
mid-run slows all of them alike; each figure is the median over the rounds, after a warm-up. No
figure is ever asserted in tests/: this is a measurement, not a test.
"""
import os
import sys

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402

WORKER_FLAG = '--worker'
TOLERANCE = 1e-4
TARGET_FC_VS_TORCH = 2.0
TARGET_PIPELINE_VS_MEMORY = 0.85
TARGET_CACHED_SPEEDUP = 3.0
LOWER_PRECISION = ('mixed-precision',)
SECOND_GROUP = ('chosen-2', 'dependency-optimizer', 'grouped', 'kernel-lrn')  # timed against their own worker of the chosen settings


# --- worker side --------------------------------------------------------------------------------

def _tf_config(spec):
    from finetune_alexnet import tf_setup
    from tensorflow.core.protobuf import rewriter_config_pb2
    # 'mixed_precision': finetune.py --mixed_precision, i.e. on this CPU grappler's bfloat16 pass for
    # oneDNN (float32 variables and updates) with the toolkit's loss scaling in the graph.
    config = tf_setup.session_config(use_gpu=spec.get('use_gpu', False), xla=spec.get('xla', False),
                                     mixed_precision=spec.get('mixed_precision', False))
    if spec.get('dependency_optimizer'):
        # Grappler's default, which tf_setup turns off so that feeding x stays correct.
        config.graph_options.rewrite_options.dependency_optimization = \
            rewriter_config_pb2.RewriterConfig.DEFAULT
    if 'threads' in spec:
        config.intra_op_parallelism_threads, config.inter_op_parallelism_threads = spec['threads']
    return config


def _build_tf(spec):
    """{name: contender} for a TensorFlow worker, and a function returning its check values."""
    import tensorflow.compat.v1 as tf
    from finetune_alexnet import tf_setup
    tf_setup.quiet_python_logging()
    tf.disable_v2_behavior()
    config = _tf_config(spec)
    layers = common.fixture_layers()
    contenders, sessions = {}, []
    for item in spec['contenders']:
        kind, names = item['kind'], item.get('variant')
        if kind == 'train':
            built, opened = common.training_contenders(
                item['mode'], item['batch'], layers, config, item['sources'], spec.get('list_file'),
                names=names, mixed_precision=spec.get('mixed_precision', False))
            sessions += opened
            for source, contender in built.items():
                contenders[f"{item['prefix']}/{item['mode']}/{source}/{item['batch']}"] = contender
        elif kind == 'cached':
            contender, session = common.cached_contender(item['batch'], layers, config)
            sessions.append(session)
            contenders[f"{item['prefix']}/fc/cached/{item['batch']}"] = contender
        elif kind == 'infer':
            contender, session = common.inference_contender(item['batch'], layers, config, names=names)
            sessions.append(session)
            contenders[f"{item['prefix']}/infer/memory/{item['batch']}"] = contender
        elif kind == 'pipeline':
            contenders[f"{item['prefix']}/pipeline/alone/{item['batch']}"] = common.PipelineAlone(
                spec['list_file'], item['batch'], item['threads'])

    def check():
        return common.tf_check_values(config, spec.get('check_variant', spec.get('variant')),
                                      mixed_precision=spec.get('mixed_precision', False))
    return contenders, check


def _build_torch(spec):
    import torch
    import torch_alexnet
    torch.set_num_threads(spec.get('threads', os.cpu_count() or 1))
    layers = common.fixture_layers()
    contenders = {}
    for item in spec['contenders']:
        model = torch_alexnet.load_layers(torch_alexnet.AlexNet(common.NUM_CLASSES,
                                                                1 - common.KEEP_PROB), layers)
        images, labels = common.fixed_batch(item['batch'])
        if item['kind'] == 'train':
            step = torch_alexnet.train_step_fn(model, common.train_layers_of(item['mode']), images,
                                               labels, common.BENCH_LEARNING_RATE)
            name = f"{item['prefix']}/{item['mode']}/memory/{item['batch']}"
        else:
            step = torch_alexnet.inference_fn(model, images)
            name = f"{item['prefix']}/infer/memory/{item['batch']}"
        contenders[name] = _Callable(step, item['batch'])

    def check():
        return torch_check_values()
    return contenders, check


class _Callable:
    def __init__(self, function, batch_size):
        self.function, self.batch_size = function, batch_size

    def run(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.function()
        return time.perf_counter() - start, steps * self.batch_size


def torch_check_values():
    """The PyTorch peer's logits and loss on tf_check_values' images and weights, before and after
    one SGD step on all layers: the same numbers, if the two are the same network."""
    import numpy as np
    import torch
    import torch_alexnet
    images, labels = common.fixed_batch(common.CHECK_IMAGES, seed=7)
    model = torch_alexnet.load_layers(torch_alexnet.AlexNet(common.NUM_CLASSES, 0.0),
                                      common.fixture_layers(seed=1))
    logits = torch_alexnet.logits(model, images)
    targets = torch.from_numpy(np.argmax(labels, axis=1))
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), targets))
    step = torch_alexnet.train_step_fn(model, common.train_layers_of('all'), images, labels,
                                       common.CHECK_LEARNING_RATE)
    step()  # dropout rate 0: the same deterministic step as TensorFlow's keep_prob 1
    logits_after = torch_alexnet.logits(model, images)
    loss_after = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits_after), targets))
    return {'logits': logits.tolist(), 'loss': loss, 'logits_after_step': logits_after.tolist(),
            'loss_after_step': loss_after}


def _resident_mib():
    try:
        with open('/proc/self/status') as stream:
            return next(int(line.split()[1]) // 1024 for line in stream if line.startswith('VmRSS:'))
    except (OSError, StopIteration):
        return None


def worker_main(spec_json):
    """Build the contenders of `spec`, then answer run/check requests on stdin, one JSON line each."""
    spec = json.loads(spec_json)
    # Replies go to the original stdout; anything a library prints goes to stderr (the worker's log).
    replies = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)
    start = time.perf_counter()
    if spec['kind'] == 'tf':
        from finetune_alexnet import tf_setup
        tf_setup.configure_environment()  # as the toolkit's entry points do; the spec's env wins
    common.add_repo_to_path()
    contenders, check = (_build_tf if spec['kind'] == 'tf' else _build_torch)(spec)
    replies.write(json.dumps({'ready': sorted(contenders), 'setup_seconds': time.perf_counter() - start,
                              'max_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                              'rss_mib': _resident_mib()})
                  + '\n')
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if 'run' in request:
            seconds, images, cpu = common.timed_in_process(contenders[request['run']], request['steps'])
            reply = {'seconds': seconds, 'images': images, 'cpu': cpu}
        elif 'check' in request:
            reply = {'values': check()}
        else:
            break
        replies.write(json.dumps(reply) + '\n')
        replies.flush()
    return 0


# --- coordinator side ---------------------------------------------------------------------------

class Worker:
    """A worker process: its spec, environment, pipes and log file."""

    def __init__(self, name, spec, env, log_dir):
        self.name = name
        self.log_path = os.path.join(log_dir, f'{name}.log')
        self.log = open(self.log_path, 'w')
        environment = dict(os.environ, **env)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), WORKER_FLAG, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=environment, cwd=common.ROOT)
        self.names = []

    def wait_ready(self):
        reply = self._read()
        self.names = reply['ready']
        return reply

    def request(self, **message):
        self.process.stdin.write(json.dumps(message) + '\n')
        self.process.stdin.flush()
        return self._read()

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            with open(self.log_path) as stream:
                tail = stream.read()[-3000:]
            raise RuntimeError(f'worker {self.name} stopped (exit {self.process.returncode}); '
                               f'its log ({self.log_path}) ends:\n{tail}')
        return json.loads(line)

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({'quit': True}) + '\n')
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


def torch_available():
    import importlib.util
    return importlib.util.find_spec('torch') is not None


def plan(args, list_file):
    """[(phase, [(worker name, spec, environment)])]: every contender of the run, by process.

    One process per training graph pair (in-memory, and pipeline with its loops), as a user runs one
    graph per process: measured here, a process holding thirty graphs ran the same step 4-11% slower.
    Two phases, each with its processes alive only while it runs, so that they fit in memory
    (~1.7 GiB each): the main table, then the settings tried, against a worker of the chosen
    settings built exactly like theirs.
    """
    batches = [32] if args.quick else [32, 128]
    cores = os.cpu_count() or 1
    main = []
    # --quick leaves out finetune.py's loop: like the baseline it pays a summary pass each repeat.
    sources = ['memory', 'pipeline', 'feed'] + ([] if args.quick else ['loop'])
    for mode in ('fc', 'all'):
        for batch in batches:
            main.append((f'tf-{mode}-{batch}', {'kind': 'tf', 'list_file': list_file, 'contenders': [
                {'kind': 'train', 'prefix': 'tf', 'mode': mode, 'batch': batch, 'sources': sources}]}, {}))
    misc = [{'kind': 'cached', 'prefix': 'tf', 'batch': batch} for batch in batches]
    misc += [{'kind': 'infer', 'prefix': 'tf', 'batch': batch} for batch in (1, batches[-1])]
    misc.append({'kind': 'pipeline', 'prefix': 'tf', 'batch': batches[-1], 'threads': cores})
    main.append(('tf', {'kind': 'tf', 'list_file': list_file, 'contenders': misc}, {}))
    if args.torch:
        for mode in ('fc', 'all'):
            main.append((f'torch-{mode}', {'kind': 'torch', 'threads': cores, 'contenders': [
                {'kind': 'train', 'prefix': 'torch', 'mode': mode, 'batch': batch}
                for batch in batches]}, {}))
        main.append(('torch', {'kind': 'torch', 'threads': cores, 'contenders': [
            {'kind': 'infer', 'prefix': 'torch', 'batch': batch} for batch in (1, batches[-1])]}, {}))

    # The settings tried, each on the headline step (fc6-fc8, largest batch) and an all-layer step.
    probe = [('fc', batches[-1]), ('all', batches[0])]

    def probes(prefix, names=None):
        return [{'kind': 'train', 'prefix': prefix, 'mode': mode, 'batch': batch, 'sources': ['memory'],
                 'variant': names} for mode, batch in probe]

    settings = [('chosen', {'kind': 'tf', 'contenders': probes('chosen')}, {}),
                # The reference of the equality checks: TensorFlow's plain kernels throughout.
                ('onednn-off', {'kind': 'tf', 'contenders': probes('onednn-off'),
                                'check_variant': ['kernel-lrn']},
                 {'TF_ENABLE_ONEDNN_OPTS': '0'})]
    phases = [('main table', main), ('settings', settings)]
    if not args.quick:
        settings.append((f'threads-{cores}-1', {'kind': 'tf', 'threads': [cores, 1],
                                                'contenders': probes(f'threads-{cores}-1')}, {}))
        # XLA as finetune.py --xla asks for it (global_jit ON_1) and with the flag that lets the CPU
        # compile at all; auto-clustering on the CPU is off without it.
        settings.append(('xla', {'kind': 'tf', 'xla': True, 'contenders': probes('xla')}, {}))
        settings.append(('xla-cpu', {'kind': 'tf', 'xla': True, 'contenders': probes('xla-cpu')},
                         {'TF_XLA_FLAGS': '--tf_xla_cpu_global_jit'}))
        settings.append(('mixed-precision', {'kind': 'tf', 'mixed_precision': True,
                                              'contenders': probes('mixed-precision')}, {}))
        # A second group (each process holds ~2 GiB), with its own worker of the chosen settings.
        graph_settings = [('chosen-2', {'kind': 'tf', 'contenders': probes('chosen-2')}, {}),
                          ('dependency-optimizer', {'kind': 'tf', 'dependency_optimizer': True,
                                                    'contenders': probes('dependency-optimizer')}, {})]
        for prefix, names in (('grouped', ['grouped']), ('kernel-lrn', ['kernel-lrn'])):
            graph_settings.append((prefix, {'kind': 'tf', 'variant': names,
                                            'contenders': probes(prefix, names)}, {}))
        phases.append(('graph settings', graph_settings))
    return phases


def measure(workers, repeats, target_seconds):
    """{contender: [images/s per round]} over every worker's contenders, interleaved."""
    owners = {name: worker for worker in workers for name in worker.names}
    return common.interleave(list(owners), lambda name, steps: _run(owners[name], name, steps),
                             repeats, target_seconds)


def _run(worker, name, steps):
    reply = worker.request(run=name, steps=steps)
    return reply['seconds'], reply['images'], reply['cpu']


def checks(workers):
    """{setting: logits and losses} for the equality checks, from one worker per setting.

    The workers of the chosen settings all run the same graph as 'tf', and the PyTorch workers the
    same peer as 'torch'.
    """
    values = {}
    for worker in workers:
        if not worker.name.startswith(('tf-', 'torch-', 'chosen')):
            values[worker.name] = worker.request(check=True)['values']
    return values


def compare(values):
    """[(setting, reference, largest relative difference)] against plain TensorFlow."""
    reference = 'onednn-off' if 'onednn-off' in values else 'tf'
    results = []
    for name, value in values.items():
        if name == reference:
            continue
        difference = max(common.max_relative_difference(value[key], values[reference][key])
                         for key in ('logits', 'logits_after_step'))
        loss_difference = max(abs(value[key] - values[reference][key]) / max(1.0, abs(values[reference][key]))
                              for key in ('loss', 'loss_after_step'))
        results.append((name, reference, max(difference, loss_difference)))
    return results


def finetune_run(weights, train_file, val_file, cache, folder, seed, epochs, batch_size, display_step):
    """Wall seconds and the final metrics of one finetune.py run (a fresh process, as a user runs it)."""
    checkpoint = os.path.join(folder, f'cache_{cache}')
    shutil.rmtree(checkpoint, ignore_errors=True)
    command = [sys.executable, os.path.join(common.ROOT, 'finetune.py'), '--train_file', train_file,
               '--val_file', val_file, '--weights_path', weights, '--checkpoint_path',
               os.path.join(checkpoint, 'checkpoints'), '--filewriter_path',
               os.path.join(checkpoint, 'tensorboard'), '--seed', str(seed), '--num_epochs', str(epochs),
               '--batch_size', str(batch_size), '--cache_features', cache,
               '--display_step', str(display_step),
               # fixture weights are random and large: the default rate makes the loss diverge
               '--learning_rate', '1e-5']
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=common.ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f'finetune.py --cache_features {cache} failed:\n{result.stderr[-2000:]}')
    with open(os.path.join(checkpoint, 'checkpoints', 'metrics.jsonl')) as stream:
        history = [json.loads(line) for line in stream]
    return {'seconds': seconds, 'final': history[-1],
            'best_val_accuracy': max(record['val_accuracy'] for record in history),
            'train_images_per_second': statistics.median(r['images_per_second'] for r in history)}


def finetune_comparison(args, folder):
    """A 10-epoch frozen-conv run on generated photos, cached features on vs off, same seed."""
    import bvlc_fixture
    from finetune_alexnet import demo_data
    import make_lists
    per_class = args.finetune_images // 2
    images = demo_data.make_demo_images(os.path.join(folder, f'demo_{per_class}'), per_class, seed=0)
    paths, labels, class_names = make_lists.find_images(images)
    train, val = make_lists.split_stratified(paths, labels, val_fraction=0.2, seed=0)
    lists = make_lists.write_lists(os.path.join(folder, f'lists_{per_class}'), train, val, class_names)
    weights = os.path.join(folder, 'bvlc_alexnet_fixture.npy')
    if not os.path.exists(weights):
        bvlc_fixture.write_bvlc_npy(weights, bvlc_fixture.random_weights(num_classes=1000, seed=0))
    runs = {}
    for cache in ('off', 'on'):
        runs[cache] = finetune_run(weights, lists['train.txt'], lists['val.txt'], cache, folder, seed=0,
                                   epochs=10, batch_size=args.finetune_batch,
                                   display_step=args.finetune_display_step)
    return {'train_images': len(train), 'val_images': len(val), 'runs': runs}


def _median(values):
    return statistics.median(values) if values else None


def report(rates, equality, finetune, info, args, elapsed):
    """The table of images/s, the ratios, the settings and the targets, as Markdown."""
    median = {name: _median(values) for name, values in rates.items()}
    batches = [32] if args.quick else [32, 128]
    lines = []
    add = lines.append
    add(f"# AlexNet fine-tuning speed, {time.strftime('%Y-%m-%d')}")
    add('')
    add(f"{info['cpu']} ({info['vendor']}, family {info['cpu_family']}), {info['cores']} cores, "
        f"{info.get('memory_gib')} GiB; Python {info['python']}, TensorFlow {info['tensorflow']}, "
        f"NumPy {info['numpy']}, OpenCV {info['cv2']}, PyTorch {info['torch'] or 'absent'}; load "
        f"average {info['load_before']:.2f} before, {info['load_after']:.2f} after; {elapsed:.0f} s.")
    add(f'images/s, median of {args.repeats} interleaved rounds after warm-up (min-max in brackets); '
        f'{getattr(rates, "retried", 0)} repeats were run again because other processes took over '
        f'20% of a core during them, {getattr(rates, "disturbed", 0)} stayed disturbed after 3 retries.')
    add('')

    def cell(name):
        if name not in rates:
            return '-'
        values = rates[name]
        return f'{median[name]:.1f} [{min(values):.0f}-{max(values):.0f}]'

    header = '| contender | ' + ' | '.join(f'batch {b}' for b in batches) + ' |'
    add(header)
    add('|' + ' --- |' * (len(batches) + 1))
    labels = [('memory', 'in-memory batch'), ('pipeline', 'real JPEG pipeline'),
              ('loop', 'finetune.py loop (pipeline, summaries ride along)'),
              ('feed', 'baseline: original feed_dict loop')]
    for mode, title in (('fc', 'fc6-fc8 step'), ('all', 'all-layer step')):
        for source, label in labels:
            add(f'| {title}, {label} | ' + ' | '.join(cell(f'tf/{mode}/{source}/{b}') for b in batches) + ' |')
        if mode == 'fc':
            add(f'| {title}, cached pool5 features | '
                + ' | '.join(cell(f'tf/fc/cached/{b}') for b in batches) + ' |')
        add(f'| {title}, PyTorch peer | '
            + ' | '.join(cell(f'torch/{mode}/memory/{b}') for b in batches) + ' |')
    add('')
    add('| inference | batch 1 | batch ' + str(batches[-1]) + ' |')
    add('| --- | --- | --- |')
    for prefix, label in (('tf', 'TensorFlow (toolkit graph)'), ('torch', 'PyTorch peer')):
        add(f'| {label} | {cell(f"{prefix}/infer/memory/1")} | {cell(f"{prefix}/infer/memory/{batches[-1]}")} |')
    add('')
    add(f"Input pipeline alone (500x375 JPEGs, batch {batches[-1]}, {info['cores']} threads): "
        f"{cell(f'tf/pipeline/alone/{batches[-1]}')} images/s.")
    add('')

    def ratio(a, b):
        return median[a] / median[b] if median.get(a) and median.get(b) else None

    add('## Ratios')
    add('')
    targets = []
    for mode in ('fc', 'all'):
        for b in batches:
            parts = []
            vs_torch = ratio(f'tf/{mode}/memory/{b}', f'torch/{mode}/memory/{b}')
            if vs_torch is not None:
                parts.append(f'TF/PyTorch {vs_torch:.2f}x')
                if mode == 'fc':
                    targets.append((f'fc6-fc8 step >= {TARGET_FC_VS_TORCH}x PyTorch, batch {b}',
                                    vs_torch, vs_torch >= TARGET_FC_VS_TORCH))
            pipe = ratio(f'tf/{mode}/pipeline/{b}', f'tf/{mode}/memory/{b}')
            parts.append(f'pipeline/in-memory {pipe:.2f}')
            targets.append((f'{mode} step: pipeline >= {TARGET_PIPELINE_VS_MEMORY} x in-memory, batch {b}',
                            pipe, pipe >= TARGET_PIPELINE_VS_MEMORY))
            for source in ('memory', 'pipeline', 'loop'):
                over = ratio(f'tf/{mode}/{source}/{b}', f'tf/{mode}/feed/{b}')
                if over is None:
                    continue
                parts.append(f'{source}/feed_dict {over:.2f}')
                targets.append((f'{mode} step: {source} >= feed_dict baseline, batch {b}', over, over >= 1.0))
            cached = ratio(f'tf/fc/cached/{b}', f'tf/fc/memory/{b}') if mode == 'fc' else None
            if cached:
                parts.append(f'cached/in-memory {cached:.2f}')
            add(f"- {'fc6-fc8' if mode == 'fc' else 'all layers'}, batch {b}: " + ', '.join(parts))
    add('')
    add('## Settings tried (in-memory step, images/s, each setting in its own process, measured together)')
    add('')
    probe = [('fc', batches[-1]), ('all', batches[0])]
    add('| setting | ' + ' | '.join(f'{"fc6-fc8" if m == "fc" else "all layers"} b{b}' for m, b in probe)
        + ' | vs chosen (each column) |')
    add('|' + ' --- |' * (len(probe) + 2))
    settings = [('chosen', 'chosen: oneDNN on, TF thread defaults (tf_setup.session_config)'),
                ('onednn-off', 'oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)'),
                (f'threads-{os.cpu_count()}-1', f'intra-op {os.cpu_count()}, inter-op 1'),
                ('xla', 'XLA as --xla sets it (global_jit ON_1)'),
                ('xla-cpu', 'XLA ON_1 + TF_XLA_FLAGS=--tf_xla_cpu_global_jit'),
                ('chosen-2', 'chosen, again (the second group of settings is timed against it)'),
                ('grouped', 'native grouped conv (one conv2d per layer)'),
                ('kernel-lrn', "TensorFlow's LRN kernel instead of the toolkit's band matmul"),
                ('mixed-precision', '--mixed_precision (bfloat16 pass for oneDNN + loss scaling)'),
                ('dependency-optimizer', "grappler's dependency optimizer left on")]
    for prefix, label in settings:
        names = [f'{prefix}/{m}/memory/{b}' for m, b in probe]
        if not any(name in rates for name in names):
            continue
        comparator = 'chosen-2' if prefix in SECOND_GROUP else 'chosen'
        versus = [ratio(name, f'{comparator}/{m}/memory/{b}') for name, (m, b) in zip(names, probe)]
        add(f'| {label} | ' + ' | '.join(cell(name) for name in names) + ' | '
            + ' / '.join(f'{v:.2f}x' if v else '-' for v in versus) + ' |')
    add('')
    add(f'## Equality (max |difference| / max(1, max |reference|), tolerance {TOLERANCE:g})')
    add('')
    add(f'Logits and loss of {common.CHECK_IMAGES} fixed images, before and after one SGD step on all '
        'layers (fixture weights), against plain TensorFlow (oneDNN off).')
    add('')
    results, _ = equality
    for name, reference, difference in results:
        verdict = 'ok' if difference <= TOLERANCE else 'DIFFERS'
        if name in LOWER_PRECISION:
            verdict += ' (lower precision by design: not held to the tolerance, never a default)'
        add(f'- {name} vs {reference}: {difference:.2e} {verdict}')
        if name not in LOWER_PRECISION:
            targets.append((f'{name} equals {reference} to {TOLERANCE:g}', difference,
                            difference <= TOLERANCE))
    if finetune:
        add('')
        add('## Cached features, end to end')
        add('')
        off, on = finetune['runs']['off'], finetune['runs']['on']
        speedup = off['seconds'] / on['seconds']
        add(f"10 epochs of finetune.py, fc6-fc8 trained, {finetune['train_images']} training and "
            f"{finetune['val_images']} validation images (generated, 320x240), batch "
            f"{args.finetune_batch}, --display_step {args.finetune_display_step}, seed 0, fixture "
            "weights, learning rate 1e-5; each a fresh process, start-up included:")
        add('')
        add('| --cache_features | wall s | final train loss / acc | final val loss / acc | best val acc |')
        add('| --- | --- | --- | --- | --- |')
        for cache, run in (('off', off), ('on', on)):
            final = run['final']
            add(f"| {cache} | {run['seconds']:.1f} | {final['train_loss']:.3f} / {final['train_accuracy']:.3f} "
                f"| {final['val_loss']:.3f} / {final['val_accuracy']:.3f} | {run['best_val_accuracy']:.3f} |")
        add('')
        add(f'Speed-up end to end: {speedup:.2f}x.')
        targets.append((f'cached 10-epoch run >= {TARGET_CACHED_SPEEDUP}x faster end to end', speedup,
                        speedup >= TARGET_CACHED_SPEEDUP))
    add('')
    add('## Targets')
    add('')
    for label, value, met in targets:
        add(f"- {'met' if met else 'NOT MET'}: {label} ({value:.3g})")
    return '\n'.join(lines)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='batch 32 only, fewer settings, no end-to-end runs (about 2 minutes)')
    parser.add_argument('--repeats', type=int, default=None, help='timed rounds (default 3)')
    parser.add_argument('--seconds', type=float, default=None,
                        help='target length of one timed repeat (default 2, quick 0.5)')
    parser.add_argument('--images', type=int, default=None,
                        help='generated 500x375 JPEGs for the pipeline rows (default 256, quick 64)')
    parser.add_argument('--finetune_images', type=int, default=2500,
                        help='generated images for the end-to-end runs (80%% train, 20%% validation)')
    parser.add_argument('--finetune_batch', type=int, default=128, help="finetune.py's default")
    parser.add_argument('--finetune_display_step', type=int, default=20, help="finetune.py's default")
    parser.add_argument('--no_finetune', action='store_true',
                        help='skip the end-to-end runs (--quick always skips them)')
    parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch rows')
    parser.add_argument('--cache_dir', default=os.path.join(tempfile.gettempdir(), 'alexnet-bench-500x375'),
                        help='where generated JPEGs and the weight fixture are kept between runs')
    parser.add_argument('--json', help='also write every measurement to this JSON file')
    args = parser.parse_args(argv)
    args.repeats = args.repeats or 3
    args.seconds = args.seconds or (0.5 if args.quick else 2.0)
    args.no_finetune = args.no_finetune or args.quick
    args.images = args.images or (64 if args.quick else 256)
    if args.repeats < 3:
        parser.error('--repeats must be at least 3 (a median of fewer says little)')
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG]:
        return worker_main(argv[1])
    args = _parse_args(argv)
    started = time.perf_counter()
    from finetune_alexnet import tf_setup
    tf_setup.configure_environment()  # the coordinator imports TensorFlow to write the JPEGs
    common.add_repo_to_path()
    import bench_pipeline
    import tensorflow as tf
    info = common.machine_info()
    info['tensorflow'] = tf.__version__
    info['load_before'] = common.load_average()
    args.torch = torch_available() and not args.no_torch
    if not args.torch:
        info['torch'] = None
    list_file = bench_pipeline.write_images(args.cache_dir, args.images)
    if not args.torch:
        print('note: PyTorch is not installed (or --no_torch): the PyTorch rows are skipped; '
              'pip install torch==2.13.0 to measure the peer', file=sys.stderr)
    log_dir = tempfile.mkdtemp(prefix='alexnet-bench-logs-')
    rates, values = common.Rates(), {}
    for phase, specs in plan(args, list_file):
        workers = [Worker(name, spec, env, log_dir) for name, spec, env in specs]
        try:
            for worker in workers:
                ready = worker.wait_ready()
                print(f"{phase}: worker {worker.name}: {len(worker.names)} contenders ready "
                      f"({ready['setup_seconds']:.0f} s, {ready['rss_mib']} MiB, peak {ready['max_rss_mib']} MiB)", file=sys.stderr)
            values.update(checks(workers))
            print(f'{phase}: equality checks done; timing', file=sys.stderr)
            measured = measure(workers, args.repeats, args.seconds)
        finally:
            for worker in workers:
                worker.close()
        rates.update(measured)
        rates.retried += measured.retried
        rates.disturbed += measured.disturbed
    equality = (compare(values), values)
    finetune = None if args.no_finetune else finetune_comparison(args, args.cache_dir)
    info['load_after'] = common.load_average()
    text = report(rates, equality, finetune, info, args, time.perf_counter() - started)
    print(text)
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump({'info': info, 'rates': rates, 'equality': equality[0], 'check_values': equality[1],
                       'finetune': finetune, 'args': vars(args)}, stream, indent=1)
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
