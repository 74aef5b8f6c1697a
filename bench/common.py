"""What bench.py (this CPU) and gpu_check.py (a lent GPU machine) share: the graphs they time.

Every contender is an object with `run(steps) -> (seconds, images)`: one timed repeat. The graphs are
the toolkit's own (`training.build_training_graph`, `AlexNet`, `ImageDataGenerator`,
`feature_cache`), fed three ways:

- memory: the batch sits in a non-trainable variable that the graph reads every step (no feed_dict,
  no copy), so the step's own speed is measured;
- pipeline: `ImageDataGenerator` on real JPEGs, batches flowing into the graph as finetune.py runs;
- feed: the original script's loop, the baseline: `sess.run(next_batch)` into NumPy, then
  `sess.run(train_op, feed_dict=...)`, and every DISPLAY_STEP steps a second pass for the summaries.

`variant(...)` builds a graph with one of the alternatives tried for speed (native grouped
convolution, LRN spelled as a matrix product); they patch graph construction only, inside the
`with` block, and never touch the toolkit's files.

Nothing here runs at import; TensorFlow is imported by the functions that need it, so a caller can
set the environment (oneDNN, XLA flags) first.
"""
import contextlib
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 2
DISPLAY_STEP = 20  # finetune.py's default, and the original script's
FC_LAYERS = ('fc6', 'fc7', 'fc8')
# Speed does not depend on the learning rate; this one keeps hundreds of steps on fixture weights
# finite (the graph's NaN guard would stop a diverging run).
BENCH_LEARNING_RATE = 1e-7
KEEP_PROB = 0.5  # dropout on while training, as finetune.py's default --dropout_rate 0.5
CHECK_IMAGES = 8
CHECK_LEARNING_RATE = 1e-6


def add_repo_to_path():
    """Make the toolkit's modules (one folder up) and the weight fixture (tests/) importable."""
    for folder in (ROOT, os.path.join(ROOT, 'tests'), os.path.join(ROOT, 'bench')):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def train_layers_of(mode):
    from alexnet import TRAINABLE_LAYERS
    return list(FC_LAYERS) if mode == 'fc' else list(TRAINABLE_LAYERS)


def fixed_batch(batch_size, seed=0):
    """float32 images [b, 227, 227, 3] in the range of mean-subtracted pixels, one-hot labels."""
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.uniform(-125, 150, (batch_size, 227, 227, 3)).astype(np.float32)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch_size)]
    return images, labels


def fixture_layers(seed=0):
    """Random weights in bvlc_alexnet.npy's layout, fc8 with NUM_CLASSES outputs (tests/bvlc_fixture)."""
    import bvlc_fixture
    return bvlc_fixture.random_weights(num_classes=NUM_CLASSES, seed=seed)


def load_layers(session, model, layers):
    """Assign `layers` to every variable of `model` through the initializers' feeds (no constants)."""
    feeds, initializers = {}, []
    for name, variables in model.variables.items():
        for kind, variable in variables.items():
            feeds[variable.initial_value] = layers[name][kind]
            initializers.append(variable.initializer)
    session.run(initializers, feeds)


def _batch_variables(tf, images, labels, device):
    """Non-trainable variables holding one batch; the graph reads them each step without a copy."""
    with tf.device(device):
        x = tf.Variable(tf.zeros(images.shape), trainable=False, name='bench_images')
        y = tf.Variable(tf.zeros(labels.shape), trainable=False, name='bench_labels')
    return x, y


# --- variants tried for speed -------------------------------------------------------------------

