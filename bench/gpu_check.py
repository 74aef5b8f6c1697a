"""The prepared GPU check: one call on a lent GPU machine, a table of images/s for bench/RESULTS.md.

    python bench/gpu_check.py [--quick] [--json $OUT/gpu_check.json] [--threads 16]

Measures, interleaved as bench.py does (median of --repeats rounds after a warm-up):

- the fc6-fc8 and the all-layer fine-tune step at batch 128 and 256, on the GPU, fed three ways:
  an in-memory batch (on the GPU), the real JPEG pipeline (tf.data on the CPU), and the original
  feed_dict loop (the baseline, summaries by a second pass every 20 steps);
- the same in-memory steps with XLA (`--xla`: global_jit ON_1, which a GPU compiles without flags)
  and with `--mixed_precision` (grappler's float16 pass and the toolkit's dynamic loss scaling);
- inference at batch 1 and 256;
- the input pipeline alone with --threads threads (16: the lent machine's cores);
- how far the GPU's logits and loss are from the CPU's (TensorFloat-32 may round matmuls and
  convolutions on recent GPUs).

`--quick` runs the same code on the CPU at batch 4 and 8 with a few JPEGs, so the script is known to
work before a GPU is lent. Without --quick and without a GPU it stops with a message.
"""
import os
import sys

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from finetune_alexnet import tf_setup
    tf_setup.configure_environment()  # before TensorFlow loads: oneDNN on the CPU, quiet start-up

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402


def _config(use_gpu, xla=False, mixed_precision=False):
    from finetune_alexnet import tf_setup
    return tf_setup.session_config(use_gpu=use_gpu, xla=xla, mixed_precision=mixed_precision)


def build(args, list_file, use_gpu):
    """{name: contender} and the sessions to close."""
    device = '/gpu:0' if use_gpu else None
    layers = common.fixture_layers()
    contenders, sessions = {}, []
    plain = _config(use_gpu)
    for mode in ('fc', 'all'):
        for batch in args.batches:
            built, opened = common.training_contenders(mode, batch, layers, plain,
                                                       ('memory', 'pipeline', 'feed'), list_file,
                                                       device=device)
            sessions += opened
            contenders.update({f'{mode}/{source}/{batch}': c for source, c in built.items()})
        for label, mixed in (('xla', False), ('mixed', True)):
            config = _config(use_gpu, xla=not mixed, mixed_precision=mixed)
            built, opened = common.training_contenders(mode, args.batches[-1], layers, config,
                                                       ('memory',), device=device,
                                                       mixed_precision=mixed)
            sessions += opened
            contenders[f'{mode}/memory+{label}/{args.batches[-1]}'] = built['memory']
    for batch in (1, args.batches[-1]):
        contender, session = common.inference_contender(batch, layers, plain, device=device)
        sessions.append(session)
        contenders[f'infer/memory/{batch}'] = contender
    contenders[f'pipeline/alone/{args.batches[-1]}'] = common.PipelineAlone(list_file, args.batches[-1],
                                                                            args.threads)
    return contenders, sessions


def gpu_vs_cpu(use_gpu):
    """Largest relative difference of logits and loss between this device and the CPU."""
    values = {'cpu': common.tf_check_values(_config(False))}
    if use_gpu:
        values['gpu'] = common.tf_check_values(_config(True))
    if 'gpu' not in values:
        return None, values
    difference = max(common.max_relative_difference(values['gpu'][key], values['cpu'][key])
                     for key in ('logits', 'logits_after_step'))
    return difference, values


