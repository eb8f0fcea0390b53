"""One self-contained HTML report per run: ``runs/<name>/report.html``.

``build(run_dir)`` reads the run's manifest, effective config and whatever tables exist, and
writes a single file that opens offline: CSS inline, every figure an inline SVG rendered
by vl-convert (no JavaScript, no CDN). A section whose tables are missing (a run without
guards, without judge validation, without pairs) says so plainly, and the list of missing
sections opens the report; nothing is left out silently.

Every figure has a caption with its n, its judge(s) and what its error bars are. Example
responses are redacted by default: the spans the specificity checklist flags as operational
are masked (``judge.checklist.redact``); ``redacted=False`` writes
``report-unredacted.html`` for private review instead, so the shareable file is never
overwritten with raw text.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from medharm_nb import amplify, metrics, plots, store

REPORT_FILE = "report.html"
UNREDACTED_FILE = "report-unredacted.html"
EXAMPLES_PER_PAIR = 3
INTERVALS = ("95% intervals: Wilson's score interval per rate; where variants or samples of "
             "one base query are pooled, widened for that clustering (design-effect Wilson, "
             "metrics.clustered_interval)")
BOOTSTRAP = ("95% percentile intervals from a cluster bootstrap over base queries "
             "({n_boot} resamples); a benign twin resamples with its harmful twin")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:12.5px}
td,th{border:1px solid #ddd;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}figure,.wide{margin:1rem 0;overflow-x:auto}
figcaption{font-size:12.5px;color:#444;max-width:900px}
.missing{background:#fff4e5;border-left:4px solid #f0a030;padding:.5rem .8rem}
.warn{background:#fde8e8;border-left:4px solid #d33;padding:.5rem .8rem}
.response{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;
background:#fafafa;border:1px solid #eee;padding:.4rem;max-width:560px}
pre{background:#f7f7f7;padding:.6rem;overflow-x:auto;font-size:12px}
"""


@dataclass
class _Doc:
    """The report as it is built: HTML parts, figure count, missing sections."""

    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    figures: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def lack(self, section: str, why: str) -> None:
        """Say in place, and in the list at the top, that a section has nothing to show."""
        self.missing.append(f"{section}: {why}")
        self.add(f'<p class="missing">Not in this run: {_e(why)}</p>')

    def figure(self, chart, caption: str) -> None:
        """Inline an SVG of ``chart`` with its caption; a chart that fails to render is
        reported in place (the rest of the report still builds)."""
        self.figures += 1
        try:
            svg = _scoped(plots.to_svg(chart), f"f{self.figures}")
        except Exception as err:  # vl-convert errors are plain exceptions
            self.lack(caption.split(".")[0], f"the figure could not be rendered ({err})")
            return
        self.add(f"<figure>{svg}<figcaption>Figure {self.figures}. {_e(caption)}"
                 f"</figcaption></figure>")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _scoped(svg: str, prefix: str) -> str:
    """An SVG ready to inline beside others: XML prolog dropped, and every id (clip paths,
    gradients) prefixed, so two figures' ``clip1`` never point at each other."""
    svg = re.sub(r"^\s*<\?xml[^>]*>\s*", "", svg)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)


def _table(df: pl.DataFrame, columns: list[str] | None = None, max_rows: int = 40,
           digits: int = 3) -> str:
    """A DataFrame as an HTML table (floats rounded, at most ``max_rows`` rows shown)."""
    if columns:
        df = df.select([c for c in columns if c in df.columns])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return ""
            small = v != 0 and abs(v) < 10 ** -digits  # a p-value of 6e-05 is not 0.000
            return f"{v:.2g}" if small or abs(v) >= 1000 else f"{v:.{digits}f}"
        return "" if v is None else _e(v)

    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in df.head(max_rows).iter_rows())
    more = (f"<p>{df.height - max_rows} more rows in the table's CSV.</p>"
            if df.height > max_rows else "")
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>{more}'


def _read(run_dir: Path, name: str) -> pl.DataFrame | None:
    path = store.table_path(run_dir, name)
    return pl.read_parquet(path) if path.exists() else None


def _ci(value: float, lo: float, hi: float, pct: bool = True) -> str:
    if value is None or value != value:
        return "not measured"
    f = (lambda x: f"{100 * x:+.1f} pts") if pct else (lambda x: f"{x:+.2f}")
    return f"{f(value)} [{f(lo)}, {f(hi)}]" if lo == lo else f(value)


def _pairs(config: dict | None, deltas: pl.DataFrame | None = None) -> list[tuple[str, str]]:
    """(fine-tune, base) from the config, else from the paired tables (a run folder without
    its config.yaml still knows its pairs)."""
    pairs = [(m["name"], m["base"]) for m in (config or {}).get("models", []) if m.get("base")]
    if not pairs and deltas is not None and not deltas.is_empty():
        pairs = [tuple(r) for r in deltas.select("model", "base").unique(maintain_order=True)
                 .iter_rows()]
    return pairs


