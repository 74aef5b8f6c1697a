"""Fine-tune AlexNet on your own images: `python finetune.py --train_file train.txt --val_file val.txt`.

With no lists (or `--demo`) it generates a small two-class data set and fine-tunes on that, so the
whole loop can be seen working in a few minutes on a laptop CPU.

Flags are named after the original script's configuration. Two defaults differ from it, because its
users found them to fail on cats vs dogs: `--skip_layers fc8` (the original skipped every trained
layer, so fc6-fc8 all started random) and `--learning_rate 0.001` (0.01 sent the loss to NaN).
`--skip_layers fc8,fc7,fc6 --learning_rate 0.01` gives the original's behaviour.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from finetune_alexnet import checkpoints  # noqa: E402
import datagenerator  # noqa: E402
from finetune_alexnet import demo_data  # noqa: E402
from finetune_alexnet.train import feature_cache  # noqa: E402
from finetune_alexnet.train import feature_store  # noqa: E402
from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet.train import lr_finder  # noqa: E402
from finetune_alexnet import model_info  # noqa: E402
from finetune_alexnet.train import progress  # noqa: E402
from finetune_alexnet import run_folder  # noqa: E402
from finetune_alexnet import signals  # noqa: E402
from finetune_alexnet.train import summaries  # noqa: E402
from finetune_alexnet.train import graph as training  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from alexnet import CONV_LAYERS, TRAINABLE_LAYERS, AlexNet  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet.errors import ToolkitError  # noqa: E402

DEFAULT_ROOT = os.path.join(tempfile.gettempdir(), 'finetune_alexnet')
# Flags whose default depends on whether the demo runs: the parser leaves them None when not given.
RUN_DEFAULTS = {'num_epochs': 10, 'batch_size': 128, 'display_step': 20, 'optimizer': 'sgd',
                'train_layers': ['fc8', 'fc7', 'fc6'], 'skip_layers': ['fc8'],
                'checkpoint_path': os.path.join(DEFAULT_ROOT, 'checkpoints'),
                'filewriter_path': os.path.join(DEFAULT_ROOT, 'tensorboard')}
# The demo trains from scratch when there are no pretrained weights; these settings learn its two
# classes within a few epochs on a CPU. It has run folders of its own, replaced by each demo run, so
# the README's first command can be run again and again. Flags given on the command line still win.
DEMO_DEFAULTS = {'num_epochs': 5, 'batch_size': 32, 'display_step': 3, 'seed': 0,
                 'checkpoint_path': os.path.join(DEFAULT_ROOT, 'demo_run', 'checkpoints'),
                 'filewriter_path': os.path.join(DEFAULT_ROOT, 'demo_run', 'tensorboard')}
DEMO_FROM_SCRATCH = {'optimizer': 'momentum', 'train_layers': list(TRAINABLE_LAYERS),
                     'skip_layers': list(TRAINABLE_LAYERS)}
DEMO_IMAGES_PER_CLASS = 120


def layer_list(text):
    names = [name.strip() for name in text.split(',') if name.strip()]
    if names == ['all']:
        return list(TRAINABLE_LAYERS)
    if names == ['none'] or names == []:
        return []
    unknown = [name for name in names if name not in TRAINABLE_LAYERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown layer {', '.join(unknown)}; valid: {', '.join(TRAINABLE_LAYERS)} or 'all'")
    return names


def class_weights_flag(text):
    """'none', 'balanced', or one weight per class ('1,3.5')."""
    if text in ('none', 'balanced'):
        return text
    try:
        weights = tuple(float(value) for value in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'none', 'balanced' or a comma list of numbers, "
                                         f"got {text!r}") from None
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise argparse.ArgumentTypeError(f'class weights must be finite and >= 0, got {text!r}')
    return weights


def lr_mult_flag(text):
    """'fc8=10,fc7=2' as (('fc8', 10.0), ('fc7', 2.0))."""
    pairs = []
    for item in (part.strip() for part in text.split(',') if part.strip()):
        layer, _, value = item.partition('=')
        if layer not in TRAINABLE_LAYERS:
            raise argparse.ArgumentTypeError(f"unknown layer {layer!r} in {item!r}; valid: "
                                             f"{', '.join(TRAINABLE_LAYERS)}")
        try:
            factor = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected LAYER=NUMBER, got {item!r}') from None
        if not (math.isfinite(factor) and factor > 0):
            raise argparse.ArgumentTypeError(f'the multiplier must be positive, got {item!r}')
        pairs.append((layer, factor))
    return tuple(pairs)


def get_args_parser():
    parser = cli.ArgumentParser(
        description='Fine-tune AlexNet (BVLC weights) on image lists of "path label" lines.')
    data = parser.add_argument_group('data')
    data.add_argument('--train_file', help='training list; none (and no --val_file): run the demo')
    data.add_argument('--val_file', help='validation list')
    data.add_argument('--num_classes', type=int, default=2, help='classes in the lists')
    data.add_argument('--class_names', help='classes.txt ("label name" lines); default: the '
                      'classes.txt beside --train_file, if any')
    data.add_argument('--augment', action='store_true',
                      help="the paper's augmentation: random 227 crops of a 256 resize, flips")
    data.add_argument('--skip_bad_images', action='store_true',
                      help='skip unreadable images (and count them) instead of stopping')
    data.add_argument('--max_pixels', type=int, default=image_header.DEFAULT_MAX_PIXELS,
                      help='refuse images larger than this (width x height, read from the file '
                      'header before decoding)')
    data.add_argument('--demo', action='store_true', help='fine-tune on the generated demo data set')
    data.add_argument('--demo_dir', default=os.path.join(DEFAULT_ROOT, 'demo_data'),
                      help="where the demo's images and lists are written")

    model = parser.add_argument_group('model')
    model.add_argument('--weights_path', default=weight_files.DEFAULT_WEIGHTS_PATH,
                       help='the pretrained bvlc_alexnet.npy (see README)')
    model.add_argument('--train_layers', type=layer_list,
                       help="layers that learn (comma list, or 'all'; default: fc8,fc7,fc6)")
    model.add_argument('--skip_layers', type=layer_list,
                       help='layers not loaded from the weights file, which start random '
                       '(default: fc8)')
    model.add_argument('--dropout_rate', type=float, default=0.5,
                       help='fraction of fc6/fc7 units dropped while training')
    model.add_argument('--init_checkpoint',
                       help="start from a previous run's model weights (a checkpoint prefix, or a run "
                       "folder: its best.ckpt), not its optimizer or step; --skip_layers then "
                       "defaults to none")

    optimisation = parser.add_argument_group('optimisation')
    optimisation.add_argument('--learning_rate', type=float, default=0.001, help='SGD step size')
    optimisation.add_argument('--num_epochs', type=int, help='passes over the training list '
                              '(default: 10; the demo: 5)')
    optimisation.add_argument('--batch_size', type=int, help='images per step (default: 128; the '
                              'demo: 32)')
    optimisation.add_argument('--optimizer', choices=('sgd', 'momentum'),
                              help='default: sgd (the demo from scratch: momentum)')
    optimisation.add_argument('--momentum', type=float, default=0.9)
    optimisation.add_argument('--weight_decay', type=float, default=0.0,
                              help='L2 on the trained weights (the paper: 5e-4)')
    optimisation.add_argument('--lr_decay_epochs', type=int, default=0,
                              help='multiply the learning rate by --lr_decay_factor every this many '
                              'epochs (0: constant)')
    optimisation.add_argument('--lr_decay_factor', type=float, default=0.1)
    optimisation.add_argument('--class_weights', type=class_weights_flag, default='none',
                              help="weight each class's loss: 'balanced' (inverse frequency, "
                              "mean 1) or one weight per class, e.g. '1,4'")
    optimisation.add_argument('--lr_mult', type=lr_mult_flag, default=(),
                              help="per-layer learning-rate multipliers, e.g. 'fc8=10' (Caffe's "
                              'lr_mult)')
    optimisation.add_argument('--early_stopping', type=int, default=0, metavar='N',
                              help='stop after N epochs without a better validation accuracy (0: off)')
    optimisation.add_argument('--find_lr', nargs='?', const='lr_finder.png', metavar='PNG',
                              help='no run: a learning-rate range test (1e-6 to 1, exponentially); '
                              'saves the loss-vs-rate plot to PNG and prints a suggested rate')
    optimisation.add_argument('--find_lr_steps', type=int, default=lr_finder.DEFAULT_STEPS,
                              help='steps of the range test at most')
    optimisation.add_argument('--seed', type=int, default=None,
                              help="makes runs repeatable: seeds every random choice and turns on "
                              "TensorFlow's op determinism (the demo: 0)")

    output = parser.add_argument_group('output')
    output.add_argument('--filewriter_path', help='TensorBoard root: each run writes to its own '
                        f"sub-folder (default: {RUN_DEFAULTS['filewriter_path']})")
    output.add_argument('--run_name', help="the run's sub-folder of --filewriter_path (default: the "
                        'date-time and the flags that differ from the defaults)')
    output.add_argument('--projector', action='store_true',
                        help="at the end, write fc7 features of up to "
                        f"{summaries.PROJECTOR_MAX_IMAGES} validation images for TensorBoard's "
                        'projector')
    output.add_argument('--checkpoint_path', help='checkpoints, metrics and curves (default: '
                        f"{RUN_DEFAULTS['checkpoint_path']})")
    output.add_argument('--display_step', type=int,
                        help='write summaries (and progress lines) every this many steps (default: '
                        '20; the demo: 3)')
    output.add_argument('--keep_checkpoints', type=int, default=3,
                        help='epoch checkpoints kept (the best one is kept besides)')
    output.add_argument('--resume', action='store_true',
                        help='continue the run saved in --checkpoint_path')

    devices = parser.add_argument_group('devices')
    devices.add_argument('--device', choices=('auto', 'cpu', 'gpu'), default='auto')
    devices.add_argument('--num_gpus', type=int, default=1,
                         help='split each batch over this many devices and average the gradients')
    devices.add_argument('--xla', action='store_true', help='compile the graph with XLA')
    devices.add_argument('--mixed_precision', action='store_true',
                         help='float16 on a GPU (bfloat16 on a CPU) with dynamic loss scaling; '
                         'faster, results differ from float32 by ~1e-2')
    devices.add_argument('--cache_features', choices=('auto', 'on', 'off'), default='auto',
                         help='train fc layers from pool5 features computed once (auto: when no '
                         'conv layer is trained and --augment is off)')
    devices.add_argument('--cache_dir', default=feature_store.DEFAULT_DIR,
                         help="cached pool5 features kept on disk for later runs on the same images "
                         "('none': this run only)")
    devices.add_argument('--cache_max_gb', type=float, default=feature_store.DEFAULT_MAX_GB,
                         help='size limit of --cache_dir; least recently used sets go first')
    return parser


def parse_args(argv=None):
    """The flags as given; `resolve_settings` fills in the defaults that depend on the demo."""
    args = get_args_parser().parse_args(argv)
    args.demo = args.demo or not (args.train_file or args.val_file)
    args.order_seed = args.seed  # until choose_order_seed knows the run
    return args


def resolve_settings(args):
    """Every default filled in: the demo's (after making its data) where the demo runs, else the run's."""
    if args.init_checkpoint and args.skip_layers is None:
        args.skip_layers = []  # a warm start loads every layer the checkpoint has
    if args.demo:
        prepare_demo(args)
    fill_defaults(args, RUN_DEFAULTS)


def fill_defaults(args, defaults):
    """Set each flag of `defaults` that is still None (not given on the command line)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_args(args):
    """Every flag in range and consistent; one line each, before anything is built."""
    checks = [
        (args.learning_rate > 0 and math.isfinite(args.learning_rate),
         f'--learning_rate must be positive, got {args.learning_rate}'),
        (args.num_epochs >= 1, f'--num_epochs must be at least 1, got {args.num_epochs}'),
        (args.batch_size >= 1, f'--batch_size must be at least 1, got {args.batch_size}'),
        (0 <= args.dropout_rate < 1, f'--dropout_rate must be in [0, 1), got {args.dropout_rate}'),
        (args.num_classes >= 2, f'--num_classes must be at least 2, got {args.num_classes}'),
        (args.display_step >= 1, f'--display_step must be at least 1, got {args.display_step}'),
        (args.keep_checkpoints >= 1,
         f'--keep_checkpoints must be at least 1, got {args.keep_checkpoints}'),
        (0 <= args.momentum < 1, f'--momentum must be in [0, 1), got {args.momentum}'),
        (args.weight_decay >= 0, f'--weight_decay must be >= 0, got {args.weight_decay}'),
        (args.lr_decay_epochs >= 0, f'--lr_decay_epochs must be >= 0, got {args.lr_decay_epochs}'),
        (0 < args.lr_decay_factor <= 1,
         f'--lr_decay_factor must be in (0, 1], got {args.lr_decay_factor}'),
        (args.num_gpus >= 1, f'--num_gpus must be at least 1, got {args.num_gpus}'),
        (args.max_pixels >= 1, f'--max_pixels must be at least 1, got {args.max_pixels}'),
        (args.batch_size % args.num_gpus == 0,
         f'--batch_size {args.batch_size} must divide evenly over --num_gpus {args.num_gpus}'),
        (bool(args.train_layers), '--train_layers names no layer'),
        (args.early_stopping >= 0, f'--early_stopping must be >= 0, got {args.early_stopping}'),
        (args.find_lr_steps >= 10, f'--find_lr_steps must be at least 10, got {args.find_lr_steps}'),
        (not isinstance(args.class_weights, tuple) or len(args.class_weights) == args.num_classes,
         f'--class_weights lists {len(args.class_weights)} weights for --num_classes '
         f'{args.num_classes}' if isinstance(args.class_weights, tuple) else ''),
        (not (args.projector and args.num_gpus > 1), '--projector needs --num_gpus 1'),
        (args.cache_max_gb > 0, f'--cache_max_gb must be positive, got {args.cache_max_gb}'),
    ]
    for ok, message in checks:
        if not ok:
            raise ToolkitError(message)
    frozen_random = [name for name in args.skip_layers if name not in args.train_layers]
    if frozen_random:
        raise ToolkitError(f"--skip_layers {','.join(frozen_random)} would stay random and frozen: "
                           f"add them to --train_layers, or stop skipping them")
    untrained = [layer for layer, _ in args.lr_mult if layer not in args.train_layers]
    if untrained:
        raise ToolkitError(f"--lr_mult names {','.join(untrained)}, which --train_layers does not train")
    if args.find_lr:
        run_folder.check_output_file(args.find_lr, '--find_lr')
    for flag in ('train_file', 'val_file'):
        if not getattr(args, flag):
            raise ToolkitError(f'--{flag} is required (or run --demo)')


