"""Guard evaluation on labelled queries: threshold sweeps, operating points, brittleness."""

from __future__ import annotations

from typing import Any

from medharm_nb.guard.load import describe, load_guard, score_queries
from medharm_nb.guard.minilm import labelled_queries
from medharm_nb.variants import VARIANTS

ATTACKS: tuple[str, ...] = tuple(VARIANTS)
"""Every prompt variant (``medharm_nb.variants``), character noise included: ``direct`` is the
reference form, the others are the attacks brittleness is measured on."""


def brittleness(summary) -> Any:
    """Largest drop in catch rate from ``direct`` per guard, with a Newcombe (Wilson-based)
    95% interval for the difference of two proportions."""
    import polars as pl

    rows = []
    for (guard,), part in summary.group_by(["guard"], maintain_order=True):
        direct = part.filter(pl.col("variant") == "direct").row(0, named=True)
        others = part.filter(pl.col("variant") != "direct").with_columns(
            (direct["catch"] - pl.col("catch")).alias("drop")).sort("drop", descending=True)
        if others.is_empty():
            continue
        worst = others.row(0, named=True)
        d = worst["drop"] + 0.0  # no drop reads 0.0, not -0.0
        lo = d - ((direct["catch"] - direct["catch_lo"]) ** 2
                  + (worst["catch_hi"] - worst["catch"]) ** 2) ** 0.5
        hi = d + ((direct["catch_hi"] - direct["catch"]) ** 2
                  + (worst["catch"] - worst["catch_lo"]) ** 2) ** 0.5
        rows.append({"guard": guard, "worst_variant": worst["variant"], "direct_catch":
                     direct["catch"], "worst_catch": worst["catch"], "brittleness": d,
                     "brittleness_lo": lo, "brittleness_hi": hi})
    return pl.DataFrame(rows)


def evaluate(guards: list[str], queries: str, train: str | None = None,
             variants: bool = False, limit: int | None = None, threshold: float = 0.5,
             budget: float = 0.05) -> dict[str, Any]:
    """Score a query set's prompts with each guard.

    Args:
        guards: Guard names (see ``load_guard``).
        queries: A query source (``medharm-open``, ``xstest:FILE`` ...).
        train: Labelled queries to fit ``minilm`` on (default: the shipped artifact).
        variants: Also score every ``ATTACKS`` variant of each query.
        limit: At most this many harmful and this many benign queries (first by id).
        threshold / budget: Default threshold; false-block budget for the operating point.

    Returns:
        ``scored`` (one row per guard x query), ``summary`` (per guard and variant),
        ``by_category`` (per guard and category, direct only), ``sweep`` (ROC points,
        direct only), ``guards`` (``describe`` per guard: kind, source, hash, reference)
        and, with variants, ``brittleness``.
    """
    import polars as pl

    from medharm_nb.metrics import guard_summary, guard_sweep
    from medharm_nb.variants import apply_variants

    q = labelled_queries(queries)
    if limit is not None:
        q = pl.concat([q.filter(pl.col("risk") == r).sort("id").head(limit)
                       for r in ("harmful", "benign")])
    q = apply_variants(q, ATTACKS if variants else ("direct",))
    loaded = {g: load_guard(g, train if g == "minilm" else None) for g in guards}
    scored = pl.concat([score_queries(guard, q).with_columns(pl.lit(g).alias("guard"))
                        for g, guard in loaded.items()])
    direct = scored.filter(pl.col("variant") == "direct")
    summary = guard_summary(scored, ("guard", "variant"), threshold, budget)
    sweeps = []
    for (g,), part in direct.group_by(["guard"], maintain_order=True):
        pos = part.filter(pl.col("risk") == "harmful")["p_unsafe"].to_list()
        neg = part.filter(pl.col("risk") == "benign")["p_unsafe"].to_list()
        sweeps.append(guard_sweep(pos, neg).with_columns(pl.lit(g).alias("guard")))
    out = {"scored": scored, "summary": summary, "sweep": pl.concat(sweeps),
           "by_category": guard_summary(direct, ("guard", "category"), threshold, budget),
           "guards": pl.DataFrame([{**describe(guard), "guard": g}
                                   for g, guard in loaded.items()])}
    if variants:
        out["brittleness"] = brittleness(summary)
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per guard (direct prompts): AUROC, catch at 5% false blocks, false blocks
    and catch at the default threshold, each rate with n."""
    import polars as pl

    lines = []
    for r in result["summary"].filter(pl.col("variant") == "direct").iter_rows(named=True):
        lines.append(
            f"{r['guard']}: auroc={r['auroc']:.3f} catch_at_5fb={r['catch_at_budget']:.3f} "
            f"[{r['catch_at_budget_lo']:.3f}, {r['catch_at_budget_hi']:.3f}] "
            f"false_block={r['false_block']:.3f} [{r['false_block_lo']:.3f}, "
            f"{r['false_block_hi']:.3f}] (n={r['n_benign']}) catch={r['catch']:.3f} "
            f"(n={r['n_harmful']}) threshold={r['threshold']:g}")
    return lines
