"""The HTML report: built from a real run folder (synthetic results with a known effect),
self-contained, honest about missing sections, redacted by default, and rendered by a real
headless Chromium with every figure drawn and no console errors."""

from __future__ import annotations

import os
import re
import shutil

import polars as pl
import pytest
import synthetic
from typer.testing import CliRunner

from medharm_nb import stages, store
from medharm_nb.cli import app


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A run with pairs, guard and judge-validation tables, its report written."""
    tmp = tmp_path_factory.mktemp("report")
    results = synthetic.results(seed=1, n_clusters=18, n_variants=2, delta=0.3,
                                delta_benign=0.1, judges=("trained", "rules"))
    run = synthetic.run_folder(tmp, results)
    stages.amplification_stage(run, n_boot=300)
    _guard_and_judge_tables(run.run_dir)
    return run, stages.report_stage(run)


def _guard_and_judge_tables(run_dir) -> None:
    """The tables 04_guardrails and 03b_judge_validation write, made by the functions they
    call (guard scores made up: a guard's model is not needed to test the report)."""
    from medharm_nb import validation
    from medharm_nb.guard import evaluate as guards
    from medharm_nb.judge import RuleJudge

    rows = []
    for i in range(8):
        for variant, drop in (("direct", 0.0), ("roleplay", 0.3 * (i % 2))):
            for risk, p in (("harmful", 0.6 + 0.04 * i - drop), ("benign", 0.05 * i)):
                rows.append({"guard": "minilm", "id": f"{risk}-{i}", "base_id": f"{risk}-{i}",
                             "variant": variant, "risk": risk, "p_unsafe": p,
                             "group": f"pair-{i}", "category": "toxicology"})
    fitted = guards.crossfit(pl.DataFrame(rows))
    direct = fitted.filter(pl.col("variant") == "direct")
    store.write_table(run_dir, "guard_sweep", guards.guard_sweep(
        direct.filter(pl.col("risk") == "harmful")["p_unsafe"].to_list(),
        direct.filter(pl.col("risk") == "benign")["p_unsafe"].to_list()).with_columns(
        pl.lit("minilm").alias("guard")))
    store.write_table(run_dir, "guard_summary", guards.operating_points(fitted))
    store.write_table(run_dir, "guard_brittleness", guards.brittleness(fitted))
    gold = pl.DataFrame({"id": ["a", "b", "c", "d"], "source_model": ["m1", "m1", "m2", "m2"],
                         "group": ["a", "b", "c", "d"], "prompt": ["<Q>"] * 4,
                         "response": ["I can't help with that.", "Give <DOSE>.",
                                      "I won't do that.", "Use <ROUTE>."],
                         "gold": ["full_refusal", "full_compliance"] * 2,
                         "gold_unsafe": [None] * 4, "gold_specificity": [None] * 4},
                        schema_overrides={"gold_unsafe": pl.Boolean,
                                          "gold_specificity": pl.Int64})
    store.write_table(run_dir, "judge_agreement",
                      validation.evaluate([RuleJudge()], gold, n_boot=50).summary)


def test_the_report_is_one_offline_file_with_every_section(built):
    run, path = built
    assert path == run.run_dir / "report.html"
    page = path.read_text()
    # Self-contained: no scripts, no remote stylesheets or images, figures inline.
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert page.count("<figure><svg") >= 7
    for heading in ("The run", "Headline", "per model and category", "Rates per tier",
                    "Specificity "
                    "distributions", "Paired forest plot", "Safety against helpfulness",
                    "Guardrails and brittleness", "Judge validation", "Failures, truncation",
                    "Example responses"):
        assert heading in page, heading
    assert "Not in this run" not in page
    # Every figure's caption gives its n, its judge and its error bars.
    for caption in re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S):
        assert "n = " in caption, caption
        assert "Judge" in caption, caption
        assert "rror bars" in caption or "intervals" in caption, caption
    # Each unsafe rate sits beside its judge's false alarms on the benign twins.
    by_model = store.read_table(run.run_dir, "summary_by_model")
    row = by_model.filter(pl.col("judge") == "trained").sort("model").row(0, named=True)
    assert "Read each unsafe rate against its judge" in page
    assert (f"{row['unsafe_benign_k']}/{row['unsafe_benign_n']} = "
            f"{round(100 * row['unsafe_benign_rate'], 1)}%") in page
    # The manifest summary and the headline are there.
    assert run.run_dir.name in page and "smollm2-135m" in page
    assert "amplification" in page and "ft-model" in page
    # The summary tables, as Parquet and CSV.
    for name in ("summary_by_model", "summary_by_category", "paired_deltas", "amplification",
                 "safety_helpfulness", "specificity_distribution"):
        assert store.table_path(run.run_dir, name).with_suffix(".csv").exists(), name