@contextlib.contextmanager
def native_grouped_conv():
    """Inside the block, AlexNet's grouped layers are one conv2d on the whole weight tensor.

    TensorFlow treats input channels = 2 x filter in-channels as two groups, exactly the split;
    oneDNN (and cuDNN) run it, plain Eigen runs its forward but not its gradients.
    """
    import tensorflow.compat.v1 as tf
    import alexnet

    original = alexnet.AlexNet._conv

    def conv(self, x, layer):
        if layer.groups == 1:
            return original(self, x, layer)
        input_channels = int(x.shape[-1])
        weights, biases = self._new_variables(
            layer.name, [layer.kernel, layer.kernel, input_channels // layer.groups, layer.depth])
        with tf.name_scope(layer.name):
            conv2d = tf.nn.conv2d(x, weights, [1, layer.stride, layer.stride, 1], padding=layer.padding)
            pre_activation = tf.nn.bias_add(conv2d, biases)
        return tf.nn.relu(pre_activation, name=layer.name)

    alexnet.AlexNet._conv = conv
    try:
        yield
    finally:
        alexnet.AlexNet._conv = original


@contextlib.contextmanager
def kernel_lrn():
    """Inside the block, AlexNet's LRN layers are TensorFlow's LRN kernel (the toolkit uses a matmul)."""
    import tensorflow.compat.v1 as tf
    import alexnet

    original = alexnet.local_response_normalization

    def lrn(x, name=None):
        return tf.nn.local_response_normalization(
            x, depth_radius=alexnet.LRN_DEPTH_RADIUS, bias=alexnet.LRN_BIAS, alpha=alexnet.LRN_ALPHA,
            beta=alexnet.LRN_BETA, name=name)

    alexnet.local_response_normalization = lrn
    try:
        yield
    finally:
        alexnet.local_response_normalization = original


def variant(names):
    """A context manager applying the named graph variants ('grouped', 'kernel-lrn'); none: a no-op."""
    stack = contextlib.ExitStack()
    for name in names or ():
        stack.enter_context({'grouped': native_grouped_conv, 'kernel-lrn': kernel_lrn}[name]())
    return stack


# --- contenders ---------------------------------------------------------------------------------

class Steps:
    """`steps` session.run calls of `fetches` with `feed`: a training or inference step."""

    def __init__(self, session, fetches, feed, batch_size):
        self.session, self.fetches, self.feed, self.batch_size = session, fetches, feed, batch_size

    def run(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.session.run(self.fetches, self.feed)
        return time.perf_counter() - start, steps * self.batch_size


class ToolkitLoop:
    """finetune.py's loop: batches flow from the pipeline; summaries ride along every DISPLAY_STEP.

    A repeat times `steps` plain steps and one step that also fetches the summaries; the summary's
    extra time is charged at one in DISPLAY_STEP steps, as a real run pays it.
    """

    def __init__(self, session, graph, batch_size):
        self.session, self.graph, self.batch_size = session, graph, batch_size
        self.feed = {graph.keep_prob: KEEP_PROB}

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.session.run(self.graph.train_op, self.feed)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        self.session.run([self.graph.train_op, self.graph.train_summaries], self.feed)
        extra = max(0.0, time.perf_counter() - start - statistics.mean(times))
        return sum(times) + extra * steps / DISPLAY_STEP, steps * self.batch_size


class FeedDictLoop:
    """The original script's loop, the baseline.

    Each step pulls the batch into NumPy (`sess.run(next_batch)`) and feeds it back through
    feed_dict; every DISPLAY_STEP steps a second session.run with the same feed computes the merged
    summaries, i.e. the forward pass (and the gradients, for their histograms) again. A repeat times
    `steps` steps and one summary pass, charged at one in DISPLAY_STEP steps.
    """

    def __init__(self, session, graph, next_batch, batch_size):
        self.session, self.graph, self.next_batch = session, graph, next_batch
        self.batch_size = batch_size

    def run(self, steps):
        graph = self.graph
        total = 0.0
        feed = None
        for _ in range(steps):
            start = time.perf_counter()
            images, labels = self.session.run(self.next_batch)
            feed = {graph.x: images, graph.y: labels, graph.keep_prob: KEEP_PROB}
            self.session.run(graph.train_op, feed)
            total += time.perf_counter() - start
        start = time.perf_counter()
        self.session.run(graph.train_summaries, feed)
        summary = time.perf_counter() - start
        return total + summary * steps / DISPLAY_STEP, steps * self.batch_size


class PipelineAlone:
    """Whole epochs of the input pipeline alone (bench_pipeline.py's timer), batches used in-graph."""

    def __init__(self, list_file, batch_size, threads):
        import bench_pipeline
        import datagenerator
        self.count = len(datagenerator.read_list(list_file)[0])
        self.run_epoch = bench_pipeline.pipeline_timer(list_file, batch_size, threads, fetch=False)

    def run(self, steps):
        seconds = 0.0
        for _ in range(steps):
            seconds += self.count / self.run_epoch()
        return seconds, steps * self.count


def training_contenders(mode, batch_size, layers, config, sources=('memory',), list_file=None,
                        device=None, names=None, mixed_precision=False):
    """{source: contender} for one training graph of `mode` ('fc': fc6-fc8 trained; 'all').

    'memory' gets its own graph; 'pipeline', 'loop' and 'feed' share one graph on the JPEG pipeline
    (feeding x and y, as the baseline does, replaces the pipeline's batch in that same graph).
    Returns (contenders, sessions) so the caller can close the sessions.
    """
    import tensorflow.compat.v1 as tf
    import datagenerator
    from finetune_alexnet import training
    from alexnet import TRAINABLE_LAYERS

    contenders, sessions = {}, []
    groups = [('memory',)] if 'memory' in sources else []
    piped = tuple(source for source in sources if source != 'memory')
    if piped:
        groups.append(piped)
    for group in groups:
        graph = tf.Graph()
        with graph.as_default(), variant(names):
            if group == ('memory',):
                images_value, labels_value = fixed_batch(batch_size)
                images, labels = _batch_variables(tf, images_value, labels_value, device)
                inputs = images.read_value(), labels.read_value()
            else:
                with tf.device('/cpu:0'):  # the pipeline stays on the CPU, as in finetune.py
                    generator = datagenerator.ImageDataGenerator(list_file, 'training', batch_size,
                                                                 NUM_CLASSES, shuffle=True, seed=0)
                    # Repeated: a step never waits for an epoch's restart, so the steady state is timed.
                    iterator = tf.data.make_initializable_iterator(generator.data.repeat())
                    inputs = iterator.get_next()
                    # The baseline pulls from an iterator of its own: sharing one, whichever
                    # contender ran after it found the prefetch buffer drained.
                    feed_iterator = tf.data.make_initializable_iterator(generator.data.repeat())
                    feed_inputs = feed_iterator.get_next()
            with tf.device(device):
                train = training.build_training_graph(
                    inputs[0], inputs[1], NUM_CLASSES, train_layers_of(mode), list(TRAINABLE_LAYERS),
                    None, BENCH_LEARNING_RATE, model_device=device, mixed_precision=mixed_precision)
        session = tf.Session(graph=graph, config=config)
        sessions.append(session)
        with graph.as_default():
            session.run(tf.global_variables_initializer())
            load_layers(session, train.model, layers)
            if group == ('memory',):
                images.load(images_value, session)
                labels.load(labels_value, session)
            else:
                session.run([iterator.initializer, feed_iterator.initializer])
        graph.finalize()  # nothing may add ops between steps (that would be a slow leak)
        for source in group:
            if source == 'memory' or source == 'pipeline':
                contenders[source] = Steps(session, train.train_op, {train.keep_prob: KEEP_PROB},
                                           batch_size)
            elif source == 'loop':
                contenders[source] = ToolkitLoop(session, train, batch_size)
            elif source == 'feed':
                contenders[source] = FeedDictLoop(session, train, feed_inputs, batch_size)
    return contenders, sessions


def cached_contender(batch_size, layers, config, cached_images=1024, device=None):
    """fc6-fc8 trained from cached pool5 features, served by feature_cache's generator dataset."""
    import numpy as np
    import tensorflow.compat.v1 as tf
    from finetune_alexnet import feature_cache
    from finetune_alexnet import training
    from alexnet import TRAINABLE_LAYERS

    rng = np.random.default_rng(0)
    # pool5 of a ReLU network: non-negative, the fixture's scale.
    features = rng.uniform(0, 60, (cached_images, feature_cache.FEATURE_SIZE)).astype(np.float32)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, cached_images)]
    graph = tf.Graph()
    with graph.as_default():
        dataset, feeder = feature_cache.cached_dataset(NUM_CLASSES, batch_size, drop_remainder=True)
        with tf.device('/cpu:0'):
            iterator = tf.data.make_initializable_iterator(dataset.repeat())
            batch_features, batch_labels = iterator.get_next()
        with tf.device(device):
            train = training.build_training_graph(
                batch_features, batch_labels, NUM_CLASSES, list(FC_LAYERS), list(TRAINABLE_LAYERS),
                None, BENCH_LEARNING_RATE, input_layer='flattened', model_device=device)
    session = tf.Session(graph=graph, config=config)
    with graph.as_default():
        session.run(tf.global_variables_initializer())
        load_layers(session, train.model, {name: layers[name] for name in FC_LAYERS})
        session.run(iterator.initializer, feeder.start_epoch(features, labels, shuffle_seed=0))
    graph.finalize()
    return Steps(session, train.train_op, {train.keep_prob: KEEP_PROB}, batch_size), session


def inference_contender(batch_size, layers, config, device=None, names=None):
    """AlexNet's forward pass (dropout off) on an in-memory batch, fetching the logits."""
    import tensorflow.compat.v1 as tf
    from alexnet import AlexNet

    graph = tf.Graph()
    images_value, _ = fixed_batch(batch_size)
    with graph.as_default(), variant(names):
        with tf.device(device):
            images = tf.Variable(tf.zeros(images_value.shape), trainable=False)
            model = AlexNet(images.read_value(), 1.0, NUM_CLASSES, [], None)
    session = tf.Session(graph=graph, config=config)
    with graph.as_default():
        session.run(tf.global_variables_initializer())
        load_layers(session, model, layers)
        images.load(images_value, session)
    graph.finalize()
    return Steps(session, model.fc8, None, batch_size), session


def tf_check_values(config, names=None, train_layers=None, mixed_precision=False):
    """Logits and loss on CHECK_IMAGES fixed images, before and after one SGD step (all layers).

    What bench.py compares between settings (oneDNN, threads, XLA, variants) and with PyTorch.
    """
    import tensorflow.compat.v1 as tf
    from finetune_alexnet import training
    from alexnet import TRAINABLE_LAYERS

    images, labels = fixed_batch(CHECK_IMAGES, seed=7)
    layers = fixture_layers(seed=1)
    graph = tf.Graph()
    with graph.as_default(), variant(names):
        x = tf.constant(images)
        y = tf.constant(labels)
        train = training.build_training_graph(x, y, NUM_CLASSES, train_layers or list(TRAINABLE_LAYERS),
                                              list(TRAINABLE_LAYERS), None, CHECK_LEARNING_RATE,
                                              mixed_precision=mixed_precision)
    with tf.Session(graph=graph, config=config) as session:
        with graph.as_default():
            session.run(tf.global_variables_initializer())
        load_layers(session, train.model, layers)
        logits, loss = session.run([train.logits, train.loss])
        session.run(train.train_op)
        logits_after, loss_after = session.run([train.logits, train.loss])
    return {'logits': logits.tolist(), 'loss': float(loss), 'logits_after_step': logits_after.tolist(),
            'loss_after_step': float(loss_after)}


def max_relative_difference(a, b):
    """max |a - b| / max(1, max |b|): the measure the equality checks hold to 1e-4."""
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def settle(window=0.05, idle_share=0.05, limit=10.0):
    """Wait until this process is idle: its tf.data pipelines refill their prefetch buffers (and
    thread pools spin) after a contender's repeat, and that work must not land in the next one's."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        before = time.process_time()
        time.sleep(window)
        if time.process_time() - before < idle_share * window:
            return


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open('/proc/stat') as stream:
            fields = [int(value) for value in stream.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def timed_in_process(contender, steps):
    """(seconds, images, cpu seconds of this process): a repeat, then `settle`, for `interleave`."""
    cpu = time.process_time()
    seconds, images = contender.run(steps)
    settle()
    return seconds, images, time.process_time() - cpu


class Rates(dict):
    """{contender: [images/s per round]}, plus `retried`: repeats run again because another
    process took CPU time during them, and `disturbed`: repeats still disturbed after the retries."""
    retried = 0
    disturbed = 0


def interleave(names, run, repeats, target_seconds, seed=0, retries=3, foreign_limit=0.2):
    """Rates: two warm-up runs each, then `repeats` rounds in shuffled order.

    `run(name, steps)` returns (seconds, images, cpu seconds its process used, settle included).
    The first warm-up creates oneDNN primitives, autotunes tf.data and allocates; the second one's
    time sets the steps of one repeat, so each lasts about `target_seconds` (sized from the slow
    first run, repeats were one or a few steps long, and a step's luck or a pipeline's prefilled
    buffer decided the figure). Interleaving makes a machine that gets busier mid-run slow every
    contender alike; beyond that, a repeat during which other processes used more than
    `foreign_limit` of one core (the machine's busy time from /proc/stat, less the contender's own)
    is run again, up to `retries` times, keeping the least disturbed: other people's jobs on a
    shared 2-core machine otherwise halve a figure.
    """
    steps = {}
    for name in names:
        run(name, 1)
        seconds, _, _ = run(name, 1)
        steps[name] = max(1, min(500, math.ceil(target_seconds / max(seconds, 1e-6))))
    rng = random.Random(seed)
    rates = Rates((name, []) for name in names)
    order = list(names)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            best = None
            for attempt in range(retries + 1):
                busy, start = busy_cpu_seconds(), time.perf_counter()
                seconds, images, cpu = run(name, steps[name])
                window = time.perf_counter() - start
                foreign = (busy_cpu_seconds() - busy - cpu) / window if busy is not None else 0.0
                if best is None or foreign < best[0]:
                    best = (foreign, images / seconds)
                if foreign <= foreign_limit:
                    break
                rates.retried += 1
            rates.disturbed += best[0] > foreign_limit
            rates[name].append(best[1])
    return rates


# --- the machine --------------------------------------------------------------------------------

def _lscpu(field):
    try:
        text = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(rf'^{field}:\s*(.+)$', text, re.MULTILINE)
    return match.group(1).strip() if match else None


def machine_info():
    """CPU model, cores, memory and the versions that matter, for RESULTS.md."""
    import numpy
    info = {'cpu': _lscpu('Model name') or platform.processor(), 'vendor': _lscpu('Vendor ID'),
            'cpu_family': _lscpu('CPU family'), 'cores': os.cpu_count(), 'python': platform.python_version(),
            'numpy': numpy.__version__}
    try:
        with open('/proc/meminfo') as stream:
            info['memory_gib'] = round(int(stream.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    for module in ('cv2', 'torch'):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
