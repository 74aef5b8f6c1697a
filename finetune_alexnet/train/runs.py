"""A run's life around the epoch loop: its start (workers, lock, new or resumed state, starting
weights), what it tells the user before training, and what it records after each epoch."""
import collections
import contextlib
import dataclasses
import math
import os

import numpy as np
import tensorflow.compat.v1 as tf

import alexnet
from finetune_alexnet import checkpoints
from finetune_alexnet import model_info
from finetune_alexnet import run_folder
from finetune_alexnet import run_state
from finetune_alexnet import signals
from finetune_alexnet import tf_setup
from finetune_alexnet import tfrecords
from finetune_alexnet import weight_files
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.train import distribute
from finetune_alexnet.train import feature_cache
from finetune_alexnet.train import graph as training_graph
from finetune_alexnet.train import inputs
from finetune_alexnet.train import loop
from finetune_alexnet.train import progress
from finetune_alexnet.train import summaries


def use_gpu(settings):
    """True to run the model on a GPU (tf_setup.use_gpu); refuses --xla with --seed on a GPU."""
    gpu = tf_setup.use_gpu(settings.device, settings.num_gpus)
    if gpu and settings.xla and settings.seed is not None:
        # XLA's deterministic GPU ops may refuse max pooling's gradient (a select-and-scatter); no
        # GPU has yet shown that it compiles (bench/gpu_check.py tries).
        raise ToolkitError("--xla with --seed on a GPU: XLA's deterministic GPU ops are not known to "
                           "compile max pooling's gradient; drop --xla, or --seed for a run that "
                           'need not repeat bit for bit')
    return gpu


def read_class_names(settings):
    """The names of the classes.txt in use (settings.py found it), else None."""
    return (model_info.read_class_names_file(settings.class_names, settings.num_classes)
            if settings.class_names else None)


def events_folder(settings, state):
    """Where the run's TensorBoard events go: its run folder, or its sub-folder of --filewriter_path."""
    if settings.filewriter_path:
        return os.path.join(settings.filewriter_path, state.run_name)
    return settings.checkpoint_path


def runs_folder(settings):
    """The folder to give `tensorboard --logdir`: the one that holds this run beside the others."""
    if settings.filewriter_path:
        return settings.filewriter_path
    return os.path.dirname(os.path.abspath(settings.checkpoint_path))


def shaping_settings(settings):
    """What shapes a run and must not change on --resume (the recipe's options too, a cosine
    schedule's length included); kept in run_state.json."""
    return {'batch_size': settings.batch_size, 'num_gpus': settings.num_gpus,
            'train_file_sha256': tfrecords.data_digest(settings.train_file),
            'val_file_sha256': tfrecords.data_digest(settings.val_file),
            'num_classes': settings.num_classes, 'train_layers': list(settings.train_layers),
            'skip_layers': list(settings.skip_layers), 'optimizer': settings.optimizer,
            'augment': settings.augment, 'cache_features': settings.use_feature_cache,
            'label_smoothing': settings.label_smoothing, 'ema_decay': settings.ema_decay,
            'lr_schedule': settings.lr_schedule, 'warmup_epochs': settings.warmup_epochs,
            'cosine_epochs': settings.num_epochs if settings.lr_schedule == 'cosine' else None,
            'mixup': settings.mixup, 'cutmix': settings.cutmix, 'unfreeze_at': settings.unfreeze_at,
            'unfreeze_layers': list(settings.unfreeze_layers) if settings.unfreeze_at else None}


# What a run started before the recipe's options existed trained with: --resume compares against these.
RECIPE_DEFAULTS = {'label_smoothing': 0.0, 'ema_decay': 0.0, 'lr_schedule': 'step',
                   'warmup_epochs': 0.0, 'cosine_epochs': None, 'mixup': 0.0, 'cutmix': 0.0,
                   'unfreeze_at': 0, 'unfreeze_layers': None}


