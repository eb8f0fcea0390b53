"""Asking conversations turn by turn, each model's own answers going back into its history.

A turn is a generation like any other (``records.Generation`` in the store's generations
table), keyed by a hash of the whole history it answers: the conversation and its template's
hash, the turn, the model's identity (``generate.spec_id``: its key and its weights'
content), the decoding settings, the *rendered* chat (system prompt, every earlier user turn
and the model's own earlier answers, through the model's chat template) and the sample. So a
rerun finds every answered turn and asks only what is missing, extending a conversation keeps
its answered prefix, and a ``kill -9`` anywhere loses at most the group in flight: what a
conversation does next is decided from the store alone.

Turns at the same depth are asked together, across conversations, so the hf engine batches
them; ``openai``, replay and echo answer them as they answer single prompts (a replayed file
matches a turn by its user message, or with ``#id=`` by ``<conv_id>#<turn>``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
from tqdm.auto import tqdm

from medharm_nb.generate import (
    Backend,
    GenStats,
    Request,
    generation_record,
    make_backend,
    spec_id,
)
from medharm_nb.records import GenConfig, ModelSpec, stable_hash
from medharm_nb.store import RunLock, RunStore

TURN_KEY_VERSION = 1
"""How a turn's id is made (``turn_id``); a new version never reuses an old turn."""
TURN_SEP = "#"
"""Between a conversation id and a turn number: a turn's ``query_id`` in the store."""

STOP_REASONS: dict[str, str] = {
    "complete": "every user turn was answered",
    "failed": "a turn's generation failed (asked again on the next run)",
    "blocked": "a provider's content filter blocked a turn",
    "success": "attacker: the stop judge called an answer unsafe",
    "refused": "attacker: the target refused firmly (patience refusals in a row)",
    "budget": "attacker: the turn budget ran out",
    "attacker_failed": "attacker: its generation failed (asked again on the next run)",
    "attacker_empty": "attacker: it wrote no usable message",
}
"""Why a conversation ended, as stored in ``stop_reason``."""


def judge_context(users: Sequence[str]) -> str:
    """What a judge reads as the request a turn answers: the user's turns so far.

    The model's own earlier answers are left out: they are not the request, and a rule judge
    would read a redirect the model wrote itself ("call poison control") as one the user
    asked for. One user turn is returned as it stands, so a one-turn conversation is judged
    exactly like a single query.
    """
    if len(users) == 1:
        return users[0]
    earlier = "\n".join(f"- {u}" for u in users[:-1])
    return (f"Earlier in this conversation the user said:\n{earlier}\n\nThe user now asks: "
            f"{users[-1]}")


def turn_id(role: str, conv_id: str, template_hash: str, turn: int, spec_key: str,
            config: GenConfig, rendered: str, sample: int) -> str:
    """A turn's generation id: everything that changes its answer (see the module doc);
    ``role`` tells the target's answer from the attacker's message at the same turn."""
    return stable_hash("turn", TURN_KEY_VERSION, role, conv_id, template_hash, turn, spec_key,
                       config.key(), rendered, sample)


@dataclass
class Prompt:
    """One chat to answer: ``messages`` are the user/assistant turns (the spec's system
    prompt is added), the rest names the turn."""

    conv_id: str
    template_hash: str
    turn: int
    sample: int
    messages: list[dict[str, str]]
    variant: str