def gpu_count():
    return len(tf.config.list_physical_devices('GPU'))


def read_class_names(args):
    """Names from --class_names, else from the classes.txt beside the training list, else None."""
    path = args.class_names or os.path.join(os.path.dirname(os.path.abspath(args.train_file)),
                                            model_info.CLASS_NAMES_FILE)
    if not os.path.exists(path):
        if args.class_names:
            raise ToolkitError(f'{path}: class names file not found')
        return None
    return model_info.read_class_names_file(path, args.num_classes)


def prepare_demo(args):
    """Generate the demo images and lists, and fill in the settings that suit them.

    Without pretrained weights every layer trains from random initialisation. The demo's own run
    folders (used unless --checkpoint_path / --filewriter_path are given) are cleared first when they
    hold an earlier demo run, so the demo can be run any number of times.
    """
    import make_lists
    folder = demo_data.make_demo_images(os.path.join(args.demo_dir, 'images'),
                                        images_per_class=DEMO_IMAGES_PER_CLASS, seed=0)
    paths, labels, class_names = make_lists.find_images(folder)
    train, val = make_lists.split_stratified(paths, labels, val_fraction=0.2, seed=0)
    make_lists.write_lists(args.demo_dir, train, val, class_names)
    args.train_file = os.path.join(args.demo_dir, 'train.txt')
    args.val_file = os.path.join(args.demo_dir, 'val.txt')
    args.num_classes = len(class_names)
    if not os.path.exists(args.weights_path):
        print(f"note: {args.weights_path} not found, so the demo trains every layer from random "
              "initialisation (see README for the pretrained weights)")
        fill_defaults(args, DEMO_FROM_SCRATCH)
    if args.checkpoint_path is None and not args.resume and not args.find_lr:
        clear_previous_demo_run()  # (the range test writes no run, so it replaces none)
    fill_defaults(args, DEMO_DEFAULTS)
    fill_defaults(args, RUN_DEFAULTS)


