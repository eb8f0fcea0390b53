"""The papermill runner for the numbered notebook series, and the generate and judge
commands.

``run(config)`` checks the config and every notebook's parameters before any work (an
unknown parameter is an error, not papermill's warning; ``checks``), writes the manifest
(``started``), executes the series (or the part of it chosen with ``only`` / ``skip``) into
``runs/<name>/notebooks/`` and finishes the manifest with ``success``,
``success_with_failures`` or ``error``. Stages cache in the run's store, so re-running after
a failure resumes without regenerating. ``generate_only(config)`` (``medharm-nb generate``)
runs just the generation stage, ``judge_only(config)`` (``medharm-nb judge``) judges and
reports on the stored answers, with the same checks, manifest and tables, and no notebooks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from medharm_nb import stages, store
from medharm_nb.checks import (
    check_inputs,
    check_notebooks,
    notebook_parameters,
    pair_problems,
    select_notebooks,
    table_problems,
)
from medharm_nb.config import INJECTED, NOTEBOOK_DIR, ConfigError, Run, place_run
from medharm_nb.manifest import failures, finish_manifest, new_manifest, outcome

__all__ = ["INJECTED", "NOTEBOOK_DIR", "ConfigError", "RunFailed", "check_inputs",
           "check_notebooks", "generate_only", "judge_only", "notebook_parameters",
           "pair_problems", "run"]

# -- the runner -------------------------------------------------------------------------

class RunFailed(RuntimeError):
    """A stage failed; the manifest says which, and for a notebook the executed copy shows
    the cell."""


def _start(run_: Run, inputs: dict[str, Any], mode: str) -> dict[str, Any]:
    """Write the effective config and the ``started`` manifest."""
    store.write_run_config(run_.run_dir, run_.config.model_dump(mode="json"))
    manifest = new_manifest(run_, inputs, mode)
    store.write_manifest(run_.run_dir, manifest)
    return manifest


def run(config_path: str | Path, name: str | None = None, run_dir: str | Path | None = None,
        figures_dir: str | Path | None = None, notebook_dir: Path = NOTEBOOK_DIR,
        log=print, progress: bool = True, only: list[str] | None = None,
        skip: list[str] | None = None) -> dict[str, Any]:
    """Validate, then execute the notebook series (or a part of it) with papermill.

    A part of the series (``only`` or ``skip``) runs on the tables the run folder holds:
    ``only=["03_judge", "07_report"]`` judges and reports on stored answers, with no model
    checked or loaded (nothing is generated). A notebook whose input table neither an
    earlier chosen notebook writes nor the folder holds is refused before any work, naming
    the notebook that writes it. The effective config (``config.yaml``, the manifest)
    lists the notebooks that ran.

    Args:
        config_path: The YAML run config.
        name: Run name (defaults to the config's ``name``).
        run_dir: Where the run writes (defaults to ``runs/<name>`` beside ``configs/``).
        figures_dir: Where figures go (defaults to ``figures/<name>``).
        notebook_dir: The folder holding the numbered notebooks.
        log: Where progress lines go.
        progress: Show a progress bar over each notebook's cells.
        only: Run only these of the config's notebooks (in the series' order).
        skip: Run all of the config's notebooks but these.

    Returns:
        The finished manifest.

    Raises:
        ConfigError: the config, a notebook parameter or the choice of notebooks is wrong, or
            a chosen notebook's input table is missing (nothing was run).
        store.RunLocked: another process is working in the run folder (nothing run).
        RunFailed: a notebook failed (the manifest is marked ``error``).
    """
    run_ = place_run(config_path, name, run_dir, figures_dir)
    config, run_dir = run_.config, run_.run_dir
    selected = select_notebooks(config, only, skip)
    problems = check_notebooks(config, notebook_dir) + table_problems(selected, run_dir)
    if problems:
        raise ConfigError(f"{run_.config_path}: cannot run\n  " + "\n  ".join(problems))
    stored = "01_data" not in selected and store.has_table(run_dir, "queries")
    inputs = check_inputs(run_, store.queries_df(run_dir) if stored else None,
                          judges="03_judge" in selected, models="02_generate" in selected)
    run_.config = config.model_copy(update={"notebooks": selected})
    # One lock for the whole series: a second run (or generate) on this folder is refused
    # before our manifest, config or tables could be rewritten under us. The kernels we start
    # inherit the lock's token through the environment and work inside it.
    with store.RunLock(run_dir, purpose="run") as lock:
        previous = os.environ.get(store.LOCK_ENV)
        os.environ[store.LOCK_ENV] = lock.token or ""
        try:
            return _run_series(run_, inputs, notebook_dir, log, progress)
        finally:
            if previous is None:
                os.environ.pop(store.LOCK_ENV, None)
            else:
                os.environ[store.LOCK_ENV] = previous


def _run_series(run_: Run, inputs: dict[str, Any], notebook_dir: Path, log,
                progress: bool) -> dict[str, Any]:
    """Execute the notebooks in order under the run's lock (see ``run``)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    config, run_dir = run_.config, run_.run_dir
    out_dir = run_dir / "notebooks"
    for nb in config.notebooks:
        if (out_dir / f"{nb}.ipynb").resolve() == (notebook_dir / f"{nb}.ipynb").resolve():
            raise ConfigError(f"{out_dir / nb}.ipynb: the executed copy would overwrite its "
                              f"own input notebook; choose a run folder outside {notebook_dir}")
    manifest = _start(run_, inputs, "series")
    effective_config = run_dir / store.CONFIG_FILE
    out_dir.mkdir(exist_ok=True)
    log(f"run {config.name}: {len(config.notebooks)} notebooks -> {run_dir}")
    for nb in config.notebooks:
        output = out_dir / f"{nb}.ipynb"
        params = {"config_path": str(effective_config), "run_dir": str(run_dir),
                  "figures_dir": str(run_.figures_dir), **config.params.get(nb, {})}
        entry = {"name": nb, "output": str(output), "status": "started", "seconds": None}
        manifest["notebooks"].append(entry)
        store.write_manifest(run_dir, manifest)
        began = time.perf_counter()
        log(f"  {nb}")
        try:
            papermill.execute_notebook(
                str(notebook_dir / f"{nb}.ipynb"), str(output), parameters=params,
                cwd=str(notebook_dir), kernel_name="python3", progress_bar=progress,
                # The kernel talks to us over loopback; its TCP-encryption warning is noise.
                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except PapermillExecutionError as err:
            entry.update(status="error", seconds=round(time.perf_counter() - began, 1))
            message = (f"notebook {nb} failed in cell {err.exec_count}: {err.ename}: "
                       f"{err.evalue} (see {output})")
            finish_manifest(manifest, run_dir, "error", message, _series_stats(manifest, run_dir))
            raise RunFailed(message) from None
        except Exception as err:  # kernel died, bad notebook JSON, ...
            entry.update(status="error", seconds=round(time.perf_counter() - began, 1))
            message = f"notebook {nb} could not run: {type(err).__name__}: {err}"
            finish_manifest(manifest, run_dir, "error", message, _series_stats(manifest, run_dir))
            raise RunFailed(message) from None
        entry.update(status="success", seconds=round(time.perf_counter() - began, 1))
        log(f"  {nb} done in {entry['seconds']} s")
        counts = _series_failures(manifest, run_dir)
        status, why = outcome(counts)
        # Everything in a stage failed: stop once the failed rows are in the results table
        # (03_judge writes it), rather than analyse nothing for the rest of the series.
        later = config.notebooks[config.notebooks.index(nb) + 1:]
        if status == "error" and "03_judge" not in later:
            finish_manifest(manifest, run_dir, "error", why, _series_stats(manifest, run_dir),
                            counts)
            raise RunFailed(f"after {nb}: {why}")
    counts = _series_failures(manifest, run_dir)
    status, why = outcome(counts)
    finish_manifest(manifest, run_dir, status, why, _series_stats(manifest, run_dir), counts)
    if why:
        log(f"  finished with failures: {why}")
    return manifest


def _done(manifest: dict[str, Any], notebook: str) -> bool:
    return any(nb["name"] == notebook and nb["status"] == "success"
               for nb in manifest["notebooks"])


def _current(manifest: dict[str, Any], notebook: str) -> bool:
    """Whether the tables ``notebook`` writes are this run's: it ran in this run, or it is
    not part of it (then the stored tables are what this run reads)."""
    chosen = manifest["config"]["notebooks"]
    return notebook not in chosen or _done(manifest, notebook)


def _series_stats(manifest: dict[str, Any], run_dir: Path) -> list[dict] | None:
    """Generation stats of the generations this series reads: written by 02_generate in
    this run, or stored when 02_generate is not part of it (an older table is not ours)."""
    if not _current(manifest, "02_generate"):
        return None
    return _stored_stats(run_dir)


def _stored_stats(run_dir: Path) -> list[dict] | None:
    stats = store.generation_stats_df(run_dir, missing_ok=True)
    return None if stats is None else stats.to_dicts()


def _series_failures(manifest: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``manifest.failures`` of the tables this series has written (or reads) so far."""
    results = (store.results_df(run_dir, missing_ok=True) if _current(manifest, "03_judge")
               else None)
    return failures(_series_stats(manifest, run_dir), results)


def generate_only(config_path: str | Path, run_dir: str | Path | None = None,
                  first_queries: int | None = None, max_new_tokens: int | None = None,
                  name: str | None = None, log=print, progress: bool = True) -> dict[str, Any]:
    """Run the generation stage alone: what ``01_data`` and ``02_generate`` do, no notebooks.

    Checks the inputs first, then holds the run folder's lock from before the manifest is
    written until it is finished, so a second process is refused without touching anything.
    Re-running resumes: stored answers are not asked again, stored failures are.

    Args:
        config_path: The YAML run config.
        run_dir: Where the run writes (defaults to ``runs/<name>`` beside ``configs/``).
        first_queries: Generate for the first N queries only (default:
            ``params.02_generate.first_queries`` of the config, else all); recorded in the
            manifest's config.
        max_new_tokens: Overrides ``generation.max_new_tokens`` (part of every id).
        name: Run name (defaults to the config's ``name``).
        log: Where progress lines go.
        progress: Show a progress bar per model.

    Returns:
        The finished manifest; ``stages.generate`` holds one stats row per model.

    Raises:
        ConfigError: the config or a notebook parameter is wrong (nothing was run).
        store.RunLocked: another process is generating into the run folder (nothing run).
        RunFailed: generation failed (the manifest is marked ``error``).
    """
    from medharm_nb import data

    run_ = place_run(config_path, name, run_dir, None)
    if run_.config.params:
        problems = check_notebooks(run_.config)
        if problems:
            raise ConfigError(f"{run_.config_path}: cannot run\n  " + "\n  ".join(problems))
    update: dict[str, Any] = {}
    if max_new_tokens is not None:
        update["generation"] = run_.config.generation.model_copy(
            update={"max_new_tokens": max_new_tokens})
    params = run_.config.params
    first = first_queries or params.get("02_generate", {}).get("first_queries")
    if first:
        update["params"] = {**params, "02_generate": {**params.get("02_generate", {}),
                                                      "first_queries": first}}
    run_.config = run_.config.model_copy(update=update)
    store.RunLock(run_.run_dir).check()  # refuse at once, before loading anything
    queries = data.prepare_queries(run_.config.queries, run_.base_dir)
    inputs = check_inputs(run_, queries, judges=False)
    with store.RunLock(run_.run_dir, purpose="generate"):
        manifest = _start(run_, inputs, "generate")
        asked = queries.head(first) if first else queries
        log(f"generate {run_.config.name}: {asked.height} queries x "
            f"{len(run_.config.models)} model(s) -> {run_.run_dir}")
        try:
            stages.data_stage(run_, queries)
            stats = stages.generation_stage(run_, asked, progress).to_dicts()
        except BaseException as err:  # Ctrl-C included: the manifest says it stopped
            message = f"generation failed: {type(err).__name__}: {err}"
            finish_manifest(manifest, run_.run_dir, "error", message, None)
            if isinstance(err, Exception):
                raise RunFailed(message) from err
            raise
        counts = failures(stats)
        status, why = outcome(counts)
        finish_manifest(manifest, run_.run_dir, status, why, stats, counts)
    return manifest


def judge_only(config_path: str | Path, run_dir: str | Path | None = None,
               judges: list[str] | None = None, name: str | None = None,
               figures_dir: str | Path | None = None, log=print,
               progress: bool = True) -> dict[str, Any]:
    """Judge the answers a run folder holds and report on them: what ``03_judge`` and
    ``07_report`` do, no notebooks, no guards, no validation, no model loaded.

    The answers come from ``medharm-nb generate`` (a model's, or a replayed file's: an
    API batch, another harness's outputs, published completions). Their generation stats
    go into the manifest beside the verdicts, so a run whose every generation failed is
    an ``error`` here too. Verdicts already stored are not asked again.

    Args:
        config_path: The YAML run config.
        run_dir: The run folder (defaults to ``runs/<name>`` beside ``configs/``).
        judges: Judge names instead of the config's ``judges``; recorded in the manifest.
        name: Run name (defaults to the config's ``name``).
        figures_dir: Where figures go (defaults to ``figures/<name>``).
        log: Where progress lines go.
        progress: Show a progress bar per judge.

    Returns:
        The finished manifest; ``report`` holds the report's path.

    Raises:
        ConfigError: the config or a judge is wrong, or the folder holds no stored answers
            (nothing was run).
        store.RunLocked: another process is working in the run folder (nothing run).
        RunFailed: judging or the report failed (the manifest is marked ``error``).
    """
    run_ = place_run(config_path, name, run_dir, figures_dir)
    if judges:
        run_.config = run_.config.model_copy(update={"judges": list(judges)})
    problems = table_problems(["03_judge"], run_.run_dir,
                              how=f"run `medharm-nb generate {config_path}` first")
    if problems:
        raise ConfigError(f"{run_.config_path}: cannot judge\n  " + "\n  ".join(problems))
    store.RunLock(run_.run_dir).check()  # refuse at once, before loading anything
    queries = store.queries_df(run_)
    inputs = check_inputs(run_, queries, judges=True, models=False)
    run_.config = run_.config.model_copy(update={"notebooks": ["03_judge", "07_report"]})
    with store.RunLock(run_.run_dir, purpose="judge"):
        manifest = _start(run_, inputs, "judge")
        log(f"judge {run_.config.name}: {', '.join(run_.config.judges)} -> {run_.run_dir}")
        try:
            results = stages.judging_stage(run_, progress=progress)
            stats = _stored_stats(run_.run_dir)
            counts = failures(stats, results)
            status, why = outcome(counts)
            # The manifest is finished before the report, so the report shows how it ended.
            finish_manifest(manifest, run_.run_dir, status, why, stats, counts)
            manifest["report"] = str(stages.report_stage(run_))
            store.write_manifest(run_.run_dir, manifest)
        except BaseException as err:  # Ctrl-C included: the manifest says it stopped
            message = f"judging failed: {type(err).__name__}: {err}"
            finish_manifest(manifest, run_.run_dir, "error", message, None)
            if isinstance(err, Exception):
                raise RunFailed(message) from err
            raise
    return manifest
