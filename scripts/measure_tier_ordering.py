"""Measure whether the offline guards rank MedHarm-Open v2's tiers as they are defined.

    python scripts/measure_tier_ordering.py     # writes data/medharm_open_v2/guard_tiers.csv

Each guard scores every query as a prompt; ``guard.evaluate.tier_ordering`` gives the AUROC of
each adjacent tier pair and of each tier against its own benign twins, with intervals from
resampling twin pairs. The ``minilm`` guard was trained on MedHarm-Open v1, whose pairs v2
keeps: it is scored on the pairs v1 does not hold, so no figure is in-sample. The guards are
not the models under test; data/DATASHEET.md says what this does and does not show.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "data" / "medharm_open_v2" / "guard_tiers.csv"
GUARDS = ("minilm", "prompted-smollm2")


def scored(guard_name: str):
    """The v2 queries a guard may be measured on, with its P(unsafe)."""
    import polars as pl

    from medharm_nb import data, guard

    queries = data.load_queries("medharm-open")
    v1 = data.load_queries("medharm-open@v1")["id"]
    held_out = queries.filter(~pl.col("id").is_in(v1.implode()))
    scores = guard.score_queries(guard.load_guard(guard_name), held_out.select("id", "text"))
    return held_out.join(scores.select("id", "p_unsafe", "guard"), on="id")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", action="append", help=f"guard(s) (default {GUARDS})")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import polars as pl

    from medharm_nb.guard.evaluate import tier_ordering

    table = pl.concat([tier_ordering(scored(name)) for name in args.guard or GUARDS])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.write_csv(args.out, float_precision=4)
    with pl.Config(tbl_rows=50, tbl_width_chars=160):
        print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
