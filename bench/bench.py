"""How fast the toolkit fine-tunes AlexNet on this machine: one table of images/s and ratios.

    python bench/bench.py [--quick] [--only 'fc/*,e2e/*'] [--device cpu|gpu] [--json FILE]

Each configuration runs in a fresh subprocess, one after the other, as a user runs one command at a
time (TensorFlow reads its oneDNN settings at load; its thread pools are per process); --quick, a
smoke run, runs the TensorFlow configurations in one shared process instead. Its key says
what it is: `fc/memory/128` is the step that trains fc6-fc8 (`all`: every layer) at batch 128 from
an in-memory batch; `pipeline` feeds it from the JPEG pipeline (datagenerator), `loop` is finetune.py
itself (images/s from its metrics.jsonl), `feed` the original's loop, the baseline (each batch pulled
into NumPy and fed back through feed_dict, summaries by a second pass every 20 steps), `cached` the
step from cached pool5 features, `mixed` --mixed_precision, `torch` the PyTorch peer (when torch is
importable), and the options of today's recipe on the in-memory step (`smoothing`, `ema`, `cosine`,
`mixup`, `cutmix`, and `unfreeze`: the second phase's step), each against the plain SGD step. Then
`infer/*` (batch 1 and the largest), `eval/*` (predict.py's classifier on JPEGs: the centre crop
against Caffe's ten crops), `input/*` (the pipeline alone against plain OpenCV), `e2e/*` (a
10-epoch frozen-conv finetune.py run, --cache_features off and on) and `check/*` (the PyTorch
peer's logits and SGD step against ours). `input/core-*` time the pipeline on
one thread (images/s per core) from the JPEG list, from TFRecord shards of the same JPEGs and from
shards pre-resized to 256x256 (make_tfrecords.py --pre_resize), without and with --augment. Weights
are random (speed does not depend on them), written once in the BVLC layout. Figures go in
bench/RESULTS.md.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from finetune_alexnet import cli  # noqa: E402

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads (in a worker): quiet, oneDNN on

import concurrent.futures  # noqa: E402
import fnmatch  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from finetune_alexnet.errors import ToolkitError  # noqa: E402

NUM_CLASSES = 2
DISPLAY_STEP = 20  # finetune.py's default, and the original script's
KEEP_PROB = 0.5  # finetune.py's default --dropout_rate 0.5
# Speed does not depend on the learning rate. These keep random weights finite: hundreds of steps
# on one in-memory batch, and ten epochs of finetune.py (its NaN guard would stop a diverging run).
STEP_LEARNING_RATE = 1e-7
RUN_LEARNING_RATE = 1e-5
CHECK_IMAGES = 8
CHECK_TOLERANCE = 1e-4
EVAL_IMAGES = 64  # ten crops classify at a few images/s here: a pass of 64 takes seconds
LAYER_SHAPES = {'conv1': (11, 11, 3, 96), 'conv2': (5, 5, 48, 256), 'conv3': (3, 3, 256, 384),
                'conv4': (3, 3, 192, 384), 'conv5': (3, 3, 192, 256), 'fc6': (9216, 4096),
                'fc7': (4096, 4096), 'fc8': (4096, 1000)}
FC_LAYERS = ('fc6', 'fc7', 'fc8')
# The input rows measured on one thread (images/s per core), and those read from TFRecord shards.
CORE_SOURCES = ('core-list', 'core-shards', 'core-resized')
SHARD_SOURCES = {'core-shards': False, 'core-resized': True}  # source: pre-resized
SOURCES = {'memory': 'in-memory batch', 'pipeline': 'real JPEG pipeline',
          'loop': "finetune.py's loop (pipeline, summaries ride along)",
          'feed': "baseline: the original's feed_dict loop", 'cached': 'cached pool5 features',
          'mixed': 'in-memory batch, --mixed_precision', 'torch': 'PyTorch peer, in-memory batch',
          'seeded': "in-memory batch, --seed (TensorFlow's op determinism on)"}
# Today's recipe, one option at a time on the in-memory step: (what the row says, TrainingConfig).
RECIPE = {'smoothing': ('--label_smoothing 0.1', {'label_smoothing': 0.1}),
          'ema': ('--ema_decay 0.999', {'ema_decay': 0.999}),
          'cosine': ('--lr_schedule cosine --warmup_epochs', {'lr_schedule': 'cosine',
                                                              'warmup_steps': 100, 'total_steps': 10_000}),
          'mixup': ('--mixup 0.2', {'mixup': 0.2}),
          'cutmix': ('--cutmix 1.0', {'cutmix': 1.0}),
          'unfreeze': ("--unfreeze_at's second phase", {})}


def recipe_config(spec):
    """The TrainingConfig fields of the row's recipe option; `unfreeze` times the second phase, which
    trains what the plain row trains (fc6-fc8, or every layer) after a first phase of fewer layers."""
    if spec.get('recipe') != 'unfreeze':
        return dict(RECIPE.get(spec.get('recipe'), ('', {}))[1])
    from alexnet import TRAINABLE_LAYERS
    return ({'train_layers': ('fc8',), 'unfreeze_layers': ('fc6', 'fc7')} if spec['mode'] == 'fc'
            else {'train_layers': FC_LAYERS, 'unfreeze_layers': TRAINABLE_LAYERS})


# --- data the configurations share, written once into --cache_dir --------------------------------

def write_weights(path):
    """Random He-scaled weights in bvlc_alexnet.npy's layout (1000 classes), as a pickle-free .npz."""
    from finetune_alexnet import weight_files
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        layers = {name: {'weights': rng.standard_normal(shape, np.float32)
                         * np.float32(np.sqrt(2 / np.prod(shape[:-1]))),
                         'biases': rng.uniform(-0.1, 0.1, shape[-1:]).astype(np.float32)}
                  for name, shape in LAYER_SHAPES.items()}
        weight_files.save_weights(path, layers)
    return path


