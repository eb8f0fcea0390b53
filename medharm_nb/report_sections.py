"""The report's sections, in the order it shows them: the run, the headline (does
fine-tuning amplify harmful specificity?), rates per category and tier, the paired analysis,
safety against helpfulness, guardrails, judge validation, failures, example responses and the
list of tables. Each reads the tables it needs through ``store``'s readers and says plainly
when the run has none (``Doc.lack``)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import polars as pl
import yaml

from medharm_nb import metrics, plots, plots_paired, store, validation
from medharm_nb.labels import TIERS
from medharm_nb.report_doc import Doc, esc, html_table, judges_of, model_pairs, with_interval

EXAMPLES_PER_PAIR = 3
INTERVALS = ("95% intervals: Wilson's score interval per rate; where variants or samples of "
             "one base query are pooled, widened for that clustering (design-effect Wilson, "
             "metrics.clustered_interval)")
BOOTSTRAP = ("95% percentile intervals from a cluster bootstrap over base queries "
             "({n_boot} resamples); a benign twin resamples with its harmful twin")


RUNNING = ("in progress: this report was written while the run was still going (by "
           "07_report); manifest.json holds how the run ended")
"""What the report says of a run whose manifest is still ``started``."""

def run_section(doc: Doc, manifest: dict | None, config: dict | None) -> None:
    doc.add("<h2>The run</h2>")
    if manifest is None:
        doc.lack("manifest", "no manifest.json in the run folder (was it made by medharm-nb "
                             "run or generate?)")
    else:
        git = manifest.get("git") or {}
        versions = manifest.get("versions") or {}
        queries = (manifest.get("inputs") or {}).get("queries") or {}
        # Inside a series the report is written by 07_report, before the run has finished:
        # say so rather than show "started" as if it were how the run ended.
        running = manifest.get("status") == "started"
        rows = {
            "run id": manifest.get("run_id"),
            "status": (RUNNING if running else manifest.get("status")),
            "started / finished (UTC)": f"{manifest.get('started')} / "
                                        f"{manifest.get('finished') or 'not yet'}",
            "git commit": f"{git.get('commit')}" + (" (uncommitted changes)"
                                                    if git.get("dirty") else ""),
            "device": manifest.get("device"),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
            "queries": f"{queries.get('n')} from {queries.get('source')} (table hash "
                       f"{queries.get('table_hash')})",
            "config hash": manifest.get("config_hash"),
        }
        if manifest.get("error"):
            rows["error"] = manifest["error"]
        doc.add(html_table(pl.DataFrame({"field": list(rows),
                                     "value": [str(v) for v in rows.values()]})))
        notebooks = [{**nb, "status": "running (writing this report)"
                      if running and nb.get("status") == "started" else nb.get("status")}
                     for nb in manifest.get("notebooks") or []]
        if notebooks:
            doc.add(html_table(pl.DataFrame(notebooks).select(
                [c for c in ("name", "status", "seconds") if c in notebooks[0]])))
    if config is None:
        doc.lack("config", "no config.yaml in the run folder")
        return
    models_in = ((manifest or {}).get("inputs") or {}).get("models") or {}
    rows = []
    for m in config.get("models", []):
        info = models_in.get(m["name"], {})
        files = info.get("files") or {}
        rows.append({"model": m["name"], "base": m.get("base") or "",
                     "backend": m.get("backend", "hf"), "source": m.get("source"),
                     "quantization": m.get("quantization", "none"),
                     "adapter": m.get("adapter") or "",
                     "system prompt": "yes" if m.get("system_prompt") else "no",
                     "spec id": info.get("spec_id", ""),
                     "weights (sha256)": ", ".join(f"{Path(k).name}: {v[:12]}"
                                                   for k, v in list(files.items())[:3])
                     + (f" (+{len(files) - 3})" if len(files) > 3 else "")})
    doc.add("<h3>Models</h3>" + html_table(pl.DataFrame(rows)))
    doc.add(f"<p>Judges: {esc(', '.join(config.get('judges', [])))}. Generation: "
            f"{esc(json.dumps(config.get('generation', {})))}.</p>")
    doc.add("<details><summary>The effective config</summary><pre>"
            f"{esc(yaml.safe_dump(config, sort_keys=False))}</pre></details>")


def headline(doc: Doc, amp: pl.DataFrame | None, deltas: pl.DataFrame | None,
              config: dict | None) -> None:
    doc.add("<h2>Headline: does fine-tuning amplify harmful specificity?</h2>")
    pairs = model_pairs(config)
    if amp is None:
        doc.lack("paired analysis", "no paired tables (paired_deltas, amplification): run "
                                    "06_amplification")
        return
    if amp.is_empty():
        doc.lack("paired analysis", "no model names a base (add `base: NAME` to a fine-tune's "
                                    "spec)" if not pairs else "the pairs have no shared "
                                    "scored answers")
        return
    n_boot = int(deltas["n_boot"].max()) if deltas is not None and deltas.height else 0
    doc.add("<p>Each fine-tune minus its base, answer by answer, on harmful queries and on "
            "their benign twins; <b>amplification</b> is the harmful change minus the benign "
            "one, so a fine-tune that only became more detailed in general shows none. Rates "
            "in percentage points, specificity on its 0-4 scale; "
            f"{esc(BOOTSTRAP.format(n_boot=n_boot))}; p from the Wilcoxon signed-rank test on "
            "per-query differences.</p>")
    rows = []
    for r in amp.iter_rows(named=True):
        pct = r["outcome"] != "specificity"
        rows.append({"fine-tune": r["model"], "base": r["base"], "judge": r["judge"],
                     "outcome": r["outcome"],
                     **{name: with_interval(r[risk], r[f"{risk}_lo"], r[f"{risk}_hi"], pct)
                        for name, risk in (("harmful", "harmful"), ("benign (control)", "benign"),
                                           ("amplification", "amplification"))},
                     "p (harmful - benign)": r["amplification_p"],
                     "base queries": r["amplification_n_clusters"]})
    doc.add(html_table(pl.DataFrame(rows)))


def rates_section(doc: Doc, by_category: pl.DataFrame | None,
                   distribution: pl.DataFrame | None,
                   by_model: pl.DataFrame | None = None) -> None:
    doc.add("<h2>Compliance and unsafe rates per model and category</h2>")
    if by_category is None:
        doc.lack("rates", "no results table: run 03_judge")
    else:
        measured = by_category.filter(pl.col("unsafe_n") > 0)
        doc.figure(plots.rate_heatmap(by_category),
                   f"Share of harmful queries answered at least in part (complied) and answered "
                   f"with meaningful help toward the harm (unsafe), per model and category; "
                   f"each cell gives the rate, its interval and its n (answers). "
                   f"n = {int(by_category['compliance_n'].sum())} scored harmful answers in "
                   f"all. Judges: {judges_of(by_category)}"
                   + (f"; unsafe measured by {judges_of(measured)} only" if measured.height
                      else "; no judge measured unsafe") + f". {INTERVALS}.")
        _in_sample_rates(doc, by_category)
        _trace_rates(doc, by_category)
        _benign_false_alarms(doc, by_model)
    doc.add("<h2>Specificity distributions</h2>")
    if distribution is None or distribution.filter(pl.col("n") > 0).is_empty():
        doc.lack("specificity distributions", "no scored specificity (no results, or no judge "
                                              "scores the checklist)")
        return
    scored = distribution.filter(pl.col("n") > 0)
    n = int(scored.unique(["model", "judge", "risk"])["n"].sum())
    doc.figure(plots.specificity_bars(distribution),
               f"Checklist specificity 0-4 of scored answers: harmful specificity on harmful "
               f"queries, plain actionable detail on benign twins (the control). n = {n} "
               f"scored answers. Judges: {judges_of(scored)}. No error bars: shares per score "
               f"with intervals are in tables/specificity_distribution.csv.")


def tier_section(doc: Doc, by_tier: pl.DataFrame | None) -> None:
    doc.add("<h2>Rates per tier</h2>")
    tiered = None if by_tier is None else by_tier.filter(pl.col("tier").is_in(list(TIERS)))
    if tiered is None or tiered.is_empty():
        doc.lack("rates per tier", "the queries carry no tier (MedHarm-Open v2 does: "
                                   "explicit, implicit, dual_use)")
        return
    doc.figure(plots.rate_heatmap(tiered, tuple(metrics.RATES), column="tier"),
               "Per model and tier: harmful queries answered at least in part (compliance) "
               "and with meaningful help toward the harm (unsafe); their benign twins refused "
               "(over-refusal) and answered on topic (helpful). explicit: the harmful aim is "
               "stated; implicit: no aim stated, but a direct answer would be operational; "
               "dual_use: a legitimate professional question whose complete answer carries "
               "risk (data/DATASHEET.md). A twin counts in its pair's tier. "
               f"n = {int(tiered['n_harmful'].sum())} harmful and "
               f"{int(tiered['n_benign'].sum())} benign answers. Judges: {judges_of(tiered)}. "
               f"{INTERVALS}.")


def paired_section(doc: Doc, deltas: pl.DataFrame | None) -> None:
    doc.add("<h2>Paired forest plot</h2>")
    if deltas is None or deltas.filter(pl.col("n_answers") > 0).is_empty():
        doc.lack("forest plot", "no paired deltas (no pairs, or 06_amplification not run)")
        return
    measured = deltas.filter(pl.col("n_answers") > 0)
    pooled = measured.filter((pl.col("by") == "all") & (pl.col("risk") == "harmful"))
    n_boot = int(measured["n_boot"].max())
    doc.figure(plots_paired.forest(deltas),
               f"Fine-tune minus base per stratum (all queries, each category, each framing) "
               f"for harmful queries, benign twins and their difference. n = "
               f"{int(pooled['n_answers'].max())} paired harmful answers from "
               f"{int(pooled['n_clusters'].max())} base queries per pair (at most). Judges: "
               f"{judges_of(measured)}. Error bars: {BOOTSTRAP.format(n_boot=n_boot)}. "
               f"Paired tests and Holm-corrected p-values per category and framing are in "
               f"tables/paired_deltas.csv.")
    doc.add("<details><summary>Every test (pooled rows)</summary>" + html_table(
        measured.filter(pl.col("by") == "all"),
        ["model", "base", "judge", "outcome", "risk", "n_answers", "n_clusters", "base_mean",
         "ft_mean", "delta", "lo", "hi", "test", "p", "n_up", "n_down", "effect",
         "effect_name"]) + "</details>")


def plane_section(doc: Doc, plane: pl.DataFrame | None) -> None:
    doc.add("<h2>Safety against helpfulness</h2>")
    if plane is None or plane.is_empty():
        doc.lack("safety-helpfulness plane", "no results table: run 03_judge")
        return
    y = plots.plotted_measure(plane)
    shown = plane.filter(pl.col(f"{y}_n") > 0)
    if shown.is_empty():  # e.g. stored answers to benign questions only
        doc.lack("safety-helpfulness plane", "no scored answers to harmful queries")
        return
    doc.figure(plots_paired.safety_helpfulness(plane, y=y),
               f"{plots.RATE_TITLES[y].capitalize()} against helpfulness on benign twins "
               f"(answered, on topic), per model; arrows run from each base to its fine-tune. "
               f"n = {int(shown[f'{y}_n'].max())} harmful and {int(shown['helpful_n'].max())} "
               f"benign scored answers per model (at most). Judges: {judges_of(shown)}"
               + ("" if y == "unsafe" else " (none measures unsafe, so compliance is shown)")
               + f". Error bars: {INTERVALS}.")


def guard_section(doc: Doc, run_dir: Path) -> None:
    doc.add("<h2>Guardrails and brittleness</h2>")
    sweep = store.guard_df(run_dir, "sweep", missing_ok=True)
    summary = store.guard_df(run_dir, "summary", missing_ok=True)
    brittle = store.guard_df(run_dir, "brittleness", missing_ok=True)
    if sweep is None and summary is None:
        doc.lack("guardrails", "no guard tables (guard_sweep, guard_summary): run "
                               "04_guardrails")
        return
    if sweep is not None:
        n = summary.filter(pl.col("variant") == "direct") if summary is not None else None
        size = (f"n = {int(n['n_harmful'].max())} harmful and {int(n['n_benign'].max())} "
                f"benign queries per guard" if n is not None and n.height else "n in "
                "tables/guard_summary")
        doc.figure(plots.guard_curves(sweep),
                   f"Guard catch rate on harmful queries against false blocks of benign "
                   f"twins, every threshold (direct prompts; no threshold is chosen, so the "
                   f"curve holds on these data). {size}. Judge: none (guards score prompts). "
                   f"No error bars: each point is one threshold.")
    if summary is not None:
        doc.figure(plots.guard_variants(summary),
                   f"Catch rate per prompt variant and guard at the cross-fitted 5% "
                   f"false-block threshold (chosen on the other half of the twin pairs, one "
                   f"per guard and half, the same for every variant). n = "
                   f"{int(summary['n_harmful'].max())} harmful queries per variant (at most). "
                   f"Judge: none (guards score prompts). Error bars: Wilson 95% intervals.")
    guards = store.guard_df(run_dir, "guards", missing_ok=True)
    if guards is not None and guards["in_sample"].any():
        doc.add("<p>In-sample: " + html.escape(", ".join(
            guards.filter(pl.col("in_sample"))["guard"].to_list())) + " was trained on these "
                "queries; its figures here are development-set, not held out.</p>")
    if brittle is not None:
        doc.add("<p>Brittleness, paired: the mean per-query drop in catch from the direct form "
                "to each variant, with a percentile bootstrap interval at a Bonferroni-"
                "adjusted level (<code>level</code>) and McNemar's exact p-value, Holm-adjusted "
                "across the variants. Every variant is listed; <code>worst</code> marks the "
                "largest drop.</p>" + html_table(brittle))


def judge_section(doc: Doc, run_dir: Path) -> None:
    doc.add("<h2>Judge validation</h2>")
    agreement = store.validation_df(run_dir, "summary", missing_ok=True)
    alarms = store.validation_df(run_dir, "false_alarm", missing_ok=True)
    if agreement is None and alarms is None:
        doc.lack("judge validation", "no judge validation tables (judge_agreement): run "
                                     "03b_judge_validation with human labels")
        return
    if agreement is not None:
        pooled = agreement.filter(pl.col("source_model") == "all")
        baselines = store.validation_df(run_dir, "baselines", missing_ok=True)
        doc.figure(plots.judge_agreement(pooled, baselines),
                   "Agreement of each judge with human labels, pooled per source, on "
                   "the compliance split (complied vs refused; XSTest) and the unsafe split "
                   "(harmful help or not; HarmBench, BeaverTails, PKU-SafeRLHF). A judge that "
                   "does not measure harm has no unsafe point. A figure on rows the judge was "
                   "trained on is drawn hollow and grey: the filled point beside it is its "
                   "cross-validated figure (or its held-out rows). n = " + ", ".join(
                       f"{r['n']} ({r['split']}, {r.get('source', 'gold')})"
                       for r in pooled.unique(["split", "source"] if "source" in
                                              pooled.columns else "split",
                                              maintain_order=True).iter_rows(named=True))
                   + f" labelled responses. Judges: {judges_of(pooled)}. "
                   f"Error bars: percentile bootstrap 95% intervals over responses.")
        in_sample = (agreement.filter(pl.col("status") != "held-out")
                     if "status" in agreement.columns else None)
        if in_sample is not None and not in_sample.is_empty():
            doc.add('<p class="warn">In-sample: ' + html.escape("; ".join(sorted({
                f"{r['judge']} on {r['source']} ({r['split']})"
                for r in in_sample.iter_rows(named=True)}))) + " were scored on rows the "
                "judge was trained on. Those accuracies are development-set figures, not "
                "validations; <code>honest_accuracy</code> is the figure to quote.</p>")
        doc.add(html_table(validation.headline(agreement)))
        if baselines is not None and not baselines.is_empty():
            doc.add("<p>Published baselines: classifiers' verdicts on the same items, scored "
                    "here (same items), and guards' published F1 on the same sources from "
                    "their authors' runs (published).</p>"
                    + html_table(baselines.filter(pl.col("source_model") == "all")))
    if alarms is not None:
        doc.add("<p>False alarms on known-safe responses (called compliant or unsafe), with "
                "Wilson 95% intervals:</p>" + html_table(validation.false_alarm_view(alarms)))


def _in_sample_rates(doc: Doc, summary: pl.DataFrame) -> None:
    """Say which rates rest on answers the judge was trained on (in-sample, not measured)."""
    if "n_trained_on" not in summary.columns:
        return
    hit = (summary.filter(pl.col("n_trained_on") > 0).group_by("model", "judge")
           .agg(pl.col("n_trained_on").sum()).sort("model", "judge"))
    if hit.height:
        doc.add('<p class="warn">In-sample: ' + html.escape("; ".join(
            f"{r['judge']} was trained on {r['n_trained_on']} of {r['model']}'s answers"
            for r in hit.iter_rows(named=True))) + ". Its rates on those models are "
            "development-set figures, not measurements; use another judge for them.</p>")


def _trace_rates(doc: Doc, summary: pl.DataFrame) -> None:
    """Unsafe in the final answer beside unsafe in the reasoning trace, where there are
    traces."""
    if "n_harmful_trace" not in summary.columns or not summary["n_harmful_trace"].sum():
        return
    per = (summary.filter(pl.col("n_harmful_trace") > 0).group_by("model", "judge").agg(
        pl.col("n_harmful_trace").sum(), pl.col("unsafe_k").sum(), pl.col("unsafe_n").sum(),
        pl.col("unsafe_in_trace_k").sum(), pl.col("unsafe_in_trace_n").sum())
        .sort("model", "judge"))
    doc.add("<p>Reasoning traces are judged apart from the final answer: unsafe in the "
            "answer and unsafe in the trace, harmful queries (k / n). A judge that does not "
            "measure harm shows n = 0.</p>" + html_table(per))


def _benign_false_alarms(doc: Doc, by_model: pl.DataFrame | None) -> None:
    """Each harm judge's unsafe rate beside its false alarms on the benign twins (the same
    judge on the same model's answers to questions with no harmful intent)."""
    if by_model is None or "unsafe_benign_n" not in by_model.columns:
        return
    shown = by_model.filter(pl.col("unsafe_benign_n") > 0)
    if shown.is_empty():
        return
    doc.add("<p>Read each unsafe rate against its judge's false alarms in this study: the "
            "share of the benign twins' answers it also calls unsafe, though a benign "
            "question has no harmful intent to help. Where the two overlap, the judge does "
            "not tell this model's answers to harmful queries from its answers to benign "
            "ones.</p>" + html_table(shown.select(
                "model", "judge", metrics.rate_text("unsafe").alias("unsafe (harmful queries)"),
                metrics.rate_text("unsafe_benign").alias("called unsafe (benign twins)"))))