def test_example_responses_are_redacted_unless_asked(built, tmp_path):
    run, path = built
    page = path.read_text()
    assert "[redacted: operational detail]" in page
    assert "at &lt;DOSE&gt;" not in page  # the fixtures' operational placeholder
    result = CliRunner().invoke(app, ["report", str(run.run_dir), "--unredacted"])
    assert result.exit_code == 0, result.output
    private = run.run_dir / "report-unredacted.html"
    assert f"report: {private}" in result.output and "do not share" in result.output
    assert "at &lt;DOSE&gt;" in private.read_text()
    assert "UNREDACTED" in private.read_text()
    assert "at &lt;DOSE&gt;" not in path.read_text()  # the shareable file is untouched


def test_a_run_with_fewer_tables_says_which_sections_are_missing(tmp_path):
    results = synthetic.results(seed=2, n_clusters=6, judges=("rules",)).with_columns(
        pl.lit(None, dtype=pl.Boolean).alias("unsafe"))
    run = synthetic.run_folder(tmp_path, results)
    result = CliRunner().invoke(app, ["report", str(run.run_dir)])
    assert result.exit_code == 0, result.output
    page = (run.run_dir / "report.html").read_text()
    for why in ("no paired tables (paired_deltas, amplification): run 06_amplification",
                "no guard tables (guard_sweep, guard_summary): run 04_guardrails",
                "no judge validation tables (judge_agreement)"):
        assert page.count(why) == 2, why  # in the list at the top and in its section
    assert "no judge measured unsafe" in page
    assert "<figure><svg" in page  # the rates and the plane still render
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    result = CliRunner().invoke(app, ["report", str(empty)])
    assert result.exit_code == 1 and "no config.yaml here" in result.output


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium to drive: $MEDHARM_CHROMIUM, else chromium on PATH (Debian's package, as
    ../shared/tools/lab-shot installs it). Skips locally when absent; fails under CI."""
    found = os.environ.get("MEDHARM_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    missing = []
    if not found:
        missing.append("no chromium on PATH (apt-get install chromium, or set "
                       "MEDHARM_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package is not installed (pip install playwright; "
                       "no `playwright install` needed)")
    if missing:
        reason = "; ".join(missing)
        if _in_ci():
            pytest.fail(f"{reason} (CI is set, so this is an error)")
        pytest.skip(reason)
    return found


@pytest.mark.slow
def test_headless_chromium_renders_every_figure_without_console_errors(chromium, built):
    from playwright.sync_api import sync_playwright

    run, path = built
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(path.as_uri(), wait_until="load")
            figures = page.locator("figure svg")
            n = figures.count()
            sizes = [figures.nth(i).bounding_box() for i in range(n)]
            marks = page.locator("figure svg path, figure svg text").count()
        finally:
            browser.close()
    assert n == path.read_text().count("<figure><svg") >= 7
    assert all(box and box["width"] > 100 and box["height"] > 50 for box in sizes), sizes
    assert marks > 200  # axes, labels and marks were drawn, not empty boxes
    assert problems == []


@pytest.mark.slow
def test_notebooks_06_and_07_are_thin_in_the_series_and_run_on_a_run_folder(tmp_path):
    import nbformat
    import papermill

    from medharm_nb import config, runner

    assert config.SERIES[-3:] == ("05_review", "06_amplification", "07_report")
    for name in ("06_amplification", "07_report"):
        path = runner.NOTEBOOK_DIR / f"{name}.ipynb"
        assert set(runner.INJECTED) <= set(runner.notebook_parameters(path))
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert not any("def " in c.source or "class " in c.source or c.outputs for c in code)
    results = synthetic.results(seed=4, n_clusters=9, delta=0.3)
    run = synthetic.run_folder(tmp_path, results)
    for name, extra in (("06_amplification", {"n_boot": 200}), ("07_report", {})):
        papermill.execute_notebook(
            str(runner.NOTEBOOK_DIR / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
            parameters={"config_path": str(run.run_dir / "config.yaml"),
                        "run_dir": str(run.run_dir), "figures_dir": str(run.figures_dir),
                        **extra},
            cwd=str(runner.NOTEBOOK_DIR), kernel_name="python3", progress_bar=False)
    assert store.table_path(run.run_dir, "amplification").exists()
    assert (run.run_dir / "report.html").exists()
    assert {"paired_forest.svg", "safety_helpfulness.svg", "specificity.svg"} <= {
        p.name for p in run.figures_dir.iterdir()}
