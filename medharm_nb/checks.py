"""Checks before any work: the notebook list and every notebook's parameters (an unknown
parameter is an error, not papermill's warning), the tables a chosen part of the series
needs, and the inputs: queries, every model (``BaseBackend.check``, no weights loaded), the
judges, and pairs that would not be asked the same queries. Each check returns or raises
every problem at once, each named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medharm_nb import generate, store
from medharm_nb.config import INJECTED, NOTEBOOK_DIR, ConfigError, Run, RunConfig
from medharm_nb.generate.backends import backend_type
from medharm_nb.records import stable_hash
from medharm_nb.store.catalogue import read_by


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


def select_notebooks(config: RunConfig, only: list[str] | None = None,
                     skip: list[str] | None = None) -> list[str]:
    """The config's notebooks to run: all of them, only those named, or all but those
    named; in the series' order.

    Raises:
        ConfigError: both given, or a name that is not one of the config's notebooks.
    """
    if only and skip:
        raise ConfigError("give --only or --skip, not both")
    named = list(only or skip or [])
    unknown = [n for n in named if n not in config.notebooks]
    if unknown:
        raise ConfigError(f"no notebook {', '.join(unknown)} in this run's series; it has "
                          f"{', '.join(config.notebooks)}")
    if only:
        return [n for n in config.notebooks if n in only]
    return [n for n in config.notebooks if n not in named]


def table_problems(selected: list[str], run_dir: Path, how: str | None = None) -> list[str]:
    """Every table a chosen notebook reads that neither an earlier chosen notebook writes
    nor the run folder holds, naming the notebook that writes it.

    Args:
        selected: The notebooks that will run, in order.
        run_dir: The run folder (stored tables count).
        how: What to do about a missing table, if not "add its notebook" (e.g. the command
            that writes it).
    """
    problems = []
    for i, nb in enumerate(selected):
        for table in read_by(nb):
            writer = table.notebook
            if writer in selected[:i] or store.has_table(run_dir, table.name):
                continue
            fix = how or f"add {writer} to the notebooks, or run it first"
            problems.append(f"{nb} reads tables/{table.name}.parquet, which {writer} writes, "
                            f"and {table.path(run_dir)} does not exist: {fix}")
    return problems


def check_inputs(run: Run, queries=None, judges: bool = True,
                 models: bool = True) -> dict[str, Any]:
    """Load the queries and find every model's files now, so bad input fails before work.

    Args:
        run: The run.
        queries: The prepared queries, when the caller has loaded them already.
        judges: Check the config's judges too (not needed to generate only).
        models: Check every model and pair (not needed when nothing is generated: stored
            answers are judged as they are, with no weights or server at hand).

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
    version = data.open_set_version(run.config.queries.source)
    if version is not None:
        source = str(data.open_set_path(version))
    checked, problems = {}, []
    for spec in run.config.models if models else []:
        try:
            checked[spec.name] = _check_model(spec)
        # Every model is checked, so one message lists all that cannot run (a hub id missing
        # from the cache, a server down, a file absent), each named.
        except (OSError, ValueError) as err:
            problems.append(str(err))
    if models and not problems:
        problems = pair_problems(run.config, queries)
    talks, talked, built = run.config.conversations, None, None
    if talks is not None:
        talked, more, built = _check_conversations(run, queries, models)
        problems += more
    if problems:
        raise ConfigError(f"{run.config_path}: cannot run\n  " + "\n  ".join(problems))
    from medharm_nb.plan import plan

    return {
        **({"conversations": talked} if talked is not None else {}),
        "plan": plan(run.config, queries.height, built),
        "queries": {"source": source, "n": queries.height,
                    "table_hash": stable_hash(queries.select("id", "text").rows()),
                    "file_sha256": (store.file_sha256(source) if Path(source).is_file()
                                    else None)},
        "variants": variants.variant_hashes(run.config.queries.variants),
        "models": checked,
        "generation_config_hash": stable_hash(run.config.generation.key()),
    }


def _check_conversations(run: Run, queries, models: bool
                         ) -> tuple[dict[str, Any], list[str], Any]:
    """Build the run's conversations now (an imported file is validated, every problem
    named with its line) and check the attacker's model and stop judge.

    Returns:
        The manifest's ``conversations`` entry (template hashes, counts per kind, the
        imported file's digest, the attacker's spec id), the problems found, and the
        conversations table.

    Raises:
        conversation.ConversationValidationError: the imported file is wrong.
    """
    from medharm_nb import conversation

    talks = run.config.conversations
    built = conversation.build_conversations(queries, talks)
    attacker = talks.attacker
    entry: dict[str, Any] = {
        "templates": conversation.template_hashes(talks.scripted,
                                                  attacker.template if attacker else None),
        "n": dict(built.group_by("kind").len().iter_rows()),
        "imported": ({"path": talks.imported,
                      "file_sha256": store.file_sha256(talks.imported)}
                     if talks.imported else None)}
    problems = []
    if attacker is not None:
        if models:
            try:
                entry["attacker"] = _check_model(attacker.model)
            except (OSError, ValueError) as err:
                problems.append(f"conversations.attacker: {err}")
        from medharm_nb import judge

        try:
            judge.load_judge(attacker.judge or run.config.judges[0])
        except ValueError as err:
            problems.append(f"conversations.attacker.judge: {err}")
    return entry, problems, built


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
    return backend_type(spec).answerable(spec, queries, config.generation.samples)


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