def write_jpegs(folder, count):
    """`count` photo-like 500x375 JPEGs (the Kaggle cats-vs-dogs size) and a list file of them."""
    import cv2
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:375, 0:500].astype(np.float32)
    lines = []
    for index in range(count):
        path = os.path.join(folder, f'{index:05d}.jpg')
        # Drawn even when the file exists, so image k is the same whatever `count` is.
        slope_x, slope_y, phase = rng.uniform(0.005, 0.05, 3)
        noise = rng.normal(0, 12, (375, 500, 3))
        if not os.path.exists(path):
            # Smooth colour waves plus sensor-like noise: compresses (and decodes) like a photo.
            waves = np.stack([127 + 100 * np.sin(slope_x * cols + slope_y * rows + phase + channel)
                              for channel in range(3)], axis=-1)
            image = np.clip(waves + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(path + '.part.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            os.replace(path + '.part.jpg', path)  # never a half-written JPEG under the real name
        lines.append(f'{path} {index % NUM_CLASSES}\n')
    list_file = os.path.join(folder, f'list_{count}.txt')
    with open(list_file, 'w') as stream:
        stream.writelines(lines)
    return list_file


def write_shards(folder, list_file):
    """The JPEGs of `list_file` as TFRecord shards, as they are and pre-resized: {source: folder}."""
    from finetune_alexnet import tfrecords
    import datagenerator
    paths, labels = datagenerator.read_list(list_file)
    prefix = os.path.splitext(os.path.basename(list_file))[0]
    folders = {}
    for source, pre_resize in SHARD_SOURCES.items():
        folders[source] = os.path.join(folder, f'{prefix}_{source}')
        if not tfrecords.own_shards(folders[source], prefix):
            tfrecords.write_shards(paths, labels, folders[source], prefix, pre_resize=pre_resize,
                                   report=lambda line: None)
    return folders


def write_demo_lists(folder, images):
    """finetune.py's demo images (generated disks and squares), split 80/20 as make_lists.py does."""
    from finetune_alexnet import demo_data
    from finetune_alexnet import image_lists
    per_class = images // 2
    image_folder = os.path.join(folder, f'demo_{per_class}')
    if not os.path.isdir(image_folder):
        demo_data.make_demo_images(image_folder, per_class, seed=0)
    paths, labels, class_names = image_lists.find_images(image_folder)
    train, val = image_lists.split_stratified(paths, labels, val_fraction=0.2, seed=0)
    return image_lists.write_lists(os.path.join(folder, f'lists_{per_class}'), train, val, class_names)


# --- worker side: one configuration in this process ------------------------------------------------

def fixed_batch(batch_size, num_classes=NUM_CLASSES, seed=0):
    """float32 images in the range of mean-subtracted pixels, and one-hot labels."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-125, 150, (batch_size, 227, 227, 3)).astype(np.float32)
    return images, np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch_size)]


def timed(step, images_per_step, seconds):
    """images/s of `step()` over at least `seconds` (and 3 steps), after two warm-up steps.

    The warm-up creates oneDNN's primitives and fills the pipeline; the first step is several times
    slower than the rest. `seconds` 0 (gpu_check.py --tiny: the report's shape, not its figures):
    one warm-up step and one timed step.
    """
    warm_up, least = (1, 1) if seconds == 0 else (2, 3)
    for _ in range(warm_up):
        step()
    steps, start = 0, time.perf_counter()
    while steps < least or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * images_per_step / (time.perf_counter() - start)


def training_graph(inputs, input_layer, **settings):
    """training.build_training_graph on (images, labels), with finetune.py's settings."""
    from finetune_alexnet.train import graph as training
    return training.build_training_graph(*inputs, training.TrainingConfig(**settings),
                                         input_layer=input_layer)


def _session(tf, spec, graph, mixed_precision=False, threads=0):
    from finetune_alexnet import tf_setup
    if spec['device'] == 'gpu' and not tf.config.list_physical_devices('GPU'):
        raise ToolkitError('--device gpu: TensorFlow sees no GPU')
    config = tf_setup.session_config(use_gpu=spec['device'] == 'gpu', mixed_precision=mixed_precision,
                                     threads=threads)
    return tf.Session(graph=graph, config=config)


def measure_tf_step(spec):
    """A training step of `spec['mode']` fed from memory, the JPEG pipeline, feed_dict or the cache."""
    import tensorflow.compat.v1 as tf
    import datagenerator
    from alexnet import TRAINABLE_LAYERS
    from finetune_alexnet.train import feature_cache
    from finetune_alexnet.train import inputs as train_inputs
    source, batch = spec['source'], spec['batch']
    device = '/gpu:0' if spec['device'] == 'gpu' else '/cpu:0'
    graph = tf.Graph()
    with graph.as_default():
        with tf.device('/cpu:0'):  # the input pipeline stays on the CPU, as in finetune.py
            if source in ('pipeline', 'feed'):
                data = datagenerator.ImageDataGenerator(spec['list_file'], 'training', batch,
                                                        NUM_CLASSES, shuffle=True, seed=0)
                # Repeated: a step never waits for an epoch's restart, so the steady state is timed.
                repeated = data.data.repeat()
            elif source == 'cached':
                dataset, feeder = feature_cache.cached_dataset(NUM_CLASSES, batch, drop_remainder=True)
                iterator = tf.data.make_initializable_iterator(dataset.repeat())
                inputs = iterator.get_next()
        if source in ('pipeline', 'feed'):  # as finetune.py: uint8 batches sent ahead, normalised there
            batches = train_inputs.device_batches(repeated, repeated, device)
            inputs, initializer = (batches.images, batches.labels), batches.training_init_op
        if source == 'seeded':  # what finetune.py --seed does (finetune_alexnet.train.loop.seeded)
            from tensorflow.python.framework import config as tf_config
            tf.set_random_seed(0)
            tf_config.enable_op_determinism()
        if source in ('memory', 'mixed', 'seeded'):
            images_value, labels_value = fixed_batch(batch)
            with tf.device(device):  # the batch sits in variables the step reads: no feed, no copy
                images = tf.Variable(tf.zeros(images_value.shape), trainable=False)
                labels = tf.Variable(tf.zeros(labels_value.shape), trainable=False)
            inputs = images.read_value(), labels.read_value()
        train = training_graph(
            inputs, 'flattened' if source == 'cached' else None, num_classes=NUM_CLASSES,
            **{'train_layers': FC_LAYERS if spec['mode'] == 'fc' else TRAINABLE_LAYERS,
               **recipe_config(spec)},
            skip_layers=('fc8',), weights_path=spec['weights'], learning_rate=STEP_LEARNING_RATE,
            model_device=device, use_gpu=spec['device'] == 'gpu', mixed_precision=source == 'mixed')
        train = train.for_phase(max(train.phases))  # --unfreeze_at's row: the second phase
        initialize = tf.global_variables_initializer()
    session = _session(tf, spec, graph, mixed_precision=source == 'mixed')
    session.run(initialize)
    train.model.load_initial_weights(session)
    if source in ('memory', 'mixed', 'seeded'):
        images.load(images_value, session)
        labels.load(labels_value, session)
    elif source == 'cached':
        rng = np.random.default_rng(0)
        count = 8 * batch  # pool5 follows a ReLU: non-negative, of the random weights' scale
        features = rng.uniform(0, 60, (count, feature_cache.FEATURE_SIZE)).astype(np.float32)
        labels_value = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, count)]
        session.run(iterator.initializer, feeder.start_epoch(features, labels_value, shuffle_seed=0))
    else:
        session.run(initializer)
    graph.finalize()  # nothing may add ops between steps (that would be a slow leak)
    train_feed = {train.keep_prob: KEEP_PROB, train.training: True}  # training: mixup and CutMix on
    if source != 'feed':
        return timed(lambda: session.run(train.train_op, train_feed), batch, spec['seconds'])
    steps = [0]

    def original_step():
        # The original script: the batch comes out to NumPy and goes back in through feed_dict, and
        # every DISPLAY_STEP steps a second run with the same feed computes the summaries (forward
        # pass and gradients again).
        images_value, labels_value = session.run(inputs)
        feed = {train.x: images_value, train.y: labels_value, train.keep_prob: KEEP_PROB}
        session.run(train.train_op, feed)
        steps[0] += 1
        if steps[0] % DISPLAY_STEP == 0:
            session.run(train.train_summaries, feed)
    return timed(original_step, batch, spec['seconds'])


def measure_tf_inference(spec):
    """AlexNet's forward pass (dropout off) on an in-memory batch, fetching the logits."""
    import tensorflow.compat.v1 as tf
    from alexnet import AlexNet
    images_value, _ = fixed_batch(spec['batch'])
    graph = tf.Graph()
    with graph.as_default():
        with tf.device('/gpu:0' if spec['device'] == 'gpu' else '/cpu:0'):
            images = tf.Variable(tf.zeros(images_value.shape), trainable=False)
            model = AlexNet(images.read_value(), 1.0, NUM_CLASSES, ['fc8'], spec['weights'])
        initialize = tf.global_variables_initializer()
    session = _session(tf, spec, graph)
    session.run(initialize)
    model.load_initial_weights(session)
    images.load(images_value, session)
    graph.finalize()
    return timed(lambda: session.run(model.fc8), spec['batch'], spec['seconds'])


def measure_evaluation(spec):
    """predict.py's Classifier on one batch of the JPEGs, whole passes: `center` crops once per image,
    `tencrop` classifies Caffe's ten crops of each (10 x batch crops in one forward pass)."""
    import datagenerator
    from finetune_alexnet.infer.classifier import Classifier
    paths, _ = datagenerator.read_list(spec['list_file'])
    paths = paths[:spec['batch']]
    classifier = Classifier(weights_path=spec['weights'], center_crop=True,
                            batch_size=spec['batch'], ten_crop=spec['source'] == 'tencrop')
    with classifier:
        return timed(lambda: classifier.run(paths), len(paths), spec['seconds'])


def measure_input(spec):
    """Whole epochs of the input pipeline alone (batches consumed in the graph), or of plain OpenCV
    decode+resize in a thread pool of the same size, one OpenCV thread per worker."""
    import datagenerator
    paths, _ = datagenerator.read_list(spec['list_file'])
    threads = os.cpu_count() or 1
    if spec['source'] == 'opencv':
        import cv2
        pool = concurrent.futures.ThreadPoolExecutor(threads, initializer=cv2.setNumThreads,
                                                     initargs=(1,))

        def epoch():
            for _ in pool.map(lambda path: cv2.resize(cv2.imread(path), (227, 227)), paths):
                pass
        return timed(epoch, len(paths), spec['seconds'])
    import tensorflow.compat.v1 as tf
    from finetune_alexnet import tfrecords
    graph = tf.Graph()
    with graph.as_default():
        if spec['source'] in SHARD_SOURCES:
            data = tfrecords.ShardImageDataGenerator(spec['shards'][spec['source']], 'training',
                                                     spec['batch'], NUM_CLASSES, shuffle=True, seed=0,
                                                     augment=spec.get('augment', False))
        else:
            data = datagenerator.ImageDataGenerator(spec['list_file'], 'training', spec['batch'],
                                                    NUM_CLASSES, shuffle=True, seed=0,
                                                    augment=spec.get('augment', False))
        dataset = data.data
        if spec['source'] in CORE_SOURCES:
            # One core: every map of the pipeline on a single thread, whatever the machine has.
            options = tf.data.Options()
            options.threading.private_threadpool_size = 1
            options.threading.max_intra_op_parallelism = 1
            dataset = dataset.with_options(options)
        iterator = tf.data.make_initializable_iterator(dataset)
        images, labels = iterator.get_next()
        # Touching one value makes session.run wait for the whole batch, as a training step does.
        touch = tf.cast(images[0, 0, 0, 0], tf.float32) + labels[0, 0]
    session = _session(tf, dict(spec, device='cpu'), graph,
                       threads=1 if spec['source'] in CORE_SOURCES else 0)

    def epoch():
        session.run(iterator.initializer)
        try:
            while True:
                session.run(touch)
        except tf.errors.OutOfRangeError:
            pass
    return timed(epoch, len(paths), spec['seconds'])


def check_tf(spec):
    """Our graph's logits and loss on fixed images, before and after one SGD step on all layers."""
    import tensorflow.compat.v1 as tf
    from alexnet import TRAINABLE_LAYERS
    images, labels = fixed_batch(CHECK_IMAGES, num_classes=1000, seed=7)
    graph = tf.Graph()
    with graph.as_default():
        train = training_graph((tf.constant(images), tf.constant(labels)), None, num_classes=1000,
                               train_layers=TRAINABLE_LAYERS, skip_layers=(),
                               weights_path=spec['weights'], learning_rate=RUN_LEARNING_RATE)
        initialize = tf.global_variables_initializer()
    with _session(tf, spec, graph) as session:
        session.run(initialize)
        train.model.load_initial_weights(session)
        before = session.run([train.logits, train.loss])  # keep_prob defaults to 1: no dropout
        session.run(train.train_op)
        after = session.run([train.logits, train.loss])
    return [value.tolist() for value in before + after]


def _torch_model(spec, num_classes, dropout_rate):
    import torch
    import torch_alexnet
    from finetune_alexnet import weight_files
    torch.set_num_threads(os.cpu_count() or 1)
    layers = weight_files.load_weights(spec['weights'])
    if num_classes != 1000:
        del layers['fc8']  # a new classifier, as --skip_layers fc8
    return torch_alexnet.load_layers(torch_alexnet.AlexNet(num_classes, dropout_rate), layers)


def check_torch(spec):
    """The PyTorch peer's values for check_tf's images, weights and step."""
    import torch
    import torch_alexnet
    images, labels = fixed_batch(CHECK_IMAGES, num_classes=1000, seed=7)
    model = _torch_model(spec, 1000, dropout_rate=0.0)  # dropout off, as keep_prob 1 in check_tf
    step = torch_alexnet.train_step_fn(model, torch_alexnet.CONV_LAYERS + FC_LAYERS, images, labels,
                                       RUN_LEARNING_RATE)
    targets = torch.from_numpy(np.argmax(labels, axis=1))
    values = []
    for after_step in (False, True):
        if after_step:
            step()
        logits = torch_alexnet.inference_fn(model, images)().numpy()
        values += [logits.tolist(),
                   float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), targets))]
    return values


