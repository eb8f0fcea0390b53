"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXTERNAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "external"
"""Public reference data (XSTest, MedSafetyBench), read in place from ../shared/external."""


@pytest.fixture(scope="session")
def external_dir() -> Path:
    """The external reference data folder; skips locally when absent, fails under CI."""
    if not EXTERNAL_DIR.is_dir():
        reason = f"external reference data not found at {EXTERNAL_DIR}"
        # In CI a missing data folder is a broken checkout, not a reason to pass quietly.
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(f"{reason} (CI is set, so this is an error)")
        pytest.skip(reason)
    return EXTERNAL_DIR


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread, here and in child processes (OMP_NUM_THREADS): the tests' models are
    tiny, and on a busy 2-core machine two spinning threads make CPU generation up to ~15x
    slower. Changes the tests' CPU time, never their results."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if previous is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = previous
