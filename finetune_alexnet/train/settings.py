"""A fine-tuning run's settings: the flags parsed once (`from_flags`), defaults filled in, every value
checked, frozen. What a run learns while it starts (its shuffle seed, its TensorBoard folder) is the
run's state (run_state.py), not a setting.
"""
import argparse
import dataclasses
import math
import os
import tempfile
from typing import Optional, Tuple

from alexnet import TRAINABLE_LAYERS
import datagenerator
from datagenerator import MAX_CLASSES
from finetune_alexnet import model_info
from finetune_alexnet import run_folder
from finetune_alexnet import run_state
from finetune_alexnet.image_lists import MAX_SEED
from finetune_alexnet import tfrecords
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.train import distribute
from finetune_alexnet.train import feature_cache
from finetune_alexnet.train import graph as training_graph
from finetune_alexnet.train import summaries

DEFAULT_ROOT = os.path.join(tempfile.gettempdir(), 'finetune_alexnet')
# Every run is one folder (checkpoints, metrics, curves, TensorBoard events) in a folder of runs, so
# `tensorboard --logdir` on the runs folder shows them side by side. A run given no --checkpoint_path
# gets a new folder here, named like its TensorBoard run (date-time and changed settings).
DEFAULT_RUNS = os.path.join(DEFAULT_ROOT, 'runs')
# Flags whose default depends on whether the demo runs: the parser leaves them None when not given.
RUN_DEFAULTS = {'num_epochs': 10, 'batch_size': 128, 'display_step': 20, 'optimizer': 'sgd',
                'train_layers': ('fc8', 'fc7', 'fc6'), 'skip_layers': ('fc8',),
                'unfreeze_layers': TRAINABLE_LAYERS}
# The demo has a run folder of its own, replaced by each demo run, so the README's first command can be
# run again and again; these settings learn its two classes within a few epochs on a CPU.
DEMO_DEFAULTS = {'num_epochs': 5, 'batch_size': 32, 'display_step': 3, 'seed': 0,
                 'checkpoint_path': os.path.join(DEFAULT_RUNS, 'demo')}
