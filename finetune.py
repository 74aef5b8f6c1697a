"""Fine-tune AlexNet on your own images: `python finetune.py --train_file train.txt --val_file val.txt`.

With no lists (or `--demo`) it generates a small two-class data set and fine-tunes on that, so the
whole loop can be seen working in a few minutes on a laptop CPU.

Read `fine_tune` below for the TensorFlow 1.x recipe, in the original's order: the iterator and its
init ops, `model = AlexNet(...)`, the loss, the optimizer and `train_op`, the summaries, the saver,
the session. `train_epochs` is the epoch loop, and `train_one_epoch` runs each step's `train_op`,
loss and accuracy in one `session.run`. The machinery behind each named call (replicas for
--num_gpus, several workers, mixed precision, the NaN guard, the feature cache, --unfreeze_at's
phases, start-up and resume, an epoch's end) lives in finetune_alexnet/train/.

Flags are named after the original script's configuration. Two defaults differ from it, because its
users found them to fail on cats vs dogs: `--skip_layers fc8` (the original skipped every trained
layer, so fc6-fc8 all started random) and `--learning_rate 0.001` (0.01 sent the loss to NaN).
`--skip_layers fc8,fc7,fc6 --learning_rate 0.01` gives the original's behaviour.
"""
import sys

from finetune_alexnet import cli

if __name__ == '__main__':
    cli.prepare(sys.argv[1:])  # before TensorFlow loads: quiet unless --verbose

import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from alexnet import AlexNet  # noqa: E402
from finetune_alexnet import checkpoints  # noqa: E402
from finetune_alexnet import image_header  # noqa: E402
from finetune_alexnet import tf_setup  # noqa: E402
from finetune_alexnet import weight_files  # noqa: E402
from finetune_alexnet.train import demo  # noqa: E402
from finetune_alexnet.train import distribute  # noqa: E402
from finetune_alexnet.train import feature_store  # noqa: E402
from finetune_alexnet.train import graph as training_graph  # noqa: E402
from finetune_alexnet.train import inputs  # noqa: E402
from finetune_alexnet.train import loop  # noqa: E402
from finetune_alexnet.train import lr_finder  # noqa: E402
from finetune_alexnet.train import progress  # noqa: E402
from finetune_alexnet.train import runs  # noqa: E402
from finetune_alexnet.train import settings as run_settings  # noqa: E402
from finetune_alexnet.train import summaries  # noqa: E402
from finetune_alexnet.train.settings import class_weights_flag, layer_list, lr_mult_flag  # noqa: E402


