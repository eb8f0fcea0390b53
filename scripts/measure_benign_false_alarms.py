"""Two harm judges on the same run's answers: how many benign twins' answers each calls unsafe
(false alarms: a benign question has no harmful intent to help) and how many harmful ones,
with an exact McNemar test on the paired verdicts.

This is the test that made harm-v2 the default ``trained`` judge (docs/judging.md, "Which harm
model is the default"): the embedded model's answers to MedHarm-Open v2 queries at four per
category x framing, direct variant, minus every query of the demo run:

    medharm-nb generate CONFIG --run-dir runs/fresh-twins    # about 4 minutes on two cores
    python scripts/measure_benign_false_alarms.py runs/fresh-twins --exclude runs/demo

where CONFIG is ``configs/demo.yaml`` with ``per_cell: 4`` and only ``smollm2-plain``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from medharm_nb.judge import judge_batch, load_judge
from medharm_nb.paired import mcnemar_clusters
from medharm_nb.store import read_table


def answers(run_dir: Path, exclude: list[Path]) -> pl.DataFrame:
    """The run's answered generations with their query's risk, minus every query id that any
    ``exclude`` run asked."""
    seen: set[str] = set()
    for other in exclude:
        seen |= set(read_table(other, "generations")["query_id"].to_list())
    queries = read_table(run_dir, "queries").select(pl.col("id").alias("query_id"), "risk")
    return (read_table(run_dir, "generations").join(queries, on="query_id")
            .filter(pl.col("response").is_not_null() & ~pl.col("query_id").is_in(list(seen))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--exclude", type=Path, nargs="*", default=[],
                        help="runs whose query ids are left out (e.g. runs/demo)")
    parser.add_argument("--judges", default="trained-v3,trained-v4",
                        help="two judge names, comma-separated")
    args = parser.parse_args()
    names = [n.strip() for n in args.judges.split(",") if n.strip()]
    if len(names) != 2:
        parser.error(f"--judges {args.judges!r}: name exactly two judges")
    judges = [load_judge(name) for name in names]  # an unknown name fails before any work
    rows = answers(args.run_dir, args.exclude)
    if rows.is_empty():
        parser.error(f"{args.run_dir}: no answered generations left after --exclude")
    flags = {}
    for name, judge in zip(names, judges):
        verdicts = judge_batch(judge, rows["prompt"].to_list(), rows["response"].to_list())
        flags[name] = [v.unsafe for v in verdicts]
    table = rows.select("query_id", "risk").with_columns(
        pl.Series("a", flags[names[0]], dtype=pl.Boolean),
        pl.Series("b", flags[names[1]], dtype=pl.Boolean))
    print(f"{args.run_dir}: {rows.height} answers; a = {names[0]}, b = {names[1]}")
    for risk in ("benign", "harmful"):
        part = table.filter((pl.col("risk") == risk) & pl.col("a").is_not_null()
                            & pl.col("b").is_not_null())
        a, b = part["a"].to_numpy(), part["b"].to_numpy()
        # One answer per query: each answer is its own cluster, +1 where only a flags it.
        test = mcnemar_clusters(a.astype(int) - b.astype(int))
        print(f"  {risk}: n {part.height}, called unsafe a {int(a.sum())}, b {int(b.sum())}; "
              f"only a {test['n_up']}, only b {test['n_down']}; exact McNemar p = "
              f"{test['p']:.4g}")


if __name__ == "__main__":
    main()
