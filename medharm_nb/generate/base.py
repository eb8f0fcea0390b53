"""What every generation backend speaks: a request, its output, and the backend protocol.

A backend is a class with two faces. Its instance answers requests (``render``,
``prepare``, ``generate``). The class itself holds everything else the package needs to
know about that backend's specs, without loading weights or answering anything: which spec
fields it reads, how relative paths in a spec resolve, what to check before a run starts,
which local files its answers come from, which queries it can answer and what a run will
cost (``BaseBackend``). Nothing outside ``generate.backends`` switches on ``spec.backend``.

Its own module, imported by the backends and re-exported by ``medharm_nb.generate``, so that
no backend imports the package that imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from medharm_nb.records import GenConfig, ModelSpec

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class Request:
    """One prompt to answer: what the model sees, and the id its answer is stored under."""

    gen_id: str
    messages: list[dict[str, str]]
    rendered: str
    sample: int = 0
    seed: int = 0
    query_id: str | None = None
    """The query's id (a backend that looks answers up by id, e.g. replay, reads it)."""


@dataclass
class Output:
    """What a backend returns for one request; ``error`` set means no response.

    ``finish_reason`` ``content_filter`` without an ``error`` means a provider blocked it:
    no text, and ``block_reason`` says what the provider said.
    """

    text: str | None
    n_prompt_tokens: int = 0
    n_new_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    finish_reason: str | None = None
    """stop | length (hit max_new_tokens) | content_filter | error; None: unknown."""
    block_reason: str | None = None
    """With finish_reason content_filter: the provider's code and message, in short."""
    batch_size: int | None = None
    """Rows in the forward batch that made it (hf backend)."""


class Backend(Protocol):
    """What every generation backend provides.

    A backend may also have ``notes(requests) -> list[str]``: given every request of a
    model, problems that no single answer carries (a replay file's rows that match none).
    """

    def render(self, messages: list[dict[str, str]]) -> str:
        """Return the exact text the model sees (or a canonical form of the chat)."""

    def prepare(self) -> None:
        """Load weights or check the server (called only when there is work)."""

    def generate(self, requests: Sequence[Request],
                 config: GenConfig) -> Iterator[list[tuple[Request, Output]]]:
        """Answer requests, yielding finished groups so the caller can save each group."""


ALWAYS_FIELDS = ("name", "backend", "source", "base")
"""Spec fields every backend takes (``base`` pairs models; it changes no answer)."""


class BaseBackend:
    """What a backend knows about its specs before any work; defaults for a backend with no
    local files, no checks and nothing to load. Subclasses set ``name`` and ``key_fields``
    and override what differs; the registry is ``generate.backends.BACKENDS``.

    Attributes:
        name: The ``backend:`` value of its specs.
        key_fields: Spec fields (besides ``source``) that change its answers, in the order a
            person would change one to tell two specs apart.
        other_fields: Spec fields it reads that change no answer (a server's key variable,
            requests in flight).
    """

    name: ClassVar[str]
    key_fields: ClassVar[tuple[str, ...]] = ()
    other_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def validate(cls, spec: ModelSpec) -> None:
        """Refuse spec fields this backend does not read: set, they would change nothing
        (and an unread field must not split generation ids).

        Raises:
            ValueError: naming the fields and the backend.
        """
        used = {*ALWAYS_FIELDS, *cls.key_fields, *cls.other_fields}
        unused = [f for f, info in ModelSpec.model_fields.items()
                  if f not in used and getattr(spec, f) != info.default]
        if unused:
            it, them = ("it", "it") if len(unused) == 1 else ("they", "them")
            raise ValueError(f"model {spec.name!r}: backend {cls.name} does not read "
                             f"{', '.join(unused)}, so {it} would have no effect: remove "
                             f"{them}")

    @classmethod
    def resolve(cls, spec: ModelSpec, base_dir: Path) -> ModelSpec:
        """The spec with relative paths made relative to ``base_dir`` (a config's folder).
        Default: nothing is a path."""
        return spec

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Check everything that can be checked before a run starts, loading no weights
        (files, packages, a server that answers). Default: nothing to check.

        Raises:
            OSError: something the spec names is missing or unreachable.
            ValueError: a setting or package is wrong.
        """

    @classmethod
    def model_files(cls, spec: ModelSpec) -> list[Path]:
        """Local files the answers come from (weights, a replayed file): their content is
        part of every generation id and hashed in the manifest. Default: none."""
        return []

    @classmethod
    def answerable(cls, spec: ModelSpec, queries: pl.DataFrame,
                   samples: int) -> set[tuple[str, int]]:
        """The (query id, sample) this spec can answer among ``queries`` (``id``, ``text``).
        Default: every one."""
        return {(qid, s) for qid in queries["id"].to_list() for s in range(samples)}

    @classmethod
    def plan(cls, spec: ModelSpec, config: GenConfig, n: int) -> dict[str, Any]:
        """What answering ``n`` requests will take, before anything runs: ``where`` the
        answers come from, ``new_tokens`` generated at most, and either ``weights`` (a line
        saying where the weights are, or that there are none) or the memory estimates
        ``params_b``, ``weights_gb``, ``kv_cache_gb``, ``gpu_gb`` (None where unknown)."""
        return {"where": cls.name, "new_tokens": n * config.max_new_tokens,
                "weights": "no local weights"}