# Without pretrained weights the demo trains every layer from random initialisation.
DEMO_FROM_SCRATCH = {'optimizer': 'momentum', 'train_layers': TRAINABLE_LAYERS,
                     'skip_layers': TRAINABLE_LAYERS}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every flag of finetune.py, resolved. Lists are tuples, so a Settings is a value."""
    train_file: str
    val_file: str
    num_classes: int
    class_names: Optional[str]       # the classes.txt in use: --class_names, or the one beside the lists
    augment: bool
    skip_bad_images: bool
    max_pixels: int
    demo: bool
    demo_dir: str
    weights_path: str
    train_layers: Tuple[str, ...]
    skip_layers: Tuple[str, ...]
    dropout_rate: float
    init_checkpoint: Optional[str]   # a checkpoint prefix (a run folder resolves to its best.ckpt)
    learning_rate: float
    num_epochs: int
    batch_size: int
    optimizer: str
    momentum: float
    weight_decay: float
    lr_decay_epochs: int
    lr_decay_factor: float
    class_weights: object            # 'none', 'balanced' or a tuple of one weight per class
    lr_mult: Tuple[Tuple[str, float], ...]
    early_stopping: int
    find_lr: Optional[str]
    find_lr_steps: int
    seed: Optional[int]
    filewriter_path: Optional[str]   # None: the events live in the run folder (--checkpoint_path)
    run_name: Optional[str]
    projector: bool
    checkpoint_path: str
    display_step: int
    keep_checkpoints: int
    resume: bool
    device: str
    num_gpus: int
    xla: bool
    mixed_precision: bool
    cache_features: str
    cache_dir: str
    cache_max_gb: float
    # Today's fine-tuning recipe (docs/training.md), each off by default.
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    lr_schedule: str = 'step'
    warmup_epochs: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    unfreeze_at: int = 0                 # the first epoch of phase 2 (0: one phase)
    unfreeze_layers: Tuple[str, ...] = TRAINABLE_LAYERS
    # Several workers (docs/distributed.md): --worker_hosts/--task_index, else TF_CONFIG.
    worker_hosts: Optional[str] = None
    task_index: Optional[int] = None
    collective_timeout: float = distribute.DEFAULT_TIMEOUT
    cluster: Optional[distribute.Cluster] = None  # None: one machine
    verbose: bool = False
    changed_settings: Tuple[str, ...] = ()  # settings that differ from their default, for run names
    num_classes_source: str = '--num_classes'  # where the class count came from, for messages

    @property
    def keep_probability(self):
        """AlexNet's keep_prob in a training step: the probability of keeping a unit."""
        return 1.0 - self.dropout_rate

    @property
    def use_feature_cache(self):
        """Train fc6-fc8 from pool5 features computed once (every conv layer frozen, no --augment,
        no mixing), in phase 1."""
        return self.phase_uses_cache(1)

    @property
    def phases(self):
        """(1,), or (1, 2) with --unfreeze_at."""
        return (1, 2) if self.unfreeze_at else (1,)

    def phase_of(self, epoch):
        """The phase epoch `epoch` trains in: 2 from --unfreeze_at on."""
        return 2 if self.unfreeze_at and epoch >= self.unfreeze_at else 1

    def phase_layers(self, phase):
        return training_graph.phase_layers(self.train_layers, self.unfreeze_layers, phase)

    def phase_uses_cache(self, phase):
        """Whether phase `phase` trains from cached pool5 features: wherever it can, unless
        --cache_features off (`check` refuses --cache_features on where phase 1 cannot)."""
        return self.cache_features != 'off' and self.num_workers == 1 and feature_cache.can_cache(
            self.phase_layers(phase), self.augment, self.mixup, self.cutmix)

    @property
    def num_workers(self):
        return self.cluster.num_workers if self.cluster else 1


