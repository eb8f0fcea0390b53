"""Run configs and runs: what a study asks, and where a run of it writes.

``load_config`` reads and checks a YAML run config (``RunConfig``: queries, models,
generation, judges, notebooks, per-notebook parameters; unknown keys are errors);
``open_run`` places a run's folders (each notebook's first call), with the config's relative
paths made absolute (``absolutize``), so a copy of the config inside the run folder reads
the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medharm_nb import store
from medharm_nb.conversation.templates import get_attacker_template, get_escalation
from medharm_nb.generate.backends import BACKENDS, backend_type, validate_spec
from medharm_nb.records import (
    ConversationSettings,
    GenConfig,
    ModelSpec,
    QuerySelection,
    stable_hash,
)

PACKAGE_DIR = Path(__file__).resolve().parent
NOTEBOOK_DIR = (PACKAGE_DIR / "notebooks" if (PACKAGE_DIR / "notebooks").is_dir()
                else PACKAGE_DIR.parent / "notebooks")
"""The numbered notebooks: inside an installed package (package data, copied from the
repository's notebooks/ when a wheel is built: setup.py), else the checkout's own."""
SERIES: tuple[str, ...] = (
    "01_data", "02_generate", "03_judge", "03b_judge_validation", "04_guardrails", "05_review",
    "06_amplification", "07_report")
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
    conversations: ConversationSettings | None = Field(
        default=None, description="Multi-turn conversations asked besides the single queries "
                                  "(scripted escalation, imported, an adaptive attacker); "
                                  "each notebook adds their steps (medharm_nb.conversation).")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # "." and ".." match the character class but name the runs folder or its parent:
        # the run would write its manifest, store and notebooks outside runs/.
        if set(name) == {"."}:
            raise ValueError(f"run name {name!r} names a folder, not a run: use letters, "
                             "digits, '_', '-' or '.' with at least one non-dot")
        return name

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        for m in models:
            validate_spec(m)
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
        problems = base_problems(models)
        if problems:
            raise ValueError("; ".join(problems))
        return models

    @field_validator("conversations")
    @classmethod
    def _known_templates(cls, settings: ConversationSettings | None):
        if settings is None:
            return settings
        for name in settings.scripted:
            get_escalation(name)
        if settings.attacker is not None:
            validate_spec(settings.attacker.model)
            get_attacker_template(settings.attacker.template)
        return settings

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(model, its base) for every model that names a base, in config order."""
        return [(m.name, m.base) for m in self.models if m.base]


def base_problems(models: list[ModelSpec]) -> list[str]:
    """What is wrong with the models' ``base`` fields: a name that is no model of the run, a
    model that is its own base, bases that form a cycle (each problem once)."""
    names = [m.name for m in models]
    bases = {m.name: m.base for m in models if m.base}
    problems = []
    for name, base in bases.items():
        if base == name:
            problems.append(f"model {name!r} names itself as its base")
        elif base not in names:
            problems.append(f"model {name!r} names base {base!r}, which is not a model of "
                            f"this run (models: {', '.join(names)})")
    reported: set[str] = set()
    for start in bases:
        chain, name = [start], bases[start]
        while name in bases and name not in chain and name != bases.get(name):
            chain.append(name)
            name = bases[name]
        if name in chain and name != chain[-1] and not reported & set(chain):
            loop = chain[chain.index(name):] + [name]
            problems.append(f"the bases of models form a cycle: {' -> '.join(loop)} "
                            f"(a base must be a model that names no base in this loop)")
            reported |= set(loop)
    return problems


def _same_answers(specs: list[ModelSpec]) -> str:
    """Why specs with one key clash, and what to change (``ModelSpec.key`` decides)."""
    names = " and ".join(repr(s.name) for s in specs)
    shared = ", ".join(f"{k}={v!r}" for k, v in specs[0].key().items())
    differ = [f for f in ModelSpec.model_fields
              if len({repr(getattr(s, f)) for s in specs}) > 1]
    fields = ("source", *backend_type(specs[0]).key_fields)
    change = ", ".join(fields[:-1]) + f" or {fields[-1]}" if len(fields) > 1 else fields[0]
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
        raw = read_yaml(path) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a run config is a mapping of keys, not {type(raw).__name__}")
    if name:
        raw["name"] = name
    try:
        # Strict: "8" or true for max_new_tokens is a mistake to report, not to coerce.
        # Through JSON so that YAML lists still fill tuple fields.
        return RunConfig.model_validate_json(json.dumps(raw, default=str), strict=True)
    except ValidationError as err:
        problems = "\n  ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden"
               and not isinstance(e.get("input"), dict | list) else "")
            for e in err.errors())
        raise ConfigError(f"{path}: invalid config\n  {problems}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (``safe_load`` keeps the
    last value without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice, on lines {seen[key]} and {line}",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, refusing duplicate keys (``yaml.YAMLError`` naming both lines)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506


SPEC_FILES = (".yaml", ".yml", ".json")
"""Suffixes of a file holding one model spec."""


def parse_spec(value: str | dict[str, Any], *, name: str | None = None,
               base_dir: str | Path | None = None, **fields: Any) -> ModelSpec:
    """One model spec from what a person writes: the one parser behind configs, spec files
    and the command line.

    Args:
        value: A mapping of spec fields (as in a config's ``models:``); a YAML or JSON file
            holding one (``name`` defaults to the file's stem, relative paths to its folder);
            ``BACKEND:SOURCE`` for any backend (``replay:answers.csv#response=completion``);
            or an hf source as it stands (embedded name, hub id, local folder).
        name: The spec's name (default: the mapping's, the file's stem, or the source's
            last path part).
        base_dir: Relative paths are relative to this folder (a spec file's own folder
            wins; default: as written).
        **fields: Spec fields that override the value's (None: not given).

    Raises:
        ConfigError: naming where the spec came from and every wrong field, an unknown
            backend, or a field the backend does not read.
    """
    origin = ""
    if isinstance(value, dict):
        raw = dict(value)
    elif Path(value).suffix in SPEC_FILES and Path(value).is_file():
        path = Path(value)
        origin = f"{path}: "
        try:
            raw = read_yaml(path)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a model spec is a mapping of fields, not "
                              f"{type(raw).__name__}")
        raw.setdefault("name", path.stem)
        base_dir = path.resolve().parent
    else:
        backend, colon, rest = value.partition(":")
        raw = ({"backend": backend, "source": rest} if colon and backend in BACKENDS
               else {"source": value})
        raw["name"] = Path(raw["source"].partition("#")[0].rstrip("/")).name or value
    raw.update({k: v for k, v in fields.items() if v is not None})
    if name:
        raw["name"] = name
    try:
        spec = ModelSpec.model_validate_json(json.dumps(raw, default=str), strict=True)
        validate_spec(spec)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
                             f"{e['msg']}" for e in err.errors())
        raise ConfigError(f"{origin}invalid model spec: {problems}") from None
    except ValueError as err:
        raise ConfigError(f"{origin}{err}") from None
    return backend_type(spec).resolve(spec, Path(base_dir)) if base_dir else spec


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
    run = place_run(config_path, None, run_dir, figures_dir)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    return run


