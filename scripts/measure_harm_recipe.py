"""Development measurement for the next harm model: harm-v2's recipe trained for more epochs
or with more tuned layers, on the shipped validation folds (grouped CV by default, or any of
them by name), beside the shipped one-epoch predictions.

Each fold trains exactly as ``judge-train --harm ... --validate --cv`` does (the same rows,
calibration split, threshold rule and seed) with ``TrainConfig(epochs=N)``, and scores its
held-out rows. Choosing the number of epochs on these folds makes their figures development
figures: a model trained this way would need its own held-out check (leave-one-source-out)
before anything ships. About 9 minutes a fold for two epochs on two idle cores, with the
frozen layers cached (``--cache``, written on first use).

    python scripts/measure_harm_recipe.py [--epochs 2] [--frozen-layers 4]
        [--folds cv-0,cv-1,cv-2] [--cache FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl
from sklearn.metrics import f1_score, roc_auc_score

from medharm_nb.gold import XSTEST_UNSAFE_PROMPT
from medharm_nb.judge.cross_encoder import EncoderConfig
from medharm_nb.judge.harm_finetune import SOURCES, TrainConfig, harm_corpus
from medharm_nb.judge.harm_model import shipped_dir
from medharm_nb.judge.harm_release import all_folds, corpus_cache
from medharm_nb.judge.harm_validate import run_fold


def summary(predictions: pl.DataFrame, corpus: pl.DataFrame) -> list[str]:
    """Per source accuracy / F1 / AUROC on scored rows, and XSTest's safe-prompt answers
    called unsafe."""
    rows = predictions.drop("unsafe", strict=False).join(
        corpus.select("id", "source", "unsafe", "prompt_type"), on=["id", "source"]).filter(
        pl.col("p").is_not_nan())
    out = []
    for source in SOURCES:
        part = rows.filter(pl.col("source") == source)
        if part.is_empty():
            continue
        y, yhat = part["unsafe"].to_numpy(), part["predicted"].to_numpy()
        out.append(f"{source} {(yhat == y).mean():.3f}/{f1_score(y, yhat):.3f}/"
                   f"{roc_auc_score(y, part['p']):.3f}")
    safe = rows.filter((pl.col("source") == "xstest")
                       & ~XSTEST_UNSAFE_PROMPT)
    if not safe.is_empty():
        out.append(f"XSTest safe-prompt answers flagged {safe['predicted'].mean():.3f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--external", default="../shared/external", type=Path)
    parser.add_argument("--epochs", default=2, type=int)
    parser.add_argument("--frozen-layers", default=EncoderConfig().frozen_layers, type=int,
                        help="bottom layers left frozen (the shipped model: 4 of 6)")
    parser.add_argument("--folds", default="cv-0,cv-1,cv-2",
                        help="validation folds, comma-separated (loso-<source>, cv-<k>)")
    parser.add_argument("--cache", default=None, type=Path)
    parser.add_argument("--out", default=Path("runs/harm_recipe"), type=Path)
    args = parser.parse_args()
    corpus = harm_corpus(args.external)
    folds = list(dict.fromkeys(f.strip() for f in args.folds.split(",") if f.strip()))
    known = {name: test for name, test in all_folds(corpus, cv=True)}
    if not folds or set(folds) - set(known):
        parser.error(f"--folds {args.folds!r}: choose from {', '.join(known)}")
    encoder = EncoderConfig(frozen_layers=args.frozen_layers)
    shipped = pl.read_parquet(shipped_dir() / "validation" / "predictions.parquet")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"epochs{args.epochs}" + ("" if args.frozen_layers == EncoderConfig().frozen_layers
                                     else f"-frozen{args.frozen_layers}")
    where = {name: args.out / f"{name}-{tag}.parquet" for name in folds}
    if any(not path.is_file() for path in where.values()):  # something to train
        cache = corpus_cache(corpus, encoder, args.cache)
        for name, path in where.items():
            if not path.is_file():
                _, pred = run_fold(corpus, name, known[name], cache, encoder=encoder,
                                   config=TrainConfig(epochs=args.epochs, seed=0))
                pred.drop("unsafe").write_parquet(path)
    mine = [pl.read_parquet(path) for path in where.values()]
    for name, pred in zip(folds, mine):
        print(f"{name}, threshold {pred['threshold'][0]:g} (shipped one epoch: "
              f"{shipped.filter(pl.col('fold') == name)['threshold'][0]:g})")
    print("acc/F1/AUROC, scored rows")
    print("  one epoch (shipped): " + "; ".join(
        summary(shipped.filter(pl.col("fold").is_in(folds)), corpus)))
    print(f"  {tag}: " + "; ".join(summary(pl.concat(mine), corpus)))


if __name__ == "__main__":
    main()