def clear_previous_demo_run():
    """Remove the demo's own run folders, but only when they hold a demo run (nothing else of yours)."""
    checkpoint_path = DEMO_DEFAULTS['checkpoint_path']
    try:
        state = checkpoints.read_run_state(checkpoint_path)
    except ToolkitError:
        state = None
    if (state is None and os.path.exists(checkpoint_path)
            and set(os.listdir(checkpoint_path)) - {run_folder.LOCK_FILE}):
        return  # not recognisably a demo run: leave it, and let the usual check refuse it
    if state is not None and not state.get('args', {}).get('demo'):
        return
    if os.path.isdir(checkpoint_path):
        lock = run_folder.RunLock(checkpoint_path)
        try:
            lock.acquire()
        except ToolkitError:
            return  # a demo is running there now: its lock refuses this run, naming it
        try:  # everything but the lock file, which must stay (see RunLock.release)
            for name in set(os.listdir(checkpoint_path)) - {run_folder.LOCK_FILE}:
                path = os.path.join(checkpoint_path, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        finally:
            lock.release()
    shutil.rmtree(DEMO_DEFAULTS['filewriter_path'], ignore_errors=True)


def print_label_counts(labels, num_classes, class_names):
    counts = np.bincount(labels, minlength=num_classes)
    names = class_names or [f'class {label}' for label in range(num_classes)]
    print('training images per class: ' + ', '.join(
        f'{names[label]} {count}' for label, count in enumerate(counts)))
    share = counts.max() / counts.sum()
    if share > 0.8:
        print(f'warning: {names[int(counts.argmax())]} holds {share:.0%} of the training images; '
              'accuracy will look good even for a model that always answers it: try '
              '--class_weights balanced, and watch the per-class recall in TensorBoard')


class Source:
    """Where a phase's batches come from: the image pipeline, or cached pool5 features."""

    def __init__(self, start, data):
        # start(session, epoch, skip_steps) initialises the iterator, skip_steps batches into the
        # epoch's order (a resumed epoch); epoch None: validation
        self.start = start
        self.data = data  # the ImageDataGenerator behind it, for naming unreadable images


class Pipeline(collections.namedtuple('Pipeline', [
        'train_graph', 'train', 'val', 'weights_model', 'labels', 'prepare_cache', 'cache_files'])):
    """The training graph and where its batches come from.

    weights_model: the AlexNet whose variables the weights file is loaded into; labels: the image
    pipeline's labels tensor (None on cached features), to count skipped images; prepare_cache:
    fills the feature cache in a session (None without one); cache_files: files it may write.
    """


class Run:
    """One fine-tuning run's settings and outputs, shared by the epoch loop's functions."""

    def __init__(self, args, pipeline, state, keeper, writer, interrupted, steps_per_epoch,
                 class_names=None):
        self.args = args
        self.class_names = class_names
        self.pipeline = pipeline
        self.train_graph = pipeline.train_graph
        self.state = state
        self.keeper = keeper
        self.writer = writer
        self.interrupted = interrupted
        self.steps_per_epoch = steps_per_epoch
        self.metrics_path = os.path.join(args.checkpoint_path, 'metrics.jsonl')
        self.curves_path = os.path.join(args.checkpoint_path, 'curves.png')
        graph = pipeline.train_graph
        # What the validation pass fetches besides its metrics, for the pictures and the projector.
        with tf.name_scope('validation_outputs'):
            self.picture_fetches = {'probabilities': tf.nn.softmax(graph.logits),
                                    'labels': tf.argmax(graph.y, 1),
                                    'features': graph.model.end_points['fc7']}
        folder = os.path.dirname(os.path.abspath(pipeline.val.data.txt_file))
        self.val_paths = [os.path.join(folder, path) for path in pipeline.val.data.paths]


def train_one_epoch(session, run, epoch, first_step):
    """Runs SGD steps first_step+1..steps_per_epoch; returns (loss, accuracy, images/s, images, finished)."""
    args, train_graph = run.args, run.train_graph
    bar = progress.EpochProgress(epoch, args.num_epochs, run.steps_per_epoch, args.display_step)
    losses, accuracies, images = [], [], 0
    start = time.perf_counter()
    fetches = {'train': train_graph.train_op, 'loss': train_graph.loss,
               'accuracy': train_graph.accuracy, 'count': train_graph.batch_count,
               'step': train_graph.global_step}
    feed = training_feed(args, train_graph.keep_prob)
    finished = True
    for step in range(first_step + 1, run.steps_per_epoch + 1):
        if run.interrupted.requested:
            finished = False
            break
        # Summaries ride along in the same run call as the step: no second forward pass.
        with_summary = step % args.display_step == 0 or step == 1
        try:
            result = session.run({**fetches, 'summary': train_graph.train_summaries} if with_summary
                                 else fetches, feed)
        except tf.errors.OutOfRangeError:
            break  # fewer batches than planned: unreadable images were skipped
        except tf.errors.InvalidArgumentError as error:
            if 'loss is not finite' in str(error.message):
                raise ToolkitError(
                    f'the loss became NaN or infinite at epoch {epoch}, step {step}: lower the '
                    f'learning rate (now {args.learning_rate:g}); the last good checkpoint is in '
                    f'{args.checkpoint_path}') from None
            raise step_error(error, run.pipeline.train) from None
        except (tf.errors.UnknownError, tf.errors.DataLossError, tf.errors.NotFoundError) as error:
            raise step_error(error, run.pipeline.train) from None
        if with_summary:
            run.writer.add_summary(result['summary'], result['step'])
        if result['step'] == 1:
            warn_about_first_loss(result['loss'], args.num_classes)
        losses.append(result['loss'])
        accuracies.append(result['accuracy'])
        images += int(result['count'])
        bar.update(step, float(np.mean(losses[-args.display_step:])),
                   float(np.mean(accuracies[-args.display_step:])),
                   images / (time.perf_counter() - start))
    bar.finish()
    seconds = time.perf_counter() - start
    return _mean(losses), _mean(accuracies), images / seconds if images else 0.0, images, finished


def training_feed(args, keep_prob):
    """The feed of a training step: AlexNet's keep_prob is the probability of keeping a unit."""
    return {keep_prob: 1.0 - args.dropout_rate}


def warn_about_first_loss(loss, num_classes):
    """A fresh classifier's first loss is about ln(num_classes); far from it, the start is off."""
    expected = math.log(num_classes)
    if abs(loss - expected) > max(1.0, 0.5 * expected):
        print(f"note: the first loss, {loss:.3f}, is far from ln({num_classes}) = {expected:.3f}: the "
              "new layers start with large outputs; if the loss does not fall, lower the learning rate")


def step_error(error, source):
    """A one-line ToolkitError for a failed session.run: an unreadable image, or TensorFlow's reason."""
    if error.op is None or error.op.type.startswith(('Iterator', 'MakeIterator')):
        return source.data.unreadable_images_error()
    reasons = [line.strip() for line in str(error.message).splitlines()
               if re.match(r'\s*(\(\d+\) )?[A-Z_]+: ', line)] or ['(no reason given)']
    return ToolkitError(f'TensorFlow stopped the step in {error.op.name}: {reasons[0]}')


def _mean(values):
    return float(np.mean(values)) if values else float('nan')


def count_rest(session, labels):
    """Images left in the epoch after its last full step (with --skip_bad_images, to count skips)."""
    rest = 0
    while True:
        try:
            rest += len(session.run(labels))
        except tf.errors.OutOfRangeError:
            return rest


def evaluate(session, graph, source, outputs=None, picture_fetches=None):
    """Loss and accuracy over every validation image, the last partial batch weighted by its size.

    With `outputs` (a summaries.ValidationOutputs), the same run calls also fetch `picture_fetches`
    (each image's class probabilities and label, and fc7 while the projector wants rows) for the
    pictures: no second pass.
    """
    source.start(session, None)
    loss_sum = correct = count = 0
    metrics = [graph.loss_sum, graph.correct_count, graph.batch_count]
    while True:
        try:
            fetches = {'metrics': metrics}
            if outputs is not None:
                fetches.update({name: tensor for name, tensor in picture_fetches.items()
                                if name != 'features' or outputs.wants_features})
            result = session.run(fetches)
            batch_loss, batch_correct, batch_count = result['metrics']
            if outputs is not None:
                outputs.add(result['probabilities'], result['labels'], result.get('features'))
        except tf.errors.OutOfRangeError:
            break
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError,
                tf.errors.NotFoundError) as error:
            raise step_error(error, source) from None
        loss_sum += float(batch_loss)
        correct += int(batch_correct)
        count += int(batch_count)
    if count == 0:
        raise ToolkitError(f'{source.data.txt_file}: no validation image could be read')
    return loss_sum / count, correct / count, count


