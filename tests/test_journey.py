"""The README's journey as a newcomer walks it with a few dozen photos of their own: three classes of
twelve photos, make_lists.py, finetune.py with neither --num_classes nor --batch_size, --resume with
only the run folder and a longer --num_epochs, predict.py and export.py on the run folder, and
TensorBoard's own reader finding the run among the runs. No flag is said twice, and none says what
the data already say."""
import json

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorboard.backend.event_processing import event_multiplexer

import export
import finetune
import make_lists
import predict
from finetune_alexnet import cli
from finetune_alexnet import model_info

CLASSES = ('apple', 'banana', 'cherry')
COLOURS = {'apple': (40, 200, 40), 'banana': (230, 220, 60), 'cherry': (170, 20, 40)}  # RGB
PHOTOS_PER_CLASS = 12


def write_photos(folder):
    """Twelve noisy 64x48 JPEG photos a class, each class of its own colour."""
    random = np.random.default_rng(0)
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for number in range(PHOTOS_PER_CLASS):
            noise = random.normal(0, 25, (48, 64, 3))
            rgb = np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / name / f'{name}{number:02d}.jpg'), rgb[..., ::-1])


def run(capsys, main, *argv):
    status = cli.run(main, list(argv))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


@pytest.mark.slow
def test_the_journey_with_a_few_dozen_photos(tmp_path, monkeypatch, capsys, bvlc_npy):
    monkeypatch.chdir(tmp_path)  # the README's commands, run where the user works
    (tmp_path / 'bvlc_alexnet.npy').symlink_to(bvlc_npy)  # what `python get_weights.py` leaves here
    write_photos(tmp_path / 'my_images')

    run(capsys, make_lists.main, 'my_images', '--out_dir', 'data')
    assert (tmp_path / 'data' / 'classes.txt').read_text() == '0 apple\n1 banana\n2 cherry\n'
    train_images = len((tmp_path / 'data' / 'train.txt').read_text().splitlines())
    assert train_images == 33  # 11 of each class: 10% (one photo) of each goes to val.txt

    out = run(capsys, finetune.main, '--train_file', 'data/train.txt', '--val_file', 'data/val.txt',
              '--checkpoint_path', 'runs/fruit', '--num_epochs', '1')
    assert (f'note: data/train.txt holds {train_images} training images, fewer than the default '
            '--batch_size 128: using --batch_size 32') in out
    assert '3 classes (from data/classes.txt)' in out
    assert 'open TensorBoard with: tensorboard --logdir ' + str(tmp_path / 'runs') in out
    state = json.loads((tmp_path / 'runs' / 'fruit' / 'run_state.json').read_text())
    assert (state['args']['num_classes'], state['args']['batch_size']) == (3, 32)
    assert state['epochs_completed'] == 1

    out = run(capsys, finetune.main, '--checkpoint_path', 'runs/fruit', '--resume', '--num_epochs', '3')
    assert 'resumed model_epoch1.ckpt at step 1' in out and 'epoch 3:' in out
    state = json.loads((tmp_path / 'runs' / 'fruit' / 'run_state.json').read_text())
    assert state['epochs_completed'] == 3 and [r['step'] for r in state['history']] == [1, 2, 3]
    assert (state['args']['num_classes'], state['args']['batch_size']) == (3, 32)
    assert state['args']['train_file'] == 'data/train.txt'  # the run's own lists, not asked again
    reader = tf.train.load_checkpoint(str(tmp_path / 'runs' / 'fruit' / 'model_epoch3.ckpt'))
    assert reader.get_tensor('fc8/weights').shape == (4096, 3)

    out = run(capsys, predict.main, '--checkpoint_path', 'runs/fruit', 'my_images/cherry/cherry00.jpg')
    shown = [name for name in CLASSES if name in out]
    assert shown == list(CLASSES)  # every class named, with its probability
    _, info = model_info.read_model_info(str(tmp_path / 'runs' / 'fruit' / 'best.ckpt'))
    assert info['class_names'] == list(CLASSES) and info['num_classes'] == 3  # as run_state.json says

    run(capsys, export.main, '--checkpoint_path', 'runs/fruit', '--output', 'fruit.npz')
    with np.load(tmp_path / 'fruit.npz') as exported:
        np.testing.assert_array_equal(exported['fc8/weights'],
                                      tf.train.load_checkpoint(str(tmp_path / 'runs' / 'fruit' /
                                                                   'best.ckpt')).get_tensor('fc8/weights'))

    runs = event_multiplexer.EventMultiplexer()
    runs.AddRunsFromDirectory(str(tmp_path / 'runs'))
    runs.Reload()
    assert list(runs.Runs()) == ['fruit']
    accuracy = runs.Scalars('fruit', 'validation/accuracy')
    assert [event.step for event in accuracy] == [1, 2, 3]
    assert [event.value for event in accuracy] == pytest.approx(
        [record['val_accuracy'] for record in state['history']])
