"""Stage functions: what each numbered notebook does, as one call each.

A notebook cell is a call plus a display; the looping, skipping of stored work and writing
of tables lives here, tested like any other package code.

=========================  ========================================================
``data_stage``             01_data: prepare the config's queries (filters, variants),
                           write ``queries``
``generation_stage``       02_generate: ask every model every query (stored answers
                           reused, failures retried), write ``generations`` and
                           ``generation_stats``
``judging_stage``          03_judge: judge every current generation with each judge
                           (stored verdicts are reused, failed ones retried), write
                           ``judgements``, ``results`` and ``judge_disagreements``
``validation_stage``       03b_judge_validation: the judges against human labels on both
                           splits (``judge.validation``), kept with the key of everything
                           it depends on, so a re-run with the same judges, labels and
                           settings reads its tables instead of judging again
``guard_stage``            04_guardrails: guards on the run's own queries (every
                           variant), cross-fitted operating points, paired brittleness,
                           guarded pipelines over the stored results; ``guard_*`` tables
``amplification_stage``    06_amplification: each fine-tune against its base, answer by
                           answer (``amplify``); write ``paired_deltas``,
                           ``amplification``, ``safety_helpfulness``,
                           ``specificity_distribution``
``summary_stage``          07_report: the report's rate tables, Parquet and CSV
``report_stage``           07_report and ``medharm-nb report``: the rate tables, then one
                           self-contained ``report.html`` (``report``)
=========================  ========================================================

With a ``conversations:`` section in the config, each stage also runs its conversation step
(``conversation.stages``: the same run folder, more tables); without one, nothing changes.

Each holds the run folder's lock (``store.RunLock``) while it writes, so a notebook opened by
hand is refused while a series runs in the same folder; inside a ``medharm-nb run`` the
kernels work within the series' lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from medharm_nb import amplify, data, generate, judge, metrics, store
from medharm_nb.conversation import stages as conversation
from medharm_nb.judge import provenance
from medharm_nb.records import stable_hash

if TYPE_CHECKING:
    from medharm_nb.config import Run


def data_stage(run: Run, queries: pl.DataFrame | None = None) -> pl.DataFrame:
    """The run's queries: the config's source, filters and variant wrappers applied; written
    as ``queries``. With ``conversations:`` in the config, its conversations too
    (``conversations``, ``conversation.build``).

    Args:
        run: The run.
        queries: The prepared queries, when the caller has them (``data.prepare_queries``).

    Returns:
        The query table (one row per query and variant).
    """
    if queries is None:
        queries = data.prepare_queries(run.config.queries, run.base_dir)
    with store.RunLock(run.run_dir, purpose="data"):
        store.write_table(run.run_dir, "queries", queries)
        conversation.data_step(run, queries)
    return queries


def generation_stage(run: Run, queries: pl.DataFrame | None = None,
                     progress: bool = True) -> pl.DataFrame:
    """Ask every model of the run every query; write the ``generations`` (this run's current
    answers, failures included) and ``generation_stats`` tables. With conversations, ask
    them turn by turn too (``turns``; their stats rows join ``generation_stats``).

    Args:
        run: The run.
        queries: The queries to ask (default: the run's ``queries`` table).
        progress: Show a progress bar per model.

    Returns:
        The stats table, one row per model (see ``generate.GenStats``).
    """
    if queries is None:
        queries = store.queries_df(run)
    with store.RunLock(run.run_dir, purpose="generate"), run.store() as st:
        stats = generate.run_generation(queries, run.config.models, run.config.generation,
                                        st, progress=progress)
        stats += conversation.generation_step(run, st, progress) or []
        generations = generate.current_generations(
            st.frame("generations"), queries, run.config.models, run.config.generation)
        table = pl.DataFrame([s.as_dict() for s in stats])
        store.write_table(run.run_dir, "generation_stats", table)
        store.write_table(run.run_dir, "generations", generations)
    return table


def judging_stage(run: Run, judges: Sequence[str] | None = None,
                  progress: bool = True) -> pl.DataFrame:
    """Judge the run's current generations with each judge; write the judging tables.

    Verdicts already stored are reused (re-running is free); a verdict whose judge failed
    (``judge_error``, ``parse_failed``) is asked again. Writes ``judgements`` (this run's
    verdicts), ``results`` (``metrics.results_table``: one row per generation and judge,
    failed generations included, with ``judge_trained_on``: the judge learned from this very
    answer, ``judge.provenance``) and ``judge_disagreements`` (responses the judges label
    differently, at the compliance split; empty with one judge). With conversations, every
    answered turn is judged too, the conversation as context (``turn_results``,
    ``conversation_outcomes``).

    Args:
        run: The run (``config.open_run``).
        judges: Judge names (``judge.load_judge``); default: the config's ``judges``.
        progress: Show a progress bar per judge.

    Returns:
        The results table.
    """
    names = list(judges or run.config.judges)
    loaded = [judge.load_judge(name) for name in names]  # a bad name fails before any work
    queries, generations = store.queries_df(run), store.generations_df(run)
    with store.RunLock(run.run_dir, purpose="judge"), run.store() as st:
        current: list[str] = []
        for j in loaded:
            wanted = judge.judgement_ids(j, generations)
            current += wanted
            done = st.existing_ids("judgements", wanted)
            judge.judge_generations(j, generations, progress=progress, done=done,
                                    save=lambda part: st.add("judgements", part))
        ids = [j.id for j in loaded]
        # By verdict id: a response with a reasoning trace may also have a verdict stored
        # before traces were judged apart (judge.base.TRACE_KEY); only the current one counts.
        judgements = st.frame("judgements").filter(
            pl.col("judgement_id").is_in(pl.Series(current, dtype=pl.String).implode()))
        # Answers a judge was trained on (by content): its rates on them are in-sample.
        answered = generations.filter(pl.col("response").is_not_null())
        results = metrics.results_table(queries, generations, judgements, judges=ids,
                                        trained_on=provenance.trained_on(loaded, answered))
        store.write_table(run.run_dir, "judgements", judgements)
        store.write_table(run.run_dir, "results", results)
        disputed = (judge.disagreements(judgements) if len(ids) > 1
                    else store.table("judge_disagreements").empty())
        store.write_table(run.run_dir, "judge_disagreements", disputed)
        conversation.judging_step(run, loaded, st, progress)
    return results


def validation_stage(run: Run, judges: Sequence[str], gold: Sequence[str] | str | None,
                     safe: str | None = None, gold_sample: int | None = None,
                     n_boot: int = 1000, seed: int = 0):
    """Validate judges against human labels (``judge.validation.validate``) and keep the
    tables; with the same judges (ids), gold and safe files (contents), sample size,
    resamples and seed as the last time, read those tables back and judge nothing.

    ``gold_sample``: at most this many responses per source model and gold set, a seeded
    sample (None: all of them).

    Returns:
        A ``validation.ValidationReport`` (its ``evaluation.items`` is empty when read back).
    """
    from medharm_nb.judge import validation

    sources = [gold] if isinstance(gold, str) else list(gold or [])
    key = stable_hash([judge.load_judge(n).id for n in judges],
                      [_files_key(src) for src in sources], _files_key(safe),
                      gold_sample, n_boot, seed)
    marker = run.run_dir / "tables" / "judge_validation_key.json"
    kept = json.loads(marker.read_text()) if marker.exists() else {}
    if kept.get("key") == key:
        return _read_validation(run, kept)
    report = validation.validate(judges, sources, safe, limit=gold_sample, n_boot=n_boot,
                                 seed=seed)
    parts = {"false_alarm": report.false_alarm, "cross_validation": report.cross_validation,
             "disagreements": report.disagreements, "baselines": report.baselines}
    if report.evaluation is not None:
        parts.update(summary=report.evaluation.summary, confusion=report.evaluation.confusion,
                     specificity=report.evaluation.specificity)
    if all(table is None for table in parts.values()):
        return report  # nothing was validated (no gold, no safe set here): nothing to keep
    with store.RunLock(run.run_dir, purpose="validate"):
        for name, table in parts.items():
            if table is not None:
                store.write_table(run.run_dir, store.VALIDATION_TABLES[name], table)
        meta = {"key": key, "judges": report.judges, "in_sample": report.in_sample,
                "skipped": report.skipped,
                "parts": sorted(k for k, v in parts.items() if v is not None)}
        marker.write_text(json.dumps(meta))
    # The tables as kept (declared columns first, typed), so a rerun returns the same frames.
    kept_report = _read_validation(run, meta)
    if report.evaluation is not None:
        kept_report.evaluation.items = report.evaluation.items
    return kept_report


def _files_key(source: str | None) -> str | None:
    """What a gold or safe source holds: its files' names and contents (a folder's files,
    recursively); the source as written when it is not a path here (``run:``, ``hf:``)."""
    if source is None:
        return None
    path = Path(str(source).partition(":")[2] if str(source).startswith(
        ("xstest:", "harmbench:", "run:")) else str(source))
    if path.is_dir():
        return store.files_digest(f for f in sorted(path.rglob("*"))
                                  if f.is_file() and ".ipynb_checkpoints" not in f.parts)
    return store.files_digest([path]) if path.is_file() else str(source)


def _read_validation(run: Run, meta: dict):
    """A validation report read back from its tables (see ``validation_stage``)."""
    from medharm_nb.judge import validation

    parts = {name: store.validation_df(run, name) for name in meta["parts"]}
    report = validation.ValidationReport(
        meta["judges"], in_sample=[tuple(x) for x in meta["in_sample"]],
        skipped=list(meta["skipped"]), false_alarm=parts.get("false_alarm"),
        cross_validation=parts.get("cross_validation"),
        disagreements=parts.get("disagreements"), baselines=parts.get("baselines"))
    if "summary" in parts:
        report.evaluation = validation.Evaluation(parts["summary"], parts["confusion"],
                                                  parts["specificity"], pl.DataFrame())
    return report


def guard_stage(run: Run, guards: Sequence[str], pairs: int | None = None,
                threshold: float = 0.5, budget: float = 0.05,
                pipeline_guard: str | None = None) -> dict[str, pl.DataFrame]:
    """Evaluate guards on the run's own queries and put one in front of and behind its models.

    The run's direct queries (the first ``pairs`` harmful ones and their twins, when set) are
    wrapped in every prompt variant and scored with each guard: ROC sweep, cross-fitted
    operating point at the false-block ``budget`` (``guard.evaluate_guards``), paired brittleness.
    ``pipeline_guard`` then guards the stored results (input; input and output), reusing the
    prompt scores just made. Tables ``guard_<name>`` are written for each part.

    With conversations, each guard also reads every turn, alone and with its history, at
    ``threshold`` (``conversation.guard``): ``turn_scores`` and ``conversations`` (caught,
    unsafe with and without the guard, false blocks on benign conversations).

    Returns:
        ``scored``, ``summary``, ``by_category``, ``sweep``, ``brittleness``, ``guards``
        (what each guard is, and whether it was trained on these queries) and, with a
        pipeline guard, ``pipeline`` and ``pipeline_by_category`` (kept as
        ``store.GUARD_TABLES``); with conversations, ``turn_scores`` and ``conversations``.
    """
    from medharm_nb import guard

    queries = store.queries_df(run)
    base = guard.first_pairs(queries.filter(pl.col("variant") == "direct"), pairs)
    loaded = {name: guard.load_guard(name) for name in guards}
    with store.RunLock(run.run_dir, purpose="guard"), run.store() as st:
        out = guard.evaluate_guards(loaded, base, variants=True, threshold=threshold,
                                    budget=budget, store=st)
        out["guards"] = guard.describe_all(loaded, run.config.queries.source)
        if pipeline_guard:
            results = store.results_df(run)
            prompts = guard.score_queries(loaded.get(pipeline_guard) or guard.load_guard(
                pipeline_guard), queries.select("id", "text"), st).rename({"id": "query_id"})
            rows, rates = guard.pipeline_comparison(results, queries, pipeline_guard,
                                                    threshold, input_scores=prompts, store=st)
            out["pipeline"] = rates
            out["pipeline_by_category"] = guard.pipeline_rates(
                rows, ("pipeline", "model", "judge", "category"))
        out.update(conversation.guard_step(run, loaded, st, threshold) or {})
        for name, table in out.items():
            store.write_table(run.run_dir, store.GUARD_TABLES[name], table)
    return out


def summary_stage(run: Run) -> dict[str, pl.DataFrame]:
    """The report's tables from the run's ``results``: compliance, unsafe, over-refusal and
    helpfulness rates per model, per model x category, per model x category x framing, per
    model x tier (a benign twin counts in its pair's tier), and label shares; each written
    as Parquet and CSV under ``tables/``. With turn results, the by-turn tables too
    (``unsafe_by_turn``, ``survival``, ``by_turn``).

    Returns:
        ``summary_by_model``, ``summary_by_category``, ``summary_by_cell``,
        ``summary_by_tier``, ``label_rates`` (and the by-turn tables).
    """
    results = store.results_df(run)
    tables = {store.SUMMARY_TABLES[key]: metrics.safety_summary(results, by=by)
              for key, by in store.SUMMARY_BY.items()}
    tables["label_rates"] = metrics.label_rates(results, by=("model", "category"))
    with store.RunLock(run.run_dir, purpose="report"):
        for name, table in tables.items():
            store.write_table(run.run_dir, name, table)
        tables.update(conversation.summary_step(run.run_dir) or {})
    return tables


def amplification_stage(run: Run, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> dict[str, pl.DataFrame]:
    """Each model that names a ``base`` against that base, answer by answer: deltas with
    cluster-bootstrap intervals, paired tests and effect sizes per pair, judge, category and
    framing, on harmful queries, benign twins and their difference (``amplify``). Writes
    ``paired_deltas``, ``amplification`` (the headline), ``safety_helpfulness`` (the plane's
    points) and ``specificity_distribution``, each as Parquet and CSV.

    A run without pairs writes the tables empty (the report says so) rather than failing.
    With conversations, ``single_vs_multi`` and ``amplification_by_turn`` too.

    Args:
        run: The run.
        n_boot: Bootstrap resamples of the base queries.
        seed: Bootstrap seed.
        level: Interval level.

    Returns:
        The four tables by name.
    """
    results = store.results_df(run)
    pairs = run.config.pairs
    deltas = amplify.paired_deltas(results, pairs, n_boot=n_boot, seed=seed, level=level)
    parts = {"deltas": deltas, "amplification": amplify.amplification(deltas),
             "plane": amplify.plane(results, pairs),
             "specificity": metrics.specificity_distribution(results)}
    tables = {store.PAIRED_TABLES[part]: table for part, table in parts.items()}
    with store.RunLock(run.run_dir, purpose="amplification"):
        for name, table in tables.items():
            store.write_table(run.run_dir, name, table)
        tables.update(conversation.amplification_step(run, results, n_boot, seed, level)
                      or {})
    return tables


def report_stage(run: Run, redacted: bool = True) -> Path:
    """The report: refresh the rate tables (``summary_stage``) when the run has results, then
    write one self-contained HTML file from whatever tables exist (``report.build``).

    Args:
        run: The run.
        redacted: Mask the operational spans of example responses (``checklist.redact``);
            False writes ``report-unredacted.html`` for private review instead.

    Returns:
        The HTML file's path.
    """
    from medharm_nb import report

    if store.has_table(run.run_dir, "results"):
        summary_stage(run)
    with store.RunLock(run.run_dir, purpose="report"):
        return report.build(run.run_dir, redacted=redacted)
