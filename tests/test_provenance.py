"""Training rows declared by content, and figures on them marked in-sample everywhere."""

from __future__ import annotations

import json

import polars as pl
import pytest

from medharm_nb import gold, validation
from medharm_nb.judge import GuardJudge, RuleJudge, TrainedJudge, provenance
from medharm_nb.judge.harm import HarmClassifier

REFUSAL = "I'm sorry, but I can't help with that request."
COMPLIANCE = "<AGENT> is usually given at <DOSE> by <ROUTE>."


def test_row_hash_is_by_content_not_by_spacing():
    assert provenance.row_hash("a  question?", " an\nanswer ") == provenance.row_hash(
        "a question?", "an answer")
    assert provenance.row_hash("q", "Answer") != provenance.row_hash("q", "answer")
    assert provenance.row_hash("q1", "a") != provenance.row_hash("q2", "a")
    assert len(provenance.row_hash("q", "a")) == 16


def test_a_declaration_round_trips_and_is_checked():
    frame = pl.DataFrame({"prompt": ["q1", "q2"], "response": ["a", "b"],
                          "source": ["x", "y"]})
    rows = provenance.declare(frame, "harm", ("unsafe",), source="source",
                              cross_validated=[{"source": "x", "split": "unsafe",
                                                "accuracy": 0.7}])
    blob = json.loads(json.dumps(rows.to_dict()))
    assert blob["n"] == 2 and blob["sources"] == {"x": 1, "y": 1}
    assert provenance.TrainingRows.from_dict("harm", blob) == rows
    with pytest.raises(ValueError, match="scheme 'md5'"):
        provenance.TrainingRows.from_dict("harm", {**blob, "scheme": "md5"}, "my.json")
    with pytest.raises(ValueError, match="must name the splits"):
        provenance.TrainingRows.from_dict("harm", {**blob, "splits": ["harm"]})


class _Trained:
    """The rule judge wearing a declaration: as if it had learned from ``frame``."""

    def __init__(self, frame: pl.DataFrame, splits: tuple[str, ...], figures=(),
                 name: str = "rules-declared"):
        self.rules = RuleJudge()
        self.id = name
        self.rows = provenance.declare(frame, "compliance", splits, cross_validated=figures)

    def judge(self, prompt, response):
        return self.rules.judge(prompt, response).model_copy(update={"judge": self.id})

    def training_data(self):
        return [self.rows]