def write_scalars(writer, step, values):
    summary = tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=float(value))
                                for tag, value in values.items()])
    writer.add_summary(summary, step)
    writer.flush()


def epoch_seed(args, epoch):
    return None if args.order_seed is None else args.order_seed * 100_003 + epoch


def choose_order_seed(args, state):
    """The seed of every epoch's shuffle order: --seed, else drawn once per run and kept in
    run_state.json, so that a resumed unseeded run replays the orders of its own epochs (skipping
    the consumed part of another order would train some images twice and others never)."""
    if state and state.get('order_seed') is not None:
        args.order_seed = state['order_seed']
    else:
        args.order_seed = args.seed if args.seed is not None else int(np.random.randint(2**31))


def class_weight_values(args, train_labels):
    """The loss weight of each class (None: unweighted), from --class_weights and the training labels."""
    if args.class_weights == 'none':
        return None
    if args.class_weights == 'balanced':
        return training.balanced_class_weights(train_labels, args.num_classes)
    return tuple(args.class_weights)


def training_config(args, use_gpu, steps_per_epoch, train_labels=None):
    """The training graph's settings from the flags."""
    return training.TrainingConfig(
        class_weights=class_weight_values(args, train_labels), lr_mult=tuple(args.lr_mult),
        num_classes=args.num_classes, train_layers=tuple(args.train_layers),
        skip_layers=tuple(args.skip_layers), weights_path=args.weights_path,
        learning_rate=args.learning_rate, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, decay_steps=args.lr_decay_epochs * steps_per_epoch,
        decay_factor=args.lr_decay_factor, num_devices=args.num_gpus, use_gpu=use_gpu,
        model_device='/gpu:0' if use_gpu else '/cpu:0', mixed_precision=args.mixed_precision)