def new_or_resumed_state(settings, writes=True):
    """(state, resumed): the run in --checkpoint_path to resume (its state naming the checkpoint to
    restore), or a new run's first state. Refuses to overwrite a run, to resume none, or to resume
    with other settings than the run's. Files a crash left half-written are removed, unless
    `writes` is False (a worker other than the chief, which owns the run folder)."""
    directory = settings.checkpoint_path
    state = run_state.read(directory)
    if state and not settings.resume:
        raise ToolkitError(f'{directory} already holds a run (epoch {state.epochs_completed}); pass '
                           '--resume to continue it, or choose another --checkpoint_path')
    if settings.resume and not state:
        raise ToolkitError(f'{directory}: no run to resume (no {run_state.FILE_NAME})')
    if state:
        checkpoints.check_same_settings(directory, state.settings, shaping_settings(settings),
                                        RECIPE_DEFAULTS)
        latest, best_epoch = state.latest_checkpoint, state.best_epoch
        _, state = checkpoints.restorable_checkpoint(directory, state)
        if not writes:
            return state, True
        if state.latest_checkpoint != latest:  # fell back: the later epochs will be trained again
            checkpoints.repair_best(directory, best_epoch, state)
            progress.write_metrics(os.path.join(directory, 'metrics.jsonl'), state.history)
        run_folder.remove_stale_files(directory, state.latest_checkpoint)
        return state, True
    if writes:
        run_folder.remove_stale_files(directory, None)
    if settings.filewriter_path:  # a sub-folder of its own there, named by its settings
        name = summaries.safe_run_name(settings.run_name) if settings.run_name else \
            summaries.short_run_name(settings)
        name = summaries.new_run_folder(settings.filewriter_path, name) if writes else name
    else:  # TensorBoard names the run after its folder
        name = summaries.safe_run_name(os.path.basename(os.path.abspath(directory)))
    state = run_state.RunState(args=dataclasses.asdict(settings), settings=shaping_settings(settings),
                               run_name=name, order_seed=new_order_seed(settings))
    return state, False


def new_order_seed(settings):
    """The seed of every epoch's shuffle order: --seed, else drawn once (run_state.json keeps it,
    so a resumed run replays its own epochs' orders)."""
    return settings.seed if settings.seed is not None else int(np.random.randint(2**31))


def initial_weights(settings, resumed):
    """The weights file's layers when a new run loads some (None: resumed, every layer fresh, or
    warm-started from --init_checkpoint), read and checked once, before anything is built."""
    if resumed:
        return None
    if settings.init_checkpoint:
        checkpoints.check_intact(settings.init_checkpoint)  # a damaged file named, not a traceback later
        return None
    if set(settings.skip_layers) == set(alexnet.TRAINABLE_LAYERS):
        return None
    layers = weight_files.load_weights(settings.weights_path)
    alexnet.check_classifier_fits(layers, settings.num_classes, settings.skip_layers,
                                  settings.weights_path)
    return layers


def load_starting_weights(session, settings, weights_model, layers):
    """A new run's weights: the weights file's layers, or --init_checkpoint's model (not its
    optimizer or step; its moving averages, if it kept them); --skip_layers stay fresh."""
    if layers is not None:
        weights_model.load_initial_weights(session, layers)
    if settings.init_checkpoint:
        variables = {variable.op.name: variable for layer, kinds in weights_model.variables.items()
                     if layer not in settings.skip_layers for variable in kinds.values()}
        checkpoints.check_fits(
            settings.init_checkpoint, {name: v.shape.as_list() for name, v in variables.items()},
            purpose='--init_checkpoint',
            advice='add the layers that differ (fc8 for another --num_classes) to --skip_layers')
        stored = model_info.stored_names(settings.init_checkpoint, {'ema': True}, variables)
        variables = {name: variables[variable] for name, variable in stored.items()}
        tf.train.Saver(variables).restore(session, settings.init_checkpoint)