def layer_list(text):
    """--train_layers / --skip_layers: a comma list of layers, 'all' or 'none'."""
    names = [name.strip() for name in text.split(',') if name.strip()]
    if names == ['all']:
        return TRAINABLE_LAYERS
    if names == ['none'] or names == []:
        return ()
    unknown = [name for name in names if name not in TRAINABLE_LAYERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown layer {', '.join(unknown)}; valid: {', '.join(TRAINABLE_LAYERS)} or 'all'")
    return tuple(names)


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


def from_flags(flags, parser_defaults, demo_lists, given=frozenset()):
    """The run's Settings from parsed flags: the demo's or the run's defaults for what was not given.
    `parser_defaults` maps each flag to the parser's default; `demo_lists(flags)` makes the demo's
    data ((train_file, val_file, num_classes)) when the demo runs. `given` names the flags the
    command line gave: with --resume, every other flag takes the resumed run's own value."""
    unfreeze_layers_given = getattr(flags, 'unfreeze_layers', None) is not None
    cluster = distribute.cluster_from(flags.worker_hosts, flags.task_index)
    if flags.resume:
        flags = with_run_flags(flags, given, writes=cluster is None or cluster.is_chief)
    values = {field.name: getattr(flags, field.name, field.default)
              for field in dataclasses.fields(Settings)
              if field.name not in ('changed_settings', 'cluster', 'num_classes_source')}
    values['cluster'] = cluster
    values['demo'] = bool(flags.demo or not (flags.train_file or flags.val_file))
    if flags.init_checkpoint and flags.skip_layers is None:
        values['skip_layers'] = ()  # a warm start loads every layer the checkpoint has
    demo_defaults = {}
    if values['demo']:
        if values['cluster']:
            # Each worker would write the demo's images and clear its earlier run: not the chief's alone.
            raise ToolkitError('the demo needs one machine: give every worker the same --train_file '
                               'and --val_file')
        train_file, val_file, num_classes = demo_lists(flags)
        values.update(train_file=train_file, val_file=val_file, num_classes=num_classes)
        demo_defaults = dict(DEMO_DEFAULTS)
        if not os.path.exists(flags.weights_path):
            print(f"note: {flags.weights_path} not found, so the demo trains every layer from random "
                  "initialisation (python get_weights.py downloads the pretrained weights)")
            demo_defaults.update(DEMO_FROM_SCRATCH)
    defaults = {**parser_defaults, **RUN_DEFAULTS, **demo_defaults}
    asked_batch_size = values['batch_size']
    for name, value in defaults.items():
        if name in values and values[name] is None:
            values[name] = value
    for name in ('train_layers', 'skip_layers', 'lr_mult', 'unfreeze_layers'):
        values[name] = tuple(values[name])
    if unfreeze_layers_given and not values['unfreeze_at']:
        raise ToolkitError('--unfreeze_layers needs --unfreeze_at (the epoch the second phase starts)')
    check_data_files(values)
    train_labels = classes_from_data(values, given_by='num_classes' in given or flags.resume)
    defaults['num_classes'] = values['num_classes']  # what the data say is the default, not a change
    images = len(train_labels)
    if asked_batch_size is None and images < values['batch_size']:  # the largest batch they fill
        fitting = largest_power_of_two(images)
        print(f"note: {values['train_file']} holds {images} training images, fewer than the default "
              f"--batch_size {values['batch_size']}: using --batch_size {fitting}")
        values['batch_size'] = defaults['batch_size'] = fitting
    elif asked_batch_size is not None and asked_batch_size > images:
        raise ToolkitError(f'--batch_size {asked_batch_size} is more than the {images} '
                           f"training images of {values['train_file']}: use --batch_size "
                           f'{largest_power_of_two(images)}, or leave it out')
    check(values)
    values['changed_settings'] = tuple(name for name, value in values.items()
                                       if name in defaults and name not in CLUSTER_FLAGS
                                       and _differs(name, value, defaults[name]))
    if values['checkpoint_path'] is None:
        values['checkpoint_path'] = new_run_folder(values)
    if cluster is None or cluster.is_chief:  # only the chief writes the run folder (and events)
        run_folder.check_output_folder(values['checkpoint_path'], '--checkpoint_path')
        if values['filewriter_path']:
            run_folder.check_output_folder(values['filewriter_path'], '--filewriter_path')
    if values['init_checkpoint']:
        values['init_checkpoint'] = model_info.resolve_checkpoint(values['init_checkpoint'])
    return Settings(**values)


# What --resume never takes from the run: where this worker stands, how it logs, the flag itself.
NOT_REMEMBERED = ('resume', 'checkpoint_path', 'verbose', 'worker_hosts', 'task_index',
                  'collective_timeout', 'cluster', 'changed_settings', 'num_classes_source', 'find_lr')


def with_run_flags(flags, given, writes=True):
    """`flags` with the resumed run's own value for every flag the command line did not give (a run
    folder keeps every setting in run_state.json's `args`): resuming needs only --checkpoint_path,
    and --num_epochs to extend the run. `writes`: this process will write the run folder (not a
    worker other than the chief, which reads it while the chief holds its lock)."""
    if not flags.checkpoint_path:
        latest = latest_run(DEFAULT_RUNS)
        raise ToolkitError('--resume needs the run to continue: --checkpoint_path RUN_FOLDER'
                           + (f' (the latest is {latest})' if latest else ''))
    if writes:
        run_folder.RunLock(flags.checkpoint_path).check_free()  # a run still writing it, named first
    state = run_state.read(flags.checkpoint_path)
    if state is None:
        raise ToolkitError(f'{flags.checkpoint_path}: no run to resume (no {run_state.FILE_NAME}); '
                           'leave out --resume to start a run there')
    merged = vars(flags).copy()
    for name, value in state.args.items():
        if name in merged and name not in given and name not in NOT_REMEMBERED:
            merged[name] = _as_setting(value)
    return argparse.Namespace(**merged)


def _as_setting(value):
    """A value read back from JSON as Settings holds it: lists as tuples, at every depth."""
    return tuple(_as_setting(item) for item in value) if isinstance(value, list) else value


def latest_run(root):
    """The run folder under `root` whose run_state.json changed last, or None."""
    try:
        folders = [os.path.join(root, name) for name in os.listdir(root)]
    except OSError:
        return None
    states = [(os.path.getmtime(run_state.path_of(folder)), folder) for folder in folders
              if os.path.isfile(run_state.path_of(folder))]
    return max(states)[1] if states else None


def new_run_folder(values):
    """A run given no --checkpoint_path: a new folder in DEFAULT_RUNS, named like its TensorBoard
    run (--run_name, else the date-time and up to three changed settings)."""
    settings = argparse.Namespace(**values)
    name = summaries.safe_run_name(settings.run_name) if settings.run_name else \
        summaries.short_run_name(settings)
    return os.path.join(DEFAULT_RUNS, summaries.new_run_folder(DEFAULT_RUNS, name))


def check_data_files(values):
    """--train_file and --val_file name list files or shards that exist."""
    for flag in ('train_file', 'val_file'):
        if not values[flag]:
            raise ToolkitError(f'--{flag} is required (or run --demo)')
        if tfrecords.is_shards(values[flag]):
            tfrecords.find_shards(values[flag])  # a folder or pattern without shards, named now
        elif not os.path.isfile(values[flag]):
            raise ToolkitError(f'{values[flag]}: list file not found')


def data_labels(spec):
    """(labels, where): the labels of a list file or of shards, and `where(i)`, the file and line
    (or shard and record) of label i, for messages."""
    if tfrecords.is_shards(spec):
        index = tfrecords.index_shards(tfrecords.find_shards(spec), None, spec)
        return index.labels, index.where
    _, labels, lines = datagenerator.read_list_lines(spec, check_files=False)
    return labels, lambda position: f'{spec}:{lines[position]}'


def classes_from_data(values, given_by):
    """Sets `num_classes` (and the classes.txt in use) from the data, or checks a given one against
    them; returns the training labels. The classes.txt beside the lists (or --class_names) names the
    classes; without one, the largest label of the training and validation data + 1 counts them."""
    class_file = values['class_names'] or os.path.join(tfrecords.data_folder(values['train_file']),
                                                       model_info.CLASS_NAMES_FILE)
    if not os.path.exists(class_file):
        if values['class_names']:
            raise ToolkitError(f'{class_file}: class names file not found (--class_names)')
        class_file = None
    named = len(model_info.read_class_names_file(class_file, None)) if class_file else None
    labels = {flag: data_labels(values[flag]) for flag in ('train_file', 'val_file')}
    top_flag = max(labels, key=lambda flag: labels[flag][0].max())
    top_labels, where = labels[top_flag]
    top = int(top_labels.argmax())
    largest = int(top_labels[top])
    files = f"{values['train_file']} and {values['val_file']}"
    given = values['num_classes'] if given_by else None
    if given is not None and not 2 <= given <= MAX_CLASSES:
        raise ToolkitError(f'--num_classes must be {"at least 2" if given < 2 else f"at most {MAX_CLASSES}"}'
                           f', got {given}')
    if given is not None and named is not None and given != named:
        raise ToolkitError(f'--num_classes {given}, but {class_file} names {named} classes: leave '
                           f'--num_classes out (the toolkit reads it from {class_file})')
    if named is not None and largest >= named:
        raise ToolkitError(f'{where(top)}: label {largest}, but {class_file} names only {named} '
                           f'classes (0..{named - 1}): add "{largest} <name>" to {class_file}, or '
                           'correct the label')
    if given is not None and named is None and largest >= given:
        raise ToolkitError(f'{where(top)}: label {largest} is outside 0..{given - 1} (--num_classes '
                           f'{given}): leave --num_classes out (the labels say {largest + 1} '
                           'classes), or correct the label')
    if given is not None and named is None and given > largest + 1:
        raise ToolkitError(f'--num_classes {given}, but the labels of {files} say {largest + 1} '
                           f'classes (0..{largest}): leave --num_classes out, or name every class in '
                           f'a {model_info.CLASS_NAMES_FILE} beside the lists')
    if given is None and named is None and largest < 1:
        raise ToolkitError(f'every label of {files} is 0: fine-tuning needs at least 2 classes')
    values['num_classes'] = given or named or largest + 1
    values['class_names'] = class_file
    values['num_classes_source'] = (f'--num_classes {given}' if given is not None else class_file
                                    if named is not None else f'the labels of {files}')
    return labels['train_file'][0]


def largest_power_of_two(count):
    return 1 << (count.bit_length() - 1)


# Where a worker stands in the cluster, not what the run is: never in its name.
CLUSTER_FLAGS = ('worker_hosts', 'task_index', 'collective_timeout')


def _differs(name, value, default):
    if name in ('train_layers', 'skip_layers', 'unfreeze_layers'):
        return set(value) != set(default)  # the same layers in another order
    return value != (tuple(default) if isinstance(default, list) else default)


def cluster_checks(v):
    """(ok, message) of what several workers need: an even split of every batch, and none of what
    works on one machine only."""
    distribute.check_timeout(v.collective_timeout)
    workers = v.cluster.num_workers if v.cluster else 1
    if workers == 1:
        return []
    alone = 'needs one machine'
    return [
        (v.batch_size % (workers * v.num_gpus) == 0,
         f'--batch_size {v.batch_size} must split evenly over {workers} workers'
         + (f' x --num_gpus {v.num_gpus}' if v.num_gpus > 1 else '')),
        (not v.skip_bad_images, '--skip_bad_images needs one machine: a skipped image would leave '
         'the workers with batches of different sizes (check the lists with datagenerator.py --check)'),
        (v.cache_features != 'on', f'--cache_features on {alone} (several workers train on images)'),
        (not v.find_lr, f'--find_lr {alone}'),
        (not v.projector, f'--projector {alone}'),
        (not v.mixed_precision, f'--mixed_precision {alone} (its loss scaling is per process)'),
    ]


def check(values):
    """Every setting in range and consistent; one line each, before anything is built."""
    v = argparse.Namespace(**values)
    checks = [
        (v.learning_rate > 0 and math.isfinite(v.learning_rate),
         f'--learning_rate must be positive, got {v.learning_rate}'),
        (v.num_epochs >= 1, f'--num_epochs must be at least 1, got {v.num_epochs}'),
        (v.batch_size >= 1, f'--batch_size must be at least 1, got {v.batch_size}'),
        (0 <= v.dropout_rate < 1, f'--dropout_rate must be in [0, 1), got {v.dropout_rate}'),
        (v.seed is None or 0 <= v.seed <= MAX_SEED, f'--seed must be in 0..{MAX_SEED}, got {v.seed}'),
        (v.display_step >= 1, f'--display_step must be at least 1, got {v.display_step}'),
        (v.keep_checkpoints >= 1, f'--keep_checkpoints must be at least 1, got {v.keep_checkpoints}'),
        (0 <= v.momentum < 1, f'--momentum must be in [0, 1), got {v.momentum}'),
        (v.weight_decay >= 0 and math.isfinite(v.weight_decay),
         f'--weight_decay must be >= 0, got {v.weight_decay}'),
        (v.lr_decay_epochs >= 0, f'--lr_decay_epochs must be >= 0, got {v.lr_decay_epochs}'),
        (0 < v.lr_decay_factor <= 1, f'--lr_decay_factor must be in (0, 1], got {v.lr_decay_factor}'),
        (v.num_gpus >= 1, f'--num_gpus must be at least 1, got {v.num_gpus}'),
        (v.max_pixels >= 1, f'--max_pixels must be at least 1, got {v.max_pixels}'),
        (v.batch_size % v.num_gpus == 0,
         f'--batch_size {v.batch_size} must divide evenly over --num_gpus {v.num_gpus}'),
        (bool(v.train_layers), '--train_layers names no layer'),
        (v.early_stopping >= 0, f'--early_stopping must be >= 0, got {v.early_stopping}'),
        (v.find_lr_steps >= 10, f'--find_lr_steps must be at least 10, got {v.find_lr_steps}'),
        (not isinstance(v.class_weights, tuple) or len(v.class_weights) == v.num_classes,
         f'--class_weights lists {len(v.class_weights)} weights for --num_classes {v.num_classes}'
         if isinstance(v.class_weights, tuple) else ''),
        (not (v.projector and v.num_gpus > 1), '--projector needs --num_gpus 1'),
        (v.cache_max_gb > 0 and math.isfinite(v.cache_max_gb),
         f'--cache_max_gb must be a positive number, got {v.cache_max_gb}'),
        # Today's recipe (in ranges written so that NaN compares false):
        (0 <= v.label_smoothing < 1, f'--label_smoothing must be in [0, 1), got {v.label_smoothing}'),
        (0 <= v.ema_decay < 1, f'--ema_decay must be in [0, 1) (0: off), got {v.ema_decay}'),
        (0 <= v.warmup_epochs < v.num_epochs,
         f'--warmup_epochs must be >= 0 and less than --num_epochs {v.num_epochs}, got '
         f'{v.warmup_epochs}'),
        (not (v.lr_schedule == 'cosine' and v.lr_decay_epochs),
         "--lr_decay_epochs is the step schedule's; --lr_schedule cosine decays by itself"),
        (v.mixup >= 0 and math.isfinite(v.mixup), f'--mixup must be a number >= 0 (0: off), got {v.mixup}'),
        (v.cutmix >= 0 and math.isfinite(v.cutmix),
         f'--cutmix must be a number >= 0 (0: off), got {v.cutmix}'),
        (v.unfreeze_at == 0 or 2 <= v.unfreeze_at <= v.num_epochs,
         f'--unfreeze_at must be 0 (off) or an epoch from 2 to --num_epochs {v.num_epochs}, got '
         f'{v.unfreeze_at}'),
    ]
    for ok, message in checks + cluster_checks(v):
        if not ok:
            raise ToolkitError(message)
    if v.init_checkpoint and set(v.skip_layers) >= set(TRAINABLE_LAYERS):
        raise ToolkitError('--init_checkpoint with every layer in --skip_layers would load nothing: '
                           'skip only the layers that differ (fc8 for another --num_classes)')
    frozen_random = [name for name in v.skip_layers if name not in v.train_layers]
    if frozen_random:
        raise ToolkitError(f"--skip_layers {','.join(frozen_random)} would stay random and frozen: "
                           f"add them to --train_layers, or stop skipping them")
    if v.unfreeze_at and not set(v.unfreeze_layers) - set(v.train_layers):
        raise ToolkitError(f"--unfreeze_layers {','.join(v.unfreeze_layers)} adds no layer to "
                           f"--train_layers {','.join(v.train_layers)}: the second phase would train "
                           'what the first does')
    trained = set(v.train_layers) | (set(v.unfreeze_layers) if v.unfreeze_at else set())
    untrained = [layer for layer, _ in v.lr_mult if layer not in trained]
    if untrained:
        which = '--train_layers nor --unfreeze_layers trains' if v.unfreeze_at else \
            '--train_layers does not train'
        raise ToolkitError(f"--lr_mult names {','.join(untrained)}, which {which}")
    if v.cache_features == 'on' and not feature_cache.can_cache(v.train_layers, v.augment, v.mixup,
                                                                v.cutmix):
        raise ToolkitError('--cache_features on needs every conv layer frozen and no --augment, '
                           '--mixup or --cutmix')
    if v.find_lr:
        run_folder.check_output_file(v.find_lr, '--find_lr')
