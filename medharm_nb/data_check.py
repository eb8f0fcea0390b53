"""Quality gates for a query set (``medharm-nb data check SOURCE``).

``check_queries(df)`` runs every gate on a loaded query table and returns ``Finding`` rows:
``fail`` findings break a gate (the command exits 1), ``review`` findings are listed for a
person to look at (the category classifier's disagreements). Each names the row and the rule.

=============  ==================================================================
``balance``    every category x framing cell holds about as many high-risk queries as
               the others (at least ``MIN_CELL_SHARE`` of the median), and in a tiered
               set each tier holds ``TIER_SHARE`` of every cell
``duplicate``  no two rows share a text (case, spacing and punctuation ignored); no two
               rows of different twin pairs are near-duplicates (MiniLM cosine >=
               ``NEAR_DUPLICATE``)
``twin``       in a paired set every high-risk row has a benign twin that points back and
               shares its category, framing, tier and topic, within ``TWIN_LENGTH`` of
               its length
``operational`` no amount with a dose or concentration unit, no step list in any row; no
               route of administration and no named agent in a high-risk row (broad
               classes allowed in ``dual_use`` rows; data/DATASHEET.md, content rule)
``category``   a classifier cross-validated by twin pair (MiniLM features, logistic
               regression) that places a row in another category lists it for review
=============  ==================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from medharm_nb.labels import TIERS

MIN_CELL_SHARE = 0.8
"""A cell with fewer high-risk queries than this share of the median cell fails ``balance``."""
TIER_SHARE = (0.2, 0.5)
"""Each tier's share of a cell's high-risk queries in a tiered set (a third each by design)."""
NEAR_DUPLICATE = 0.9
"""MiniLM cosine at or above which two rows of different pairs are near-duplicates. Rows that
differ only in a persona or a few words score 0.9 and above; the closest distinct questions
on one topic of MedHarm-Open v2 score below it (the datasheet shows the distribution)."""
TWIN_LENGTH = (0.7, 1.3)
"""A benign twin's length over its high-risk query's, in characters."""
REVIEW_CONFIDENCE = 0.7
"""The category classifier lists a row when it gives another category at least this (at 0.5
it listed a sixth of MedHarm-Open v2, mostly rows that sit between two categories by design,
such as an anesthesia machine under ``anesthesia``: too many to review)."""

_UNIT = (r"(?:mg|mcg|µg|ug|ng|g|kg|grams?|milligrams?|micrograms?|ml|mL|millilit(?:er|re)s?|"
         r"l|lit(?:er|re)s?|units?|iu|IU|mmol|mol|meq|mEq|ppm|ppb|%|percent|mg/kg|mg/dl|"
         r"mg/l|mmhg|tablets?|pills?|capsules?|doses?|drops?|vials?|ampoules?|puffs?)")
_NUMBER = (r"(?:\d+(?:[.,]\d+)?|one|two|three|four|five|six|seven|eight|nine|ten|twelve|"
           r"twenty|fifty|hundred|a dozen|half an?)")
AMOUNT = re.compile(rf"\b{_NUMBER}\s*-?\s*{_UNIT}(?![a-z])", re.I)
STEPS = re.compile(r"(\bstep[- ]by[- ]step\b|\bstep \d|^\s*(?:\d+[.)]|[-*•])\s|\(\d\)|"
                   r"\bfirst\b[^?]*\bthen\b[^?]*\bthen\b)", re.I | re.M)
ROUTE = re.compile(r"\b(inject\w*|intraven\w*|i\.v\.|IV|intramuscular\w*|subcutaneous\w*|"
                   # "an inhaled anesthetic" names a drug class, not a way to give one
                   r"intrathecal\w*|inhal\w*(?! an(?:a)?esthetic)|snort\w*|rectal\w*|"
                   r"sublingual\w*|transdermal\w*|orally|by mouth)\b")
AGENT = re.compile(
    r"\b(ricin|abrin|sarin|vx|tabun|soman|cyanide|arsenic|thallium|strychnine|polonium|"
    r"botulinum|anthrax|smallpox|ebola|plague|tetrodotoxin|digoxin|potassium chloride|"
    r"succinylcholine|fentanyl|carfentanil|heroin|cocaine|methamphetamine|ghb|rohypnol|"
    r"flunitrazepam|ketamine|propofol|midazolam|morphine|oxycodone|warfarin|ethylene glycol|"
    r"antifreeze|paraquat|mercury|nicotine|acetaminophen|paracetamol|colchicine|aconite|"
    r"oleander|belladonna|scopolamine|chloroform)\b", re.I)
"""Specific agents a high-risk query never names (the content rule); benign twins may name
everyday ones, and ``dual_use`` rows broad drug classes, which this list does not hold."""

Level = Literal["fail", "review"]


@dataclass(frozen=True)
class Finding:
    """One problem: the gate it breaks, the row (None for a whole cell), what is wrong."""

    rule: str
    id: str | None
    detail: str
    level: Level = "fail"

    def line(self) -> str:
        """The finding as one line: ``<id>: <rule>: <detail>``."""
        return f"{self.id or '-'}: {self.rule}: {self.detail}"


def check_queries(df: pl.DataFrame, embeddings: np.ndarray | None = None,
                  classify: bool = True) -> list[Finding]:
    """Run every gate on a query table (``data.load_queries``' output).

    Args:
        df: The queries.
        embeddings: Unit-length MiniLM embeddings of ``df["text"]`` in row order (computed
            here when None).
        classify: Run the cross-validated category classifier (``review`` findings).

    Returns:
        Every finding, ``fail`` ones first, each gate's in row order.
    """
    if embeddings is None:
        from medharm_nb.embedding import embed

        embeddings = embed(df["text"].to_list())[1]
    found = [*balance(df), *duplicates(df, embeddings), *twins(df), *operational(df)]
    if classify:
        found += category_review(df, embeddings)
    return sorted(found, key=lambda f: f.level != "fail")


def balance(df: pl.DataFrame) -> list[Finding]:
    """Cells of about equal size, and in a tiered set every tier in every cell."""
    harmful = df.filter(pl.col("risk") == "harmful")
    cells = harmful.group_by("category", "framing").len()
    if cells.is_empty():
        return [Finding("balance", None, "no high-risk queries")]
    floor = MIN_CELL_SHARE * float(cells["len"].median())
    out = [Finding("balance", None, f"cell {c}/{f}: {n} high-risk queries, under "
                                    f"{MIN_CELL_SHARE:.0%} of the median cell ({floor:.1f})")
           for c, f, n in cells.sort("category", "framing").iter_rows() if n < floor]
    if not harmful["tier"].is_in(list(TIERS)).any():
        return out  # an untiered set (v1, imported): no tier gate
    lo, hi = TIER_SHARE
    shares = (harmful.group_by("category", "framing", "tier").len()
              .join(cells.rename({"len": "cell"}), on=["category", "framing"])
              .with_columns((pl.col("len") / pl.col("cell")).alias("share")))
    for c, f in cells.sort("category", "framing").select("category", "framing").iter_rows():
        for tier in TIERS:
            row = shares.filter((pl.col("category") == c) & (pl.col("framing") == f)
                                & (pl.col("tier") == tier))
            share = row["share"].item() if row.height else 0.0
            if not lo <= share <= hi:
                out.append(Finding("balance", None, f"cell {c}/{f}: tier {tier} is "
                                                    f"{share:.0%} of its high-risk queries "
                                                    f"(allowed {lo:.0%}-{hi:.0%})"))
    return out


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def duplicates(df: pl.DataFrame, embeddings: np.ndarray) -> list[Finding]:
    """Exact duplicates anywhere; near-duplicates between rows of different twin pairs."""
    ids, texts = df["id"].to_list(), df["text"].to_list()
    pairs = [frozenset((i, p)) if p else frozenset((i,)) for i, p in
             zip(ids, df["pair_id"].to_list())]
    out, first = [], {}
    for i, t in zip(ids, texts):
        key = _normal(t)
        if key in first:
            out.append(Finding("duplicate", i, f"same text as {first[key]}"))
        else:
            first[key] = i
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -1)
    for a, b in zip(*np.nonzero(np.triu(sims >= NEAR_DUPLICATE))):
        if pairs[a] != pairs[b] and _normal(texts[a]) != _normal(texts[b]):  # exact: said
            out.append(Finding("duplicate", ids[b], f"near-duplicate of {ids[a]} (cosine "
                                                    f"{sims[a, b]:.3f} >= {NEAR_DUPLICATE})"))
    return out


def twins(df: pl.DataFrame) -> list[Finding]:
    """Each high-risk row's twin: present, benign, pointing back, matched, of similar length."""
    if df["pair_id"].null_count() == df.height:
        return []  # an unpaired set (XSTest, MedSafetyBench): nothing to match
    rows = {r["id"]: r for r in df.iter_rows(named=True)}
    shared = [c for c in ("category", "framing", "tier", "topic") if c in df.columns]
    lo, hi = TWIN_LENGTH
    out = []
    for r in rows.values():
        if r["risk"] != "harmful":
            continue
        twin = rows.get(r["pair_id"] or "")
        if twin is None:
            out.append(Finding("twin", r["id"], "no benign twin"))
            continue
        if twin["risk"] != "benign" or twin["pair_id"] != r["id"]:
            out.append(Finding("twin", r["id"], f"twin {twin['id']} is not a benign row "
                                                f"pointing back"))
        differ = [c for c in shared if r[c] != twin[c]]
        if differ:
            out.append(Finding("twin", r["id"], f"twin {twin['id']} differs in {differ}"))
        ratio = len(twin["text"]) / max(1, len(r["text"]))
        if not lo <= ratio <= hi:
            out.append(Finding("twin", r["id"], f"twin {twin['id']} is {ratio:.2f}x its length "
                                                f"(allowed {lo}-{hi})"))
    return out


def operational(df: pl.DataFrame) -> list[Finding]:
    """The operational-detail linter (see the module docstring)."""
    out = []
    for r in df.iter_rows(named=True):
        text, high = r["text"], r["risk"] == "harmful"
        checks = [(AMOUNT, "an amount with a unit"), (STEPS, "a step list")]
        if high:
            checks += [(ROUTE, "a route of administration"), (AGENT, "a named agent")]
        for pattern, what in checks:
            match = pattern.search(text)
            if match:
                out.append(Finding("operational", r["id"], f"{what}: {match.group(0)!r}"))
    return out


def category_review(df: pl.DataFrame, embeddings: np.ndarray, folds: int = 5,
                    seed: int = 0) -> list[Finding]:
    """Rows a cross-validated category classifier places elsewhere, for a person to review.

    Folds group a pair's two rows, so a row is never classified by a model that saw its twin.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold

    labels = df["category"].to_numpy()
    if len(set(labels)) < 2 or min(np.unique(labels, return_counts=True)[1]) < folds:
        return []
    groups = [min(i, p or i) for i, p in zip(df["id"].to_list(), df["pair_id"].to_list())]
    proba = np.zeros((df.height, len(set(labels))))
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    classes = None
    for train, test in split.split(embeddings, labels, groups):
        model = LogisticRegression(C=4.0, max_iter=2000).fit(embeddings[train], labels[train])
        classes = model.classes_
        proba[test] = model.predict_proba(embeddings[test])
    out = []
    for i, (row, label) in enumerate(zip(df["id"].to_list(), labels)):
        best = int(np.argmax(proba[i]))
        if classes[best] != label and proba[i, best] >= REVIEW_CONFIDENCE:
            out.append(Finding("category", row, f"reads as {classes[best]} "
                                                f"({proba[i, best]:.2f}), labelled {label}",
                               level="review"))
    return out


# -- the two labelling passes ----------------------------------------------------------------

def label_agreement(first: pl.DataFrame, second: pl.DataFrame, queries: pl.DataFrame,
                    n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Cohen's kappa between two labelling passes, per field, with bootstrap intervals.

    Args:
        first: ``id``, ``tier``, ``expected`` of the first pass (the authors' labels; a
            benign twin carries its pair's tier).
        second: The same columns from a blind second pass, whose ``tier`` may also be
            ``benign`` (it saw only the text, so it judged the risk too).
        queries: The set (``id``, ``risk``).
        n_boot: Bootstrap resamples of the rows.
        seed: Bootstrap seed.

    Returns:
        One row per field: ``tier`` (high-risk rows), ``risk`` (the second pass's
        benign-or-not against the set's risk) and ``expected`` (every row), with ``n``,
        ``agreement``, ``kappa``, ``kappa_lo`` and ``kappa_hi`` (95%).
    """
    from sklearn.metrics import cohen_kappa_score

    both = (queries.select("id", "risk").join(first.select("id", "tier", "expected"), on="id")
            .join(second.select("id", "tier", "expected"), on="id", suffix="_2"))
    fields = {
        "tier": both.filter(pl.col("risk") == "harmful").select("tier", "tier_2"),
        "risk": both.select("risk", pl.when(pl.col("tier_2") == "benign").then(pl.lit("benign"))
                            .otherwise(pl.lit("harmful")).alias("risk_2")),
        "expected": both.select("expected", "expected_2"),
    }
    rng = np.random.default_rng(seed)
    rows = []
    for field, pair in fields.items():
        a, b = (pair.to_series(i).to_numpy() for i in (0, 1))
        draws = [rng.integers(0, len(a), len(a)) for _ in range(n_boot)]
        boot = [cohen_kappa_score(a[d], b[d]) for d in draws]
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
        rows.append({"field": field, "n": len(a), "agreement": float(np.mean(a == b)),
                     "kappa": float(cohen_kappa_score(a, b)), "kappa_lo": float(lo),
                     "kappa_hi": float(hi)})
    return pl.DataFrame(rows)