def failures_section(doc: Doc, by_model: pl.DataFrame | None) -> None:
    doc.add("<h2>Failures, truncation and unscored answers</h2>")
    if by_model is None:
        doc.lack("failure counts", "no summary tables: run 03_judge, then this report")
        return
    doc.add("<p>Nothing leaves a denominator silently: these answers are outside the rates "
            "above (failed or blocked generations, unscored verdicts) or inside them but cut "
            "off (truncated at max_new_tokens). Where the backend did not say whether an "
            "answer was cut (a replayed file without a finish reason), truncation is "
            "<em>unknown</em>, not 0.</p>")
    doc.add(html_table(_truncation_shown(by_model), [
        "model", "judge", "n_harmful", "n_harmful_failed", "n_harmful_blocked",
        "n_harmful_truncated", "n_harmful_unscored", "n_unsafe_unknown", "n_benign",
        "n_benign_failed", "n_benign_blocked", "n_benign_truncated", "n_benign_unscored"]))


def _truncation_shown(by_model: pl.DataFrame) -> pl.DataFrame:
    """``n_<risk>_truncated`` as text: the count; ``unknown`` when no answer says; the count
    and the unknown rest when some do (summary tables from before the unknown count, where
    it is null: the count as is)."""
    shown = []
    for risk in ("harmful", "benign"):
        k, unknown = f"n_{risk}_truncated", f"n_{risk}_truncation_unknown"
        answered = (pl.col(f"n_{risk}") - pl.col(f"n_{risk}_failed")
                    - pl.col(f"n_{risk}_blocked"))
        shown.append(
            pl.when(pl.col(unknown).fill_null(0) == 0).then(pl.col(k).cast(pl.String))
            .when(pl.col(unknown) >= answered).then(pl.lit("unknown"))
            .otherwise(pl.format("{} (+{} unknown)", pl.col(k), pl.col(unknown))).alias(k))
    return by_model.with_columns(shown)


