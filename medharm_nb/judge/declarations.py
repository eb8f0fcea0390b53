"""Training-row declarations for artifacts made before they declared them, and for the rules.

The rule judge has no training rows, but its phrase lists were written reading XSTest's
1,350 labelled answers: ``rules_declaration`` declares them as its development rows
(``assets/rules_development_rows.json``), so its XSTest figures are marked in-sample like
any trained judge's. The harm classifier ``harm_judge_v1.json`` was trained before artifacts
declared their training rows (``judge.provenance``). Its rows are re-made here exactly as
``harm_train`` made them, checked against the SHA-256 of the training data the artifact stores, and
declared with the cross-validated figures it stores; ``declare_harm_v1`` writes them into the
artifact (its weights, and so its id, are untouched). Re-run it only to re-make the shipped
declaration::

    PYTHONPATH=. python -c "from medharm_nb.judge.declarations import declare_harm_v1; \\
        declare_harm_v1('../shared/external')"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from medharm_nb.judge import provenance
from medharm_nb.judge.base import check_response
from medharm_nb.judge.gold import load_harmbench, load_xstest_completions, load_xstest_harm
from medharm_nb.judge.harm import (
    HarmClassifier,
    data_sha256,
    scorable,
    shipped_path,
    training_frame,
)

HARM_SPLITS: tuple[str, ...] = ("unsafe",)
"""The validation split the harm classifier's verdict decides."""


def harm_v1_rows(external: str | Path) -> pl.DataFrame:
    """The harm classifier's training rows, re-made as ``harm_train.train_harm`` made them
    (HarmBench and XSTest read as harm labels; rows it cannot read left out, responses
    stripped)."""
    external = Path(external)
    hb = load_harmbench(external / "harmbench").rename({"gold_unsafe": "unsafe"})
    xs = load_xstest_harm(external / "xstest").rename({"gold_unsafe": "unsafe"})
    frame = training_frame(hb, xs)
    return frame.filter(pl.Series(scorable(frame["response"].to_list()))).with_columns(
        pl.col("response").map_elements(lambda r: check_response(r).text,
                                        return_dtype=pl.String))


def harm_v1_figures(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The held-out HarmBench figures a harm-v1 artifact stores (its nested, grouped
    cross-validation at its own gate setting), in the declaration's form."""
    report = params.get("validation") or {}
    stored = report.get("gate" if params.get("gate") else "nogate")
    if not stored:
        return []
    scheme = report.get("scheme", "cross-validation")
    out = [{"source": "harmbench", "group": "all", "split": "unsafe", "metric": "accuracy",
            "accuracy": stored["accuracy"], "lo": stored.get("lo"), "hi": stored.get("hi"),
            "n": stored.get("n"), "scheme": scheme}]
    out += [{"source": "harmbench", "group": row["source_model"], "split": "unsafe",
             "metric": "accuracy", "accuracy": row["accuracy"], "n": row.get("n"),
             "scheme": scheme} for row in stored.get("by_source_model", [])]
    return out


def harm_v1_declaration(external: str | Path,
                        params: dict[str, Any] | None = None) -> provenance.TrainingRows:
    """The harm classifier's declaration, checked against the artifact's data digest.

    Raises:
        ValueError: the re-made rows are not the ones the artifact was trained on.
    """
    params = params if params is not None else HarmClassifier.shipped().params
    rows = harm_v1_rows(external)
    digest = data_sha256(rows)
    if digest != params["training"]["data_sha256"]:
        raise ValueError(f"the re-made harm training rows hash to {digest[:12]}..., the "
                         f"artifact was trained on {params['training']['data_sha256'][:12]}...: "
                         "the shared data or the recipe changed")
    return provenance.declare(rows, "harm", HARM_SPLITS, source="source",
                              cross_validated=harm_v1_figures(params))


def declare_harm_v1(external: str | Path, path: str | Path | None = None) -> Path:
    """Write the declaration into a harm-v1 artifact (default: the shipped one)."""
    path = Path(path) if path is not None else shipped_path()
    params = json.loads(path.read_text(encoding="utf-8"))
    params[provenance.TRAINING_ROWS] = harm_v1_declaration(external, params).to_dict()
    path.write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    return path


RULES_ROWS = "rules_development_rows.json"
"""The rule judge's declared development rows, in ``medharm_nb/assets``."""


def rules_declaration(external: str | Path) -> provenance.TrainingRows:
    """The rows the rule judge's phrase lists and thresholds were written reading: all of
    XSTest v2's labelled answers (rules-v1 to -v3 read all three files; rules-v4's changes
    were tuned on two and checked on GPT-4's, which the docs report as held out)."""
    frame = load_xstest_completions(Path(external) / "xstest")
    return provenance.declare(frame, "rules", ("compliance", "label3"), source="source")


def declare_rules(external: str | Path, path: str | Path | None = None) -> Path:
    """Write the rule judge's declaration (default: the shipped asset)."""
    path = Path(path) if path is not None else rules_rows_path()
    path.write_text(json.dumps(rules_declaration(external).to_dict(), indent=1) + "\n",
                    encoding="utf-8")
    return path


def rules_rows_path() -> Path:
    """Where the rule judge's declaration ships: ``medharm_nb/assets``."""
    return Path(__file__).resolve().parents[1] / "assets" / RULES_ROWS
