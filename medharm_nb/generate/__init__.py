"""Generation: model specs -> backends -> responses, cached in the run's store.

A generation's id is a hash of the query id, the model spec (with the content of its local
weights and adapter, not their path), the generation config, the fully rendered prompt
(chat template and system prompt applied) and the sample index
(``records.GEN_KEY_VERSION``), so re-running the same study makes zero model calls, and
changing any of them makes new records instead of overwriting old ones. Backends live in
``generate.backends`` behind one small protocol.

Never lose, never repeat: each finished group is committed to the store at once; a failed
request is stored with its ``error`` (never as an empty response) and generated again on
the next run; a request a provider's content filter blocked is stored once as blocked (see
``records.Generation``) and not asked again; and only one process at a time generates into a
run directory (``store.RunLock``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import polars as pl
from tqdm.auto import tqdm

from medharm_nb.generate.backends import EMBEDDED, make_backend, model_files, resolve_source
from medharm_nb.generate.base import Backend, Output, Request
from medharm_nb.records import (
    GEN_KEY_VERSION,
    GenConfig,
    Generation,
    ModelSpec,
    blocked,
    stable_hash,
)
from medharm_nb.store import RunLock, RunStore, files_digest

__all__ = [
    "EMBEDDED", "Backend", "GenStats", "Output", "Request", "build_messages",
    "current_generations", "generate", "generation_record", "length_summary", "make_backend",
    "model_files", "resolve_source", "run_generation", "spec_id", "weights_digest",
]


@dataclass
class GenStats:
    """Per-model counts for the manifest and the notebook.

    ``cached`` counts stored answers only: an earlier failure is generated again and counts
    as ``generated``, ``failed`` or ``blocked`` this time. ``blocked`` counts every request a
    provider's content filter blocked, this run or an earlier one: a block is stored once and
    never asked again, and it is neither an answer nor a failure.
    """

    model: str
    total: int = 0
    cached: int = 0
    generated: int = 0
    failed: int = 0
    blocked: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    wall_seconds: float = 0.0
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    """What the backend reported after generating (``Backend`` ``notes``)."""

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second of generating (weights loading excluded);
        0 when nothing was generated."""
        elapsed = self.wall_seconds or self.seconds
        return self.new_tokens / elapsed if elapsed else 0.0

    def as_dict(self) -> dict:
        """Plain dict, tokens/s included."""
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 2)}


def build_messages(spec: ModelSpec, prompt: str) -> list[dict[str, str]]:
    """The chat sent for one prompt: the spec's system prompt (if any), then the user turn."""
    messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    return [*messages, {"role": "user", "content": prompt}]


def weights_digest(spec: ModelSpec) -> str | None:
    """Hash of the content of a spec's local files (weights, adapter, or replayed file); None
    for hub ids and servers, whose content is named by the id itself.

    Digests are remembered by path, size and modification time (``store.file_sha256``), so
    this is cheap after the first read, and a file rewritten in place gets a new digest.
    """
    return files_digest(model_files(spec))


def spec_id(spec: ModelSpec) -> str:
    """The spec's part of every generation id: its key and its weights' content."""
    return stable_hash(spec.key(), weights_digest(spec))


def build_requests(queries: pl.DataFrame, spec: ModelSpec, config: GenConfig,
                   backend: Backend) -> list[tuple[Request, dict]]:
    """One request per query and sample, with its stable generation id."""
    out = []
    spec_key = spec_id(spec)
    for q in queries.iter_rows(named=True):
        messages = build_messages(spec, q["text"])
        rendered = backend.render(messages)
        for sample in range(config.samples):
            gen_id = stable_hash(GEN_KEY_VERSION, q["id"], spec_key, config.key(), rendered,
                                 sample)
            out.append((Request(gen_id, messages, rendered, sample, config.seed + sample,
                                query_id=q["id"]), q))
    return out


def generate(
    queries: pl.DataFrame,
    spec: ModelSpec,
    config: GenConfig,
    store: RunStore,
    backend: Backend | None = None,
    progress: bool = True,
) -> GenStats:
    """Generate a response to every query that the store does not hold yet.

    Every finished group is written to the store at once, so an interrupted run resumes
    where it stopped. Stored failures are tried again. The run directory's lock is held
    throughout, so a second process generating into it is refused.

    Args:
        queries: Rows with ``id``, ``text`` and ``variant`` (see ``variants.apply_variants``).
        spec: The model under test.
        config: Decoding settings (part of every generation's id).
        store: The run's store.
        backend: A ready backend (defaults to ``make_backend(spec)``).
        progress: Show a progress bar.

    Raises:
        RunLocked: another process is generating into the same run directory.
    """
    with RunLock(store.run_dir):
        backend = backend or make_backend(spec)
        items = build_requests(queries, spec, config, backend)
        ids = [r.gen_id for r, _ in items]
        done = store.existing_ids("generations", ids)
        stored_blocked = store.blocked_ids(ids)
        query_of = {r.gen_id: q for r, q in items}
        # One request per id (the id holds the query id: a query listed twice is asked once).
        todo = list({r.gen_id: r for r, _ in items if r.gen_id not in done}.values())
        key = spec_id(spec)
        stats = GenStats(model=spec.name, total=len(items),
                         cached=sum(i in done and i not in stored_blocked for i in ids),
                         blocked=sum(i in stored_blocked for i in ids))
        notes = getattr(backend, "notes", None)
        stats.notes = notes([r for r, _ in items]) if notes else []
        for note in stats.notes:
            warnings.warn(f"model {spec.name!r}: {note}", stacklevel=2)
        if not todo:
            return stats
        began = time.perf_counter()
        backend.prepare()
        stats.load_seconds = round(time.perf_counter() - began, 3)
        began = time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"generate {spec.name}", unit="resp",
                   disable=not progress)
        for group in backend.generate(todo, config):
            records = [generation_record(spec, key, config, req, out, query_of[req.gen_id])
                       for req, out in group]
            store.add("generations", records)
            stats.generated += sum(r.error is None and not r.blocked for r in records)
            stats.failed += sum(r.error is not None for r in records)
            stats.blocked += sum(r.blocked for r in records)
            stats.new_tokens += sum(r.n_new_tokens for r in records if r.error is None)
            stats.seconds += sum(out.seconds for _, out in group)
            bar.update(len(group))
        bar.close()
        stats.wall_seconds = round(time.perf_counter() - began, 3)
        return stats