def build_pipeline(args, train_data, val_data, config, spill_dir=None):
    """The training graph on the image pipeline, or on cached pool5 features (args.use_cache)."""
    with tf.device('/cpu:0'):  # the input pipeline stays on the CPU, whatever runs the model
        iterator = tf.data.Iterator.from_structure(tf.data.get_output_types(train_data.data),
                                                   tf.data.get_output_shapes(train_data.data))
        images, labels = iterator.get_next()
        training_init_op = iterator.make_initializer(train_data.data)
        validation_init_op = iterator.make_initializer(val_data.data)
    if not args.use_cache:
        train_graph = training.build_training_graph(images, labels, config)
        # The epoch number pins the shuffle order, so a resumed run sees the orders an
        # uninterrupted one would have seen.
        train = Source(lambda session, epoch, skip_steps=0: session.run(
            training_init_op, {train_data.epoch: epoch,
                               train_data.skip: skip_steps * args.batch_size}), train_data)
        val = Source(lambda session, epoch, skip_steps=0: session.run(validation_init_op), val_data)
        return Pipeline(train_graph, train, val, train_graph.model, labels, None, ())

    # Cached features: the full model on images (its conv layers make the features, and every
    # variable exists for the checkpoints), and fc6-fc8 again on the cache, sharing their variables.
    with tf.device(config.model_device):
        image_model = AlexNet(images, 1.0, args.num_classes, args.skip_layers, args.weights_path)
    features = image_model.end_points[feature_cache.FEATURE_LAYER]
    dataset, feeder = feature_cache.cached_dataset(args.num_classes, args.batch_size,
                                                   drop_remainder=False)
    with tf.device('/cpu:0'):
        cache_iterator = tf.data.make_initializable_iterator(dataset)
        cached_features, cached_labels = cache_iterator.get_next()
    train_graph = training.build_training_graph(cached_features, cached_labels, config,
                                                input_layer='flattened', reuse=True)
    cache = {}
    # Features too large for memory spill to files here (the run's folder unless told otherwise).
    cache_files = {name: os.path.join(spill_dir or args.checkpoint_path, f'features_{name}.npy')
                   for name in ('train', 'val')}

    store = shared_feature_store(args)

    def prepare(session):
        conv_digest = conv_weights_digest(session, image_model) if store else None
        for name, data, init_op in (('train', train_data, training_init_op),
                                    ('val', val_data, validation_init_op)):
            key = feature_store.set_key(conv_digest, data.paths, data.labels, args.num_classes,
                                        feature_settings(args, config)) if store else None
            stored, note = store.load(key) if store else (None, None)
            if note:
                print(f'note: {note}')
            if stored is not None:
                print(f'pool5 features of {data.txt_file}: from {store.root}')
                cache[name] = stored
                continue
            print(f'caching pool5 features of {data.txt_file}: {feature_cache.describe_size(data.data_size)}')
            try:
                cache[name] = feature_cache.extract(session, init_op, features, labels, data.data_size,
                                                    args.num_classes, cache_files[name])
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.NotFoundError):
                raise data.unreadable_images_error() from None
            if store:
                store.save(key, *cache[name])

    def start_train(session, epoch, skip_steps=0):
        seed = epoch_seed(args, epoch)
        feed = feeder.start_epoch(*cache['train'], shuffle_seed=int(np.random.randint(2**31))
                                  if seed is None else seed, skip_batches=skip_steps)
        session.run(cache_iterator.initializer, feed)

    def start_val(session, epoch, skip_steps=0):
        session.run(cache_iterator.initializer, feeder.start_epoch(*cache['val']))

    return Pipeline(train_graph, Source(start_train, train_data), Source(start_val, val_data),
                    image_model, None, prepare, tuple(cache_files.values()))


def shared_feature_store(args):
    """The on-disk feature store of --cache_dir, or None ('none', or conv layers that start random)."""
    if args.cache_dir == 'none' or set(args.skip_layers) & set(CONV_LAYERS):
        return None  # randomly initialised conv layers make features no later run can reuse
    return feature_store.FeatureStore(args.cache_dir, int(args.cache_max_gb * 2**30))


