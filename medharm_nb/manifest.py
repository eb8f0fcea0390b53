"""The run manifest: written first (``started``), finished last (``success`` / ``error``).

Who, when, which commit (and whether the tree was dirty), which package versions, which
device, every parameter and the hashes of every input, so a run describes itself.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medharm_nb import store
from medharm_nb.records import SCHEMA_VERSION, stable_hash

if TYPE_CHECKING:
    from medharm_nb.config import Run

REPO_DIR = Path(__file__).resolve().parent.parent
VERSIONED = ("medharm-nb", "torch", "transformers", "polars", "papermill", "altair", "pydantic")
"""Packages whose versions every manifest records."""


def git_state(folder: Path) -> dict[str, Any]:
    """The commit checked out in ``folder`` and whether tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--verify", "--quiet", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def versions() -> dict[str, str | None]:
    """Python's and ``VERSIONED`` packages' versions (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device() -> str:
    """The accelerator, or the CPU and its torch threads."""
    try:
        import torch
    except ImportError:
        return "cpu (torch not installed)"
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def new_manifest(run: Run, inputs: dict[str, Any], mode: str = "series") -> dict[str, Any]:
    """The manifest written before any work starts (status ``started``).

    Args:
        run: The run.
        inputs: Hashes from ``check_inputs``.
        mode: ``series`` (the notebooks) or ``generate`` (the generation stage alone).
    """
    started = store.utc_now()
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{run.config.name}-{started.replace(':', '').replace('-', '')}",
        "name": run.config.name,
        "mode": mode,
        "status": "started",
        "started": started,
        "finished": None,
        "seconds": None,
        "config_path": str(run.config_path),
        "run_dir": str(run.run_dir),
        "figures_dir": str(run.figures_dir),
        "config": run.config.model_dump(mode="json"),
        "config_hash": stable_hash(run.config.model_dump(mode="json")),
        "git": git_state(REPO_DIR),
        "versions": versions(),
        "device": device(),
        "command": sys.argv,
        "inputs": inputs,
        "notebooks": [],
        "stages": {},
        "error": None,
    }


def finish_manifest(manifest: dict[str, Any], run_dir: Path, status: str, error: str | None,
            generation_stats: list[dict] | None) -> None:
    """Close a manifest: status, error, finish time, seconds, generation stats if any."""
    if generation_stats is not None:
        manifest["stages"]["generate"] = generation_stats
    finished = store.utc_now()
    manifest.update(status=status, finished=finished, error=error, seconds=(
        datetime.fromisoformat(finished) - datetime.fromisoformat(manifest["started"])
    ).total_seconds())
    store.write_manifest(run_dir, manifest)
