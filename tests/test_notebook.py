"""validate_alexnet_on_imagenet.ipynb: stored clean, runs headless top to bottom, draws its figures."""
import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import ilsvrc_fixture
from finetune_alexnet import metrics
from finetune_alexnet.imagenet_wnids import WNIDS
from finetune_alexnet.infer.classifier import Classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'validate_alexnet_on_imagenet.ipynb')
# Cell id -> the number of figures (image/png outputs) it must draw; every other cell draws none.
FIGURE_CELLS = {'show-photos': 1, 'top5-bars': 1, 'conv1-filters': 1, 'conv2-filters': 1,
                'conv1-feature-maps': 1}


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


IMAGENET_VARIABLES = ('ILSVRC2012_VAL', 'ILSVRC2012_VAL_LABELS', 'ILSVRC2012_VAL_IMAGES', 'ILSVRC2012_META')


def execute(notebook, weights, monkeypatch, imagenet=None):
    """Run every cell in a fresh python3 kernel whose working folder is the repository.

    `imagenet`: the ILSVRC2012_* variables that enable the last section; by default none are set.
    """
    monkeypatch.setenv('ALEXNET_WEIGHTS', str(weights))
    for name in IMAGENET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in (imagenet or {}).items():
        monkeypatch.setenv(name, str(value))
    client = NotebookClient(notebook, kernel_name='python3', timeout=300,
                            resources={'metadata': {'path': REPO}})
    client.execute()
    return notebook


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == 'code']


def printed(notebook, cell_id):
    return ''.join(output.get('text', '') for cell in code_cells(notebook) if cell.id == cell_id
                   for output in cell.outputs if output.output_type == 'stream')


def test_notebook_is_stored_without_outputs():
    notebook = read_notebook()
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == 'python3'
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, cell.id
    ids = [cell.id for cell in notebook.cells]
    assert set(FIGURE_CELLS) <= set(ids)
    assert code_cells(notebook)[0].id == 'weights-path'
    assert ids[-2:] == ['imagenet-md', 'imagenet-val']  # the optional section comes last


@pytest.mark.slow
def test_notebook_runs_headless_and_draws_its_figures(bvlc_npy, monkeypatch):
    notebook = execute(read_notebook(), bvlc_npy, monkeypatch)
    for cell in code_cells(notebook):
        assert cell.execution_count is not None, cell.id
        assert not [output for output in cell.outputs if output.output_type == 'error'], cell.id
        figures = [output for output in cell.outputs
                   if output.output_type == 'display_data' and 'image/png' in output.get('data', {})]
        assert len(figures) == FIGURE_CELLS.get(cell.id, 0), cell.id
    classified = printed(notebook, 'classify')
    photos = sorted(name for name in os.listdir(os.path.join(REPO, 'images')) if name.endswith('.jpg'))
    assert len(photos) >= 3
    assert [line.split()[0] for line in classified.strip().splitlines()] == photos
    # Without ILSVRC2012_VAL the ImageNet section says how to enable it, and skips.
    skipped = printed(notebook, 'imagenet-val')
    assert skipped.startswith('Skipped: set ILSVRC2012_VAL') and 'ILSVRC2012_VAL_LABELS' in skipped


def test_missing_weights_stop_the_first_cell_with_one_clear_line(tmp_path, monkeypatch):
    missing = tmp_path / 'missing.npy'
    notebook = read_notebook()
    with pytest.raises(CellExecutionError) as error:
        execute(notebook, missing, monkeypatch)
    assert f'{missing}: weights file not found' in str(error.value)
    first, second = code_cells(notebook)[:2]
    assert first.outputs[-1].ename == 'FileNotFoundError'
    assert second.execution_count is None  # nothing after the failing cell ran


@pytest.mark.slow
def test_imagenet_section_evaluates_the_first_n_images_beside_the_published_figures(
        bvlc_npy, tmp_path, monkeypatch):
    """A miniature validation set whose ground truth makes 6 of the first 10 images right."""
    images = 12
    names = [ilsvrc_fixture.image_name(number) for number in range(1, images + 1)]
    folder = tmp_path / 'val'
    # Flat, so the classes are the ground truth's alone: chosen below, from the model's predictions.
    paths = list(ilsvrc_fixture.write_images(str(folder), [None] * images, foldered=False).values())
    with Classifier(weights_path=bvlc_npy, center_crop=True) as classifier:
        probabilities = classifier.run(paths).probabilities
    predicted = probabilities.argmax(axis=1)
    # Images 1-6 labelled with their top-1 class; the rest with a class far from it.
    labels = [int(p) if number < 6 else int((p + 500) % 1000) for number, p in enumerate(predicted)]
    solution = tmp_path / 'LOC_val_solution.csv'
    solution.write_text('ImageId,PredictionString\n' + ''.join(
        f'{name[:-5]},{WNIDS[label]} 1 2 3 4\n' for name, label in zip(names, labels)))
    first = 10
    top5 = np.argsort(-probabilities[:first], axis=1, kind='stable')[:, :5]
    right5 = int(sum(label in row for label, row in zip(labels[:first], top5)))
    notebook = execute(read_notebook(), bvlc_npy, monkeypatch, imagenet={
        'ILSVRC2012_VAL': folder, 'ILSVRC2012_VAL_LABELS': solution, 'ILSVRC2012_VAL_IMAGES': first})
    report = printed(notebook, 'imagenet-val').splitlines()
    assert report[0] == (f'{first} images; accuracy with its 95% interval (Wilson score); '
                         'published (BVLC, centre crop):')
    low, high = metrics.wilson_interval(6, first)
    assert report[1] == f'  top-1  {6 / first:7.2%}  [{low:.2%}, {high:.2%}]   published 57.1%'
    low, high = metrics.wilson_interval(right5, first)
    assert report[2].startswith(f'  top-5  {right5 / first:7.2%}  [{low:.2%}, {high:.2%}]')
    assert report[2].endswith('published 80.2%') and len(report) == 3
