"""validate_alexnet_on_imagenet.ipynb: stored clean, runs headless top to bottom, draws its figures."""
import os

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'validate_alexnet_on_imagenet.ipynb')
# Cell id -> the number of figures (image/png outputs) it must draw; every other cell draws none.
FIGURE_CELLS = {'show-photos': 1, 'top5-bars': 1, 'conv1-filters': 1, 'conv2-filters': 1,
                'conv1-feature-maps': 1}


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def execute(notebook, weights, monkeypatch):
    """Run every cell in a fresh python3 kernel whose working folder is the repository."""
    monkeypatch.setenv('ALEXNET_WEIGHTS', str(weights))
    client = NotebookClient(notebook, kernel_name='python3', timeout=300,
                            resources={'metadata': {'path': REPO}})
    client.execute()
    return notebook


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == 'code']


def test_notebook_is_stored_without_outputs():
    notebook = read_notebook()
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == 'python3'
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, cell.id
    ids = [cell.id for cell in notebook.cells]
    assert set(FIGURE_CELLS) <= set(ids)
    assert code_cells(notebook)[0].id == 'weights-path'


def test_notebook_runs_headless_and_draws_its_figures(bvlc_npy, monkeypatch):
    notebook = execute(read_notebook(), bvlc_npy, monkeypatch)
    for cell in code_cells(notebook):
        assert cell.execution_count is not None, cell.id
        assert not [output for output in cell.outputs if output.output_type == 'error'], cell.id
        figures = [output for output in cell.outputs
                   if output.output_type == 'display_data' and 'image/png' in output.get('data', {})]
        assert len(figures) == FIGURE_CELLS.get(cell.id, 0), cell.id
    printed = ''.join(output.get('text', '') for cell in code_cells(notebook) if cell.id == 'classify'
                      for output in cell.outputs if output.output_type == 'stream')
    photos = sorted(name for name in os.listdir(os.path.join(REPO, 'images')) if name.endswith('.jpg'))
    assert len(photos) >= 3
    assert [line.split()[0] for line in printed.strip().splitlines()] == photos


def test_missing_weights_stop_the_first_cell_with_one_clear_line(tmp_path, monkeypatch):
    missing = tmp_path / 'missing.npy'
    notebook = read_notebook()
    with pytest.raises(CellExecutionError) as error:
        execute(notebook, missing, monkeypatch)
    assert f'{missing}: weights file not found' in str(error.value)
    first, second = code_cells(notebook)[:2]
    assert first.outputs[-1].ename == 'FileNotFoundError'
    assert second.execution_count is None  # nothing after the failing cell ran