def class_weight_values(settings, train_labels):
    """The loss weight of each class (None: unweighted), from --class_weights and the training labels."""
    if settings.class_weights == 'none':
        return None
    if settings.class_weights == 'balanced':
        return training_graph.balanced_class_weights(train_labels, settings.num_classes)
    return tuple(settings.class_weights)


def training_config(settings, gpu, steps_per_epoch, train_labels=None, order_seed=0):
    """The training graph's settings; `order_seed` (the run's) seeds mixup's and CutMix's draws."""
    return training_graph.TrainingConfig(
        **{name: getattr(settings, name) for name in CONFIG_SETTINGS},
        total_steps=settings.num_epochs * steps_per_epoch,
        warmup_steps=warmup_steps(settings.warmup_epochs, steps_per_epoch), mix_seed=order_seed,
        unfreeze_layers=settings.unfreeze_layers if settings.unfreeze_at else (),
        class_weights=class_weight_values(settings, train_labels),
        decay_steps=settings.lr_decay_epochs * steps_per_epoch, decay_factor=settings.lr_decay_factor,
        num_devices=settings.num_gpus, use_gpu=gpu, model_device='/gpu:0' if gpu else '/cpu:0',
        # The graph on images trains these; those on cached features get a graph of their own.
        phases=tuple(phase for phase in settings.phases if not settings.phase_uses_cache(phase)))


# Settings that TrainingConfig takes as they are.
CONFIG_SETTINGS = ('label_smoothing', 'ema_decay', 'lr_schedule', 'mixup', 'cutmix', 'lr_mult',
                   'num_classes', 'train_layers', 'skip_layers', 'weights_path', 'learning_rate',
                   'optimizer', 'momentum', 'weight_decay', 'num_workers', 'mixed_precision')


def warmup_steps(epochs, steps_per_epoch):
    """--warmup_epochs in steps: rounded, and at least one step when asked for at all."""
    return max(1, round(epochs * steps_per_epoch)) if epochs else 0


def describe_data(settings, train_data, val_data, steps_per_epoch, class_names, config):
    """What the run trains on, printed before it starts: images per class, class weights, sizes."""
    names = model_info.class_names_or_placeholders(class_names, settings.num_classes)
    print_label_counts(train_data.labels, names)
    if config.class_weights is not None:
        print('class weights of the loss: ' + ', '.join(
            f'{name} {weight:.3g}' for name, weight in zip(names, config.class_weights)))
    print(f'{settings.num_classes} classes (from {settings.num_classes_source}), '
          f'{train_data.data_size} training images ({steps_per_epoch} steps of {settings.batch_size} '
          f'per epoch), {val_data.data_size} validation images; training '
          f'{",".join(settings.train_layers)} on {"GPU" if config.use_gpu else "CPU"}')
    if cluster := settings.cluster:
        print(f'{cluster.name(cluster.index)} of {cluster.num_workers}'
              f'{" (the chief: it writes the run folder)" if cluster.is_chief else ""}: '
              f'{settings.batch_size // cluster.num_workers} images of every batch, gradients '
              f'all-reduced by {distribute.communication(config.use_gpu).value}')
    if settings.unfreeze_at:
        print(f'from epoch {settings.unfreeze_at} on (phase 2): training '
              f'{",".join(settings.phase_layers(2))}')


def print_label_counts(labels, names):
    counts = np.bincount(labels, minlength=len(names))
    print('training images per class: ' + ', '.join(
        f'{names[label]} {count}' for label, count in enumerate(counts)))
    share = counts.max() / counts.sum()
    if share > 0.8:
        print(f'warning: {names[int(counts.argmax())]} holds {share:.0%} of the training images; '
              'accuracy will look good even for a model that always answers it: try '
              '--class_weights balanced, and watch the per-class recall in TensorBoard')