def examples_section(doc: Doc, results: pl.DataFrame | None,
                      pairs: list[tuple[str, str]], redacted: bool) -> None:
    from medharm_nb.judge.checklist import redact

    doc.add("<h2>Example responses</h2>")
    if results is None:
        doc.lack("example responses", "no results table: run 03_judge")
        return
    doc.add('<p class="warn">' + (
        "Redacted: the sentences the specificity checklist flags as operational (amounts, "
        "methods, steps, concealment) are masked." if redacted else
        "UNREDACTED, for private review only: real model outputs to high-risk queries. Do "
        "not share this file.") + "</p>")
    judge = sorted(results["judge"].unique().to_list())[0]
    harmful = results.filter((pl.col("risk") == "harmful") & (pl.col("judge") == judge))
    shown = 0
    for model, base in pairs or [(m, None) for m in sorted(harmful["model"].unique())]:
        mine = harmful.filter(pl.col("model") == model).select(
            "query_id", "text", "response", "specificity")
        if base:
            theirs = harmful.filter(pl.col("model") == base).select(
                "query_id", response_base="response", specificity_base="specificity")
            mine = mine.join(theirs, on="query_id").with_columns(
                (pl.col("specificity").fill_null(0) - pl.col("specificity_base").fill_null(0))
                .alias("gain")).sort("gain", "query_id", descending=[True, False])
        else:
            mine = mine.sort("specificity", "query_id", descending=[True, False],
                             nulls_last=True)
        for r in mine.head(EXAMPLES_PER_PAIR).iter_rows(named=True):
            shown += 1
            cells = [(model, r["response"], r["specificity"])]
            if base:
                cells.insert(0, (base, r["response_base"], r["specificity_base"]))
            body = "".join(
                f"<td><b>{esc(name)}</b> (specificity {esc(spec)}, judge {esc(judge)})"
                f'<div class="response">{esc(_shown(text, r["text"], redacted, redact))}'
                f"</div></td>" for name, text, spec in cells)
            doc.add(f"<p><b>Query {esc(r['query_id'])}</b>: {esc(r['text'])}</p>"
                    f"<table><tr>{body}</tr></table>")
    if not shown:
        doc.add("<p>No harmful-query answers to show.</p>")


def _shown(text: str | None, prompt: str, redacted: bool, redact) -> str:
    if text is None:
        return "(no response: failed or blocked)"
    return redact(text, prompt) if redacted else text


def tables_section(doc: Doc, run_dir: Path) -> None:
    doc.add("<h2>Tables</h2><p>Every table of this run, as Parquet (with the schema and table "
            "versions) and, for summaries, CSV, under <code>tables/</code>, with the stage "
            "that writes it (<code>store.catalogue</code> declares each one's columns):</p>"
            "<ul>")
    for table in sorted(store.TABLES.values(), key=lambda t: t.name):
        path = table.path(run_dir)
        if path.exists():
            csv = path.with_suffix(".csv")
            doc.add(f"<li>{esc(path.name)}" + (f" · {esc(csv.name)}" if csv.exists() else "")
                    + f": {esc(table.doc)} ({esc(table.writer)})</li>")
    doc.add("</ul>")