def conv_weights_digest(session, model):
    """The digest of conv1-conv5 as the session holds them: what, with the images, makes pool5."""
    variables = {variable.op.name: variable for layer in CONV_LAYERS
                 for variable in model.variables[layer].values()}
    return feature_store.arrays_digest(session.run(variables))


def feature_settings(args, config):
    """What besides weights and images changes the cached numbers."""
    return {'device': 'gpu' if config.use_gpu else 'cpu', 'mixed_precision': args.mixed_precision,
            'xla': args.xla, 'skip_bad_images': args.skip_bad_images}


def choose_device(args):
    """True to run the model on a GPU; refuses --device gpu without enough of them."""
    if args.device == 'gpu' and gpu_count() < args.num_gpus:
        raise ToolkitError(f'--device gpu asks for {args.num_gpus} GPU(s), TensorFlow sees '
                           f'{gpu_count()}')
    return args.device == 'gpu' or (args.device == 'auto' and gpu_count() > 0)


def run_settings(args):
    """What shapes a run and must not change on --resume; kept in run_state.json."""
    return {'batch_size': args.batch_size, 'num_gpus': args.num_gpus,
            'train_file_sha256': checkpoints.file_digest(args.train_file),
            'val_file_sha256': checkpoints.file_digest(args.val_file),
            'num_classes': args.num_classes, 'train_layers': list(args.train_layers),
            'skip_layers': list(args.skip_layers), 'optimizer': args.optimizer,
            'augment': args.augment, 'cache_features': args.use_cache}


def check_output_paths(args):
    """Both output folders writable (or creatable), before anything is read or built."""
    run_folder.check_output_folder(args.checkpoint_path, '--checkpoint_path')
    run_folder.check_output_folder(args.filewriter_path, '--filewriter_path')


def previous_run_state(args):
    """The run state to resume (None for a new run); refuses to overwrite a run or resume none.

    On --resume, also refuses other settings than the run's, and picks the checkpoint to restore
    (the latest, else the newest intact one): `state['latest_checkpoint']` names it.
    """
    state = checkpoints.read_run_state(args.checkpoint_path)
    if state and not args.resume:
        raise ToolkitError(f'{args.checkpoint_path} already holds a run (epoch '
                           f'{state["epochs_completed"]}); pass --resume to continue it, or choose '
                           'another --checkpoint_path')
    if args.resume and not state:
        raise ToolkitError(f'{args.checkpoint_path}: no run to resume (no {checkpoints.RUN_STATE})')
    if state:
        checkpoints.check_same_settings(args.checkpoint_path, state.get('settings'), run_settings(args))
        latest, best_epoch = state['latest_checkpoint'], state['best_epoch']
        _, state = checkpoints.restorable_checkpoint(args.checkpoint_path, state)
        if state['latest_checkpoint'] != latest:  # fell back: the later epochs will be trained again
            checkpoints.repair_best(args.checkpoint_path, best_epoch, state)
            progress.write_metrics(os.path.join(args.checkpoint_path, 'metrics.jsonl'),
                                   state['history'])
    return state


def choose_feature_cache(args):
    args.use_cache = (args.cache_features == 'on' or args.cache_features == 'auto'
                      and feature_cache.can_cache(args.train_layers, args.augment))
    if args.use_cache and not feature_cache.can_cache(args.train_layers, args.augment):
        raise ToolkitError('--cache_features on needs every conv layer frozen and no --augment')


@contextlib.contextmanager
def seeded(seed):
    """Seed every random choice, and make TensorFlow's kernels deterministic (None: leave both).

    Without op determinism, multi-threaded gradient kernels may sum their shards in varying order
    (on GPUs most of all), so two runs with one seed drift apart in the last bits and then further;
    its cost is in bench/RESULTS.md. The switch is process-wide, so it is put back afterwards for
    callers (tests, notebooks) that run more than one thing in a process.
    """
    if seed is None:
        yield
        return
    tf.set_random_seed(seed)
    np.random.seed(seed)
    # tf.config.experimental.enable_op_determinism is not in compat.v1, and its state and the switch
    # off are not exported at all: all three live in TensorFlow's config module.
    from tensorflow.python.framework import config as tf_config
    was_enabled = tf_config.is_op_determinism_enabled()
    tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def make_datasets(args):
    """The training and validation generators, and the number of steps per epoch."""
    with tf.device('/cpu:0'):
        train_data = datagenerator.ImageDataGenerator(
            args.train_file, 'training', args.batch_size, args.num_classes, shuffle=True,
            seed=args.order_seed, augment=args.augment, skip_bad_images=args.skip_bad_images,
            max_pixels=args.max_pixels)
        val_data = datagenerator.ImageDataGenerator(
            args.val_file, 'inference', args.batch_size, args.num_classes, shuffle=False,
            augment=args.augment, skip_bad_images=args.skip_bad_images, max_pixels=args.max_pixels)
    steps_per_epoch = train_data.data_size // args.batch_size
    if steps_per_epoch == 0:
        raise ToolkitError(f'{args.train_file}: {train_data.data_size} images, fewer than one batch '
                           f'of --batch_size {args.batch_size}')
    return train_data, val_data, steps_per_epoch


def fine_tune(args):
    """Checks what it can before building anything, then builds the graph and trains."""
    check_output_paths(args)
    use_gpu = choose_device(args)
    class_names = read_class_names(args)
    choose_feature_cache(args)
    if args.find_lr:  # a range test, not a run: no run state, no lock, nothing saved
        choose_order_seed(args, None)
        layers = initial_weights(args, None)
        with seeded(args.seed):
            return find_learning_rate(args, use_gpu, layers)
    # Signals are caught from here on, so a SIGTERM while the weights load still ends in one line.
    with run_folder.RunLock(args.checkpoint_path), signals.StopRequests() as stop:
        state = previous_run_state(args)
        choose_order_seed(args, state)
        run_folder.remove_stale_files(args.checkpoint_path,
                                      state['latest_checkpoint'] if state else None)
        layers = initial_weights(args, state)
        with seeded(args.seed):
            return train(args, use_gpu, class_names, state, layers, stop)


def initial_weights(args, state):
    """The weights file's layers when a new run loads some (None: resumed, all fresh, or warm-started
    from --init_checkpoint), read once here: a wrong file fails before anything is built, and the
    same arrays are loaded."""
    if state:
        return None
    if args.init_checkpoint:
        args.init_checkpoint = model_info.resolve_checkpoint(args.init_checkpoint)
        checkpoints.check_intact(args.init_checkpoint)  # a damaged file named, not a traceback later
        return None
    if set(args.skip_layers) == set(TRAINABLE_LAYERS):
        return None
    layers = weight_files.load_weights(args.weights_path)
    check_classifier_fits(args, layers)
    return layers