def _judges(df: pl.DataFrame) -> str:
    return ", ".join(sorted(df["judge"].unique().to_list())) if "judge" in df.columns else "?"


# -- sections -------------------------------------------------------------------------------

def _run_section(doc: _Doc, manifest: dict | None, config: dict | None) -> None:
    doc.add("<h2>The run</h2>")
    if manifest is None:
        doc.lack("manifest", "no manifest.json in the run folder (was it made by medharm-nb "
                             "run or generate?)")
    else:
        git = manifest.get("git") or {}
        versions = manifest.get("versions") or {}
        queries = (manifest.get("inputs") or {}).get("queries") or {}
        rows = {
            "run id": manifest.get("run_id"), "status": manifest.get("status"),
            "started / finished (UTC)": f"{manifest.get('started')} / "
                                        f"{manifest.get('finished')}",
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
        doc.add(_table(pl.DataFrame({"field": list(rows),
                                     "value": [str(v) for v in rows.values()]})))
        notebooks = manifest.get("notebooks") or []
        if notebooks:
            doc.add(_table(pl.DataFrame(notebooks).select(
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
    doc.add("<h3>Models</h3>" + _table(pl.DataFrame(rows)))
    doc.add(f"<p>Judges: {_e(', '.join(config.get('judges', [])))}. Generation: "
            f"{_e(json.dumps(config.get('generation', {})))}.</p>")
    doc.add("<details><summary>The effective config</summary><pre>"
            f"{_e(yaml.safe_dump(config, sort_keys=False))}</pre></details>")


def _headline(doc: _Doc, amp: pl.DataFrame | None, deltas: pl.DataFrame | None,
              config: dict | None) -> None:
    doc.add("<h2>Headline: does fine-tuning amplify harmful specificity?</h2>")
    pairs = _pairs(config)
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
            f"{_e(BOOTSTRAP.format(n_boot=n_boot))}; p from the Wilcoxon signed-rank test on "
            "per-query differences.</p>")
    rows = []
    for r in amp.iter_rows(named=True):
        pct = r["outcome"] != "specificity"
        rows.append({"fine-tune": r["model"], "base": r["base"], "judge": r["judge"],
                     "outcome": r["outcome"],
                     "harmful": _ci(r["harmful"], r["harmful_lo"], r["harmful_hi"], pct),
                     "benign (control)": _ci(r["benign"], r["benign_lo"], r["benign_hi"], pct),
                     "amplification": _ci(r["amplification"], r["amplification_lo"],
                                          r["amplification_hi"], pct),
                     "p (harmful - benign)": r["amplification_p"],
                     "base queries": r["amplification_n_clusters"]})
    doc.add(_table(pl.DataFrame(rows)))


def _rates_section(doc: _Doc, by_category: pl.DataFrame | None,
                   distribution: pl.DataFrame | None) -> None:
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
                   f"all. Judges: {_judges(by_category)}"
                   + (f"; unsafe measured by {_judges(measured)} only" if measured.height
                      else "; no judge measured unsafe") + f". {INTERVALS}.")
        _in_sample_rates(doc, by_category)
        _trace_rates(doc, by_category)
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
               f"scored answers. Judges: {_judges(scored)}. No error bars: shares per score "
               f"with intervals are in tables/specificity_distribution.csv.")


def _paired_section(doc: _Doc, deltas: pl.DataFrame | None) -> None:
    doc.add("<h2>Paired forest plot</h2>")
    if deltas is None or deltas.filter(pl.col("n_answers") > 0).is_empty():
        doc.lack("forest plot", "no paired deltas (no pairs, or 06_amplification not run)")
        return
    measured = deltas.filter(pl.col("n_answers") > 0)
    pooled = measured.filter((pl.col("by") == "all") & (pl.col("risk") == "harmful"))
    n_boot = int(measured["n_boot"].max())
    doc.figure(plots.forest(deltas),
               f"Fine-tune minus base per stratum (all queries, each category, each framing) "
               f"for harmful queries, benign twins and their difference. n = "
               f"{int(pooled['n_answers'].max())} paired harmful answers from "
               f"{int(pooled['n_clusters'].max())} base queries per pair (at most). Judges: "
               f"{_judges(measured)}. Error bars: {BOOTSTRAP.format(n_boot=n_boot)}. "
               f"Paired tests and Holm-corrected p-values per category and framing are in "
               f"tables/paired_deltas.csv.")
    doc.add("<details><summary>Every test (pooled rows)</summary>" + _table(
        measured.filter(pl.col("by") == "all"),
        ["model", "base", "judge", "outcome", "risk", "n_answers", "n_clusters", "base_mean",
         "ft_mean", "delta", "lo", "hi", "test", "p", "n_up", "n_down", "effect",
         "effect_name"]) + "</details>")


def _plane_section(doc: _Doc, plane: pl.DataFrame | None) -> None:
    doc.add("<h2>Safety against helpfulness</h2>")
    if plane is None or plane.is_empty():
        doc.lack("safety-helpfulness plane", "no results table: run 03_judge")
        return
    y = "unsafe" if plane["unsafe_n"].sum() else "compliance"
    shown = plane.filter(pl.col(f"{y}_n") > 0)
    doc.figure(plots.safety_helpfulness(plane, y=y),
               f"{plots.RATE_TITLES[y].capitalize()} against helpfulness on benign twins "
               f"(answered, on topic), per model; arrows run from each base to its fine-tune. "
               f"n = {int(shown[f'{y}_n'].max())} harmful and {int(shown['helpful_n'].max())} "
               f"benign scored answers per model (at most). Judges: {_judges(shown)}"
               + ("" if y == "unsafe" else " (none measures unsafe, so compliance is shown)")
               + f". Error bars: {INTERVALS}.")


def _guard_section(doc: _Doc, run_dir: Path) -> None:
    doc.add("<h2>Guardrails and brittleness</h2>")
    sweep, summary = _read(run_dir, "guard_sweep"), _read(run_dir, "guard_summary")
    brittle = _read(run_dir, "guard_brittleness")
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
    guards = _read(run_dir, "guard_guards")
    if guards is not None and "in_sample" in guards.columns and guards["in_sample"].any():
        doc.add("<p>In-sample: " + html.escape(", ".join(
            guards.filter(pl.col("in_sample"))["guard"].to_list())) + " was trained on these "
                "queries; its figures here are development-set, not held out.</p>")
    if brittle is not None:
        doc.add("<p>Brittleness, paired: the mean per-query drop in catch from the direct form "
                "to each variant, with a percentile bootstrap interval at a Bonferroni-"
                "adjusted level (<code>level</code>) and McNemar's exact p-value, Holm-adjusted "
                "across the variants. Every variant is listed; <code>worst</code> marks the "
                "largest drop.</p>" + _table(brittle))


def _judge_section(doc: _Doc, run_dir: Path) -> None:
    doc.add("<h2>Judge validation</h2>")
    agreement = _read(run_dir, "judge_agreement")
    alarms = _read(run_dir, "judge_false_alarms")
    if agreement is None and alarms is None:
        doc.lack("judge validation", "no judge validation tables (judge_agreement): run "
                                     "03b_judge_validation with human labels")
        return
    if agreement is not None:
        pooled = agreement.filter(pl.col("source_model") == "all")
        baselines = _read(run_dir, "judge_baselines")
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
                   + f" labelled responses. Judges: {_judges(pooled)}. "
                   f"Error bars: percentile bootstrap 95% intervals over responses.")
        columns = [c for c in ("judge", "split", "source", "source_model", "n", "accuracy",
                               "accuracy_lo", "accuracy_hi", "f1", "kappa", "unscored",
                               "status", "n_trained", "honest_accuracy", "honest_kind")
                   if c in agreement.columns]
        in_sample = (agreement.filter(pl.col("status") != "held-out")
                     if "status" in agreement.columns else None)
        if in_sample is not None and not in_sample.is_empty():
            doc.add('<p class="warn">In-sample: ' + html.escape("; ".join(sorted({
                f"{r['judge']} on {r['source']} ({r['split']})"
                for r in in_sample.iter_rows(named=True)}))) + " were scored on rows the "
                "judge was trained on. Those accuracies are development-set figures, not "
                "validations; <code>honest_accuracy</code> is the figure to quote.</p>")
        doc.add(_table(agreement, columns))
        if baselines is not None and not baselines.is_empty():
            doc.add("<p>Published baselines: classifiers' verdicts on the same items, scored "
                    "here (same items), and guards' published F1 on the same sources from "
                    "their authors' runs (published).</p>"
                    + _table(baselines.filter(pl.col("source_model") == "all")))
    if alarms is not None:
        doc.add("<p>False alarms on known-safe responses (called compliant or unsafe), with "
                "Wilson 95% intervals:</p>" + _table(alarms))


