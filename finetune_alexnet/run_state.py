"""run_state.json: where a fine-tuning run stands, the one schema for writing and reading it back.

finetune.py rewrites the file atomically after every save; `--resume`, the demo and the tests read it
back through `read`, which checks every field as strictly as a flag: a hand-edited or damaged file is
refused in one line naming the field, before anything is built.
"""
import dataclasses
import json
import math
import os
import re
from typing import List, Optional

from finetune_alexnet import run_folder
from finetune_alexnet.errors import ToolkitError

FILE_NAME = 'run_state.json'
# A TensorBoard run folder is one plain name inside --filewriter_path (no separators, no '..').
RUN_NAME_PATTERN = re.compile(r'[\w][\w.,=+-]*')


@dataclasses.dataclass
class RunState:
    """A run's progress; `epochs_completed == 0` and no checkpoint yet for a run that just started."""
    args: dict                       # every setting of the run, as finetune.py resolved them
    settings: dict                   # the settings that shape the run: --resume refuses others
    run_name: str                    # the run's TensorBoard folder, inside --filewriter_path
    order_seed: int                  # seeds every epoch's shuffle order (--seed, else drawn once)
    epochs_completed: int = 0
    latest_checkpoint: Optional[str] = None  # a file-name prefix in the run folder
    epoch_checkpoints: List[str] = dataclasses.field(default_factory=list)
    history: List[dict] = dataclasses.field(default_factory=list)  # one record per epoch
    best_val_accuracy: Optional[float] = None
    best_epoch: Optional[int] = None
    best_val_loss: Optional[float] = None
    init_val_accuracy: Optional[float] = None  # of a warm start, before its first step
    # With --unfreeze_at: the phase (1 or 2) of the epoch the latest checkpoint was saved in.
    phase: Optional[int] = None

    @property
    def last_step(self):
        """The global step at the end of the last completed epoch (0 before the first)."""
        return self.history[-1]['step'] if self.history else 0


_OPTIONAL_NUMBER = (int, float, type(None))
_TYPES = {'args': dict, 'settings': dict, 'run_name': str, 'order_seed': int, 'epochs_completed': int,
          'latest_checkpoint': (str, type(None)), 'epoch_checkpoints': list, 'history': list,
          'best_val_accuracy': _OPTIONAL_NUMBER, 'best_epoch': (int, type(None)),
          'best_val_loss': _OPTIONAL_NUMBER, 'init_val_accuracy': _OPTIONAL_NUMBER,
          'phase': (int, type(None))}
_REQUIRED = ('args', 'settings', 'run_name', 'order_seed', 'epochs_completed', 'latest_checkpoint',
             'history')


def path_of(directory):
    return os.path.join(directory, FILE_NAME)


def read(directory):
    """The run state of the run folder `directory`, checked field by field; None when it holds none."""
    path = path_of(directory)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as stream:
            content = json.load(stream)
    except (OSError, ValueError) as error:
        raise ToolkitError(f'{path}: unreadable run state ({error}); remove it to start afresh') from None
    return from_json(content, path)


def from_json(content, path):
    """A RunState from the decoded JSON of `path`, or a one-line ToolkitError naming the bad field."""
    advice = f'remove {FILE_NAME} to start afresh'
    if not isinstance(content, dict):
        raise ToolkitError(f'{path}: expected a JSON object, found {type(content).__name__}; {advice}')
    unknown = sorted(set(content) - set(_TYPES))
    if unknown:
        raise ToolkitError(f'{path}: unknown field {unknown[0]!r}; {advice}')
    for key in _REQUIRED:
        if key not in content:
            raise ToolkitError(f'{path}: the field {key!r} is missing; {advice}')
    for key, value in content.items():
        if isinstance(value, bool) or not isinstance(value, _TYPES[key]):
            raise ToolkitError(f'{path}: {key} should be {_describe(_TYPES[key])}, found {value!r}; '
                               f'{advice}')
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolkitError(f'{path}: {key} should be finite, found {value!r}; {advice}')
    state = RunState(**content)
    _check_values(state, path, advice)
    return state


def _check_values(state, path, advice):
    if state.epochs_completed < 0:
        raise ToolkitError(f'{path}: epochs_completed should be >= 0, found {state.epochs_completed}')
    if state.phase not in (None, 1, 2):
        raise ToolkitError(f'{path}: phase should be 1, 2 or null, found {state.phase}; {advice}')
    if not RUN_NAME_PATTERN.fullmatch(state.run_name):
        raise ToolkitError(f'{path}: run_name {state.run_name!r} is not a folder name inside '
                           f'--filewriter_path; {advice}')
    if not all(isinstance(record, dict) and isinstance(record.get('epoch'), int)
               and not isinstance(record.get('epoch'), bool) and isinstance(record.get('step'), int)
               for record in state.history):
        raise ToolkitError(f'{path}: history should be a list of epoch records; {advice}')
    names = [state.latest_checkpoint] if state.latest_checkpoint is not None else []
    for name in names + state.epoch_checkpoints:
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name in ('.', '..'):
            raise ToolkitError(f'{path}: {name!r} is not a checkpoint name in this folder; {advice}')


def _describe(kinds):
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    words = {int: 'an integer', float: 'a number', str: 'a string', list: 'a list', dict: 'an object',
             type(None): 'null'}
    return ' or '.join(dict.fromkeys(words[kind] for kind in kinds))


def write(directory, state):
    """Replace the folder's run_state.json with `state` in one rename: never half written."""
    run_folder.write_json_atomically(path_of(directory), dataclasses.asdict(state))