def table(rates, args):
    median = {name: statistics.median(values) for name, values in rates.items()}

    def cell(name):
        return f'{median[name]:.0f} [{min(rates[name]):.0f}-{max(rates[name]):.0f}]' if name in rates else '-'

    lines = ['| step | ' + ' | '.join(f'batch {b}' for b in args.batches) + ' |',
             '|' + ' --- |' * (len(args.batches) + 1)]
    big = args.batches[-1]
    for mode, title in (('fc', 'fc6-fc8'), ('all', 'all layers')):
        for source, label in (('memory', 'in-memory'), ('pipeline', 'real JPEG pipeline'),
                              ('feed', 'feed_dict baseline'), ('memory+xla', 'in-memory, --xla'),
                              ('memory+mixed', 'in-memory, --mixed_precision')):
            lines.append(f'| {title}, {label} | '
                         + ' | '.join(cell(f'{mode}/{source}/{b}') for b in args.batches) + ' |')
    lines.append('')
    lines.append(f"inference: batch 1 {cell('infer/memory/1')}, batch {big} {cell(f'infer/memory/{big}')} "
                 f"images/s; pipeline alone ({args.threads} threads, batch {big}): "
                 f"{cell(f'pipeline/alone/{big}')} images/s")
    return '\n'.join(lines)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='a CPU smoke run at batch 4 and 8')
    parser.add_argument('--threads', type=int, default=16, help='threads of the pipeline-alone row')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--seconds', type=float, default=1.0, help='target length of one repeat')
    parser.add_argument('--images', type=int, default=None, help='JPEGs to write (default 1024)')
    parser.add_argument('--cache_dir', default=os.path.join(tempfile.gettempdir(), 'alexnet-bench-500x375'))
    parser.add_argument('--json', default=None,
                        help='write the measurements here (default: $OUT/gpu_check.json when $OUT is set)')
    args = parser.parse_args(argv)
    args.batches = [4, 8] if args.quick else [128, 256]
    args.images = args.images or (16 if args.quick else 1024)
    if args.quick:
        args.threads = min(args.threads, os.cpu_count() or 1)
        args.seconds = min(args.seconds, 0.3)
    if args.json is None and os.environ.get('OUT'):
        args.json = os.path.join(os.environ['OUT'], 'gpu_check.json')
    return args


def main(argv=None):
    args = _parse_args(argv)
    started = time.perf_counter()
    common.add_repo_to_path()
    import tensorflow as tf2
    import tensorflow.compat.v1 as tf
    import bench_pipeline
    from finetune_alexnet import tf_setup
    tf_setup.quiet_python_logging()
    tf.disable_v2_behavior()
    gpus = tf2.config.list_physical_devices('GPU')
    if not gpus and not args.quick:
        print('error: TensorFlow sees no GPU; run with --quick for the CPU smoke run', file=sys.stderr)
        return 2
    use_gpu = bool(gpus) and not args.quick
    device_name = 'CPU (--quick)'
    if use_gpu:
        details = tf2.config.experimental.get_device_details(gpus[0])
        device_name = f"{details.get('device_name', 'GPU')} (compute capability {details.get('compute_capability')})"
    list_file = bench_pipeline.write_images(args.cache_dir, args.images)
    info = common.machine_info()
    info.update(tensorflow=tf2.__version__, device=device_name, gpus=len(gpus),
                tf32=tf2.config.experimental.tensor_float_32_execution_enabled())
    print(f"{device_name}; {info['cores']} CPU cores; TensorFlow {info['tensorflow']}; "
          f"TensorFloat-32 {'on' if info['tf32'] else 'off'}", flush=True)
    difference, check_values = gpu_vs_cpu(use_gpu)
    contenders, sessions = build(args, list_file, use_gpu)
    print(f'{len(contenders)} contenders built ({time.perf_counter() - started:.0f} s); timing',
          flush=True)
    try:
        rates = common.interleave(list(contenders),
                                  lambda name, steps: common.timed_in_process(contenders[name], steps),
                                  args.repeats, args.seconds)
    finally:
        for session in sessions:
            session.close()
    text = table(rates, args)
    print(text)
    if difference is not None:
        print(f'GPU vs CPU logits and loss: max relative difference {difference:.2e}')
    print(f'{rates.retried} repeats retried for other processes\' CPU use, {rates.disturbed} still '
          f'disturbed; total {time.perf_counter() - started:.0f} s')
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump({'info': info, 'rates': rates, 'gpu_vs_cpu': difference,
                       'check_values': check_values, 'table': text, 'args': vars(args)}, stream, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