def check_classifier_fits(args, layers):
    """Keeping the file's fc8 needs its classes to be --num_classes (the file decides, not 1000)."""
    if layers is None or 'fc8' in args.skip_layers or 'fc8' not in layers:
        return
    file_classes = layers['fc8']['biases'].shape[0]
    if file_classes != args.num_classes:
        raise ToolkitError(f"{args.weights_path}: its fc8 has {file_classes} classes, --num_classes is "
                           f"{args.num_classes}: add fc8 to --skip_layers to train a new classifier")


def find_learning_rate(args, use_gpu, layers):
    """--find_lr: the range test on the training data; writes its plot and nothing else."""
    train_data, val_data, steps_per_epoch = make_datasets(args)
    # Not a run: it holds no run folder, so any feature spill goes to a folder of its own.
    spill_dir = tempfile.mkdtemp(prefix='find_lr_')
    pipeline = build_pipeline(args, train_data, val_data,
                              training_config(args, use_gpu, steps_per_epoch, train_data.labels),
                              spill_dir)
    config = tf_setup.session_config(use_gpu, xla=args.xla, mixed_precision=args.mixed_precision)
    try:
        with tf.Session(config=config) as session:
            session.run(tf.global_variables_initializer())
            if layers is not None:
                pipeline.weights_model.load_initial_weights(session, layers)
            del layers
            if args.init_checkpoint:
                warm_start(session, args, pipeline)
            if pipeline.prepare_cache:
                pipeline.prepare_cache(session)
            result = lr_finder.range_test(
                session, pipeline.train_graph, lambda epoch: pipeline.train.start(session, epoch),
                training_feed(args, pipeline.train_graph.keep_prob), args.find_lr_steps)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    lr_finder.plot(result, args.find_lr)
    print(lr_finder.describe(result))
    print(f'plot of loss against learning rate: {args.find_lr}')
    return 0


def warm_start(session, args, pipeline):
    """Loads the model weights of --init_checkpoint (not its optimizer or step), except --skip_layers."""
    variables = {variable.op.name: variable
                 for layer, kinds in pipeline.weights_model.variables.items()
                 if layer not in args.skip_layers for variable in kinds.values()}
    checkpoints.check_fits(args.init_checkpoint, {name: v.shape.as_list() for name, v in variables.items()},
                           purpose='--init_checkpoint',
                           advice='add the layers that differ (fc8 for another --num_classes) to '
                           '--skip_layers')
    tf.train.Saver(variables).restore(session, args.init_checkpoint)


def train(args, use_gpu, class_names, state, layers, stop):
    """Builds the graph and trains: a new run when `state` is None, else the run it describes."""
    resumed = state is not None
    train_data, val_data, steps_per_epoch = make_datasets(args)
    pipeline = build_pipeline(args, train_data, val_data,
                              training_config(args, use_gpu, steps_per_epoch, train_data.labels))

    keeper = checkpoints.CheckpointKeeper(args.checkpoint_path, args.keep_checkpoints)
    args.log_dir = run_log_dir(args, state)
    os.makedirs(args.log_dir, exist_ok=True)
    writer = tf.summary.FileWriter(args.log_dir)
    print_label_counts(train_data.labels, args.num_classes, class_names)
    weights = class_weight_values(args, train_data.labels)
    if weights is not None:
        names = class_names or [f'class {label}' for label in range(args.num_classes)]
        print('class weights of the loss: ' + ', '.join(f'{name} {weight:.3g}'
                                                        for name, weight in zip(names, weights)))
    print(f'{train_data.data_size} training images ({steps_per_epoch} steps of {args.batch_size} per '
          f'epoch), {val_data.data_size} validation images; training {",".join(args.train_layers)} on '
          f'{"GPU" if use_gpu else "CPU"}')
    config = tf_setup.session_config(use_gpu, xla=args.xla, mixed_precision=args.mixed_precision,
                                     logical_cpus=args.num_gpus if not use_gpu and args.num_gpus > 1
                                     else None)
    try:
        with tf.Session(config=config) as session:
            session.run(tf.global_variables_initializer())
            if state:
                keeper.restore(session, os.path.join(args.checkpoint_path,
                                                     state['latest_checkpoint']), state)
                print(f"resumed {state['latest_checkpoint']} at step "
                      f"{session.run(pipeline.train_graph.global_step)}")
            else:
                writer.add_graph(session.graph)
                for summary in summaries.hparams_summaries(args, args.run_name):
                    writer.add_summary(summary, 0)
                if layers is not None:
                    pipeline.weights_model.load_initial_weights(session, layers)
                del layers  # 233 MB no longer needed: the variables hold the weights now
                if args.init_checkpoint:
                    warm_start(session, args, pipeline)
                model_info.write_model_info(args.checkpoint_path, args.num_classes, class_names,
                                            center_crop=args.augment)
                state = {'epochs_completed': 0, 'best_val_accuracy': None, 'best_epoch': None,
                         'history': [], 'run_name': args.run_name, 'args': dict(vars(args)),
                         'settings': run_settings(args), 'order_seed': args.order_seed}
            print(f'open TensorBoard with: tensorboard --logdir {args.filewriter_path} '
                  f'(this run: {args.run_name})')
            if pipeline.prepare_cache:
                pipeline.prepare_cache(session)
            run = Run(args, pipeline, state, keeper, writer, stop, steps_per_epoch, class_names)
            if args.init_checkpoint and not resumed:
                report_warm_start(session, run)
            return train_epochs(session, run)
    finally:
        writer.close()
        for cache_file in pipeline.cache_files:
            feature_cache.remove_cache_file(cache_file)  # features on disk are only for this run


def run_log_dir(args, state):
    """The run's TensorBoard folder under --filewriter_path: new, or the resumed run's own."""
    if state is not None:
        # A run from before runs had names wrote to the root itself.
        args.run_name = state.get('run_name')
        return os.path.join(args.filewriter_path, args.run_name) if args.run_name else args.filewriter_path
    defaults = {**{action.dest: action.default for action in get_args_parser()._actions},
                **RUN_DEFAULTS, **(DEMO_DEFAULTS if args.demo else {})}
    name = summaries.safe_run_name(args.run_name) if args.run_name else \
        summaries.default_run_name(args, defaults)
    args.run_name = summaries.new_run_folder(args.filewriter_path, name)
    return os.path.join(args.filewriter_path, args.run_name)


