"""How the toolkit's entry points set TensorFlow up: quiet, fast on CPU, careful with GPU memory.

`configure_environment` must run before TensorFlow is first imported: the C++ runtime reads these
variables once, at load time. Entry points therefore call it at the top of the script, before their
other imports; it only sets defaults, so a user's own setting always wins.
"""
import atexit
import logging
import os
import re
import sys
import threading
import warnings

# TensorFlow's C++ log lines ("I0000 00:00:1795.. 123 port.cc:153] ..."), absl's preamble and
# libjpeg's warnings. TF 2.x logs through absl before absl is initialised, which ignores
# TF_CPP_MIN_LOG_LEVEL, so the only way to keep them off a user's terminal is to filter stderr.
_NATIVE_LOG_LINE = re.compile(rb'^(WARNING: All log messages before absl::InitializeLog\(\)|'
                              rb'[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] |'
                              # TFLite's: its int8 converter's settings, its interpreter's CPU delegate
                              rb'fully_quantize: \d+, inference_type: |INFO: Created TensorFlow Lite |'
                              # gRPC's details when another worker's connection closes, which
                              # the toolkit reports by naming the worker
                              rb'Additional GRPC error information from remote target |'
                              rb':UNKNOWN:Error received from peer |'
                              # libjpeg's own complaints about a broken file, which we report by name
                              rb'Corrupt JPEG data|Premature end of JPEG file|Improper call to JPEG '
                              rb'library|Invalid JPEG file structure|Not a JPEG file)')


def configure_environment(verbose=False):
    """Hide TensorFlow's start-up notices unless `verbose`; turn on oneDNN's CPU kernels, which
    TensorFlow turns on by itself only on CPUs with VNNI/BF16/AMX, and which run AlexNet's steps
    about twice as fast where measured (bench/RESULTS.md)."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbose else '2')
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
    if not verbose:
        hide_native_log_lines()


def hide_native_log_lines():
    """Route file descriptor 2 through a thread that drops TensorFlow's native log lines and passes
    everything else on; at exit the pipe is drained before the process ends."""
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        with os.fdopen(read_end, 'rb') as source:
            for line in source:
                if not _NATIVE_LOG_LINE.match(line):
                    os.write(terminal, line)

    thread = threading.Thread(target=pump, name='stderr-filter', daemon=True)
    thread.start()

    def drain():  # twice (restore_stderr, then atexit) is harmless: the second call finds it done
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end: the pump sees end of file
        thread.join(timeout=5)

    global _drain_native_log_filter
    _drain_native_log_filter = drain
    atexit.register(drain)


_drain_native_log_filter = None


def restore_stderr():
    """Hand file descriptor 2 back to the terminal, after passing on what the filter still holds: the
    atexit hook does this, but a process that leaves through os._exit (signals.py) must call it."""
    if _drain_native_log_filter is not None:
        _drain_native_log_filter()


def quiet_python_logging(verbose=False):
    """Silence TensorFlow's Python-side deprecation warnings (compat.v1 emits many) unless `verbose`."""
    if verbose:
        return
    import tensorflow.compat.v1 as tf
    tf.get_logger().setLevel(logging.ERROR)
    tf.logging.set_verbosity(tf.logging.ERROR)
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    warnings.filterwarnings('ignore', category=UserWarning, module='tensorflow')


DEVICE_CHOICES = ('auto', 'cpu', 'gpu')  # every command's --device


def use_gpu(device, num_gpus=1):
    """True to run on a GPU, for a command's --device ('auto': a GPU when TensorFlow sees one). 'gpu'
    needs `num_gpus` of them; 'auto' with fewer GPUs (but some) is refused rather than stacking
    several replicas on one GPU."""
    import tensorflow as tf
    from finetune_alexnet.errors import ToolkitError
    gpus = len(tf.config.list_physical_devices('GPU'))
    if device == 'gpu' and gpus < num_gpus:
        raise ToolkitError(f'--device gpu asks for {num_gpus} GPU(s), TensorFlow sees {gpus}')
    if device == 'auto' and 0 < gpus < num_gpus:
        raise ToolkitError(f'--num_gpus {num_gpus} asks for more GPUs than TensorFlow sees ({gpus}): '
                           f'use --num_gpus {gpus}, or --device cpu to split over CPU devices')
    return device == 'gpu' or (device == 'auto' and gpus > 0)


def session_config(use_gpu=False, logical_cpus=None, xla=False, threads=0, mixed_precision=False):
    """The ConfigProto every session of the toolkit uses (each choice measured in bench/RESULTS.md).

    Grappler's dependency optimizer is off: it rewrites `Shape(x)` of a fed `placeholder_with_default`
    into `Shape(default)`, so a caller feeding its own batch for a step that trains conv1 would pull
    (and lose) a batch from the tf.data iterator behind it. `threads` (0: TensorFlow's choice) caps
    both thread pools. `xla` sets global_jit_level, which a GPU honours (a CPU ignores it).
    `mixed_precision` turns on grappler's float16 (GPU) or bfloat16 (oneDNN CPU) rewrite; the graph
    adds the loss scaling (TrainingConfig(mixed_precision=True)).
    """
    import tensorflow.compat.v1 as tf
    from tensorflow.core.protobuf import rewriter_config_pb2

    config = tf.ConfigProto(allow_soft_placement=True)
    config.graph_options.rewrite_options.dependency_optimization = rewriter_config_pb2.RewriterConfig.OFF
    config.intra_op_parallelism_threads = threads
    config.inter_op_parallelism_threads = threads
    config.gpu_options.allow_growth = True  # share the GPU politely; AlexNet needs ~2 GB at batch 128
    if not use_gpu:
        config.device_count['GPU'] = 0
    if logical_cpus:
        config.device_count['CPU'] = logical_cpus  # logical CPU devices stand in for GPU towers
    if xla:
        config.graph_options.optimizer_options.global_jit_level = tf.OptimizerOptions.ON_1
    if mixed_precision:
        rewrite_options = config.graph_options.rewrite_options
        if use_gpu:
            rewrite_options.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
        else:
            rewrite_options.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    return config
