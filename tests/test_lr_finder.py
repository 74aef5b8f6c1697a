"""The learning-rate range test: its schedule, smoothing and suggestion against hand-made curves, and
`finetune.py --find_lr` on the demo's images: a plot, a suggestion where the loss falls, no run."""
import math
import os

import cv2
import numpy as np
import pytest

from finetune_alexnet import demo_data
from finetune_alexnet.train import lr_finder
from finetune_alexnet.cli import run as run_main
import finetune


def test_rates_rise_exponentially_from_start_to_end():
    rates = [lr_finder.rate_at(step, 7) for step in range(7)]
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(np.log10(rates)), 1.0)  # 1e-6, 1e-5, ... 1


def test_smoothing_is_a_bias_corrected_moving_average():
    np.testing.assert_allclose(lr_finder.smooth([2.0, 2.0, 2.0]), [2.0, 2.0, 2.0])
    # By hand, beta 0.5: averages 0.5, 1.25, 1.625 over corrections 0.5, 0.75, 0.875.
    np.testing.assert_allclose(lr_finder.smooth([1.0, 2.0, 2.0], beta=0.5), [1.0, 1.25 / 0.75, 1.625 / 0.875])


def test_suggestion_is_the_steepest_descent_against_log_rate():
    rates = np.logspace(-6, 0, 121)
    # A loss that falls fastest at 1e-3 (a tanh step in log10 of the rate), then rises.
    loss = 2 - np.tanh(2 * (np.log10(rates) + 3)) + np.maximum(0, np.log10(rates) + 1) * 5
    suggestion = lr_finder.steepest_descent(rates, loss)
    assert suggestion == pytest.approx(1e-3, rel=0.13)  # within one of the 121 points' steps
    assert lr_finder.steepest_descent(rates[:4], loss[:4]) is None


@pytest.fixture(scope='module')
def demo_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('demo')
    demo_data.make_demo_images(str(folder / 'images'), images_per_class=10, seed=2)
    lines = [f'images/{name}/{f} {label}' for label, name in enumerate(demo_data.CLASS_NAMES)
             for f in sorted(os.listdir(folder / 'images' / name))]
    (folder / 'train.txt').write_text('\n'.join(lines) + '\n')
    (folder / 'val.txt').write_text('\n'.join(lines[:4]) + '\n')
    return folder


@pytest.mark.slow
def test_find_lr_suggests_a_rate_where_the_loss_falls_and_writes_nothing_else(
        demo_images, tmp_path, bvlc_npy, capsys, monkeypatch):
    recorded = []
    original = lr_finder.range_test

    def recording(*args, **kwargs):
        recorded.append(original(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(lr_finder, 'range_test', recording)
    plot = tmp_path / 'range.png'
    code = run_main(finetune.main, [
        '--train_file', str(demo_images / 'train.txt'), '--val_file', str(demo_images / 'val.txt'),
        # Fresh fc layers on the (fixture's) conv features, every image in each step and no dropout:
        # the loss then follows the rate, not the batch or the dropout mask.
        '--weights_path', bvlc_npy, '--skip_layers', 'fc6,fc7,fc8', '--dropout_rate', '0',
        '--batch_size', '20', '--seed', '0', '--find_lr', str(plot), '--find_lr_steps', '100',
        '--checkpoint_path', str(tmp_path / 'ckpt'), '--filewriter_path', str(tmp_path / 'tb'),
        '--cache_dir', str(tmp_path / 'cache')])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = recorded[0]
    assert result.stopped_early and len(result.rates) < 100  # the loss diverged before the rate hit 1
    suggestion = result.suggestion
    assert f'suggested --learning_rate {suggestion:.2g}' in out
    # Where the loss falls: below its start, before its lowest point, and falling there.
    at = int(np.argmin(np.abs(result.rates - suggestion)))
    lowest = int(np.argmin(result.smoothed))
    assert at < lowest and result.smoothed[at] < result.smoothed[0]
    assert result.smoothed[at + 1] < result.smoothed[at - 1]
    assert 1e-6 < suggestion < result.rates[-1]
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[:2] == (450, 700)
    # Not a run: no checkpoint folder, no TensorBoard run.
    assert not (tmp_path / 'ckpt').exists() and not (tmp_path / 'tb').exists()
    assert math.isfinite(result.losses[0])


def test_find_lr_refuses_a_plot_in_a_missing_folder(demo_images, tmp_path, capsys):
    code = run_main(finetune.main, ['--train_file', str(demo_images / 'train.txt'),
                                    '--val_file', str(demo_images / 'val.txt'),
                                    '--find_lr', str(tmp_path / 'nowhere' / 'plot.png')])
    assert code == 2
    err = capsys.readouterr().err
    assert f'{tmp_path / "nowhere" / "plot.png"}: --find_lr is in a folder that does not exist' in err