def generation_record(spec: ModelSpec, key: str, config: GenConfig, req: Request, out: Output,
                      query: dict) -> Generation:
    """The stored record of one answer; a failure keeps its error and no response, a block
    its reason and no response.

    Args:
        spec: The model that answered.
        key: ``spec_id(spec)``.
        config: The decoding settings.
        req: The request (its id, rendered prompt and sample).
        out: The backend's output.
        query: ``id``, ``text`` (the user message sent) and optionally ``variant``.
    """
    is_blocked = blocked(out.error, out.finish_reason)
    error = out.error or (None if out.text is not None or is_blocked
                          else "backend returned no text")
    answered = error is None and not is_blocked
    return Generation(
        gen_id=req.gen_id, key_version=GEN_KEY_VERSION, model=spec.name, query_id=query["id"],
        variant=query.get("variant") or "direct", sample=req.sample, prompt=query["text"],
        prompt_hash=stable_hash(req.rendered), spec_hash=key,
        config_hash=stable_hash(config.key()), response=out.text if answered else None,
        error=error, finish_reason="error" if error else out.finish_reason,
        block_reason=((out.block_reason or "blocked by a content filter") if is_blocked
                      else None),
        n_prompt_tokens=out.n_prompt_tokens,
        n_new_tokens=out.n_new_tokens if answered else 0, seconds=round(out.seconds, 4),
        batch_size=out.batch_size,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def run_generation(queries: pl.DataFrame, specs: list[ModelSpec], config: GenConfig,
                   store: RunStore, progress: bool = True) -> list[GenStats]:
    """Generate for several model specs in turn; returns one GenStats per spec.

    Holds the run directory's lock for all of them (see ``generate``).
    """
    with RunLock(store.run_dir):
        return [generate(queries, spec, config, store, progress=progress) for spec in specs]


def current_generations(generations: pl.DataFrame, queries: pl.DataFrame,
                        specs: list[ModelSpec], config: GenConfig) -> pl.DataFrame:
    """The stored generations that belong to this study: its queries, specs and config.

    A store can hold generations from earlier configs (another ``max_new_tokens``, another
    system prompt, other weights in the same folder) or made under an older id scheme; they
    stay there but are not this run's results. ``model`` is set from the spec, so renaming a
    model in the config relabels its cached generations.
    """
    names = {spec_id(s): s.name for s in specs}
    # Match on the prompt text too: an edited query keeps its id but is a new question.
    asked = queries.select(pl.col("id").alias("query_id"), pl.col("text").alias("prompt"))
    return (
        generations.filter(
            pl.col("spec_hash").is_in(list(names))
            & (pl.col("config_hash") == stable_hash(config.key()))
            & (pl.col("key_version") == GEN_KEY_VERSION))
        .join(asked, on=["query_id", "prompt"], how="semi")
        .with_columns(pl.col("spec_hash").replace_strict(names).alias("model"))
        .sort("model", "query_id", "sample")
    )


def length_summary(generations: pl.DataFrame) -> pl.DataFrame:
    """Per model: how long the answers are and how many were cut at ``max_new_tokens``,
    each over the answers where it is known, never as 0 where it is not.

    A replayed file may record neither token counts nor finish reasons (``n_new_tokens``
    0, ``finish_reason`` None): then ``mean_new_tokens`` and ``share_truncated`` are null
    and ``tokens_known`` / ``truncation_known`` say 0 of ``answered``.

    Columns: ``model``, ``n`` (generations), ``answered``, ``mean_new_tokens``,
    ``tokens_known``, ``truncated``, ``truncation_known``, ``share_truncated``.
    """
    answered = pl.col("error").is_null() & pl.col("response").is_not_null()
    sized = answered & (pl.col("n_new_tokens") > 0)  # an answer has at least one token
    ended = answered & pl.col("finish_reason").is_in(["stop", "length"])
    return (
        generations.group_by("model").agg(
            pl.len().alias("n"), answered.sum().alias("answered"),
            pl.col("n_new_tokens").filter(sized).mean().round(1).alias("mean_new_tokens"),
            sized.sum().alias("tokens_known"),
            (ended & (pl.col("finish_reason") == "length")).sum().alias("truncated"),
            ended.sum().alias("truncation_known"))
        .with_columns(pl.when(pl.col("truncation_known") > 0)
                      .then((pl.col("truncated") / pl.col("truncation_known")).round(3))
                      .alias("share_truncated"))
        .sort("model"))