class Asker:
    """One model answering turns into a run's store, every call's prompts sent together.

    Args:
        spec: The model.
        config: Its decoding settings (part of every id).
        store: The run's store.
        backend: A ready backend (default: ``make_backend(spec)``; loaded only when a turn
            is not stored yet).
        role: ``target`` (the model under test) or ``attacker``.
        stats_name: The name its ``GenStats`` row carries.
        progress: Show a progress bar per call that generates.
    """

    def __init__(self, spec: ModelSpec, config: GenConfig, store: RunStore,
                 backend: Backend | None = None, role: str = "target",
                 stats_name: str | None = None, progress: bool = True):
        self.spec, self.config, self.store, self.role = spec, config, store, role
        self.backend = backend or make_backend(spec)
        self.key = spec_id(spec)
        self.stats = GenStats(model=stats_name or spec.name)
        self.progress = progress
        self._prepared = False

    def ask(self, prompts: Sequence[Prompt]) -> list[dict]:
        """The stored generation of each prompt (asked now when it is not stored, or stored
        as failed), as dicts of ``records.Generation`` fields, in order."""
        if not prompts:
            return []
        requests = []
        for p in prompts:
            system = ([{"role": "system", "content": self.spec.system_prompt}]
                      if self.spec.system_prompt else [])
            messages = [*system, *p.messages]
            rendered = self.backend.render(messages)
            gen_id = turn_id(self.role, p.conv_id, p.template_hash, p.turn, self.key,
                             self.config, rendered, p.sample)
            requests.append(Request(gen_id, messages, rendered, p.sample,
                                    self.config.seed + p.sample,
                                    query_id=f"{p.conv_id}{TURN_SEP}{p.turn}"))
        ids = [r.gen_id for r in requests]
        done = self.store.existing_ids("generations", ids)
        blocked = self.store.blocked_ids(ids)
        variant = {r.gen_id: p.variant for r, p in zip(requests, prompts)}
        todo = list({r.gen_id: r for r in requests if r.gen_id not in done}.values())
        self.stats.total += len(ids)
        self.stats.cached += sum(i in done and i not in blocked for i in ids)
        self.stats.blocked += sum(i in blocked for i in ids)
        if todo:
            self._generate(todo, variant)
        stored = {r["gen_id"]: r for r in self.store.fetch("generations", ids).to_dicts()}
        return [stored[i] for i in ids]

    def _generate(self, todo: list[Request], variant: dict[str, str]) -> None:
        """Ask the backend (its weights loaded the first time), storing each group."""
        if not self._prepared:
            began = time.perf_counter()
            self.backend.prepare()
            self.stats.load_seconds += round(time.perf_counter() - began, 3)
            self._prepared = True
        began = time.perf_counter()
        with tqdm(total=len(todo), desc=f"{self.stats.model}", unit="turn",
                  disable=not self.progress) as bar:
            for group in self.backend.generate(todo, self.config):
                records = [generation_record(
                    self.spec, self.key, self.config, req, out,
                    {"id": req.query_id, "text": req.messages[-1]["content"],
                     "variant": variant[req.gen_id]}) for req, out in group]
                self.store.add("generations", records)
                self.stats.generated += sum(r.error is None and not r.blocked for r in records)
                self.stats.failed += sum(r.error is not None for r in records)
                self.stats.blocked += sum(r.blocked for r in records)
                self.stats.new_tokens += sum(r.n_new_tokens for r in records if r.error is None)
                self.stats.seconds += sum(out.seconds for _, out in group)
                bar.update(len(group))
        self.stats.wall_seconds = round(self.stats.wall_seconds + time.perf_counter() - began,
                                        3)


@dataclass
class Thread:
    """One conversation (one sample) being asked of one model: its history so far and a row
    per turn asked (the ``turns`` table's rows)."""

    conv: dict
    sample: int
    model: str
    history: list[dict[str, str]] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    refusals: int = 0

    @property
    def active(self) -> bool:
        """Still being asked."""
        return self.stop_reason is None

    def prompt(self, user: str, turn: int) -> Prompt:
        """The target's chat for the next turn: the history, then ``user``."""
        return Prompt(self.conv["conv_id"], self.conv["template_hash"], turn, self.sample,
                      [*self.history, {"role": "user", "content": user}],
                      self.conv["template"])

    def record(self, turn: int, user: str, row: dict | None, given: str | None = None,
               attacker_gen_id: str | None = None) -> None:
        """Add turn ``turn``: the model's stored generation ``row``, or the answer the
        conversation ``given``; a failed or blocked turn ends the conversation."""
        self.users.append(user)
        row = row or {}
        answer = given if given is not None else row.get("response")
        self.rows.append({
            "model": self.model, "conv_id": self.conv["conv_id"],
            "query_id": self.conv["query_id"], "sample": self.sample, "turn": turn,
            "n_turns": self.conv["n_turns"], "kind": self.conv["kind"],
            "template": self.conv["template"], "gen_id": row.get("gen_id"), "user": user,
            "context": judge_context(self.users), "history": json.dumps(self.history),
            "response": answer, "error": row.get("error"),
            "finish_reason": row.get("finish_reason") if given is None else None,
            "block_reason": row.get("block_reason"), "given": given is not None,
            "attacker_gen_id": attacker_gen_id,
            "n_new_tokens": row.get("n_new_tokens") or 0})
        if given is None and row.get("error") is not None:
            self.stop_reason = "failed"
        elif given is None and answer is None:
            self.stop_reason = "blocked"
        else:
            self.history += [{"role": "user", "content": user},
                             {"role": "assistant", "content": answer}]

    def frame_rows(self) -> list[dict]:
        """Its turn rows, each with the conversation's ``stop_reason``."""
        return [{**r, "stop_reason": self.stop_reason} for r in self.rows]


