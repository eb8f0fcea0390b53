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

The file is keyed by its path (``source``), not its content: its SHA-256 goes into the
manifest, and a changed file should get a new name. Token counts and times are unknown and
stored as 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from medharm_nb.generate.base import Output, Request
from medharm_nb.records import GenConfig, ModelSpec

DEFAULT_COLUMNS = {"prompt": "prompt", "response": "response"}
KEYS = (*DEFAULT_COLUMNS, "id")
"""What a source's ``#`` suffix may name: the prompt, response and (optional) id columns."""
GROUP_SIZE = 500
"""Records per store transaction (nothing is computed, so groups can be large)."""


def parse_source(source: str) -> tuple[Path, dict[str, str]]:
    """Split ``file.csv#prompt=COL,response=COL,id=COL`` into the path and the column names
    (``id`` only when named: then rows match queries by id).

    Raises:
        ValueError: the suffix is not ``key=COL`` pairs with keys ``prompt``, ``response``,
            ``id``.
    """
    path, _, suffix = source.partition("#")
    columns = dict(DEFAULT_COLUMNS)
    for part in filter(None, (p.strip() for p in suffix.split(","))):
        key, eq, column = part.partition("=")
        if not eq or key.strip() not in KEYS or not column.strip():
            raise ValueError(f"replay source {source!r}: expected "
                             f"FILE#prompt=COL,response=COL[,id=COL], got {part!r}")
        columns[key.strip()] = column.strip()
    return Path(path).expanduser(), columns


def read_responses(spec: ModelSpec) -> dict[str, list[str | None]]:
    """Read a replay spec's file: its key (the query id with ``#id=``, else the stripped
    prompt) -> its responses, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a named column is missing (the message lists the file's columns).
    """
    from medharm_nb.data import read_query_file

    path, columns = parse_source(spec.source)
    if not path.is_file():
        raise FileNotFoundError(f"model {spec.name!r}: replay file {path} does not exist")
    df, _ = read_query_file(path)
    key = columns.get("id", columns["prompt"])
    missing = [c for c in (key, columns["response"]) if c not in df.columns]
    if missing:
        raise ValueError(
            f"model {spec.name!r}: {path} has no column(s) {missing}; it has "
            f"{[c for c in df.columns if c != '_line']} (name them with "
            f"'{path.name}#prompt=COL,response=COL')")
    answers: dict[str, list[str | None]] = {}
    for found, response in df.select(key, columns["response"]).iter_rows():
        if found is not None:
            answers.setdefault(found.strip(), []).append(response)
    return answers


def request_key(columns: dict[str, str], query_id: str | None, prompt: str) -> str:
    """What a request is looked up by: its query id when the file has an id column."""
    return (query_id or "") if "id" in columns else prompt.strip()


def model_files(spec: ModelSpec) -> list[Path]:
    """The replayed file (for hashing in the manifest), checked to be readable as a spec."""
    read_responses(spec)
    return [parse_source(spec.source)[0]]


class ReplayBackend:
    """Answers each request with the response stored for its prompt in a file."""

    def __init__(self, spec: ModelSpec):
        # Fields that shape what a model sees cannot change a recorded answer: refuse them
        # rather than label old answers with a prompt they were never given.
        ignored = [f for f in ("system_prompt", "chat_template", "gguf_file", "adapter")
                   if getattr(spec, f) is not None]
        if spec.quantization != "none":
            ignored.append("quantization")
        if ignored:
            raise ValueError(f"model {spec.name!r}: the replay backend replays recorded "
                             f"answers; {ignored} would have no effect: remove them")
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
        text = found[request.sample]
        if text is None or not text.strip():
            return Output(None, error=f"replay: empty response for this prompt in {self.path}")
        return Output(text)
