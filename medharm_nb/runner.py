"""Run configs and the papermill runner for the numbered notebook series.

``run(config)`` checks the config and every notebook's parameters before any work (an
unknown parameter is an error, not papermill's warning), writes the manifest (``started``),
executes the series into ``runs/<name>/notebooks/`` and finishes the manifest with
``success`` or ``error``. Stages cache in the run's store, so re-running after a failure
resumes without regenerating. ``generate_only(config)`` (the ``medharm-nb generate``
command) runs just the generation stage with the same checks, manifest and tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medharm_nb import store
from medharm_nb.manifest import finish_manifest, new_manifest
from medharm_nb.records import GenConfig, ModelSpec, QuerySelection, stable_hash

PACKAGE_DIR = Path(__file__).resolve().parent
NOTEBOOK_DIR = PACKAGE_DIR.parent / "notebooks"
SERIES: tuple[str, ...] = (
    "01_data", "02_generate", "03_judge", "03b_judge_validation", "04_guardrails", "05_review",
    "06_report")
INJECTED = ("config_path", "run_dir", "figures_dir")
"""Parameters the runner passes to every notebook."""


class ConfigError(ValueError):
    """A run config or a notebook parameter is wrong; raised before any work starts."""


class RunConfig(BaseModel):
    """A study: which queries, which models, how to decode and judge, which notebooks."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Run name: runs/<name>/.")
    description: str = Field(default="", description="What this study is for.")
    queries: QuerySelection = Field(default_factory=QuerySelection)
    models: list[ModelSpec] = Field(min_length=1, description="Models under test.")
    generation: GenConfig = Field(default_factory=GenConfig)
    judges: list[str] = Field(default=["rules"], min_length=1, description="Judge names.")
    notebooks: list[str] = Field(default=list(SERIES), description="Notebooks to run, in order.")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Extra parameters per notebook name.")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"model names must be unique; repeated: {duplicated}")
        groups: dict[str, list[ModelSpec]] = {}
        for m in models:
            groups.setdefault(stable_hash(m.key()), []).append(m)
        clashes = [_same_answers(group) for group in groups.values() if len(group) > 1]
        if clashes:
            raise ValueError("; ".join(clashes))
        return models


def _same_answers(specs: list[ModelSpec]) -> str:
    """Why specs with one key clash, and what to change (``ModelSpec.key`` decides)."""
    names = " and ".join(repr(s.name) for s in specs)
    shared = ", ".join(f"{k}={v!r}" for k, v in specs[0].key().items())
    differ = [f for f in ModelSpec.model_fields
              if len({repr(getattr(s, f)) for s in specs}) > 1]
    change = ("source, base_url (another server) or system_prompt"
              if specs[0].backend == "openai" else
              "source, gguf_file, quantization, adapter, system_prompt or chat_template")
    return (f"models {names} would get the same generation ids and so share every answer: "
            f"they agree on every field that changes the output ({shared}) and differ only "
            f"in {', '.join(differ)}, which do not change a generation's id. Remove all but "
            f"one, or make them differ in {change}")


def load_config(path: str | Path, name: str | None = None) -> RunConfig:
    """Read and validate a YAML run config.

    Args:
        path: The YAML file.
        name: Overrides the config's ``name`` (the run directory's name).

    Raises:
        ConfigError: naming the file and every wrong key.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if name:
        raw["name"] = name
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = "\n  ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors())
        raise ConfigError(f"{path}: invalid config\n  {problems}") from None


def default_root(config_path: str | Path) -> Path:
    """Where runs/ and figures/ go: the project folder holding ``configs/``."""
    folder = Path(config_path).resolve().parent
    return folder.parent if folder.name == "configs" else folder


@dataclass
class Run:
    """What a notebook needs: the config and where its run writes."""

    config: RunConfig
    config_path: Path
    run_dir: Path
    figures_dir: Path

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the config are relative to."""
        return self.config_path.parent

    def store(self) -> store.RunStore:
        """Open the run's SQLite store."""
        return store.RunStore(self.run_dir)