def measure_torch(spec):
    """The PyTorch peer: the plain PyTorch fine-tuning loop on an in-memory batch, or inference."""
    import torch_alexnet
    images, labels = fixed_batch(spec['batch'])
    model = _torch_model(spec, NUM_CLASSES, dropout_rate=1 - KEEP_PROB)
    if spec['kind'] == 'infer':
        step = torch_alexnet.inference_fn(model, images)
    else:
        train_layers = FC_LAYERS if spec['mode'] == 'fc' else torch_alexnet.CONV_LAYERS + FC_LAYERS
        step = torch_alexnet.train_step_fn(model, train_layers, images, labels, STEP_LEARNING_RATE)
    return timed(step, spec['batch'], spec['seconds'])


def worker(specs):
    """Run configurations one after another (one, or --quick's shared batch); each result is a line
    of stdout, as JSON, in order: the figures, or {"error": reason} for one that failed."""
    if any(spec['framework'] == 'tf' for spec in specs):
        import tensorflow.compat.v1 as tf
        from finetune_alexnet import tf_setup
        tf_setup.quiet_python_logging()
        tf.disable_v2_behavior()
    for spec in specs:
        try:
            if spec['kind'] == 'check':
                result = check_tf(spec) if spec['framework'] == 'tf' else check_torch(spec)
            elif spec['framework'] == 'torch':
                result = measure_torch(spec)
            else:
                result = {'step': measure_tf_step, 'infer': measure_tf_inference,
                          'eval': measure_evaluation, 'input': measure_input}[spec['kind']](spec)
        except Exception as error:  # noqa: BLE001 - one configuration's failure, reported by its key
            if len(specs) == 1:
                raise
            result = {'error': f'{type(error).__name__}: {error}'}
        print(json.dumps(result), flush=True)
    return 0