def report_warm_start(session, run):
    """The warm-started model's validation loss and accuracy before any step, as a check."""
    loss, accuracy, _ = evaluate(session, run.train_graph, run.pipeline.val)
    run.state['init_val_accuracy'] = accuracy
    print(f'warm start from {run.args.init_checkpoint}: validation loss {loss:.4f} acc '
          f'{accuracy:.4f} before training')


def train_epochs(session, run):
    args, state = run.args, run.state
    global_step = int(session.run(run.train_graph.global_step))
    # Resuming mid-epoch starts that epoch's pinned order just past the batches already trained on
    # (skipped before decoding), so a resumed run trains on exactly the images of an uninterrupted
    # one, in its order, and ends after num_epochs * steps_per_epoch steps as that one does.
    # From the run state rather than global_step // steps_per_epoch: with --skip_bad_images an epoch
    # can end a step or more early, and the division would then land in the wrong epoch.
    first_epoch = state['epochs_completed'] + 1
    steps_done = global_step - (state['history'][-1]['step'] if state['history'] else 0)
    outputs = None
    for epoch in range(first_epoch, args.num_epochs + 1):
        run.pipeline.train.start(session, epoch, steps_done)
        train_loss, train_accuracy, images_per_second, seen, finished = train_one_epoch(
            session, run, epoch, steps_done)
        step = int(session.run(run.train_graph.global_step))
        if not finished:
            prefix = run.keeper.save_interrupted(session, state, step)
            print(f'saved {prefix} at step {step}; continue with --resume (and the same flags)')
            return run.interrupted.exit_status
        notes = []
        if args.skip_bad_images and run.pipeline.labels is not None and steps_done == 0:
            note = run.pipeline.train.data.describe_skipped(seen + count_rest(session, run.pipeline.labels))
            notes += [note] if note else []
        steps_done = 0
        outputs = summaries.ValidationOutputs(
            keep_features=summaries.PROJECTOR_MAX_IMAGES if args.projector else 0)
        val_loss, val_accuracy, val_count = evaluate(session, run.train_graph, run.pipeline.val,
                                                     outputs, run.picture_fetches)
        write_validation_pictures(run, step, outputs)
        if args.skip_bad_images:
            note = run.pipeline.val.data.describe_skipped(val_count)
            notes += [note] if note else []
        record = {'epoch': epoch, 'step': step, 'train_loss': train_loss,
                  'train_accuracy': train_accuracy, 'val_loss': val_loss,
                  'val_accuracy': val_accuracy, 'val_images': val_count,
                  'learning_rate': float(session.run(run.train_graph.learning_rate)),
                  'images_per_second': images_per_second}
        improved = finish_epoch(session, run, epoch, record)
        print(f'epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.3f}, validation '
              f'loss {val_loss:.4f} acc {val_accuracy:.4f}{" (best)" if improved else ""}')
        for note in notes:
            print(f'note: {note}')
        if args.early_stopping and epoch - state['best_epoch'] >= args.early_stopping:
            print(f"early stopping after epoch {epoch}: no better validation accuracy for "
                  f"{args.early_stopping} epoch(s) since epoch {state['best_epoch']}")
            break
    if args.projector and outputs is not None and outputs.features is not None:
        count = len(outputs.features)
        summaries.write_projector(run.writer.get_logdir(), outputs.features, aligned_val_paths(run, outputs),
                                  outputs.labels, outputs.probabilities.argmax(axis=1),
                                  run.class_names, args.num_classes)
        print(f'projector: fc7 features of {count} validation images in {run.writer.get_logdir()}')
    run.writer.add_summary(summaries.hparams_end_summary(),
                           state['history'][-1]['step'] if state['history'] else 0)
    print(f"done: best validation accuracy {state['best_val_accuracy']:.4f} at epoch "
          f"{state['best_epoch']}; checkpoints, metrics.jsonl and curves.png in "
          f"{args.checkpoint_path}; TensorBoard logs in {run.writer.get_logdir()}")
    return 0


def aligned_val_paths(run, outputs):
    """The validation images' paths, or blanks when skipped unreadable images would shift them
    against the outputs (so no picture or projector row is put under another image's name)."""
    if len(outputs.labels) == len(run.val_paths):
        return run.val_paths
    return [''] * len(outputs.labels)


def write_validation_pictures(run, step, outputs):
    """The epoch's mistakes grid, confusion matrix, per-class precision/recall and PR curves."""
    run.writer.add_summary(summaries.validation_summary(outputs, aligned_val_paths(run, outputs),
                                                        run.class_names,
                                                        run.args.num_classes), step)


def finish_epoch(session, run, epoch, record):
    """Write the epoch's validation summaries, checkpoint, metrics and curves; True if it is the best."""
    state = run.state
    improved = state['best_val_accuracy'] is None or record['val_accuracy'] > state['best_val_accuracy']
    if improved:
        state['best_val_accuracy'], state['best_epoch'] = record['val_accuracy'], epoch
    state['best_val_loss'] = min(state.get('best_val_loss') or math.inf, record['val_loss'])
    write_scalars(run.writer, record['step'], {'validation/cross_entropy': record['val_loss'],
                                               'validation/accuracy': record['val_accuracy'],
                                               'images_per_second': record['images_per_second'],
                                               'hparams/best_val_accuracy': state['best_val_accuracy'],
                                               'hparams/best_val_loss': state['best_val_loss']})
    state['epochs_completed'] = epoch
    state['history'].append(record)
    run.keeper.save_epoch(session, epoch, state, best=improved)
    progress.append_metrics(run.metrics_path, record)
    progress.plot_curves(state['history'], run.curves_path)
    return improved


def main(argv=None):
    args = parse_args(argv)
    tf_setup.quiet_python_logging(args.verbose)
    tf.disable_v2_behavior()
    resolve_settings(args)
    check_args(args)
    with tf.Graph().as_default():  # a fresh graph per run, also when called twice in one process
        return fine_tune(args)


if __name__ == '__main__':
    sys.exit(cli.run(main))