def open_run(config_path: str | Path, run_dir: str | Path | None = None,
             figures_dir: str | Path | None = None) -> Run:
    """Load a config and resolve a run's folders (each notebook's first call)."""
    config_path = Path(config_path).resolve()
    config = absolutize(load_config(config_path), config_path.parent)
    root = default_root(config_path)
    run_dir = Path(run_dir) if run_dir else root / "runs" / config.name
    figures_dir = Path(figures_dir) if figures_dir else root / "figures" / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    return Run(config, config_path, run_dir, figures_dir)


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
    """
    from medharm_nb import data, generate, variants

    if judges:
        from medharm_nb import judge

        for name in run.config.judges:
            judge.load_judge(name)
    if queries is None:
        queries = data.prepare_queries(run.config.queries, run.base_dir)
    source = data.resolve_source_path(run.config.queries.source, run.base_dir)
    if run.config.queries.source == data.OPEN_SET_NAME:
        source = str(data.open_set_path())
    models = {}
    for spec in run.config.models:
        if spec.backend == "openai":  # a server that is down fails here, before any work
            generate.make_backend(spec).prepare()
        if spec.backend == "hf":  # files, packages, quantization, adapter: no weights loaded
            from medharm_nb.generate.backends.hf import check_spec

            check_spec(spec)
        files = generate.model_files(spec)
        models[spec.name] = {
            "spec_hash": stable_hash(spec.key()),
            "system_prompt_hash": stable_hash(spec.system_prompt),
            "chat_template_hash": stable_hash(spec.chat_template),
            "files": {str(f): store.file_sha256(f) for f in files},
        }
    return {
        "queries": {"source": source, "n": queries.height,
                    "table_hash": stable_hash(queries.select("id", "text").rows()),
                    "file_sha256": (store.file_sha256(source) if Path(source).is_file()
                                    else None)},
        "variants": variants.variant_hashes(run.config.queries.variants),
        "models": models,
        "generation_config_hash": stable_hash(run.config.generation.key()),
    }


def absolutize(config: RunConfig, base_dir: Path) -> RunConfig:
    """Make relative data and model paths in a config relative to ``base_dir``.

    The runner hands notebooks a copy of the config inside the run folder, so paths must not
    depend on where that copy lives.
    """
    from medharm_nb.data import resolve_source_path

    files = config.queries.data_files
    if files is not None:  # hf: builders (hf:csv, hf:json) read these local files
        as_list = [files] if isinstance(files, str) else files
        resolved = [str(base_dir / f) if (base_dir / f).exists() else f for f in as_list]
        files = resolved[0] if isinstance(files, str) else resolved
    queries = config.queries.model_copy(update={
        "source": resolve_source_path(config.queries.source, base_dir), "data_files": files})
    models = []
    for m in config.models:
        if m.backend == "openai":  # source is the server's model name, never a local path
            models.append(m)
            continue
        if m.adapter and (base_dir / m.adapter).exists() and not Path(m.adapter).is_absolute():
            m = m.model_copy(update={"adapter": str((base_dir / m.adapter).resolve())})
        # A replay source may end in '#prompt=COL,...': the path is what comes before it.
        path, hash_, suffix = (m.source.partition("#") if m.backend == "replay"
                               else (m.source, "", ""))
        if (base_dir / path).exists() and not Path(path).is_absolute():
            m = m.model_copy(update={"source": str((base_dir / path).resolve()) + hash_ + suffix})
        models.append(m)
    return config.model_copy(update={"queries": queries, "models": models})


# -- the runner -------------------------------------------------------------------------

class RunFailed(RuntimeError):
    """A stage failed; the manifest says which, and for a notebook the executed copy shows
    the cell."""


def _setup(config_path: str | Path, name: str | None, run_dir: str | Path | None,
           figures_dir: str | Path | None) -> Run:
    """Load, absolutize and place a run (no files written yet)."""
    config_path = Path(config_path).resolve()
    config = absolutize(load_config(config_path, name), config_path.parent)
    root = default_root(config_path)
    run_dir = Path(run_dir or root / "runs" / config.name).resolve()
    figures_dir = Path(figures_dir or root / "figures" / config.name).resolve()
    return Run(config, config_path, run_dir, figures_dir)


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
        store.RunLocked: another process is generating into the run folder (nothing run).
        RunFailed: a notebook failed (the manifest is marked ``error``).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run_ = _setup(config_path, name, run_dir, figures_dir)
    config, run_dir = run_.config, run_.run_dir
    problems = check_notebooks(config, notebook_dir)
    if problems:
        raise ConfigError(f"{run_.config_path}: cannot run\n  " + "\n  ".join(problems))
    inputs = check_inputs(run_)
    # 02_generate takes the lock itself (in its kernel); refuse now, before the manifest of
    # the process that holds it is overwritten, rather than fail at that notebook.
    store.RunLock(run_dir).check()
    manifest = _start(run_, inputs, "series")
    effective_config = run_dir / "config.yaml"
    out_dir = run_dir / "notebooks"
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
    finish_manifest(manifest, run_dir, "success", None, _series_stats(manifest, run_dir))
    return manifest


def _series_stats(manifest: dict[str, Any], run_dir: Path) -> list[dict] | None:
    """Generation stats written by 02_generate in this run (an older table is not ours)."""
    if not any(nb["name"] == "02_generate" and nb["status"] == "success"
               for nb in manifest["notebooks"]):
        return None
    import polars as pl

    path = store.table_path(run_dir, "generation_stats")
    return pl.read_parquet(path).to_dicts() if path.exists() else None


def generation_stage(run_: Run, queries, progress: bool = True):
    """Ask every model of the run every query; write the ``generations`` and
    ``generation_stats`` tables, as ``02_generate`` does.

    Returns:
        The stats table, one row per model (see ``generate.GenStats``).
    """
    import polars as pl

    from medharm_nb import generate

    with run_.store() as st:
        stats = generate.run_generation(queries, run_.config.models, run_.config.generation,
                                        st, progress=progress)
        generations = generate.current_generations(
            st.frame("generations"), queries, run_.config.models, run_.config.generation)
    table = pl.DataFrame([s.as_dict() for s in stats])
    store.write_table(run_.run_dir, "generation_stats", table)
    store.write_table(run_.run_dir, "generations", generations)
    return table


def generate_only(config_path: str | Path, run_dir: str | Path | None = None,
                  limit: int | None = None, max_new_tokens: int | None = None,
                  name: str | None = None, log=print, progress: bool = True) -> dict[str, Any]:
    """Run the generation stage alone: what ``01_data`` and ``02_generate`` do, no notebooks.

    Checks the inputs first, then holds the run folder's lock from before the manifest is
    written until it is finished, so a second process is refused without touching anything.
    Re-running resumes: stored answers are not asked again, stored failures are.

    Args:
        config_path: The YAML run config.
        run_dir: Where the run writes (defaults to ``runs/<name>`` beside ``configs/``).
        limit: Generate for the first N queries only (default: ``params.02_generate.limit``
            of the config, else all); recorded in the manifest's config.
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

    run_ = _setup(config_path, name, run_dir, None)
    if run_.config.params:
        problems = check_notebooks(run_.config)
        if problems:
            raise ConfigError(f"{run_.config_path}: cannot run\n  " + "\n  ".join(problems))
    update: dict[str, Any] = {}
    if max_new_tokens is not None:
        update["generation"] = run_.config.generation.model_copy(
            update={"max_new_tokens": max_new_tokens})
    params = run_.config.params
    limit = limit or params.get("02_generate", {}).get("limit")
    if limit:
        update["params"] = {**params, "02_generate": {**params.get("02_generate", {}),
                                                      "limit": limit}}
    run_.config = run_.config.model_copy(update=update)
    store.RunLock(run_.run_dir).check()  # refuse at once, before loading anything
    queries = data.prepare_queries(run_.config.queries, run_.base_dir)
    inputs = check_inputs(run_, queries, judges=False)
    with store.RunLock(run_.run_dir, purpose="generate"):
        manifest = _start(run_, inputs, "generate")
        asked = queries.head(limit) if limit else queries
        log(f"generate {run_.config.name}: {asked.height} queries x "
            f"{len(run_.config.models)} model(s) -> {run_.run_dir}")
        try:
            store.write_table(run_.run_dir, "queries", queries)
            stats = generation_stage(run_, asked, progress).to_dicts()
        except BaseException as err:  # Ctrl-C included: the manifest says it stopped
            message = f"generation failed: {type(err).__name__}: {err}"
            finish_manifest(manifest, run_.run_dir, "error", message, None)
            if isinstance(err, Exception):
                raise RunFailed(message) from err
            raise
        finish_manifest(manifest, run_.run_dir, "success", None, stats)
    return manifest