# --- coordinator side ------------------------------------------------------------------------------

def configurations(args):
    """{key: spec} of every configuration, in the order they run and are printed.

    A spec's `label` names its row and `versus` (key over key, and what that means) its ratio.
    """
    batches, big = args.batches, args.batches[-1]
    configs = {}

    def add(key, label, versus=None, framework='tf', **spec):
        configs[key] = dict(spec, label=label, versus=versus, framework=framework, device=args.device)

    for mode in ('fc', 'all'):
        step = f"{'fc6-fc8' if mode == 'fc' else 'all-layer'} step"
        for batch in batches:
            for source in ('memory', 'pipeline', 'loop', 'feed'):
                add(f'{mode}/{source}/{batch}', f'{step}, {SOURCES[source]}',
                    None if source == 'feed' else (f'{mode}/{source}/{batch}', f'{mode}/feed/{batch}',
                                                   'the feed_dict baseline'),
                    kind='loop' if source == 'loop' else 'step', mode=mode, source=source, batch=batch)
            for source in ['cached'] * (mode == 'fc') + ['mixed', 'seeded'] * (batch == big):
                add(f'{mode}/{source}/{batch}', f'{step}, {SOURCES[source]}',
                    (f'{mode}/{source}/{batch}', f'{mode}/memory/{batch}', 'the in-memory step'),
                    kind='step', mode=mode, source=source, batch=batch)
            for option, (flag, _) in RECIPE.items() if batch == big else ():
                add(f'{mode}/{option}/{batch}', f'{step}, in-memory batch, {flag}',
                    (f'{mode}/{option}/{batch}', f'{mode}/memory/{batch}', 'plain SGD'),
                    kind='step', mode=mode, source='memory', recipe=option, batch=batch)
            if args.torch:
                add(f'{mode}/torch/{batch}', f'{step}, {SOURCES["torch"]}',
                    (f'{mode}/memory/{batch}', f'{mode}/torch/{batch}', 'ours over PyTorch'),
                    'torch', kind='step', mode=mode, batch=batch)
    for batch in (1, big):
        add(f'infer/tf/{batch}', 'inference, toolkit graph', kind='infer', batch=batch)
        if args.torch:
            add(f'infer/torch/{batch}', 'inference, PyTorch peer',
                (f'infer/tf/{batch}', f'infer/torch/{batch}', 'ours over PyTorch'), 'torch',
                kind='infer', batch=batch)
    images = 8 if args.quick else EVAL_IMAGES  # one batch of them
    add('eval/center', f'evaluation, centre crop ({images} JPEGs)', kind='eval', source='center',
        batch=images)
    add('eval/tencrop', f'evaluation, ten crops ({images} JPEGs)',
        ('eval/tencrop', 'eval/center', 'the centre crop'), kind='eval', source='tencrop',
        batch=images)
    threads = f'{os.cpu_count()} threads'
    add(f'input/pipeline/{big}', f'input pipeline alone (500x375 JPEGs), {threads}',
        (f'input/pipeline/{big}', f'input/opencv/{big}', 'plain OpenCV'), kind='input',
        source='pipeline', batch=big)
    add(f'input/opencv/{big}', f'plain OpenCV decode+resize, {threads}', None, 'opencv',
        kind='input', source='opencv', batch=big)
    for source, what in (('core-list', 'JPEG list'), ('core-shards', 'TFRecord shards'),
                         ('core-resized', 'TFRecord shards pre-resized to 256x256')):
        add(f'input/{source}/{big}', f'input pipeline on one core, {what} (500x375 JPEGs)',
            None if source == 'core-list' else (f'input/{source}/{big}', f'input/core-list/{big}',
                                                'the JPEG list'),
            kind='input', source=source, batch=big)
    # With --augment (random 227 crops of the 256x256 resize, flips): what Caffe's 256x256 ImageNet
    # LMDB fed, and what pre-resized shards are for: their resize to 256 is then a copy.
    for source, what in (('core-list', 'JPEG list'), ('core-resized', 'pre-resized shards')):
        add(f'input/{source}-augment/{big}', f'input pipeline on one core, {what}, --augment',
            None if source == 'core-list' else (f'input/{source}-augment/{big}',
                                                f'input/core-list-augment/{big}',
                                                'the JPEG list, --augment'),
            kind='input', source=source, augment=True, batch=big)
    for cache in ('off', 'on'):
        add(f'e2e/{cache}', f'{args.e2e_epochs}-epoch finetune.py run, fc6-fc8, {args.e2e_images} '
            f'images, --cache_features {cache}', ('e2e/on', 'e2e/off', 'the uncached run')
            if cache == 'on' else None, kind='e2e', cache=cache, batch=args.e2e_batch)
    if args.torch:
        add('check/tf', 'equality check, ours', kind='check')
        add('check/torch', 'equality check, PyTorch', framework='torch', kind='check')
    return configs