def get_args_parser():
    parser = cli.ArgumentParser(
        description='Fine-tune AlexNet (BVLC weights) on image lists of "path label" lines.')
    data = parser.add_argument_group('data')
    data.add_argument('--train_file', help='training list, or TFRecord shards (a folder or a pattern, '
                      'make_tfrecords.py); none (and no --val_file): run the demo')
    data.add_argument('--val_file', help='validation list, or TFRecord shards')
    data.add_argument('--num_classes', type=int, help='classes in the data (default: as many as '
                      'classes.txt names, else the largest label + 1); given, it is checked')
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
    data.add_argument('--demo_dir', default=os.path.join(run_settings.DEFAULT_ROOT, 'demo_data'),
                      help="where the demo's images and lists are written")

    model = parser.add_argument_group('model')
    model.add_argument('--weights_path', default=weight_files.DEFAULT_WEIGHTS_PATH,
                       help='the pretrained bvlc_alexnet.npy (python get_weights.py downloads it)')
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
                              help="weight each class's loss: 'balanced' (scikit-learn's n / (K x "
                              "count): an average weight of 1 per training image) or one weight "
                              "per class, e.g. '1,4'")
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

    recipe = parser.add_argument_group("today's fine-tuning recipe (docs/training.md)")
    recipe.add_argument('--label_smoothing', type=float, default=0.0, metavar='EPS',
                        help='training targets (1 - EPS) x one-hot + EPS / num_classes')
    recipe.add_argument('--ema_decay', type=float, default=0.0, metavar='D', help='keep a moving '
                        'average of the weights (e.g. 0.999): validation, best.ckpt, predict.py and '
                        'export.py use it (0: off)')
    recipe.add_argument('--lr_schedule', choices=('step', 'cosine'), default='step',
                        help='step: --lr_decay_epochs; cosine: from the rate down to 0 at the end')
    recipe.add_argument('--warmup_epochs', type=float, default=0.0, metavar='EPOCHS',
                        help='raise the rate linearly from ~0 over this many epochs (fractions too)')
    recipe.add_argument('--mixup', type=float, default=0.0, metavar='ALPHA',
                        help='blend training pairs by lambda ~ Beta(ALPHA, ALPHA) (0: off)')
    recipe.add_argument('--cutmix', type=float, default=0.0, metavar='ALPHA', help="paste a box of "
                        "another training image, labels mixed by its area (0: off; with --mixup: "
                        "one of the two per batch)")
    recipe.add_argument('--unfreeze_at', type=int, default=0, metavar='EPOCH',
                        help='from this epoch on, train --unfreeze_layers too (rates: --lr_mult)')
    recipe.add_argument('--unfreeze_layers', type=layer_list, metavar='LAYERS',
                        help='layers the second phase adds to --train_layers (default: all)')

    output = parser.add_argument_group('output')
    output.add_argument('--filewriter_path', help='write TensorBoard events to a sub-folder of this '
                        'folder instead of into the run folder (the older split)')
    output.add_argument('--run_name', help="the run's name in TensorBoard and its folder when there "
                        'is no --checkpoint_path (default: the date-time and up to three settings '
                        'that differ from the defaults)')
    output.add_argument('--projector', action='store_true',
                        help="at the end, write fc7 features of up to "
                        f"{summaries.PROJECTOR_MAX_IMAGES} validation images for TensorBoard's "
                        'projector')
    output.add_argument('--checkpoint_path', help='the run folder: checkpoints, metrics, curves and '
                        f'TensorBoard events (default: a new folder in {run_settings.DEFAULT_RUNS}; '
                        'the demo: its own)')
    output.add_argument('--display_step', type=int,
                        help='write summaries (and progress lines) every this many steps (default: '
                        '20; the demo: 3)')
    output.add_argument('--keep_checkpoints', type=int, default=3,
                        help='epoch checkpoints kept (the best one is kept besides)')
    output.add_argument('--resume', action='store_true',
                        help="continue the run in --checkpoint_path with the run's own flags (give "
                        '--num_epochs to extend it)')

    devices = parser.add_argument_group('devices')
    devices.add_argument('--device', choices=tf_setup.DEVICE_CHOICES, default='auto')
    devices.add_argument('--num_gpus', type=int, default=1,
                         help='split each batch over this many devices and average the gradients')
    devices.add_argument('--xla', action='store_true', help='compile the graph with XLA')
    devices.add_argument('--mixed_precision', action='store_true',
                         help='float16 on a GPU (bfloat16 on a CPU) with dynamic loss scaling; '
                         'faster, results differ from float32 by ~1e-2')
    devices.add_argument('--worker_hosts', metavar='HOST:PORT,...',
                         help='train on several workers (docs/distributed.md): every worker\'s '
                         'address, the chief first; the same on every worker (default: TF_CONFIG\'s)')
    devices.add_argument('--task_index', type=int, metavar='N',
                         help="this worker's place in --worker_hosts (0: the chief, which writes "
                         'the run folder)')
    devices.add_argument('--collective_timeout', type=float, default=distribute.DEFAULT_TIMEOUT,
                         metavar='SECONDS', help='several workers: stop when the others have not '
                         'joined a step (or the start) within this long, naming a lost worker')
    devices.add_argument('--cache_features', choices=('auto', 'on', 'off'), default='auto',
                         help='train fc layers from pool5 features computed once (auto: when no '
                         'conv layer is trained and --augment is off)')
    devices.add_argument('--cache_dir', default=feature_store.DEFAULT_DIR,
                         help="cached pool5 features kept on disk for later runs on the same images "
                         "('none': this run only)")
    devices.add_argument('--cache_max_gb', type=float, default=feature_store.DEFAULT_MAX_GB,
                         help='size limit of --cache_dir; least recently used sets go first')
    return parser


def parse_settings(argv=None):
    """The flags parsed once, defaults filled in (the demo's data made), every value checked."""
    parser = get_args_parser()
    flags = parser.parse_args(argv)
    tf_setup.quiet_python_logging(flags.verbose)
    parser_defaults = {name: parser.get_default(name) for name in vars(flags)}
    return run_settings.from_flags(flags, parser_defaults, demo.make_demo_lists,
                                   given=parser.given_flags(argv))


def fine_tune(settings):
    """The TensorFlow 1.x recipe: the iterator, the model, the loss, the optimizer and train_op, the
    summaries, the saver; then a session, and the epochs (`train_epochs`)."""
    with runs.started(settings) as run:  # workers, the run folder's lock, its state, the weights file
        train_data, val_data, steps_per_epoch = inputs.make_datasets(settings, run.order_seed, run.workers)
        config = runs.training_config(settings, run.gpu, steps_per_epoch, train_data.labels,
                                      run.order_seed)

        # -- the iterator: one for both lists, on the model's device (the CPU decodes and resizes;
        #    on a GPU the uint8 batches are copied there ahead of the step and normalised there);
        #    each pass over a list starts with its init op
        images, labels, training_init_op, validation_init_op = inputs.device_batches(
            train_data.data, val_data.data, config.model_device or inputs.PIPELINE_DEVICE)
        keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')  # steps feed 1 - dropout

        # -- the model and the loss of each image (cross-entropy, label smoothing, class weights):
        #    a function of a batch, because --num_gpus replicas each build it on their part of it
        def model_and_loss(images, labels, input_layer=None):
            model = AlexNet(images, keep_prob, settings.num_classes, settings.skip_layers,
                            settings.weights_path, input_layer)
            loss = training_graph.loss(model.fc8, labels, config)
            return model, loss

        # -- the optimizer and train_op (the batch's mean loss, the trained layers' gradients, a NaN
        #    guard, the update), and the summaries; several workers build them in their strategy
        def optimizer_and_train_op():
            optimizer = training_graph.optimizer(config)  # the rate's schedule, SGD or momentum
            graph = training_graph.train_ops(model_and_loss, images, labels, keep_prob, optimizer,
                                             config)
            return training_graph.summaries(graph, config)
        graph = run.workers.replicated(optimizer_and_train_op)
        # Each --unfreeze_at phase's graph; phases on cached pool5 features get fc6-fc8 there.
        setup = inputs.training_setup(settings, graph, model_and_loss, config, train_data, val_data,
                                      labels, (training_init_op, validation_init_op), run.order_seed)

        # -- the saver (epoch, best and interrupted checkpoints) and the summary writer; on workers
        #    other than the chief they write nothing
        keeper = checkpoints.CheckpointKeeper(settings.checkpoint_path, settings.keep_checkpoints,
                                              writes=run.workers.is_chief)
        writer = (tf.summary.FileWriter(runs.events_folder(settings, run.state)) if run.workers.is_chief
                  else summaries.NoWriter())
        runs.describe_data(settings, train_data, val_data, steps_per_epoch, run.class_names, config)

        # -- the session: the weights restored or loaded (the feature cache filled), the epochs
        with writer, tf.Session(run.workers.session_target, config=run.session_config) as session:
            run.begin(session, setup, keeper, writer, config)
            return train_epochs(session, settings, run, setup, keeper, writer, steps_per_epoch)


