"""Generation backends behind one protocol (``medharm_nb.generate.Backend``) and a factory."""

from __future__ import annotations

from medharm_nb.generate.backends.hf import HFBackend
from medharm_nb.generate.backends.hf_models import EMBEDDED, resolve_source
from medharm_nb.generate.backends.hf_models import model_files as _hf_model_files
from medharm_nb.records import ModelSpec

__all__ = ["EMBEDDED", "make_backend", "model_files", "resolve_source"]


def make_backend(spec: ModelSpec):
    """Return the backend for a spec (imports each backend's dependencies only when used)."""
    if spec.backend == "hf":
        return HFBackend(spec)
    if spec.backend == "openai":
        from medharm_nb.generate.backends.openai import OpenAIBackend

        return OpenAIBackend(spec)
    if spec.backend == "replay":
        from medharm_nb.generate.backends.replay import ReplayBackend

        return ReplayBackend(spec)
    raise ValueError(f"model {spec.name!r}: backend {spec.backend!r} is not available yet")


def model_files(spec: ModelSpec):
    """Local files a spec's answers come from (weights, or a replayed file), for the
    manifest's hashes."""
    if spec.backend == "replay":
        from medharm_nb.generate.backends.replay import model_files as replay_files

        return replay_files(spec)
    if spec.backend == "openai":  # weights live on the server; source is only a model name
        return []
    return _hf_model_files(spec)
