"""The run manifest: written first (``started``), finished last (``success``,
``success_with_failures`` or ``error``; ``STATUSES``).

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


STATUSES: dict[str, int] = {"success": 0, "error": 1, "success_with_failures": 3}
"""How a run ended, and the exit code the command line returns for it. ``error``: a stage
raised, or everything it did failed (every generation, or every verdict of a judge);
``success_with_failures``: done, but some generations or verdicts failed (counted in the
manifest's ``failures``, kept in the results table with their reasons)."""


def failures(generation_stats: list[dict] | None, results=None) -> dict[str, Any]:
    """What failed in a run: generations per model, and unscored verdicts per judge among
    the responses a judge was given (a failed or blocked generation is not the judge's).

    Args:
        generation_stats: ``generate.GenStats`` rows of this run (None: not generated).
        results: The results table written by this run's judging (None: not judged).
    """
    out: dict[str, Any] = {}
    if generation_stats:
        out["generate"] = {row["model"]: {"total": row["total"], "failed": row["failed"],
                                          "blocked": row["blocked"]}
                           for row in generation_stats}
    if results is not None and results.height:
        import polars as pl

        answered = results.filter(~pl.col("gen_failed") & ~pl.col("gen_blocked"))
        out["judge"] = {
            row["judge"]: {"judged": row["judged"], "unscored": row["unscored"]}
            for row in answered.group_by("judge").agg(
                pl.len().alias("judged"), (pl.col("label") == "unscored").sum().alias("unscored"),
            ).sort("judge").iter_rows(named=True)}
    return out


def outcome(counts: dict[str, Any]) -> tuple[str, str | None]:
    """The status a run's ``failures`` give it, and the message that says why (None when
    nothing failed)."""
    gen = counts.get("generate", {})
    total = sum(m["total"] for m in gen.values())
    failed = sum(m["failed"] for m in gen.values())
    if total and failed == total:
        return "error", f"every generation failed ({failed} of {total}); each is stored " \
                        "with its error"
    dead = [j for j, c in counts.get("judge", {}).items() if c["judged"] and
            c["unscored"] == c["judged"]]
    if dead:
        return "error", f"judge(s) {', '.join(dead)} scored none of the responses"
    parts = [f"{m}: {c['failed']} of {c['total']} generations failed"
             for m, c in gen.items() if c["failed"]]
    parts += [f"{j}: {c['unscored']} of {c['judged']} verdicts unscored"
              for j, c in counts.get("judge", {}).items() if c["unscored"]]
    return ("success_with_failures", "; ".join(parts)) if parts else ("success", None)


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
        "failures": {},
        "error": None,
    }


def finish_manifest(manifest: dict[str, Any], run_dir: Path, status: str, error: str | None,
                    generation_stats: list[dict] | None, counts: dict | None = None) -> None:
    """Close a manifest: status (one of ``STATUSES``), error (or what failed), finish time,
    seconds, generation stats and failure counts if any."""
    if generation_stats is not None:
        manifest["stages"]["generate"] = generation_stats
    if counts is not None:
        manifest["failures"] = counts
    finished = store.utc_now()
    manifest.update(status=status, finished=finished, error=error, seconds=(
        datetime.fromisoformat(finished) - datetime.fromisoformat(manifest["started"])
    ).total_seconds())
    store.write_manifest(run_dir, manifest)
