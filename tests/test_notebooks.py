"""The notebook series as files: valid nbformat with cell ids, outputs stripped."""

from __future__ import annotations

import warnings

import nbformat
import pytest

from medharm_nb import config


@pytest.mark.parametrize("name", config.SERIES)
def test_each_notebook_is_valid_with_cell_ids_and_no_outputs(name):
    path = config.NOTEBOOK_DIR / f"{name}.ipynb"
    with warnings.catch_warnings():
        # nbformat's MissingIDFieldWarning (and any other) would print on every run.
        warnings.simplefilter("error")
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    ids = [cell.id for cell in nb.cells]
    assert len(set(ids)) == len(ids)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), name
