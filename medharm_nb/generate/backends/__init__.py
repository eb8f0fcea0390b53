"""Generation backends behind one protocol (``medharm_nb.generate.Backend``) and a factory."""

from __future__ import annotations

from medharm_nb.generate.backends.hf import EMBEDDED, HFBackend, model_files, resolve_source
from medharm_nb.records import ModelSpec

__all__ = ["EMBEDDED", "make_backend", "model_files", "resolve_source"]


def make_backend(spec: ModelSpec):
    """Return the backend for a spec (imports each backend's dependencies only when used)."""
    if spec.backend == "hf":
        return HFBackend(spec)
    raise ValueError(f"model {spec.name!r}: backend {spec.backend!r} is not available yet")
