"""Generation backends behind one protocol (``generate.base``) and a registry.

Everything the package knows about a backend lives in its class here: how it answers
(an instance), and which spec fields it reads, how paths in a spec resolve, what to check
before a run, which files its answers come from, what it can answer and what it costs (the
class, ``base.BaseBackend``). The rest of the package asks ``backend_type(spec)``; adding a
backend is a module in this folder and a line in ``BACKENDS``.
"""

from __future__ import annotations

from pathlib import Path

from medharm_nb.generate.backends.echo import EchoBackend
from medharm_nb.generate.backends.hf import HFBackend
from medharm_nb.generate.backends.hf_models import EMBEDDED, resolve_source
from medharm_nb.generate.backends.openai import OpenAIBackend
from medharm_nb.generate.backends.replay import ReplayBackend
from medharm_nb.generate.base import BaseBackend
from medharm_nb.records import ModelSpec

__all__ = ["BACKENDS", "EMBEDDED", "backend_type", "make_backend", "model_files",
           "resolve_source", "validate_spec"]

BACKENDS: dict[str, type[BaseBackend]] = {
    b.name: b for b in (HFBackend, OpenAIBackend, ReplayBackend, EchoBackend)}
"""Every backend by the name a spec's ``backend:`` gives. Heavy dependencies (torch,
transformers) are imported only when a backend loads weights."""


def backend_type(spec: ModelSpec | str) -> type[BaseBackend]:
    """The backend class of a spec (or of a backend name).

    Raises:
        ValueError: no backend has that name (the known ones are listed).
    """
    name = spec if isinstance(spec, str) else spec.backend
    if name not in BACKENDS:
        who = "" if isinstance(spec, str) else f"model {spec.name!r}: "
        raise ValueError(f"{who}unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]


def validate_spec(spec: ModelSpec) -> ModelSpec:
    """A known backend, and no field set that it does not read (``BaseBackend.validate``).

    Raises:
        ValueError: naming the model and what is wrong.
    """
    backend_type(spec).validate(spec)
    return spec


def make_backend(spec: ModelSpec):
    """Return the backend for a spec, ready to ``prepare`` (no weights loaded yet)."""
    return backend_type(spec)(spec)


def model_files(spec: ModelSpec) -> list[Path]:
    """Local files a spec's answers come from (weights, or a replayed file), for the
    generation ids and the manifest's hashes."""
    return backend_type(spec).model_files(spec)
