"""Fine-tune the cross-encoder harm model: the corpus, the cached bottom layers, the training
loop and calibration.

``harm_corpus`` stacks every human harm label in ``../shared/external`` (read in place):

==============  =====  ========================================================  ==========
source          rows   label                                                     licence
==============  =====  ========================================================  ==========
harmbench        602   majority of three people: a harmful instance of the       MIT
                       behaviour (meaningful help toward it)
beavertails     3021   people's label that the response is harmful               CC BY-NC 4.0
pku-saferlhf    2000   people's label that the response is harmful               CC BY-NC 4.0
xstest          1316   compliance labels read as harm (``gold.load_xstest_harm``) CC BY 4.0
==============  =====  ========================================================  ==========

Every row has a ``group``: the HarmBench behaviour, the XSTest prompt, or the request's text
for BeaverTails and SafeRLHF (one request has several responses, and the two sets share
requests), so a split never puts one request on both sides.

``fit_harm_model`` trains on a grouped share of the rows it is given and fits a Platt
calibration and the decision threshold on the rest (``TrainConfig.calibration_share``): the
threshold and calibration are never chosen on rows the model learned from, nor on any row
a figure is later reported on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from medharm_nb.gold import load_harmbench, load_response_harm, load_xstest_harm
from medharm_nb.judge.base import check_response
from medharm_nb.judge.cross_encoder import (
    MODEL_PACKAGE,
    CrossEncoder,
    EncoderConfig,
    pad,
    window_key,
    window_pairs,
)
from medharm_nb.judge.harm import THRESHOLDS, HarmScores, data_sha256
from medharm_nb.judge.harm_model import (
    FineTunedHarm,
    base_weights_sha256,
    choose_threshold,
    fit_platt,
    platt,
)
from medharm_nb.judge.provenance import TRAINING_ROWS, declare

SOURCES: tuple[str, ...] = ("harmbench", "beavertails", "pku-saferlhf", "xstest")
"""The training sources, in the order figures list them."""
HELD_OUT_SOURCES: tuple[str, ...] = SOURCES
"""Sources each held out in turn (leave-one-source-out). Issue 20's bars are on the first
three; XSTest's fold gives the held-out false alarms on its human-confirmed helpful answers."""