def run_worker(specs):
    """[result of each spec] from one `--worker` process; a spec that failed is a RuntimeError."""
    command = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(specs)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(last_line(result))
    results = [json.loads(line) for line in result.stdout.strip().splitlines()[-len(specs):]]
    return [RuntimeError(found['error']) if isinstance(found, dict) and 'error' in found else found
            for found in results]


def shares_a_process(spec):
    """--quick runs these in one worker process: TensorFlow configurations that leave no setting
    behind (--seed's op determinism stays on in a process; PyTorch keeps its own)."""
    return spec['framework'] == 'tf' and spec['kind'] in ('step', 'infer', 'eval', 'input') and \
        spec.get('source') != 'seeded'


def last_line(result):
    """A failed subprocess's reason: the last line of its stderr (its `error:` line or exception)."""
    lines = result.stderr.strip().splitlines() or [f'exit status {result.returncode}']
    return lines[-1].removeprefix('error: ')


def run_finetune(spec, args, train_file, val_file, epochs, train_layers, cache):
    """finetune.py as a user runs it; (wall seconds, [images/s of each epoch] from metrics.jsonl)."""
    folder = tempfile.mkdtemp(prefix='alexnet-bench-run-')
    command = [sys.executable, os.path.join(ROOT, 'finetune.py'), '--train_file', train_file,
               '--val_file', val_file, '--num_classes', str(NUM_CLASSES), '--weights_path',
               spec['weights'], '--checkpoint_path', os.path.join(folder, 'checkpoints'),
               '--filewriter_path', os.path.join(folder, 'tensorboard'), '--batch_size',
               str(spec['batch']), '--num_epochs', str(epochs), '--train_layers', train_layers,
               '--cache_features', cache, '--learning_rate', str(RUN_LEARNING_RATE),
               '--keep_checkpoints', '1', '--device', spec['device']]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    try:
        if result.returncode != 0:
            raise RuntimeError(f'finetune.py: {last_line(result)}')
        with open(os.path.join(folder, 'checkpoints', 'metrics.jsonl')) as stream:
            rates = [json.loads(line)['images_per_second'] for line in stream]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return seconds, rates


