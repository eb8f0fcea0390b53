"""Synthetic paired results with a known effect, for the statistics and report tests.

Each base query c has a latent propensity q_c; its variants and samples draw from it, so the
answers of one query are correlated (the clustering the analysis must respect). The base
model complies with probability q_c, the fine-tune with q_c + delta; specificity is the
number of 4 checklist items present, each with probability q_c (+ delta / 4 for the
fine-tune), so its true mean difference is delta. Benign twins do the same with their own
delta. A share ``coupling`` of answers use one uniform draw for both models (a fine-tune
answers much like its base), the rest draw independently; under delta = 0 the two models
are exchangeable, so every null p-value should be about uniform.

No text is generated: responses are placeholders (``<AGENT>``, ``<DOSE>``).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from medharm_nb import store

TIERS = ("explicit", "implicit", "dual_use")
CATEGORIES = ("toxicology", "anesthesia", "pharmacology")
FRAMINGS = ("clinical", "educational", "technical")


def draw(rng: np.random.Generator, n_clusters: int, n_units: int, delta: float,
         outcome: str = "compliance", coupling: float = 0.5,
         q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base and fine-tune values, shape (n_clusters, n_units), and the latent q_c; with
    ``n_units`` 1 and ``coupling`` 0 the answers are independent across queries and models.

    ``q`` stays below 1 - delta (or 1 - delta / 4 per item), so every probability is valid
    and the true difference is exactly ``delta``.
    """
    items, step = (1, delta) if outcome != "specificity" else (4, delta / 4)
    if q is None:
        q = (1 - abs(step)) * rng.beta(2, 3, size=n_clusters) + max(0.0, -step)
    shape = (n_clusters, n_units, items)
    u = rng.random(shape)
    shared = rng.random(shape) < coupling
    v = np.where(shared, u, rng.random(shape))
    p = q[:, None, None]
    base = (u < p).sum(axis=2).astype(float)
    ft = (v < p + step).sum(axis=2).astype(float)
    return base, ft, q


def results(seed: int = 0, n_clusters: int = 30, n_variants: int = 2, n_samples: int = 1,
            delta: float = 0.2, delta_benign: float = 0.0, judges=("trained",),
            models=("base-model", "ft-model")) -> pl.DataFrame:
    """A results table (``metrics.results_table``'s columns the analysis and report read)
    for two models, the second fine-tuned from the first, with true deltas ``delta`` on
    harmful and ``delta_benign`` on benign queries for every outcome."""
    rng = np.random.default_rng(seed)
    base_name, ft_name = models
    variants = ["direct", "roleplay", "hypothetical", "professional"][:n_variants]
    n_units = n_variants * n_samples
    rows = []
    for judge in judges:
        # Each outcome is drawn on its own, so each has exactly the stated true delta.
        values = {(risk, outcome): draw(rng, n_clusters, n_units, d, outcome)
                  for risk, d in (("harmful", delta), ("benign", delta_benign))
                  for outcome in ("compliance", "unsafe", "specificity")}
        for c in range(n_clusters):
            hid, bid = f"h{c:03d}", f"b{c:03d}"
            cat, fr = CATEGORIES[c % len(CATEGORIES)], FRAMINGS[(c // 3) % len(FRAMINGS)]
            for i in range(n_units):
                variant, sample = variants[i // n_samples], i % n_samples
                suffix = "" if variant == "direct" else f"::{variant}"
                for risk, qid, twin in (("harmful", hid, bid), ("benign", bid, hid)):
                    for model, side in ((base_name, 0), (ft_name, 1)):
                        complied = bool(values[risk, "compliance"][side][c, i])
                        rows.append({
                            "gen_id": f"{model}-{qid}{suffix}-{sample}",
                            "model": model, "judge": judge, "query_id": qid + suffix,
                            "base_id": qid, "pair_id": twin + suffix, "variant": variant,
                            "sample": sample, "risk": risk, "category": cat, "framing": fr,
                            "tier": TIERS[(c // 2) % len(TIERS)],
                            "text": f"Placeholder {risk} question {qid} about <AGENT>.",
                            "response": (f"Use <AGENT> at <DOSE> ({model})." if complied
                                         else "I can't help with that."),
                            "label": "full_compliance" if complied else "full_refusal",
                            "complied": complied,
                            "unsafe": bool(values[risk, "unsafe"][side][c, i]),
                            "on_topic": True,
                            "specificity": int(values[risk, "specificity"][side][c, i]),
                            "gen_failed": False, "gen_blocked": False, "truncated": False,
                        })
    return results_frame(rows)


def table_frame(name: str, rows) -> pl.DataFrame:
    """Rows (dicts or a frame) as the declared table ``name`` is read: the columns the
    catalogue gives a default filled in, as for an older file, then checked and typed."""
    declared = store.table(name)
    frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
    return declared.conform(declared.upgrade(frame.lazy()).collect())


def generations_frame(rows) -> pl.DataFrame:
    """Hand-written generations (dicts or a frame) with the record fields they leave out
    (prompt, hashes, created) filled in, as the declared ``generations`` table."""
    frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
    return table_frame("generations", frame.with_columns(
        pl.col("query_id").alias("prompt"), pl.lit("h").alias("prompt_hash"),
        pl.lit("s").alias("spec_hash"), pl.lit("c").alias("config_hash"),
        pl.lit("t").alias("created")))


def results_frame(rows) -> pl.DataFrame:
    """A results table from partial rows: each row answers its own query (``gen_id``,
    ``query_id``) unless the rows say otherwise, the answer, query and verdict columns they
    leave out are null, and the rest take the catalogue's defaults (tier, base_id, flags)."""
    frame = (rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)).with_row_index()
    declared = store.table("results")
    fill = {"gen_id": pl.format("g{}", "index"), "query_id": pl.format("q{}", "index")}
    frame = frame.with_columns(
        (fill.get(c, pl.lit(None)).cast(t).alias(c) for c, t in declared.columns.items()
         if c not in frame.columns and c not in declared.added)).drop("index")
    return table_frame("results", frame)


def run_folder(tmp_path, results_table: pl.DataFrame, pairs=(("ft-model", "base-model"),),
               name: str = "synthetic"):
    """A real run folder around synthetic results: a config whose fine-tune names its base,
    a finished manifest, and the ``results`` table, as ``medharm-nb run`` leaves them after
    03_judge. Returns the ``config.Run``."""
    import yaml

    from medharm_nb import config, manifest, store

    bases = dict(pairs)
    models = sorted(results_table["model"].unique().to_list())
    spec = {"name": name, "description": "Synthetic pair with a known effect (test fixture).",
            "queries": {"source": "medharm-open", "per_cell": 1},
            "models": [{"name": m, "source": "smollm2-135m",
                        **({"system_prompt": f"placeholder prompt {m}", "base": bases[m]}
                           if m in bases else {})} for m in models],
            "judges": sorted(results_table["judge"].unique().to_list())}
    path = tmp_path / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    run = config.open_run(path)
    (run.run_dir / "config.yaml").write_text(
        yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False))
    inputs = {"queries": {"source": "synthetic", "n": results_table["query_id"].n_unique(),
                          "table_hash": "0" * 16},
              "models": {m: {"spec_id": f"spec-{m}", "files": {}} for m in models}}
    record = manifest.new_manifest(run, inputs)
    manifest.finish_manifest(record, run.run_dir, "success", None, None)
    store.write_table(run.run_dir, "results", results_table)
    return run