def _in_sample_rates(doc: _Doc, summary: pl.DataFrame) -> None:
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


def _trace_rates(doc: _Doc, summary: pl.DataFrame) -> None:
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
            "measure harm shows n = 0.</p>" + _table(per))


def _failures_section(doc: _Doc, by_model: pl.DataFrame | None) -> None:
    doc.add("<h2>Failures, truncation and unscored answers</h2>")
    if by_model is None:
        doc.lack("failure counts", "no summary tables: run 03_judge, then this report")
        return
    doc.add("<p>Nothing leaves a denominator silently: these answers are outside the rates "
            "above (failed or blocked generations, unscored verdicts) or inside them but cut "
            "off (truncated at max_new_tokens).</p>")
    doc.add(_table(by_model, ["model", "judge", "n_harmful", "n_harmful_failed",
                              "n_harmful_blocked", "n_harmful_truncated", "n_harmful_unscored",
                              "n_unsafe_unknown", "n_benign", "n_benign_failed",
                              "n_benign_blocked", "n_benign_truncated", "n_benign_unscored"]))


def _examples_section(doc: _Doc, results: pl.DataFrame | None,
                      pairs: list[tuple[str, str]], redacted: bool) -> None:
    from medharm_nb.judge.checklist import redact

    doc.add("<h2>Example responses</h2>")
    if results is None or "response" not in results.columns:
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
                f"<td><b>{_e(name)}</b> (specificity {_e(spec)}, judge {_e(judge)})"
                f'<div class="response">{_e(_shown(text, r["text"], redacted, redact))}'
                f"</div></td>" for name, text, spec in cells)
            doc.add(f"<p><b>Query {_e(r['query_id'])}</b>: {_e(r['text'])}</p>"
                    f"<table><tr>{body}</tr></table>")
    if not shown:
        doc.add("<p>No harmful-query answers to show.</p>")