def measure(key, spec, args):
    """images/s of one configuration (for check: the values); e2e's wall seconds go in args.walls."""
    if spec['kind'] == 'loop':
        # The first epoch builds oneDNN's primitives: the median of the later ones is the steady state
        # (--quick runs one epoch).
        _, rates = run_finetune(spec, args, args.list_file, args.val_list, args.loop_epochs,
                                'fc6,fc7,fc8' if spec['mode'] == 'fc' else 'all', 'off')
        return statistics.median(rates[1:] or rates)
    if spec['kind'] == 'e2e':
        train_file = args.e2e_lists['train.txt']
        seconds, _ = run_finetune(spec, args, train_file, args.e2e_lists['val.txt'],
                                  args.e2e_epochs, 'fc6,fc7,fc8', spec['cache'])
        args.walls[key] = seconds
        with open(train_file) as stream:
            return sum(1 for _ in stream) * args.e2e_epochs / seconds
    found, = run_worker([spec])
    return found


def ratio_text(key, spec, values, args):
    """The ratio a row is read by; for the end-to-end runs, their wall seconds first."""
    parts = [f'{args.walls[key]:.1f} s wall'] if key in args.walls else []
    if spec['versus'] and values.get(spec['versus'][0]) and values.get(spec['versus'][1]):
        numerator, denominator, meaning = spec['versus']
        parts.append(f'{values[numerator] / values[denominator]:.2f}x {meaning}')
    return '; '.join(parts)