def open_run_dir(run_dir: str | Path) -> Run:
    """Reopen a run from its folder: the effective config the runner left there
    (``config.yaml``) and, from the manifest, where its figures went.

    Raises:
        ConfigError: the folder holds no ``config.yaml`` (not a run folder).
    """
    run_dir = Path(run_dir).resolve()
    config_path = run_dir / store.CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml here; is it a run folder (runs/<name>)?")
    figures = None
    if (run_dir / store.MANIFEST_FILE).is_file():
        figures = store.read_manifest(run_dir).get("figures_dir")
    return open_run(config_path, run_dir, figures or run_dir / "figures")


def place_run(config_path: str | Path, name: str | None, run_dir: str | Path | None,
           figures_dir: str | Path | None) -> Run:
    """Load, absolutize and place a run (no files written yet).

    Args:
        config_path: The YAML run config.
        name: Overrides the config's name.
        run_dir: Where the run writes (default: ``runs/<name>`` beside ``configs/``).
        figures_dir: Where figures go (default: ``figures/<name>``).
    """
    config_path = Path(config_path).resolve()
    config = absolutize(load_config(config_path, name), config_path.parent)
    root = default_root(config_path)
    run_dir = _inside(Path(run_dir) if run_dir else root / "runs" / config.name, "run folder")
    figures_dir = _inside(Path(figures_dir) if figures_dir else root / "figures" / config.name,
                          "figures folder")
    return Run(config, config_path, run_dir, figures_dir)


def _inside(folder: Path, what: str) -> Path:
    """``folder`` resolved, refused unless it lies strictly inside its own parent folder
    (``runs/..`` or ``runs/.`` would be the project or ``runs/`` itself) and outside the
    notebook series (papermill would write executed copies over the notebooks).

    Raises:
        ConfigError: naming the folder and what it resolves to.
    """
    resolved = folder.resolve()
    parent = folder.absolute().parent.resolve()
    if resolved.parent != parent or resolved == parent:
        raise ConfigError(f"{what} {folder} resolves to {resolved}, which is not a folder "
                          f"inside {parent}: give the run a plain name")
    notebooks = NOTEBOOK_DIR.resolve()
    if resolved == notebooks or notebooks in resolved.parents or resolved in notebooks.parents:
        raise ConfigError(f"{what} {folder} is, holds or lies inside the notebook series "
                          f"{notebooks}: a run there could write over the project's files")
    return resolved


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
    models = [backend_type(m).resolve(m, base_dir) for m in config.models]
    update: dict[str, Any] = {"queries": queries, "models": models}
    talks = config.conversations
    if talks is not None:
        changes: dict[str, Any] = {}
        if talks.imported and not Path(talks.imported).is_absolute() \
                and (base_dir / talks.imported).exists():
            changes["imported"] = str((base_dir / talks.imported).resolve())
        if talks.attacker is not None:
            spec = talks.attacker.model
            changes["attacker"] = talks.attacker.model_copy(
                update={"model": backend_type(spec).resolve(spec, base_dir)})
        update["conversations"] = talks.model_copy(update=changes)
    return config.model_copy(update=update)
