"""The papermill runner for the numbered notebook series, and the generation command.

``run(config)`` checks the config and every notebook's parameters before any work (an
unknown parameter is an error, not papermill's warning), writes the manifest (``started``),
executes the series into ``runs/<name>/notebooks/`` and finishes the manifest with
``success`` or ``error``. Stages cache in the run's store, so re-running after a failure
resumes without regenerating. ``generate_only(config)`` (the ``medharm-nb generate``
command) runs just the generation stage with the same checks, manifest and tables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from medharm_nb import generate, stages, store
from medharm_nb.config import INJECTED, NOTEBOOK_DIR, ConfigError, Run, RunConfig, place_run
from medharm_nb.generate.backends import backend_type
from medharm_nb.manifest import failures, finish_manifest, new_manifest, outcome
from medharm_nb.records import stable_hash

# -- checks before work ---------------------------------------------------------------------

def notebook_parameters(notebook: Path) -> dict[str, dict]:
    """Parameters declared in a notebook's cell tagged ``parameters``."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def check_notebooks(config: RunConfig, notebook_dir: Path = NOTEBOOK_DIR) -> list[str]:
    """Return every problem with the notebook list and per-notebook parameters."""
    problems = []
    for name in config.params:
        if name not in config.notebooks:
            problems.append(f"params.{name}: no such notebook in the series {config.notebooks}")
    for name in config.notebooks:
        path = notebook_dir / f"{name}.ipynb"
        if not path.exists():
            problems.append(f"notebooks: {path} does not exist")
            continue
        declared = notebook_parameters(path)
        missing_injected = [p for p in INJECTED if p not in declared]
        if missing_injected:
            problems.append(f"{path}: parameters cell lacks {missing_injected}")
        for key in config.params.get(name, {}):
            if key not in declared:
                problems.append(
                    f"params.{name}.{key}: unknown parameter; {name} takes "
                    f"{sorted(p for p in declared if p not in INJECTED)}")
    return problems


def check_inputs(run: Run, queries=None, judges: bool = True) -> dict[str, Any]:
    """Load the queries and find every model's files now, so bad input fails before work.

    Args:
        run: The run.
        queries: The prepared queries, when the caller has loaded them already.
        judges: Check the config's judges too (not needed to generate only).

    Returns:
        Input hashes for the manifest.

    Raises:
        ConfigError: every model that cannot run, each named (a file or hub id missing, a
            server down, a package absent), or a model and its base that would not be asked
            the same queries.
    """
    from medharm_nb import data, variants

    if judges:
        from medharm_nb import judge

        for name in run.config.judges:
            judge.load_judge(name)
    if queries is None:
        queries = data.prepare_queries(run.config.queries, run.base_dir)
    source = data.resolve_source_path(run.config.queries.source, run.base_dir)
    if run.config.queries.source == data.OPEN_SET_NAME:
        source = str(data.open_set_path())
    models, problems = {}, []
    for spec in run.config.models:
        try:
            models[spec.name] = _check_model(spec)
        # Every model is checked, so one message lists all that cannot run (a hub id missing
        # from the cache, a server down, a file absent), each named.
        except (OSError, ValueError) as err:
            problems.append(str(err))
    if not problems:
        problems = pair_problems(run.config, queries)
    if problems:
        raise ConfigError(f"{run.config_path}: cannot run\n  " + "\n  ".join(problems))
    from medharm_nb.plan import plan

    return {
        "plan": plan(run.config, queries.height),
        "queries": {"source": source, "n": queries.height,
                    "table_hash": stable_hash(queries.select("id", "text").rows()),
                    "file_sha256": (store.file_sha256(source) if Path(source).is_file()
                                    else None)},
        "variants": variants.variant_hashes(run.config.queries.variants),
        "models": models,
        "generation_config_hash": stable_hash(run.config.generation.key()),
    }


def _check_model(spec) -> dict[str, Any]:
    """Check one model spec without loading weights (``BaseBackend.check``: files, hub,
    packages, a server that answers); its manifest entry.

    Raises:
        OSError: files, hub id (not cached, hub unreachable or gated) or server missing.
        ValueError: a package, column or setting is wrong.
    """
    backend = backend_type(spec)
    backend.check(spec)
    files = backend.model_files(spec)
    return {
        "spec_id": generate.spec_id(spec),
        "system_prompt_hash": stable_hash(spec.system_prompt),
        "chat_template_hash": stable_hash(spec.chat_template),
        "files": {str(f): store.file_sha256(f) for f in files},
        "base": spec.base,
    }