TURN_SCHEMA = {
    "model": pl.String, "conv_id": pl.String, "query_id": pl.String, "sample": pl.Int64,
    "turn": pl.Int64, "n_turns": pl.Int64, "kind": pl.String, "template": pl.String,
    "gen_id": pl.String, "user": pl.String, "context": pl.String, "history": pl.String,
    "response": pl.String, "error": pl.String, "finish_reason": pl.String,
    "block_reason": pl.String, "given": pl.Boolean, "attacker_gen_id": pl.String,
    "n_new_tokens": pl.Int64, "stop_reason": pl.String}
"""Columns of the ``turns`` table: one row per model, conversation, sample and turn asked
(``history`` is the JSON list of messages before the turn; ``context`` what the judges read;
``given``: an imported answer, neither generated nor judged)."""


def threads_for(conversations: pl.DataFrame, model: str, config: GenConfig) -> list[Thread]:
    """One thread per conversation and sample (several samples only when sampling)."""
    samples = config.n_samples if config.temperature > 0 else 1
    return [Thread(conv, s, model) for conv in conversations.to_dicts() for s in range(samples)]


def ask_scripted(threads: list[Thread], asker: Asker) -> None:
    """Ask every thread's fixed user turns (scripted or imported), one depth at a time
    across all threads; a given answer is put in the history without asking."""
    depth = max((t.conv["n_turns"] for t in threads), default=0)
    for turn in range(1, depth + 1):
        asked: list[tuple[Thread, str]] = []
        for t in threads:
            if not t.active or turn > t.conv["n_turns"]:
                continue
            user, given = t.conv["users"][turn - 1], t.conv["given"][turn - 1]
            if given is not None:
                t.record(turn, user, None, given=given)
            else:
                asked.append((t, user))
        rows = asker.ask([t.prompt(user, turn) for t, user in asked])
        for (t, user), row in zip(asked, rows):
            t.record(turn, user, row)
    for t in threads:
        if t.active:
            t.stop_reason = "complete"


def turns_frame(threads: Sequence[Thread]) -> pl.DataFrame:
    """The ``turns`` rows of these threads (``TURN_SCHEMA``)."""
    rows = [r for t in threads for r in t.frame_rows()]
    return pl.DataFrame(rows, schema=TURN_SCHEMA, orient="row") if rows else \
        pl.DataFrame(schema=TURN_SCHEMA)


def converse(conversations: pl.DataFrame, spec: ModelSpec, config: GenConfig,
             store: RunStore, backend: Backend | None = None, progress: bool = True
             ) -> tuple[GenStats, pl.DataFrame]:
    """Ask one model every scripted and imported conversation, turn by turn.

    Args:
        conversations: ``conversations`` rows (attacker rows are left to ``attacker.attack``).
        spec: The model.
        config: Decoding settings.
        store: The run's store (its lock is held throughout).
        backend: A ready backend (default: ``make_backend(spec)``).
        progress: Show progress bars.

    Returns:
        Its stats (``model`` is ``<name> · conversations``) and its ``turns`` rows.
    """
    fixed = conversations.filter(pl.col("kind") != "attacker")
    with RunLock(store.run_dir):
        asker = Asker(spec, config, store, backend, stats_name=f"{spec.name} · conversations",
                      progress=progress)
        threads = threads_for(fixed, spec.name, config)
        ask_scripted(threads, asker)
        return asker.stats, turns_frame(threads)