def train_epochs(session, settings, run, setup, keeper, writer, steps_per_epoch):
    """The epoch loop: train, then validate, summarise and save; stop early, or on a signal after a
    save."""
    steps_done = run.steps_done  # of a resumed epoch
    for epoch in range(run.state.epochs_completed + 1, settings.num_epochs + 1):
        current = run.phase(setup, epoch)  # --unfreeze_at: the graph of the epoch's phase
        current.train.start(session, epoch, steps_done)  # training_init_op (or the cache's)
        trained = train_one_epoch(run.workers.bounded(session), settings, run, current.graph,
                                  current.train, writer, epoch, steps_done, steps_per_epoch)
        if not trained.finished:
            return run.stopped(session, keeper)
        if run.end_epoch(session, current, keeper, writer, epoch, trained, steps_done > 0):
            break  # early stopping
        steps_done = 0
    return run.finish(writer)


def train_one_epoch(session, settings, run, graph, batches, writer, epoch, first_step,
                    steps_per_epoch):
    """SGD steps first_step+1..steps_per_epoch: a runs.EpochTraining (finished False when a stop
    signal came before the last step). On several workers `session` waits for the others at most
    --collective_timeout, the numbers are the whole cluster's, and a signal to any of them stops
    all after the same step."""
    # The rate is fetched in the step's own run call: the value this step's update used.
    fetches = {'train': graph.train_op, 'loss': graph.loss, 'accuracy': graph.accuracy,
               'count': graph.batch_count, 'step': graph.global_step, 'rate': graph.learning_rate}
    feed = {graph.keep_prob: settings.keep_probability, graph.training: True}
    losses, accuracies, rates, images = [], [], [], 0
    start, finished = time.perf_counter(), True
    # Fewer batches than planned (unreadable images skipped) end the steps early; a bad image or a
    # NaN loss ends the run in one line.
    with progress.EpochProgress(epoch, settings.num_epochs, steps_per_epoch,
                                settings.display_step) as bar, \
            loop.step_errors(batches, lambda: runs.nan_message(settings, run.state, epoch, step)):
        for step in range(first_step + 1, steps_per_epoch + 1):
            if run.workers.agree_to_stop(session, run.stop):
                finished = False
                break
            # Summaries ride along in the same run call as the step: no second forward pass.
            with_summary = step % settings.display_step == 0 or step == 1
            result = session.run({**fetches, 'summary': graph.train_summaries} if with_summary
                                 else fetches, feed)
            if with_summary:
                writer.add_summary(result['summary'], result['step'])
            if result['step'] == 1:
                bar.note(loop.first_loss_note(result['loss'], settings.num_classes))
            losses.append(result['loss'])
            accuracies.append(result['accuracy'])
            rates.append(float(result['rate']))
            images += int(result['count'])
            bar.update(step, float(np.mean(losses[-settings.display_step:])),
                       float(np.mean(accuracies[-settings.display_step:])),
                       images / (time.perf_counter() - start))
    seconds = time.perf_counter() - start
    loss_sum, accuracy_sum, steps, images = run.workers.epoch_totals(
        session, [np.sum(losses), np.sum(accuracies), len(losses), images])
    return runs.EpochTraining(loss_sum / steps if steps else float('nan'),
                              accuracy_sum / steps if steps else float('nan'),
                              images / seconds if images else 0.0, int(images), rates, finished)


def main(argv=None):
    settings = parse_settings(argv)
    tf.disable_v2_behavior()
    with tf.Graph().as_default():  # a fresh graph per run, also when called twice in one process
        return lr_finder.find_learning_rate(settings) if settings.find_lr else fine_tune(settings)


if __name__ == '__main__':
    sys.exit(cli.run(main))
