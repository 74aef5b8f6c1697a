"""How the toolkit's entry points set TensorFlow up: quiet, fast on CPU, careful with GPU memory.

`configure_environment` must run before TensorFlow is first imported: the C++ runtime reads these
variables once, at load time. Entry points therefore call it at the top of the script, before their
other imports; it only sets defaults, so a user's own setting always wins.
"""
import logging
import os
import warnings


def configure_environment(verbose=False):
    """Hide TensorFlow's start-up notices unless `verbose`; turn on oneDNN's CPU kernels.

    oneDNN is off by default in TensorFlow on some CPUs (AMD among them) yet measured ~1.5x faster
    for AlexNet's convolutions and matrix products here (bench/RESULTS.md); results agree to 1e-4.
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbose else '2')
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')


def quiet_python_logging(verbose=False):
    """Silence TensorFlow's Python-side deprecation warnings (compat.v1 emits many) unless `verbose`."""
    if verbose:
        return
    import tensorflow.compat.v1 as tf
    tf.get_logger().setLevel(logging.ERROR)
    tf.logging.set_verbosity(tf.logging.ERROR)
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    warnings.filterwarnings('ignore', category=UserWarning, module='tensorflow')