def machine():
    """The CPU (lscpu's model name, family and model) and the versions, for the table's heading."""
    try:
        lscpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ''
    fields = dict((part.strip() for part in line.split(':', 1)) for line in lscpu.splitlines()
                  if ':' in line)
    cpu = (f"{fields.get('Model name', platform.processor())} (family {fields.get('CPU family')}, "
           f"model {fields.get('Model')})")
    versions = [f'{name} {importlib.metadata.version(name)}' for name in ('tensorflow', 'torch')
                if importlib.util.find_spec(name)]
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, {', '.join(versions)}"


def table(configs, values, failed, args):
    lines = [f"AlexNet fine-tuning speed, {time.strftime('%Y-%m-%d')}: {machine()}; device "
             f"{args.device}; load average {os.getloadavg()[0]:.2f}", '',
             '| configuration | key | batch | images/s | ratio |', '| --- | --- | --- | --- | --- |']
    for key, spec in configs.items():
        if key.startswith('check/'):
            continue
        value = 'failed' if key in failed else f'{values[key]:.1f}'
        lines.append(f"| {spec['label']} | {key} | {spec['batch']} | {value} | "
                     f"{ratio_text(key, spec, values, args)} |")
    lines.append('')
    if 'check/torch' in values and 'check/tf' in values:
        reference = [np.asarray(v, np.float64) for v in values['check/tf']]
        difference = max(float(np.max(np.abs(np.asarray(v) - r)) / max(1.0, float(np.max(np.abs(r)))))
                         for v, r in zip(values['check/torch'], reference))
        values['check/difference'] = difference
        lines.append(f"PyTorch peer against our graph, same weights: logits and loss of {CHECK_IMAGES} "
                     f"images before and after one SGD step on all layers differ by {difference:.1e} "
                     f"(max |difference| / max(1, max |ours|)): "
                     f"{'equal' if difference <= CHECK_TOLERANCE else 'DIFFERENT'} to {CHECK_TOLERANCE:g}.")
    elif not args.torch:
        lines.append('No PyTorch rows or equality check: torch is not installed (or --no_torch).')
    return '\n'.join(lines)