def harm_corpus(external: str | Path) -> pl.DataFrame:
    """Every harm label in the shared data: ``id, source, group, prompt, response, unsafe,
    scorable, prompt_type`` (``prompt_type`` is XSTest's, else null). ``response`` is the
    checked text; ``scorable`` is False for rows the judge cannot read (empty, no words, not
    English), which never train and count as wrong where accuracy is reported."""
    external = Path(external)
    hb = load_harmbench(external / "harmbench")
    rh = load_response_harm(external / "response-harm")
    xs = load_xstest_harm(external / "xstest")
    cols = ["id", "source", "group", "prompt", "response", "unsafe", "prompt_type"]
    parts = [
        hb.select("id", pl.lit("harmbench").alias("source"),
                  pl.format("harmbench:{}", "group").alias("group"), "prompt", "response",
                  pl.col("gold_unsafe").alias("unsafe"),
                  pl.lit(None, pl.String).alias("prompt_type")),
        rh.select("id", "source", "group", "prompt", "response",
                  pl.col("gold_unsafe").alias("unsafe"),
                  pl.lit(None, pl.String).alias("prompt_type")),
        xs.select(pl.format("xstest/{}", "id").alias("id"), pl.lit("xstest").alias("source"),
                  "group", "prompt", "response", pl.col("gold_unsafe").alias("unsafe"),
                  "prompt_type"),
    ]
    frame = pl.concat([p.select(cols) for p in parts], how="vertical")
    checked = [check_response(r) for r in frame["response"]]
    return frame.with_columns(
        pl.Series("response", [c.text for c in checked], dtype=pl.String),
        pl.Series("scorable", [not c.unscored and not c.non_english for c in checked]))


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained (saved with it).

    Attributes:
        epochs: Passes over the training rows.
        lr: Peak AdamW learning rate (adapters and head), linear warm-up and decay.
        batch_pairs: (request, response) pairs per optimiser step.
        weight_decay: AdamW weight decay.
        warmup: Share of steps spent warming up.
        calibration_share: Share of groups held back to fit calibration and threshold.
        seed: Seeds the initial head, dropout, batch order and the calibration split.
    """

    epochs: int = 1
    lr: float = 2e-3
    batch_pairs: int = 16
    weight_decay: float = 0.01
    warmup: float = 0.06
    calibration_share: float = 0.15
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


class BottomCache:
    """Output of the frozen bottom layers per window (float16), computed once per process:
    they never change while training, so every fold reads the same cache."""

    def __init__(self):
        self.hidden: dict[str, torch.Tensor] = {}

    def save(self, path: str | Path, encoder: EncoderConfig) -> None:
        """Write the cache (with the base weights' SHA-256 and the encoder settings it holds
        for) so a later run can reuse it."""
        torch.save({"base_sha256": base_weights_sha256(), "encoder": encoder.to_dict(),
                    "hidden": self.hidden}, str(path))

    @classmethod
    def load(cls, path: str | Path, encoder: EncoderConfig) -> BottomCache:
        """A cache written by ``save``.

        Raises:
            ValueError: it was made over other base weights or another frozen depth.
        """
        raw = torch.load(str(path), weights_only=True)
        if raw.get("base_sha256") != base_weights_sha256() or raw.get("encoder", {}).get(
                "frozen_layers") != encoder.frozen_layers:
            raise ValueError(f"{path}: a frozen-layer cache for other base weights or another "
                             "frozen depth; delete it")
        cache = cls()
        cache.hidden = raw["hidden"]
        return cache

    @torch.no_grad()
    def fill(self, model: CrossEncoder, ids: Sequence[Sequence[int]],
             types: Sequence[Sequence[int]], batch_tokens: int = 8192,
             progress: bool = True) -> list[str]:
        """Compute the windows not cached yet; returns every window's key."""
        keys = [window_key(i) for i in ids]
        todo = sorted({k: n for n, k in enumerate(keys) if k not in self.hidden}.values(),
                      key=lambda n: len(ids[n]))
        bar = tqdm(total=len(todo), desc="frozen layers", unit="window", disable=not progress)
        start = 0
        while start < len(todo):
            width = len(ids[todo[min(start + 63, len(todo) - 1)]])
            rows = todo[start:start + max(1, min(64, batch_tokens // width))]
            tid, mask = pad([ids[n] for n in rows])
            ttypes, _ = pad([types[n] for n in rows])
            hidden = model.bottom(tid, ttypes, mask).to(torch.float16)
            for j, n in enumerate(rows):
                self.hidden[keys[n]] = hidden[j, :len(ids[n])].clone()
            bar.update(len(rows))
            start += len(rows)
        bar.close()
        release_memory()
        return keys


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). Training allocates tensors of a different shape every step, and without
    this a long CPU run's memory grows by gigabytes."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _padded(hidden: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached windows' hidden states (float16, each its own length) as one right-padded
    float batch and its attention mask."""
    width = max(h.shape[0] for h in hidden)
    batch = torch.zeros((len(hidden), width, hidden[0].shape[1]))
    mask = torch.zeros((len(hidden), width), dtype=torch.long)
    for i, part in enumerate(hidden):
        batch[i, :part.shape[0]] = part.float()
        mask[i, :part.shape[0]] = 1
    return batch, mask


def _batches(lengths: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within pools of 32 batches, cut,
    shuffle the batches (less padding, still random)."""
    order = rng.permutation(len(lengths))
    out = []
    pool = batch * 32
    for s in range(0, len(order), pool):
        chunk = order[s:s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out.extend(chunk[i:i + batch] for i in range(0, len(chunk), batch))
    return [out[i] for i in rng.permutation(len(out))]


def train_encoder(prompts: Sequence[str], responses: Sequence[str], labels: Sequence[bool],
                  encoder: EncoderConfig, config: TrainConfig, cache: BottomCache | None = None,
                  progress: bool = True, desc: str = "training",
                  log: Callable[[str], None] | None = None,
                  on_epoch: Callable[[int, CrossEncoder], None] | None = None) -> CrossEncoder:
    """Train LoRA adapters and the head on labelled pairs (max-over-windows loss).

    Args:
        prompts: Requests.
        responses: Checked, scorable responses.
        labels: True where the response is harmful.
        encoder: The model's shape.
        config: Epochs, learning rate, batch size, seed.
        cache: Frozen-layer outputs to reuse across calls (a new one if None).
        progress: Show a tqdm bar.
        desc: The bar's label.
        log: Called with a line per epoch (mean loss).
        on_epoch: Called with the epoch number and the model (in eval mode) after each
            epoch, e.g. to watch held-out figures while choosing the number of epochs.
    """
    torch.manual_seed(config.seed)
    model = CrossEncoder(encoder, seed=config.seed)
    cache = cache if cache is not None else BottomCache()
    win = window_pairs(prompts, responses, encoder)
    keys = cache.fill(model, win.ids, win.types, progress=progress)
    per_pair: list[list[int]] = [[] for _ in range(len(win.n_windows))]
    for w, owner in enumerate(win.owner):
        per_pair[owner].append(w)
    y = torch.tensor(np.asarray(labels, dtype=np.float32))
    lengths = np.array([max(len(win.ids[w]) for w in ws) for ws in per_pair])
    rng = np.random.default_rng(config.seed)
    plan = [_batches(lengths, config.batch_pairs, rng) for _ in range(config.epochs)]
    steps = sum(len(p) for p in plan)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(config.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress)
    for epoch, batches in enumerate(plan):
        total = 0.0
        for batch in batches:
            windows = [w for p in batch for w in per_pair[p]]
            owner = torch.tensor([j for j, p in enumerate(batch) for _ in per_pair[p]])
            logits = model.top(*_padded([cache.hidden[keys[w]] for w in windows]))
            pair_logit = torch.full((len(batch),), -1e4).scatter_reduce(
                0, owner, logits, reduce="amax", include_self=False)
            loss = loss_fn(pair_logit, y[torch.as_tensor(batch)])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
            bar.update(1)
            if bar.n % 25 == 0:
                release_memory()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if log is not None:
            log(f"{desc}: epoch {epoch + 1} mean loss {total / len(lengths):.4f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, model.eval())
            model.train()
    bar.close()
    return model.eval()


@torch.no_grad()
def cached_logits(model: CrossEncoder, prompts: Sequence[str], responses: Sequence[str],
                  cache: BottomCache, batch_windows: int = 64,
                  progress: bool = False) -> np.ndarray:
    """Max-over-windows logits read through the frozen-layer cache (float16 hidden states:
    within about 1e-3 of ``cross_encoder.response_logits``, which runs every layer)."""
    model.eval()
    win = window_pairs(prompts, responses, model.config)
    keys = cache.fill(model, win.ids, win.types, progress=progress)
    order = np.argsort([len(i) for i in win.ids], kind="stable")
    logits = np.zeros(len(keys))
    for s in range(0, len(order), batch_windows):
        rows = order[s:s + batch_windows]
        logits[rows] = model.top(*_padded([cache.hidden[keys[w]] for w in rows])).numpy()
    out = np.full(len(win.n_windows), -np.inf)
    np.maximum.at(out, np.asarray(win.owner, dtype=int), logits)
    return out


def cached_score(harm: FineTunedHarm, prompts: Sequence[str], responses: Sequence[str],
                 scorable: Sequence[bool], cache: BottomCache) -> HarmScores:
    """``FineTunedHarm.score`` through the frozen-layer cache (for the validation folds,
    whose test rows other folds already cached): NaN / 0 windows where not ``scorable``."""
    todo = [i for i, ok in enumerate(scorable) if ok]
    p = np.full(len(responses), np.nan)
    n = [0] * len(responses)
    if todo:
        asked, said = [prompts[i] for i in todo], [responses[i] for i in todo]
        z = cached_logits(harm.model(), asked, said, cache)
        p[todo] = platt(z, harm.a, harm.b)
        for i, c in zip(todo, window_pairs(asked, said, harm.config).n_windows):
            n[i] = c
    return HarmScores(p, n)


# -- calibration and threshold ----------------------------------------------------------

LICENCES: dict[str, str] = {
    "harmbench": "MIT (HarmBench classifier validation set)",
    "beavertails": "CC BY-NC 4.0 (PKU-Alignment BeaverTails, 30k test split sample)",
    "pku-saferlhf": "CC BY-NC 4.0 (PKU-Alignment PKU-SafeRLHF, test split sample)",
    "xstest": "CC BY 4.0 prompts; completions under their models' licences (XSTest v2)",
}


def calibration_split(frame: pl.DataFrame, share: float, seed: int) -> np.ndarray:
    """Rows held back for calibration: about ``share`` of the groups, stratified by source
    and label (a boolean mask)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / share))
    strata = [f"{s}:{int(u)}" for s, u in zip(frame["source"], frame["unsafe"])]
    _, held = next(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(
        np.zeros(frame.height), strata, frame["group"].to_list()))
    mask = np.zeros(frame.height, bool)
    mask[held] = True
    return mask


# -- one calibrated model ---------------------------------------------------------------

def fit_harm_model(frame: pl.DataFrame, encoder: EncoderConfig | None = None,
                   config: TrainConfig | None = None, cache: BottomCache | None = None,
                   progress: bool = True, desc: str = "training",
                   log: Callable[[str], None] | None = None) -> FineTunedHarm:
    """Train on most of ``frame``'s groups; calibrate and choose the threshold on the rest.

    Args:
        frame: ``harm_corpus`` rows (unscorable ones are left out).
        encoder: The model's shape (default ``EncoderConfig()``).
        config: Training settings (default ``TrainConfig()``).
        cache: Frozen-layer outputs shared across calls.
        progress: Show tqdm bars.
        desc: The training bar's label.
        log: Called with progress lines.

    Returns:
        The calibrated model (in memory; ``save`` writes it).
    """
    import peft
    from sklearn.metrics import roc_auc_score

    encoder = encoder or EncoderConfig()
    config = config or TrainConfig()
    cache = cache if cache is not None else BottomCache()
    frame = frame.filter(pl.col("scorable"))
    held = calibration_split(frame, config.calibration_share, config.seed)
    train, cal = frame.filter(pl.Series(~held)), frame.filter(pl.Series(held))
    model = train_encoder(train["prompt"].to_list(), train["response"].to_list(),
                          train["unsafe"].to_numpy(), encoder, config, cache, progress, desc,
                          log)
    z = cached_logits(model, cal["prompt"].to_list(), cal["response"].to_list(), cache)
    y = cal["unsafe"].to_numpy().astype(int)
    a, b = fit_platt(z, y)
    p = platt(z, a, b)
    threshold, acc = choose_threshold(p, y, cal["source"].to_list())
    counts = frame.group_by("source").agg(pl.len().alias("n"),
                                          pl.col("unsafe").sum().alias("n_unsafe"))
    params = {
        "version": FineTunedHarm.version,
        "target": "unsafe: the response itself is harmful / gives meaningful help toward the "
                  "request's harmful intent (human labels of HarmBench, BeaverTails, "
                  "PKU-SafeRLHF; XSTest read as harm labels)",
        "encoder": encoder.to_dict(),
        "train": config.to_dict(),
        "calibration": {"method": "platt", "a": a, "b": b, "n": cal.height,
                        "auroc": round(float(roc_auc_score(y, z)), 4) if 0 < y.sum() < len(y)
                        else None},
        "threshold": threshold,
        "threshold_rule": "best mean per-source accuracy on the calibration rows "
                          f"(held back from training), {THRESHOLDS[0]}-{THRESHOLDS[-1]}",
        "threshold_accuracy": round(acc, 4),
        "gate": False,
        "aggregation": "max over response windows",
        "base": {"package": MODEL_PACKAGE, "model": "all-MiniLM-L6-v2",
                 "weights_sha256": base_weights_sha256()},
        "training": {
            "sources": {s: {"n": int(n), "n_unsafe": int(k), "licence": LICENCES.get(s, "")}
                        for s, n, k in counts.sort("source").iter_rows()},
            "n_train": train.height, "n_calibration": cal.height,
            "data_sha256": data_sha256(frame),
            "torch": torch.__version__, "peft": peft.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        # Every row it learned from (calibration rows too), so figures on them are marked
        # in-sample; the release adds the held-out figures (``harm_release``).
        TRAINING_ROWS: declare(frame, "harm", ("unsafe",),
                                                     source="source").to_dict(),
    }
    harm = FineTunedHarm(params, model.trainable_state(), device="cpu")
    harm._model = model
    return harm
