"""Root pytest hooks: the notebook series stays in order, in one worker."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups from the markers
def pytest_collection_modifyitems(items):
    """nbval's cells of the numbered notebooks run in one xdist worker, in file order: each
    notebook reads the tables the one before it wrote. Unit tests spread over the others."""
    for item in items:
        if item.nodeid.startswith("notebooks/"):
            item.add_marker(pytest.mark.xdist_group("notebook-series"))