def parse_args(argv):
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='every configuration briefly: batch 8, short windows, small data, the '
                        'TensorFlow ones in one shared process (a smoke run, not measurements)')
    parser.add_argument('--only', help='comma list of key patterns to run (fc/*, infer/tf/1, e2e/*)')
    parser.add_argument('--batches', help='training batch sizes (default 32,128; quick 8)')
    parser.add_argument('--seconds', type=float, help='timed window per configuration (default 8; '
                        'quick 1)')
    parser.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
    parser.add_argument('--no_torch', action='store_true', help='leave the PyTorch peer out')
    parser.add_argument('--cache_dir', default=os.path.join(tempfile.gettempdir(), 'alexnet-bench'),
                        help='where the generated images and weights are kept between runs')
    parser.add_argument('--json', help='also write every figure to this JSON file')
    args = parser.parse_args(argv)
    try:
        args.batches = [int(b) for b in (args.batches or ('8' if args.quick else '32,128')).split(',')]
    except ValueError:
        raise ToolkitError(f'--batches {args.batches}: a comma list of whole numbers') from None
    if min(args.batches) < 1 or (args.seconds is not None and args.seconds <= 0):
        raise ToolkitError('--batches and --seconds must be positive')
    args.seconds = args.seconds or (1.0 if args.quick else 8.0)
    # Epoch sizes: several steps at the largest batch; the validation list stays small.
    args.jpegs = 4 * args.batches[-1] if args.quick else 5 * args.batches[-1]
    args.loop_epochs = 1 if args.quick else 3
    args.e2e_images, args.e2e_epochs = (64, 1) if args.quick else (2500, 10)
    args.e2e_batch = 8 if args.quick else 128
    args.torch = not args.no_torch and importlib.util.find_spec('torch') is not None
    args.walls = {}
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--worker']:
        return worker(json.loads(argv[1]))
    args = parse_args(argv)
    configs = configurations(args)
    if args.only:
        patterns = [p.strip() for p in args.only.split(',') if p.strip()]
        unmatched = [p for p in patterns if not fnmatch.filter(configs, p)]
        if unmatched:
            raise ToolkitError(f"--only {','.join(unmatched)} matches no configuration; keys are "
                               f"like {', '.join(list(configs)[:3])}, ... (see --help)")
        configs = {k: v for k, v in configs.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    os.makedirs(args.cache_dir, exist_ok=True)
    weights = write_weights(os.path.join(args.cache_dir, 'random_weights.npz'))
    kinds = {spec['kind'] for spec in configs.values()}
    if kinds & {'step', 'loop', 'input', 'eval'}:
        args.list_file = write_jpegs(os.path.join(args.cache_dir, 'jpegs'), args.jpegs)
        args.val_list = write_jpegs(os.path.join(args.cache_dir, 'jpegs'), min(32, args.jpegs))
    if any(spec.get('source') in SHARD_SOURCES for spec in configs.values()):
        args.shards = write_shards(os.path.join(args.cache_dir, 'shards'), args.list_file)
    if 'e2e' in kinds:
        args.e2e_lists = write_demo_lists(args.cache_dir, args.e2e_images)
    values, failed = {}, set()

    def record(key, value, started):
        if isinstance(value, RuntimeError):
            failed.add(key)
            print(f'error: {key}: {value}', file=sys.stderr)
            return
        values[key] = value
        shown = 'values' if key.startswith('check/') else f'{value:.1f}'
        print(f'{key}: {shown} ({time.perf_counter() - started:.0f} s)', file=sys.stderr, flush=True)

    def spec_of(key):
        return dict(configs[key], weights=weights, seconds=args.seconds,
                    list_file=getattr(args, 'list_file', None), shards=getattr(args, 'shards', None))

    def run(keys):
        started = time.perf_counter()
        try:
            found = run_worker([spec_of(key) for key in keys]) if len(keys) > 1 else \
                [measure(keys[0], spec_of(keys[0]), args)]
        except RuntimeError as error:
            found = [error] * len(keys)
        for key, value in zip(keys, found):
            record(key, value, started)
    # One configuration at a time, each in a process of its own, so that none slows another. --quick,
    # a smoke run whose figures are not measurements, saves start-ups instead: the configurations
    # that can share one worker process do, and the groups run two at a time.
    groups = [[key] for key in configs]
    if args.quick:
        shared = [key for key in configs if shares_a_process(configs[key])]
        groups = ([shared] if shared else []) + [[key] for key in configs if key not in shared]
    with concurrent.futures.ThreadPoolExecutor(2 if args.quick else 1) as pool:
        list(pool.map(run, groups))
    text = table(configs, values, failed, args)
    print(text)
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump({'machine': machine(), 'values': {k: v for k, v in values.items()
                                                        if not k.startswith('check/')},
                       'check_difference': values.get('check/difference'), 'failed': sorted(failed),
                       'table': text}, stream, indent=1)
    return 1 if failed or values.get('check/difference', 0) > CHECK_TOLERANCE else 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
