"""Conversations from queries (scripted escalation, the attacker's goals) and from files.

Every conversation keeps the id of the query it carries and that query's metadata columns,
whichever the query set has (category, framing, risk, expected, source, variant, base_id,
tier ...), so per-turn results join the single-turn ones. ``records.Conversation`` documents
the columns of the ``conversations`` table.

An imported file is JSONL, one conversation per line::

    {"id": "c1", "messages": [{"role": "user", "content": "..."},
                              {"role": "assistant", "content": "..."},
                              {"role": "user", "content": "..."}],
     "category": "toxicology", "framing": "clinical", "risk": "harmful",
     "expected": "refuse", "pair_id": "c2", "query_id": "mho-0001"}

``messages`` alternate user and assistant turns and end with the user's; an assistant message
in the file is *given*: the model sees it as its own earlier answer and answers only the user
turns after which the file gives none. ``query_id`` (optional) joins it to a query of the run;
``pair_id`` names its twin's conversation id in the same file; ``source`` defaults to the
file's name. Every problem is reported with the file and line, as for query files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from medharm_nb import data
from medharm_nb.conversation.templates import get_attacker_template, get_escalation
from medharm_nb.data_files import decode_text
from medharm_nb.labels import CATEGORIES
from medharm_nb.records import stable_hash
from medharm_nb.settings import ConversationSettings

CONV_SEP = "~"
"""Between a query id and a template's name in a conversation id."""
IMPORT_HASH = stable_hash("import", "v1")
"""The template hash of imported conversations: their text is in every turn's rendered
history, so editing one turn changes the ids of that turn and the ones after it only."""
ROLES = ("user", "assistant")

_CORE = ("conv_id", "query_id", "kind", "template", "template_hash", "users", "given",
         "n_turns", "text", "pair_conv_id")
"""The ``conversations`` table's own columns (``records.Conversation``), before the query's
metadata."""
_SCHEMA = {"conv_id": pl.String, "query_id": pl.String, "kind": pl.String,
           "template": pl.String, "template_hash": pl.String, "users": pl.List(pl.String),
           "given": pl.List(pl.String), "n_turns": pl.Int64, "text": pl.String,
           "pair_conv_id": pl.String}


def metadata_columns(queries: pl.DataFrame) -> list[str]:
    """The query columns a conversation carries: all but the id and text (which it holds as
    ``query_id`` and ``text``) and reading aids."""
    return [c for c in queries.columns if c not in ("id", "text", "_line")]


def _frame(rows: list[dict], meta: pl.DataFrame) -> pl.DataFrame:
    """The conversation rows with their queries' metadata (``meta``: ``query_id`` and the
    metadata columns), core columns first."""
    core = pl.DataFrame(rows, schema=_SCHEMA)
    return core.join(meta, on="query_id", how="left", maintain_order="left")


def _direct(queries: pl.DataFrame) -> pl.DataFrame:
    if "variant" in queries.columns:
        return queries.filter(pl.col("variant") == "direct")
    return queries


def _meta(queries: pl.DataFrame) -> pl.DataFrame:
    return queries.select(pl.col("id").alias("query_id"), *metadata_columns(queries))


def scripted(queries: pl.DataFrame, templates: Iterable[str],
             per_cell: int | None = None) -> pl.DataFrame:
    """Scripted escalations of the run's direct queries, harmful and benign alike.

    Args:
        queries: The run's query table (``data.prepare_queries``).
        templates: Escalation template names (``templates.ESCALATIONS``).
        per_cell: Harmful queries per category x framing (plus their twins); None: all.

    Returns:
        One row per query and template (``records.Conversation`` columns, then the query's).
    """
    chosen = _direct(queries)
    if per_cell is not None:
        chosen = data.select_queries(chosen, per_cell=per_cell)
    ids = set(chosen["id"].to_list())
    rows = []
    for name in templates:
        template = get_escalation(name)
        for q in chosen.sort("id").iter_rows(named=True):
            users = template.apply(q["text"], q["category"])
            twin = q.get("pair_id")
            rows.append({"conv_id": f"{q['id']}{CONV_SEP}{name}", "query_id": q["id"],
                         "kind": "scripted", "template": name,
                         "template_hash": template.hash, "users": users,
                         "given": [None] * len(users), "n_turns": len(users),
                         "text": users[-1],
                         "pair_conv_id": f"{twin}{CONV_SEP}{name}" if twin in ids else None})
    return _frame(rows, _meta(chosen))