def agreed_settings(settings, gpu):
    """What every worker of a run must share: what shapes the run (its data's digests included),
    every number of its training, the kind of device, and whether it warm-starts (the weights
    themselves are compared once loaded)."""
    shared = {name: value for name, value in dataclasses.asdict(settings).items() if name not in NOT_SHARED}
    return {**shaping_settings(settings), **shared, 'gpu': gpu, 'warm_start': bool(settings.init_checkpoint)}


# Worker-specific settings, and paths that may differ between machines holding the same data.
NOT_SHARED = ('worker_hosts', 'task_index', 'cluster', 'collective_timeout', 'verbose',
              'train_file', 'val_file',
              'class_names', 'weights_path', 'demo_dir', 'checkpoint_path', 'filewriter_path',
              'cache_dir', 'init_checkpoint', 'changed_settings', 'device', 'num_classes_source')


def epoch_rates(rates, session, graph):
    """The learning rate an epoch's steps trained with, for its record: `learning_rate` (the first
    step's), and `learning_rate_last` where it changed. An epoch that ran no step in this process
    takes the schedule's rate at the global step its last step started from."""
    if not rates:
        last_step = int(session.run(graph.global_step)) - 1
        rates = [float(session.run(graph.learning_rate, {graph.global_step: max(last_step, 0)}))]
    if rates[-1] != rates[0]:
        return {'learning_rate': rates[0], 'learning_rate_last': rates[-1]}
    return {'learning_rate': rates[0]}


def aligned_paths(paths, outputs):
    """The validation images' paths, or blanks when skipped unreadable images would shift them
    against the outputs."""
    return paths if len(outputs.labels) == len(paths) else [''] * len(outputs.labels)


def nan_message(settings, state, epoch, step):
    """What a run whose loss became NaN at `step` can do, for the error that ends it."""
    if state.latest_checkpoint:
        last_good = (f'continue from the last good checkpoint ({state.latest_checkpoint} in '
                     f'{settings.checkpoint_path}) with --resume --learning_rate and a lower rate')
    else:
        last_good = 'no checkpoint was saved yet: start the run again with a lower --learning_rate'
    return (f'the loss became NaN or infinite at epoch {epoch}, step {step}: lower the learning rate '
            f'(now {settings.learning_rate:g}); {last_good}')


# One epoch's training, as finetune.py's train_one_epoch sums it up (the whole cluster's); finished:
# False when a stop signal came first.
EpochTraining = collections.namedtuple('EpochTraining', 'loss accuracy images_per_second images '
                                                        'rates finished')


@contextlib.contextmanager
def started(settings):
    """The run, started: its device, its workers (distribute.start), the run folder's lock, stop
    signals caught, its state (new or resumed), the shuffle seed the workers agree on, the weights
    file read, seeding. Feature files the run spilled are removed when it ends."""
    gpu = use_gpu(settings)
    class_names = read_class_names(settings)
    workers = distribute.start(settings.cluster, gpu, settings.collective_timeout)
    session_config = workers.session_config(tf_setup.session_config(
        gpu, xla=settings.xla, mixed_precision=settings.mixed_precision,
        logical_cpus=settings.num_gpus if not gpu and settings.num_gpus > 1 else None))
    # Signals are caught from here on, so a SIGTERM while the weights load still ends in one line.
    with workers.lock(settings.checkpoint_path), signals.StopRequests() as stop:
        state, resumed = new_or_resumed_state(settings, writes=workers.is_chief)
        state.order_seed = workers.start(state.order_seed, agreed_settings(settings, gpu))
        run = Run(settings, gpu, class_names, workers, session_config, stop, state, resumed,
                  initial_weights(settings, resumed))
        with loop.seeded(settings.seed):
            try:
                yield run
            finally:
                for path in run.setup.feature_files if run.setup else ():  # this run's alone
                    feature_cache.remove_cache_file(path)