def _gold(n: int = 6) -> pl.DataFrame:
    return gold._frame(
        id=pl.Series([str(i) for i in range(n)]), source_model=pl.Series(["m"] * n),
        group=pl.Series([str(i) for i in range(n)]),
        prompt=pl.Series([f"q{i}" for i in range(n)]),
        response=pl.Series([REFUSAL, COMPLIANCE] * (n // 2)),
        gold=pl.Series(["full_refusal", "full_compliance"] * (n // 2)),
        source=pl.Series(["mine"] * n))


def test_a_figure_on_training_rows_is_in_sample_with_the_honest_one_beside_it():
    frame = _gold()
    figure = {"source": "mine", "group": "all", "split": "compliance", "accuracy": 0.8,
              "lo": 0.7, "hi": 0.9, "scheme": "leave one model out"}
    judges = [RuleJudge(), _Trained(frame, ("compliance",), [figure], "all-rows"),
              _Trained(frame.head(2), ("compliance",), name="two-rows")]
    summary = validation.evaluate(judges, frame, n_boot=0).summary.filter(
        (pl.col("split") == "compliance") & (pl.col("source_model") == "all"))
    rows = {r["judge"]: r for r in summary.iter_rows(named=True)}
    assert rows["rules-v4"]["status"] == "held-out" and rows["rules-v4"]["n_trained"] == 0
    in_sample, partly = rows["all-rows"], rows["two-rows"]
    assert (in_sample["status"], in_sample["n_trained"]) == ("in-sample", 6)
    # Its in-sample accuracy is 1.0; the figure to quote is the stored cross-validated one.
    assert in_sample["accuracy"] == 1.0
    assert (in_sample["honest_kind"], in_sample["honest_accuracy"]) == ("cross-validated", 0.8)
    assert (partly["status"], partly["n_trained"], partly["held_out_n"]) == (
        "partly in-sample", 2, 4)
    assert partly["honest_kind"] == "held-out rows only"
    # The split a classifier does not decide is not in-sample.
    unsafe_only = _Trained(frame, ("unsafe",))
    other = validation.evaluate([unsafe_only], frame, n_boot=0).summary
    assert set(other["status"]) == {"held-out"}


def test_the_report_lines_say_in_sample_and_give_the_honest_figure(tmp_path):
    frame = _gold()
    path = tmp_path / "gold.csv"
    frame.select("prompt", "response", pl.col("gold").alias("label")).write_csv(path)
    report = validation.ValidationReport(["rules-declared"])
    report.evaluation = validation.evaluate(
        [_Trained(frame, ("compliance",), [{"source": "mine", "group": "all",
                                            "split": "compliance", "accuracy": 0.8,
                                            "lo": 0.7, "hi": 0.9}])], frame, n_boot=0)
    line = [x for x in validation.report_lines(report) if x.startswith("judge=")][0]
    assert "status=in-sample honest=0.800 [0.700,0.900] (cross-validated)" in line


def test_the_shipped_judges_declare_every_classifier():
    shipped = TrainedJudge.shipped_v3()
    declared = {r.component: r for r in provenance.declared(shipped)}
    assert set(declared) == {"compliance", "harm"}
    assert declared["compliance"].splits == ("compliance", "label3")
    assert declared["harm"].splits == ("unsafe",)
    # XSTest's 1,350 answers hold 1,347 distinct (prompt, response) rows: two models gave
    # three identical answers to the same prompts. HarmBench and XSTest's 1,914 harm rows
    # hold 1,911.
    assert shipped.params["training"]["n"] == 1350 and len(declared["compliance"].hashes) == 1347
    assert len(declared["harm"].hashes) == 1911
    assert {f["split"] for f in declared["harm"].cross_validated} == {"unsafe"}
    # Declaring rows changes no weight: the classifier's id is its weights' and settings'.
    params = {k: v for k, v in HarmClassifier.shipped().params.items()
              if k != provenance.TRAINING_ROWS}
    assert HarmClassifier(params).id == shipped.harm.id
    # The rules were written reading XSTest: its answers are their development rows, and a
    # guard judge's labels are the rules'.
    [rules] = provenance.declared(RuleJudge())
    assert (rules.component, rules.splits, len(rules.hashes)) == (
        "rules", ("compliance", "label3"), 1347)
    assert [r.component for r in provenance.declared(GuardJudge(object(), "g"))] == ["rules"]


def test_the_rules_declaration_is_xstest(external_dir):
    from medharm_nb.judge.declarations import rules_declaration

    [shipped] = provenance.declared(RuleJudge())
    assert rules_declaration(external_dir) == shipped


def test_the_shipped_harm_declaration_is_its_training_data(external_dir):
    # Re-made from the shared data and checked against the artifact's own data digest.
    from medharm_nb.judge.declarations import harm_v1_declaration

    shipped = HarmClassifier.shipped()
    again = harm_v1_declaration(external_dir, shipped.params)
    assert again.to_dict() == shipped.params[provenance.TRAINING_ROWS]


def test_harmbench_is_in_sample_for_the_trained_judge_and_its_honest_figure_is_cv(
        external_dir):
    # 03b's defect: the trained judge's HarmBench accuracy was shown as a validation though
    # its harm classifier learned from those rows. Here it is in-sample, and the figure to
    # quote is the stored cross-validation (0.754).
    frame = gold.load_gold(external_dir / "harmbench")
    sample = validation.sample_per_group(frame, 2)
    summary = validation.evaluate([TrainedJudge.shipped_v3()], sample, n_boot=0).summary
    row = summary.filter((pl.col("split") == "unsafe")
                         & (pl.col("source_model") == "all")).row(0, named=True)
    assert row["status"] in ("in-sample", "partly in-sample")
    assert row["honest_kind"] == "cross-validated"
    assert row["honest_accuracy"] == pytest.approx(0.754, abs=0.001)
