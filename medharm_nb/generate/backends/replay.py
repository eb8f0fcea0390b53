"""replay backend: responses that already exist (another study's outputs, a closed model's
answers collected elsewhere) imported as generations, so judges and analyses run on them.

A spec names a CSV, JSONL or Parquet file with one row per prompt and its response::

    - name: gpt4-xstest
      backend: replay
      source: ../shared/external/xstest/xstest_v2_completions_gpt4.csv#response=completion

The columns default to ``prompt`` and ``response``; a ``#prompt=COL,response=COL`` suffix on
``source`` names others (either key may be left out). A query is matched to a row by its text
(the user message, after the variant wrapper; surrounding whitespace ignored), or, with
``#id=COL``, by its query id in that column (a prompt that differs by one word still
matches). Sample ``i`` takes the ``i``-th row with that prompt or id. A query with no row,
or a row with an empty response, becomes a failed generation naming the file, never an
empty response; rows that match no query are listed (``notes``) and counted.

Whether an answer was cut at a token limit is read from a ``finish_reason`` column when the
file has one (or ``#finish_reason=COL`` names it): ``length`` / ``max_tokens`` mean cut,
``stop`` / ``end_turn`` / ``eos`` mean the model ended it. Without one it is unknown (stored
as None, counted as unknown, never as "not truncated"), as are token counts (stored as 0)
and times.

The file's content is part of every generation id (``model_files``): answers replayed from
an edited file are new answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medharm_nb.generate.base import BaseBackend, Output, Request
from medharm_nb.records import GenConfig, ModelSpec

if TYPE_CHECKING:
    import polars as pl

DEFAULT_COLUMNS = {"prompt": "prompt", "response": "response"}
KEYS = (*DEFAULT_COLUMNS, "id", "finish_reason")
"""What a source's ``#`` suffix may name: the prompt, response, (optional) id and (optional)
finish-reason columns."""
FINISH_REASONS = {"stop": "stop", "end_turn": "stop", "eos": "stop", "stop_sequence": "stop",
                  "length": "length", "max_tokens": "length", "max_length": "length",
                  "content_filter": "content_filter"}
"""Recorded finish reasons (OpenAI's, Anthropic's, vLLM's and TGI's words) -> ours; any other
value is unknown (None)."""
GROUP_SIZE = 500
"""Records per store transaction (nothing is computed, so groups can be large)."""


def parse_source(source: str) -> tuple[Path, dict[str, str]]:
    """Split ``file.csv#prompt=COL,response=COL,id=COL`` into the path and the column names
    (``id`` only when named: then rows match queries by id; ``finish_reason`` only when
    named).

    Raises:
        ValueError: the suffix is not ``key=COL`` pairs with keys ``prompt``, ``response``,
            ``id``, ``finish_reason``.
    """
    path, _, suffix = source.partition("#")
    columns = dict(DEFAULT_COLUMNS)
    for part in filter(None, (p.strip() for p in suffix.split(","))):
        key, eq, column = part.partition("=")
        if not eq or key.strip() not in KEYS or not column.strip():
            raise ValueError(f"replay source {source!r}: expected FILE#prompt=COL,"
                             f"response=COL[,id=COL][,finish_reason=COL], got {part!r}")
        columns[key.strip()] = column.strip()
    return Path(path).expanduser(), columns


def read_responses(spec: ModelSpec) -> dict[str, list[tuple[str | None, str | None]]]:
    """Read a replay spec's file: its key (the query id with ``#id=``, else the stripped
    prompt) -> its (response, finish reason) rows, in file order. The finish reason is
    ours (``FINISH_REASONS``) or None when the file does not say.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a named column is missing (the message lists the file's columns).
    """
    from medharm_nb.data_files import read_query_file

    path, columns = parse_source(spec.source)
    if not path.is_file():
        raise FileNotFoundError(f"model {spec.name!r}: replay file {path} does not exist")
    df, _ = read_query_file(path)
    key = columns.get("id", columns["prompt"])
    finish = columns.get("finish_reason", "finish_reason")
    missing = [c for c in (key, columns["response"]) if c not in df.columns]
    if "finish_reason" in columns and finish not in df.columns:
        missing.append(finish)
    if missing:
        raise ValueError(
            f"model {spec.name!r}: {path} has no column(s) {missing}; it has "
            f"{[c for c in df.columns if c != '_line']} (name them with "
            f"'{path.name}#prompt=COL,response=COL')")
    reasons = (df[finish].cast(str).to_list() if finish in df.columns
               else [None] * df.height)
    answers: dict[str, list[tuple[str | None, str | None]]] = {}
    for (found, response), reason in zip(df.select(key, columns["response"]).iter_rows(),
                                         reasons):
        if found is not None:
            ours = FINISH_REASONS.get(reason.strip().lower()) if reason else None
            answers.setdefault(found.strip(), []).append((response, ours))
    return answers


def request_key(columns: dict[str, str], query_id: str | None, prompt: str) -> str:
    """What a request is looked up by: its query id when the file has an id column."""
    return (query_id or "") if "id" in columns else prompt.strip()


class ReplayBackend(BaseBackend):
    """Answers each request with the response stored for its prompt in a file.

    It reads no spec field but ``source``: a system prompt, template or weights cannot change
    a recorded answer, so they are refused (``validate``) rather than label old answers with
    a prompt they were never given.
    """

    name = "replay"

    @classmethod
    def resolve(cls, spec: ModelSpec, base_dir: Path) -> ModelSpec:
        """A relative file, relative to ``base_dir`` (the ``#`` suffix kept)."""
        path, hash_, suffix = spec.source.partition("#")
        if Path(path).is_absolute() or not (base_dir / path).exists():
            return spec
        return spec.model_copy(update={"source": str((base_dir / path).resolve()) + hash_
                                       + suffix})

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """The file exists and has the columns the spec names."""
        read_responses(spec)

    @classmethod
    def model_files(cls, spec: ModelSpec) -> list[Path]:
        """The replayed file (its content keys every answer), checked to be readable."""
        read_responses(spec)
        return [parse_source(spec.source)[0]]

    @classmethod
    def answerable(cls, spec: ModelSpec, queries: pl.DataFrame,
                   samples: int) -> set[tuple[str, int]]:
        """Only the queries (and samples) the file holds a non-empty answer for."""
        columns = parse_source(spec.source)[1]
        have = {k: sum(bool(r and r.strip()) for r, _ in rows)
                for k, rows in read_responses(spec).items()}
        return {(qid, s) for qid, text in queries.select("id", "text").iter_rows()
                for s in range(min(samples, have.get(request_key(columns, qid, text), 0)))}

    @classmethod
    def plan(cls, spec: ModelSpec, config: GenConfig, n: int) -> dict[str, Any]:
        """Nothing is generated and there are no weights: the answers are read."""
        return {"where": f"replayed file {parse_source(spec.source)[0]}", "new_tokens": 0,
                "weights": "no weights (recorded answers)"}

    def __init__(self, spec: ModelSpec):
        self.validate(spec)
        self.spec = spec
        self.path, self.columns = parse_source(spec.source)
        self.answers = read_responses(spec)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat as canonical JSON (there is no template: the answers exist already)."""
        return json.dumps(messages, ensure_ascii=False, sort_keys=True)

    def prepare(self) -> None:
        """Nothing to load: the file was read when the backend was made."""

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """Look every request up, yielding groups of ``GROUP_SIZE``."""
        for start in range(0, len(requests), GROUP_SIZE):
            batch = requests[start:start + GROUP_SIZE]
            yield [(r, self._answer(r)) for r in batch]

    def notes(self, requests: Sequence[Request]) -> list[str]:
        """The file's rows that no request asks for (a prompt edited by one word, an id the
        query set lacks), named; they would otherwise vanish without a word."""
        asked = {self._key(r) for r in requests}
        unmatched = [k for k in self.answers if k not in asked]
        if not unmatched:
            return []
        shown = "; ".join(repr(k[:80]) for k in unmatched[:10])
        more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        by = "id" if "id" in self.columns else "prompt"
        return [f"{len(unmatched)} row(s) of {self.path} match no query by {by}: {shown}{more}"]

    def _key(self, request: Request) -> str:
        return request_key(self.columns, request.query_id, request.messages[-1]["content"])

    def _answer(self, request: Request) -> Output:
        found = self.answers.get(self._key(request), [])
        if request.sample >= len(found):
            where = "no row" if not found else f"only {len(found)} row(s)"
            by, column = (("id " + repr(request.query_id), self.columns["id"])
                          if "id" in self.columns else ("this prompt", self.columns["prompt"]))
            return Output(None, error=f"replay: {where} for {by} in {self.path} "
                                      f"(column {column!r})")
        text, finish = found[request.sample]
        if text is None or not text.strip():
            return Output(None, error=f"replay: empty response for this prompt in {self.path}")
        return Output(text, finish_reason=finish)