def answerable(spec, queries, config: RunConfig) -> set[tuple[str, int]]:
    """The (query id, sample) a spec will be asked and can answer (``BaseBackend.answerable``:
    every query, but a ``replay`` spec only those its file holds), so two specs of one run
    can end up with different queries."""
    samples = config.generation.n_samples if config.generation.temperature > 0 else 1
    return backend_type(spec).answerable(spec, queries, samples)


def pair_problems(config: RunConfig, queries) -> list[str]:
    """A model and its ``base`` must be asked the same queries, or there is nothing to pair.

    Returns:
        One line per pair whose answerable queries differ, naming a few on each side.
    """
    specs = {m.name: m for m in config.models}
    problems = []
    for name, base in config.pairs:
        mine, theirs = (answerable(specs[n], queries, config) for n in (name, base))
        if mine == theirs:
            continue
        only = {n: sorted(a - b) for n, a, b in ((name, mine, theirs), (base, theirs, mine))}
        said = "; ".join(f"only {n!r} answers {len(ids)} (e.g. {', '.join(q for q, _ in ids[:3])})"
                         for n, ids in only.items() if ids)
        problems.append(f"model {name!r} and its base {base!r} would not answer the same "
                        f"queries, so they cannot be paired: {said}")
    return problems


# -- the runner -------------------------------------------------------------------------

class RunFailed(RuntimeError):
    """A stage failed; the manifest says which, and for a notebook the executed copy shows
    the cell."""


def _start(run_: Run, inputs: dict[str, Any], mode: str) -> dict[str, Any]:
    """Write the effective config and the ``started`` manifest."""
    run_.run_dir.mkdir(parents=True, exist_ok=True)
    (run_.run_dir / "config.yaml").write_text(
        yaml.safe_dump(run_.config.model_dump(mode="json"), sort_keys=False))
    manifest = new_manifest(run_, inputs, mode)
    store.write_manifest(run_.run_dir, manifest)
    return manifest


def run(config_path: str | Path, name: str | None = None, run_dir: str | Path | None = None,
        figures_dir: str | Path | None = None, notebook_dir: Path = NOTEBOOK_DIR,
        log=print, progress: bool = True) -> dict[str, Any]:
    """Validate, then execute the notebook series with papermill.

    Args:
        config_path: The YAML run config.
        name: Run name (defaults to the config's ``name``).
        run_dir: Where the run writes (defaults to ``runs/<name>`` beside ``configs/``).
        figures_dir: Where figures go (defaults to ``figures/<name>``).
        notebook_dir: The folder holding the numbered notebooks.
        log: Where progress lines go.
        progress: Show a progress bar over each notebook's cells.

    Returns:
        The finished manifest.

    Raises:
        ConfigError: the config or a notebook parameter is wrong (nothing was run).
        store.RunLocked: another process is working in the run folder (nothing run).
        RunFailed: a notebook failed (the manifest is marked ``error``).
    """
    run_ = place_run(config_path, name, run_dir, figures_dir)
    config, run_dir = run_.config, run_.run_dir
    problems = check_notebooks(config, notebook_dir)
    if problems:
        raise ConfigError(f"{run_.config_path}: cannot run\n  " + "\n  ".join(problems))
    inputs = check_inputs(run_)
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
    effective_config = run_dir / "config.yaml"
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


def _series_stats(manifest: dict[str, Any], run_dir: Path) -> list[dict] | None:
    """Generation stats written by 02_generate in this run (an older table is not ours)."""
    if not _done(manifest, "02_generate"):
        return None
    path = store.table_path(run_dir, "generation_stats")
    return store.read_table(run_dir, "generation_stats").to_dicts() if path.exists() else None


def _series_failures(manifest: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``manifest.failures`` of the tables this series has written so far."""
    results = None
    if _done(manifest, "03_judge") and store.table_path(run_dir, "results").exists():
        results = store.read_table(run_dir, "results")
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
            store.write_table(run_.run_dir, "queries", queries)
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