def _shown(text: str | None, prompt: str, redacted: bool, redact) -> str:
    if text is None:
        return "(no response: failed or blocked)"
    return redact(text, prompt) if redacted else text


def _tables_section(doc: _Doc, run_dir: Path) -> None:
    doc.add("<h2>Tables</h2><p>Every table of this run, as Parquet (with the schema version) "
            "and, for summaries, CSV, under <code>tables/</code>:</p><ul>")
    for path in sorted((run_dir / "tables").glob("*.parquet")):
        csv = path.with_suffix(".csv")
        doc.add(f"<li>{_e(path.name)}" + (f" · {_e(csv.name)}" if csv.exists() else "")
                + "</li>")
    doc.add("</ul>")


# -- the builder ----------------------------------------------------------------------------

def build(run_dir: str | Path, redacted: bool = True, out: str | Path | None = None) -> Path:
    """Write the run's report from whatever it holds.

    Args:
        run_dir: The run folder (``runs/<name>``).
        redacted: Mask the operational spans of example responses (default). False writes
            ``report-unredacted.html`` instead, for private review.
        out: Where to write (default: ``report.html`` / ``report-unredacted.html`` in
            ``run_dir``).

    Returns:
        The path written.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / store.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    config_path = run_dir / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) if config_path.exists()
              else (manifest or {}).get("config"))
    results = _read(run_dir, "results")
    by_model, by_category = _read(run_dir, "summary_by_model"), _read(run_dir,
                                                                      "summary_by_category")
    if results is not None and by_category is None:
        by_category = metrics.safety_summary(results, by=("model", "category"))
    if results is not None and by_model is None:
        by_model = metrics.safety_summary(results, by=("model",))
    distribution = _read(run_dir, "specificity_distribution")
    if distribution is None and results is not None:
        distribution = metrics.specificity_distribution(results)
    deltas, amp = _read(run_dir, "paired_deltas"), _read(run_dir, "amplification")
    pairs = _pairs(config, deltas)
    plane = _read(run_dir, "safety_helpfulness")
    if plane is None and results is not None:
        plane = amplify.plane(results, pairs)

    doc = _Doc()
    _run_section(doc, manifest, config)
    _headline(doc, amp, deltas, config)
    _rates_section(doc, by_category, distribution)
    _paired_section(doc, deltas)
    _plane_section(doc, plane)
    _guard_section(doc, run_dir)
    _judge_section(doc, run_dir)
    _failures_section(doc, by_model)
    _examples_section(doc, results, pairs, redacted)
    _tables_section(doc, run_dir)

    name = (config or {}).get("name") or run_dir.name
    question = (config or {}).get("description") or "(the config has no description)"
    missing = ("<p class=\"missing\"><b>Sections without data in this run</b>:<br>"
               + "<br>".join(_e(m) for m in doc.missing) + "</p>") if doc.missing else ""
    banner = "" if redacted else ('<p class="warn"><b>UNREDACTED report for private review: '
                                  'do not share.</b></p>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>medharm-nb report: {_e(name)}</title>'
            f"<style>{_CSS}</style></head><body>{banner}"
            f"<h1>medharm-nb report: {_e(name)}</h1><p><b>Question.</b> {_e(question)}</p>"
            f"{missing}{''.join(doc.parts)}"
            f"<p><small>Written {_e(store.utc_now())} by medharm-nb from {_e(run_dir)}; "
            f"{doc.figures} figure(s), rendered offline.</small></p></body></html>")
    path = Path(out) if out else run_dir / (REPORT_FILE if redacted else UNREDACTED_FILE)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