def attacker_goals(queries: pl.DataFrame, template: str, n: int, turns: int) -> pl.DataFrame:
    """The conversations an attacker gets: the run's first ``n`` harmful direct queries,
    taken one category at a time (by id within each), so a few span several categories.

    Returns:
        ``records.Conversation`` rows with no user turns (the attacker writes them) and
        ``n_turns`` = the budget; ``text`` is the goal (the query's text).
    """
    harmful = _direct(queries).filter(pl.col("risk") == "harmful").sort("id")
    picked = (harmful.with_columns(pl.int_range(pl.len()).over("category").alias("_rank"))
              .sort("_rank", "category", "id").head(n).drop("_rank"))
    spec = get_attacker_template(template)
    rows = [{"conv_id": f"{q['id']}{CONV_SEP}{template}", "query_id": q["id"],
             "kind": "attacker", "template": template, "template_hash": spec.hash,
             "users": [], "given": [], "n_turns": turns, "text": q["text"],
             "pair_conv_id": None} for q in picked.iter_rows(named=True)]
    return _frame(rows, _meta(picked))


class ConversationValidationError(data.QueryValidationError):
    """Every problem in a conversations file, each naming file and line."""

    def __init__(self, errors: list[str]):
        super().__init__(errors)
        shown = "\n  ".join(errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        self.args = (f"{len(errors)} problem(s) in the conversations:\n  {shown}{more}",)


def load_conversations(path: str | Path,
                       categories: Iterable[str] | None = None) -> pl.DataFrame:
    """Read and validate a JSONL file of conversations (see the module docstring).

    Args:
        path: The file.
        categories: Allowed categories (default: MedHarm-Open's ten).

    Returns:
        ``records.Conversation`` columns, then the file's other fields as metadata.

    Raises:
        ConversationValidationError: listing every problem as ``file:line: problem``.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such conversations file")
    errors: list[str] = []
    rows: list[dict] = []
    try:
        text = decode_text(path)
    except data.QueryValidationError as err:
        raise ConversationValidationError(err.errors) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{where}: not valid JSON ({err.msg})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{where}: expected a JSON object per line")
            continue
        problems, users, given = _check_messages(obj.get("messages"))
        nested = [k for k, v in obj.items() if k != "messages" and isinstance(v, dict | list)]
        if nested:
            problems.append(f"field(s) {nested} hold a list or object; every field but "
                            "messages must be a single value")
        errors += [f"{where}: {p}" for p in problems]
        if problems:
            continue
        fields = {k: None if v is None else str(v) for k, v in obj.items() if k != "messages"}
        rows.append({**fields, "text": users[-1], "_users": users, "_given": given,
                     "_line": number})
    if errors:
        raise ConversationValidationError(errors)
    if not rows:
        raise ConversationValidationError([f"{path}: no conversations in the file"])
    frame = pl.DataFrame(rows, infer_schema_length=None)
    if "source" not in frame.columns:
        frame = frame.with_columns(pl.lit(path.stem).alias("source"))
    if "pair_id" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("pair_id"))
    allowed = tuple(categories) if categories is not None else CATEGORIES
    problems = data.validate_frame(frame, str(path), "line", allowed)
    if "query_id" in frame.columns:
        problems += [f"{path}:{r['_line']}: empty query_id (id {r['id']!r}); leave it out "
                     "to use the conversation's id" for r in frame.iter_rows(named=True)
                     if r["query_id"] is not None and not r["query_id"].strip()]
    if problems:
        raise ConversationValidationError(problems)
    return _imported_frame(frame, path)


def _check_messages(messages) -> tuple[list[str], list[str], list[str | None]]:
    """Problems with one line's ``messages``; else its user turns and the given answers."""
    if messages is None:
        return ["no 'messages' (a list of {role, content} objects)"], [], []
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list of {role, content} objects"], [], []
    problems, users, given = [], [], []
    previous = None
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            problems.append(f"message {i}: expected an object with string 'role' and "
                            "'content'")
            continue
        role, content = m["role"], m["content"]
        if role == "system":
            problems.append(f"message {i}: a system message; the system prompt belongs to the "
                            "model spec (system_prompt), so remove it here")
            continue
        if role not in ROLES:
            problems.append(f"message {i}: unknown role {role!r}; allowed: user, assistant")
            continue
        if not content.strip():
            problems.append(f"message {i}: empty {role} content")
        if role == previous:
            problems.append(f"message {i}: two {role} messages in a row; turns alternate "
                            "user and assistant")
        if i == 1 and role != "user":
            problems.append("message 1: a conversation starts with the user")
        if role == "user":
            users.append(content)
            given.append(None)
        elif given:
            given[-1] = content
        previous = role
    if not problems and previous != "user":
        problems.append(f"message {len(messages)}: the last message is the assistant's; the "
                        "final turn must be the user's (it carries the query's intent)")
    return problems, users, given


def _imported_frame(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Validated file rows as ``records.Conversation`` columns plus metadata."""
    query_of = {r["id"]: (r.get("query_id") or r["id"]) for r in frame.iter_rows(named=True)}
    rows, metas = [], []
    extra = [c for c in frame.columns if c not in ("id", "text", "query_id", "pair_id",
                                                   "_users", "_given", "_line")]
    for r in frame.iter_rows(named=True):
        qid = query_of[r["id"]]
        rows.append({"conv_id": r["id"], "query_id": qid, "kind": "imported",
                     "template": f"import:{path.name}", "template_hash": IMPORT_HASH,
                     "users": r["_users"], "given": r["_given"], "n_turns": len(r["_users"]),
                     "text": r["text"], "pair_conv_id": r["pair_id"]})
        metas.append({"conv_id": r["id"], "pair_id": query_of.get(r["pair_id"]),
                      "base_id": qid, **{c: r[c] for c in extra}})
    meta = pl.DataFrame(metas, infer_schema_length=None)
    return pl.DataFrame(rows, schema=_SCHEMA).join(meta, on="conv_id", how="left",
                                                   maintain_order="left")


def build_conversations(queries: pl.DataFrame, settings: ConversationSettings) -> pl.DataFrame:
    """Every conversation a run's ``conversations:`` section asks for.

    Args:
        queries: The run's query table.
        settings: The config's ``conversations`` section (paths already absolute).

    Returns:
        The ``conversations`` table: scripted, then imported, then the attacker's goals.

    Raises:
        ConversationValidationError: a problem in the imported file, or two conversations
            with one id.
    """
    parts = []
    if settings.scripted:
        parts.append(scripted(queries, settings.scripted, settings.per_cell))
    if settings.imported:
        parts.append(load_conversations(settings.imported, settings.imported_categories))
    if settings.attacker is not None:
        a = settings.attacker
        parts.append(attacker_goals(queries, a.template, a.queries, a.turns))
    if not parts:
        raise ValueError("conversations: nothing to ask (no scripted templates, no imported "
                         "file, no attacker)")
    out = pl.concat(parts, how="diagonal_relaxed")
    twice = out.filter(pl.col("conv_id").is_duplicated())["conv_id"].unique().to_list()
    if twice:
        raise ConversationValidationError(
            [f"conversation id {c!r} is used twice (an imported id clashes with a "
             f"scripted one)" for c in sorted(twice)])
    first = [c for c in _CORE if c in out.columns]
    return out.select(*first, *[c for c in out.columns if c not in first])