class Run:
    """A started run (`started`): what it does once its session is open (`begin`), at the end of
    each epoch (`end_epoch`), when a signal stops it (`stopped`) and at its end (`finish`)."""

    def __init__(self, settings, gpu, class_names, workers, session_config, stop, state, resumed,
                 layers):
        self.settings, self.gpu, self.class_names = settings, gpu, class_names
        self.workers, self.session_config, self.stop = workers, session_config, stop
        self.state, self.resumed, self._layers = state, resumed, layers
        self.order_seed = state.order_seed  # every epoch's shuffle order (the chief's, on workers)
        self.setup = None
        self.outputs = None  # the last validation pass's, for the projector
        self.steps_done = 0  # steps of the first epoch trained before a resume

    def begin(self, session, setup, keeper, writer, config):
        """The variables initialised; the checkpoint restored, or the starting weights loaded and
        the graph and hyper-parameters summarised; every worker's start compared; the feature cache
        filled if the first epoch trains on it; a warm start's validation."""
        settings, state, workers = self.settings, self.state, self.workers
        self.setup = setup
        workers.bounded(session).run(tf.global_variables_initializer())
        if self.resumed:
            keeper.restore(session, os.path.join(settings.checkpoint_path, state.latest_checkpoint),
                           state)
            print(f'resumed {state.latest_checkpoint} at step {session.run(setup.graph.global_step)}')
        else:
            writer.add_graph(session.graph)
            for summary in summaries.hparams_summaries(settings, state.run_name,
                                                       class_weight_values=config.class_weights):
                writer.add_summary(summary, 0)
            load_starting_weights(session, settings, setup.weights_model, self._layers)
            loop.start_averages(session, setup.graph)  # --ema_decay: from these weights
            if keeper.writes:
                model_info.write_model_info(
                    settings.checkpoint_path, settings.num_classes, self.class_names,
                    center_crop=settings.augment, ema=bool(settings.ema_decay))
        step = int(session.run(setup.graph.global_step))
        workers.check_same_start(session, step)
        self._layers = None  # 233 MB no longer needed: the variables hold the weights now
        print(f'open TensorBoard with: tensorboard --logdir {runs_folder(settings)} '
              f'(this run: {state.run_name})')
        first = setup.for_phase(settings.phase_of(state.epochs_completed + 1))
        if first.fill_feature_cache:  # pool5 once, if the next epoch's phase trains on it
            first.fill_feature_cache(session)
        if settings.init_checkpoint and not self.resumed:  # the warm start's numbers, as a check
            loss, accuracy, _ = loop.validate(session, setup.graph, setup.val, workers=workers)
            state.init_val_accuracy = accuracy
            print(f'warm start from {settings.init_checkpoint}: validation loss {loss:.4f} acc '
                  f'{accuracy:.4f} before training')
        # A resumed epoch starts its pinned order just past the batches already trained on. Counted
        # from the run state, not global_step // steps_per_epoch: with --skip_bad_images an epoch
        # can end a step or more early.
        self.steps_done = step - state.last_step

    def phase(self, setup, epoch):
        """The graph and batches of epoch `epoch`'s phase; run_state.json records the phase."""
        if self.settings.unfreeze_at:
            self.state.phase = self.settings.phase_of(epoch)
        return setup.for_phase(self.settings.phase_of(epoch))

    def stopped(self, session, keeper):
        """A stop signal came: the chief saves the run where it is; the exit status."""
        step = int(session.run(self.setup.graph.global_step))
        prefix = keeper.save_interrupted(session, self.state, step)
        if prefix:
            print(f'saved {prefix} at step {step}; continue with --resume (and the same flags)')
        else:
            print(f'stopped at step {step}; the chief saves the run: continue with --resume')
        return self.stop.exit_status

    def end_epoch(self, session, current, keeper, writer, epoch, trained, resumed_epoch):
        """After epoch `epoch` trained (`trained`, an EpochTraining) on `current` (its phase's
        TrainingSetup): validation, the epoch's record, pictures, checkpoint and line. True when
        early stopping ends the run."""
        settings, state = self.settings, self.state
        notes = []
        if settings.skip_bad_images and current.image_labels is not None and not resumed_epoch:
            notes.append(current.train.data.describe_skipped(
                trained.images + loop.count_remaining_images(session, current.image_labels)))
        step = int(session.run(current.graph.global_step))
        outputs = summaries.ValidationOutputs(
            keep_features=summaries.PROJECTOR_MAX_IMAGES if settings.projector else 0)
        val_loss, val_accuracy, val_count = loop.validate(session, current.graph, current.val,
                                                          outputs, current.pictures, self.workers)
        if settings.skip_bad_images:
            notes.append(current.val.data.describe_skipped(val_count))
        record = {'epoch': epoch, 'step': step, 'train_loss': trained.loss,
                  'train_accuracy': trained.accuracy, 'val_loss': val_loss,
                  'val_accuracy': val_accuracy, 'val_images': val_count,
                  **epoch_rates(trained.rates, session, current.graph),
                  'images_per_second': trained.images_per_second}
        improved = state.best_val_accuracy is None or val_accuracy > state.best_val_accuracy
        if improved:
            state.best_val_accuracy, state.best_epoch = val_accuracy, epoch
        state.best_val_loss = min(state.best_val_loss or math.inf, val_loss)
        if state.phase is not None:
            record['phase'] = state.phase
        state.epochs_completed = epoch
        state.history.append(record)
        if keeper.writes:  # the chief: the pictures, scalars, checkpoint, metrics line and curves
            writer.add_summary(summaries.validation_summary(
                outputs, aligned_paths(inputs.image_paths(current.val.data), outputs),
                self.class_names, settings.num_classes),
                step)
            scalars = {'validation/cross_entropy': val_loss, 'validation/accuracy': val_accuracy,
                       'images_per_second': trained.images_per_second,
                       'hparams/best_val_accuracy': state.best_val_accuracy,
                       'hparams/best_val_loss': state.best_val_loss}
            writer.add_summary(tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=float(value))
                                                 for tag, value in scalars.items()]), step)
            writer.flush()
            keeper.save_epoch(session, epoch, state, best=improved)
            progress.append_metrics(os.path.join(keeper.directory, 'metrics.jsonl'), record)
            progress.plot_curves(state.history, os.path.join(keeper.directory, 'curves.png'))
        print(f'epoch {epoch}: train loss {trained.loss:.4f} acc {trained.accuracy:.3f}, validation '
              f'loss {val_loss:.4f} acc {val_accuracy:.4f}{" (best)" if improved else ""}')
        for note in filter(None, notes):
            print(f'note: {note}')
        self.outputs = outputs
        if settings.early_stopping and epoch - state.best_epoch >= settings.early_stopping:
            print(f"early stopping after epoch {epoch}: no better validation accuracy for "
                  f"{settings.early_stopping} epoch(s) since epoch {state.best_epoch}")
            return True
        return False

    def finish(self, writer):
        """The projector's embedding (--projector), the HParams run's end, the last line; 0."""
        settings, state, outputs = self.settings, self.state, self.outputs
        if settings.projector and outputs is not None and outputs.features is not None:
            paths = aligned_paths(inputs.image_paths(self.setup.val.data), outputs)
            summaries.write_projector(writer.get_logdir(), outputs.features, paths, outputs.labels,
                                      outputs.probabilities.argmax(axis=1), self.class_names,
                                      settings.num_classes)
            print(f'projector: fc7 features of {len(outputs.features)} validation images in '
                  f'{writer.get_logdir()}')
        writer.add_summary(summaries.hparams_end_summary(), state.last_step)
        written_by = '' if self.workers.is_chief else ' (written by the chief)'
        events = f'; TensorBoard events in {writer.get_logdir()}' if settings.filewriter_path else \
            ', TensorBoard events'
        print(f"done: best validation accuracy {state.best_val_accuracy:.4f} at epoch "
              f"{state.best_epoch}; checkpoints, metrics.jsonl, curves.png{events} in "
              f"{settings.checkpoint_path}{written_by}")
        return 0
