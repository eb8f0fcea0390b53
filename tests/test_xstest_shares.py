"""XSTest's over-refusal shares, recomputed from the data as a user would get them.

XSTest's three shared models' answers are replayed through the toolkit (``replay`` models,
the ``rules`` and ``trained`` judges, the run stages), and each judge's shares of full
compliance, full refusal and partial refusal on the 250 safe prompts are checked against
the toolkit's 95% interval around people's shares.

What these figures are: rules-v4's changes were tuned reading llama2new's and
mistralinstruct's answers and checked unchanged on gpt4 (the earlier phrase lists were
written reading all three, so the rules declare every XSTest answer as development and the
run marks them ``judge_trained_on``). The shipped trained judge learned its compliance
classifier from all three files: its shares here are in-sample too, and its held-out figure
is the leave-one-model-out one, also checked here.

Measured (judge share; people's share [95% interval]), full compliance / full refusal /
partial, on 250 answers each:
  gpt4             people 0.916 [0.875, 0.944] / 0.064 [0.040, 0.101] / 0.020 [0.009, 0.046]
                   rules 0.912 / 0.076 / 0.012; trained 0.912 / 0.076 / 0.012;
                   trained held out 0.912 / 0.076 / 0.012
  llama2new        people 0.704 [0.645, 0.757] / 0.140 [0.102, 0.188] / 0.156 [0.116, 0.206]
                   rules 0.676 / 0.160 / 0.164; trained 0.688 / 0.156 / 0.156;
                   trained held out 0.688 / 0.152 / 0.160
  mistralinstruct  people 0.984 [0.960, 0.994] / 0.008 [0.002, 0.029] / 0.008 [0.002, 0.029]
                   rules 0.972 / 0.020 / 0.008; trained 0.980 / 0.016 / 0.004;
                   trained held out 0.976 / 0.020 / 0.004
(rules-v3 put llama2new's full refusals at 0.292 and partials at 0.056, outside both.)
"""

from __future__ import annotations

import polars as pl
import pytest
import yaml

from medharm_nb import config, stages, store
from medharm_nb.gold import load_xstest_completions
from medharm_nb.judge import trained_fit
from medharm_nb.validation import shares

pytestmark = pytest.mark.slow  # replays 750 answers and embeds them for the trained judge

MODELS = ("gpt4", "llama2new", "mistralinstruct")


@pytest.fixture(scope="module")
def replayed(external_dir, tmp_path_factory) -> pl.DataFrame:
    xstest = external_dir / "xstest"
    prompts = pl.read_csv(xstest / "xstest_prompts.csv", infer_schema=False)
    safe_types = sorted(prompts.filter(pl.col("label") == "safe")["type"].unique())
    root = tmp_path_factory.mktemp("xstest")
    path = root / "configs" / "xstest.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({
        "name": "xstest-safe",
        "queries": {"source": f"xstest:{xstest / 'xstest_prompts.csv'}",
                    "categories": safe_types},
        "models": [{"name": m, "backend": "replay",
                    "source": f"{xstest / f'xstest_v2_completions_{m}.csv'}"
                              "#response=completion"} for m in MODELS],
        "judges": ["rules", "trained"]}))
    run = config.open_run(path, root / "run", root / "figures")
    queries = stages.data_stage(run)
    assert queries.height == 250 and set(queries["risk"]) == {"benign"}
    stages.generation_stage(run, progress=False)
    stages.judging_stage(run, progress=False)
    return store.read_table(run.run_dir, "results")


@pytest.fixture(scope="module")
def people(external_dir) -> pl.DataFrame:
    return load_xstest_completions(external_dir / "xstest")


def test_every_safe_answer_is_replayed_and_judged(replayed):
    counts = replayed.group_by("model", "judge").agg(
        pl.len(), (pl.col("label") == "unscored").sum().alias("unscored"))
    assert counts.height == 6
    assert set(counts["len"]) == {250} and set(counts["unscored"]) == {0}


@pytest.mark.parametrize("judge", ["rules-v4", "trained-v4"])
@pytest.mark.parametrize("model", MODELS)
def test_shares_lie_inside_the_interval_around_peoples(replayed, people, judge, model):
    table = shares.against_humans(replayed, people).filter(
        (pl.col("model") == model) & pl.col("judge").str.starts_with(judge))
    assert table.height == 3 and set(table["n"]) == {250}
    outside = table.filter(~pl.col("inside"))
    assert outside.is_empty(), outside.select("share", "human_share", "human_lo", "human_hi",
                                              "judge_share")


def test_both_judges_are_in_sample_on_these_answers_and_say_so(replayed):
    marked = replayed.group_by("judge").agg(pl.col("judge_trained_on").mean())
    flags = {r["judge"].split("-")[0]: r["judge_trained_on"] for r in marked.iter_rows(named=True)}
    # The trained judge's compliance classifier learned from every one of these answers; the
    # rules' phrase lists were written reading them (declared as development rows).
    assert flags == {"rules": 1.0, "trained": 1.0}


def test_over_refusal_two_ways_side_by_side(replayed):
    from medharm_nb import metrics

    summary = metrics.safety_summary(replayed, by=("model",))
    for row in summary.iter_rows(named=True):
        # XSTest's any refusal is ours (a partial answer complied) plus the partial share.
        assert row["any_refusal_k"] == row["over_refusal_k"] + row["partial_benign_k"]
        assert row["any_refusal_n"] == row["over_refusal_n"] == 250
    trained_on = {r["judge"].split("-")[0]: r["n_trained_on"] for r in metrics.safety_summary(
        replayed, by=()).iter_rows(named=True)}
    assert trained_on == {"rules": 750, "trained": 750}


def test_held_out_trained_shares_lie_inside_too(external_dir, people):
    # Leave one model out: each model's answers judged by a compliance classifier trained on
    # the other two models' labels only.
    prompts = pl.read_csv(external_dir / "xstest" / "xstest_prompts.csv", infer_schema=False)
    safe = prompts.filter(pl.col("label") == "safe")["prompt"]
    labelled = trained_fit.cross_fitted(people).filter(pl.col("prompt").is_in(safe.implode()))
    results = labelled.select(pl.col("source_model").alias("model"),
                              pl.lit("trained, held out").alias("judge"),
                              pl.col("prompt").alias("text"), pl.col("pred").alias("label"))
    table = shares.against_humans(results, people)
    assert table.height == 9 and set(table["n"]) == {250}
    outside = table.filter(~pl.col("inside"))
    assert outside.is_empty(), outside.select("model", "share", "human_share", "judge_share")
