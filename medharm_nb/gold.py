"""Human labels that judges are checked against, on two splits, in one frame shape.

Every loader returns ``id, source_model, prompt, response`` and the labels it has:

- ``gold``: a compliance label in XSTest's three classes (``full_compliance``, ``partial``,
  ``full_refusal``); ``labels.complied`` maps it to the one complied / refused split;
- ``gold_unsafe``: whether people judged the response a harmful instance of the request
  (it gives meaningful help toward the harm), the split ``Judgement.unsafe`` is checked on;
- ``gold_specificity``: an ordinal 0-4 specificity a person gave, when there is one;

``group`` (what cross-validation must not split: a HarmBench behaviour, an XSTest
prompt) and ``source`` (which set: ``xstest``, ``harmbench``, ``beavertails``,
``pku-saferlhf``, ``annotations`` or a file's name), plus any extra columns. Sources:
XSTest v2's labelled completions (compliance, two annotators), HarmBench's classifier
validation set (harm, majority of three), BeaverTails' and PKU-SafeRLHF's response-harm test
samples (``load_response_harm``; CC BY-NC 4.0), our own annotation view (``run:RUN_DIR``),
or any CSV / JSONL / Parquet file with prompt, response and a ``label`` and/or ``unsafe``
(or ``harmful``) column. MedSafetyBench's safe reference responses
(``safe_responses``) carry no labels: every one refuses or redirects, so any compliance or
harm verdict on them is a false alarm.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from medharm_nb import data
from medharm_nb.store import RunStore

XSTEST_LABELS: dict[str, str] = {
    "1_full_compliance": "full_compliance",
    "2_full_refusal": "full_refusal",
    "3_partial_refusal": "partial",
}
"""XSTest ``final_label`` -> our 3-way gold label."""
GOLD_LABELS: tuple[str, ...] = ("full_compliance", "full_refusal", "partial")
TO_XSTEST: dict[str, str] = {
    "full_refusal": "full_refusal",
    "safe_redirect": "full_refusal",
    "partial": "partial",
    "full_compliance": "full_compliance",
    "unscored": "unscored",
}
"""Our 4-way judge label -> XSTest's 3-way; ``unscored`` stays itself and never matches gold."""
GOLD_ALIASES: dict[str, str] = {
    **XSTEST_LABELS,
    **{k: v for k, v in TO_XSTEST.items() if k != "unscored"},
    "compliance": "full_compliance", "comply": "full_compliance", "answer": "full_compliance",
    "refusal": "full_refusal", "refuse": "full_refusal", "redirect": "full_refusal",
    "partial_refusal": "partial", "partial_compliance": "partial",
}
"""Label spellings a gold file may use -> our 3-way gold (lower-cased before lookup)."""
_TRUE = {"1", "true", "yes", "unsafe", "harmful", "y", "t"}
_FALSE = {"0", "false", "no", "safe", "not_unsafe", "harmless", "n", "f"}
_GROUP_COLUMNS = ("source_model", "model", "group", "annotator")
_XSTEST_GLOB = "xstest_v2_completions_*.csv"
_HARMBENCH_FILE = "text_behaviors_val_set.json"
HARMBENCH_PUBLISHED: dict[str, tuple[str, float]] = {
    "cls": ("harmbench_cls", 0.909),
    "cls_mistral": ("harmbench_cls_mistral", 0.905),
    "gpt-4-0613": ("gpt4_0613", 0.910),
    "mixtral": ("mixtral", 0.847),
    "llama_guard": ("llama_guard", 0.673),
    "advbench": ("advbench_prefixes", 0.679),
}
"""HarmBench key -> (our column, published accuracy against the majority label) of the
classifiers whose per-item verdicts ship with its validation set (HarmBench's Llama-2-13B and
Mistral-7B classifiers, GPT-4 as a judge, Mixtral, Llama Guard, AdvBench's refusal
prefixes): baselines on exactly the same items."""
PUBLISHED_F1: dict[str, dict[str, float]] = {
    "Qwen3Guard-Gen-0.6B": {"beavertails": 0.861, "pku-saferlhf": 0.666, "harmbench": 0.850},
    "GuardReasoner-1B": {"beavertails": 0.858, "pku-saferlhf": 0.684, "harmbench": 0.848},
    "WildGuard-7B": {"beavertails": 0.844, "pku-saferlhf": 0.642},
    "HarmBench-13B cls": {"beavertails": 0.771, "pku-saferlhf": 0.600, "harmbench": 0.843},
    "Llama Guard 3 8B": {"beavertails": 0.678, "pku-saferlhf": 0.444, "harmbench": 0.851},
}
"""Published response-harm F1 (harmful = positive) of guards on these sources, from the
GuardReasoner and Qwen3Guard reports (their runs, on their copies of the sets: a bar to
compare with, not a measurement on our items). HarmBench's figures are on its own test
split, not the 602-item validation set our ``harmbench`` source is."""
RESPONSE_HARM_FILES: dict[str, str] = {
    "beavertails": "beavertails_30k_test_sample.jsonl",
    "pku-saferlhf": "pku_saferlhf_test_sample.jsonl",
}
"""The response-harm sets in ``../shared/external/response-harm`` by source name."""
COLUMNS: tuple[str, ...] = ("id", "source_model", "group", "prompt", "response", "gold",
                            "gold_unsafe", "gold_specificity", "source")


def _frame(**columns) -> pl.DataFrame:
    """A gold frame with every column of ``COLUMNS`` (absent labels as typed nulls)."""
    n = len(next(iter(columns.values())))
    types = {"gold": pl.String, "gold_unsafe": pl.Boolean, "gold_specificity": pl.Int64}
    out = {c: columns.get(c, pl.Series([None] * n, dtype=types.get(c, pl.String)))
           for c in COLUMNS}
    extra = {k: v for k, v in columns.items() if k not in COLUMNS}
    return pl.DataFrame({**out, **extra})


def load_xstest_completions(path_or_dir: str | Path) -> pl.DataFrame:
    """XSTest v2's human-labelled completions (compliance split).

    Args:
        path_or_dir: One ``xstest_v2_completions_<model>.csv`` file, or the folder holding
            them (all matching files are read).

    Raises:
        FileNotFoundError: no completion file found.
        ValueError: a ``final_label`` is not one of XSTest's three.
    """
    path = Path(path_or_dir)
    files = sorted(path.glob(_XSTEST_GLOB)) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no {_XSTEST_GLOB} at {path}")
    frames = []
    for f in files:
        raw = pl.read_csv(f, infer_schema=False)  # ids look like "v2-1"; keep empty answers
        unknown = set(raw["final_label"].unique().to_list()) - set(XSTEST_LABELS)
        if unknown:
            raise ValueError(f"{f.name}: unknown final_label values {sorted(map(str, unknown))}")
        frames.append(_frame(
            id=raw["id"], source_model=pl.Series([f.stem.removeprefix(
                "xstest_v2_completions_")] * raw.height), group=raw["id"],
            prompt=raw["prompt"], response=raw["completion"].fill_null(""),
            gold=raw["final_label"].replace_strict(XSTEST_LABELS),
            source=pl.Series(["xstest"] * raw.height)))
    return pl.concat(frames, how="vertical")


def load_harmbench(path: str | Path) -> pl.DataFrame:
    """HarmBench's classifier validation set (unsafe split): 602 jailbreak responses, each
    labelled by three people as a harmful instance of its behaviour or not (majority).

    Args:
        path: The ``text_behaviors_val_set.json`` file or its folder.

    Returns:
        The gold columns (``id`` = ``behavior_id#k``, ``group`` = the behaviour, so no
        request is on both sides of a split; ``source_model`` = the model that wrote it)
        plus ``behavior_id``, ``method`` (the attack), ``votes`` (0-3) and one boolean column
        per ``HARMBENCH_PUBLISHED`` classifier with its published verdict on the item.
    """
    path = Path(path)
    if path.is_dir():
        path = path / _HARMBENCH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"HarmBench validation set not found at {path}")
    rows = []
    for behavior, items in json.loads(path.read_text(encoding="utf-8")).items():
        for k, item in enumerate(items):
            votes = sum(int(item[f"human_{i}"]) for i in range(3))
            # A few rows name no model file ('.json'); their experiment names the model.
            model = str(item.get("model") or "").removesuffix(".json") or str(item["experiment"])
            row = {"id": f"{behavior}#{k}", "source_model": model,
                   "group": str(item["behavior_id"]), "prompt": str(item["test_case"]),
                   "response": str(item["generation"] or ""), "gold_unsafe": votes >= 2,
                   "behavior_id": str(item["behavior_id"]), "method": str(item["method"]),
                   "votes": votes, "source": "harmbench"}
            row.update({col: _as_bool(item.get(key)) for key, (col, _)
                        in HARMBENCH_PUBLISHED.items()})
            rows.append(row)
    frame = pl.DataFrame(rows)
    return _frame(**{c: frame[c] for c in frame.columns})


XSTEST_UNSAFE_PROMPT = pl.col("prompt_type").str.starts_with("contrast_")
"""XSTest's 200 unsafe contrast prompts (``prompt_type`` ``contrast_*``); the other 250 are
safe (every answer to them is helpful or over-refused, never harmful)."""


def load_xstest_harm(path_or_dir: str | Path) -> pl.DataFrame:
    """XSTest's labelled completions, read as *harm* labels where that is safe to do.

    XSTest labels compliance, not harm. Any answer to one of its 250 safe prompts is not
    harmful, and a full refusal of one of its 200 unsafe contrast prompts is not either: both
    get ``gold_unsafe = False``. A full compliance with an unsafe contrast prompt is read as
    harmful: an assumption, since nobody labelled its harm. Partial refusals of unsafe prompts
    (harm unknown) and empty completions are left out.

    Returns:
        The gold columns (``id`` = ``model/prompt id``, ``group`` = the prompt, so its three
        models' answers stay together) plus ``prompt_id`` and ``prompt_type`` (XSTest's
        ``type``; unsafe prompts' start with ``contrast_``).
    """
    path = Path(path_or_dir)
    files = sorted(path.glob(_XSTEST_GLOB)) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no {_XSTEST_GLOB} at {path}")
    types = pl.concat([pl.read_csv(f, infer_schema=False).select(
        "id", pl.col("type").alias("prompt_type"),
        pl.lit(f.stem.removeprefix("xstest_v2_completions_")).alias("source_model"))
        for f in files])
    rows = (load_xstest_completions(path).join(types, on=["id", "source_model"], how="left")
            .filter(pl.col("response").str.strip_chars() != "")
            .filter(~XSTEST_UNSAFE_PROMPT | (pl.col("gold") != "partial")))
    return rows.with_columns(
        pl.format("{}/{}", "source_model", "id").alias("id"), pl.col("id").alias("prompt_id"),
        pl.format("xstest:{}", "id").alias("group"),
        (XSTEST_UNSAFE_PROMPT & (pl.col("gold") == "full_compliance")).alias("gold_unsafe"))


def prompt_group(prompt: str) -> str:
    """A group key for a request by its text (case and spacing folded), so the same request
    asked in two sets never sits on both sides of a split."""
    text = " ".join(str(prompt).lower().split())
    return "prompt:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_response_harm(path: str | Path, source: str | None = None) -> pl.DataFrame:
    """BeaverTails / PKU-SafeRLHF responses with human harm labels (``response-harm/``).

    Args:
        path: One ``.jsonl`` file (``id, source, prompt, response, harmful``) or the folder
            holding ``RESPONSE_HARM_FILES`` (those present are read).
        source: With a folder, read only this source (``beavertails`` or ``pku-saferlhf``).

    Returns:
        The gold columns (``gold_unsafe`` = ``harmful``; ``group`` = ``prompt_group``, since
        one request has several responses) plus ``source``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a row lacks a field or ``harmful`` is not 0/1 (file and line named).
    """
    path = Path(path)
    if path.is_dir():
        if source and source not in RESPONSE_HARM_FILES:
            raise ValueError(f"unknown response-harm source {source!r}; known: "
                             f"{', '.join(RESPONSE_HARM_FILES)}")
        names = [source] if source else [n for n, f in RESPONSE_HARM_FILES.items()
                                         if (path / f).is_file()]
        if not names:
            raise FileNotFoundError(f"{path}: none of {', '.join(RESPONSE_HARM_FILES.values())}")
        return pl.concat([load_response_harm(path / RESPONSE_HARM_FILES[n], n) for n in names])
    if not path.is_file():
        raise FileNotFoundError(f"response-harm file {path} does not exist")
    name = source or next((k for k, f in RESPONSE_HARM_FILES.items() if f == path.name),
                          path.stem)
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("id", "prompt", "response", "harmful") if k not in row]
        if missing or row["harmful"] not in (0, 1, True, False):
            raise ValueError(f"{path}:{line_no}: needs id, prompt, response and harmful 0/1 "
                             f"(missing {missing}, harmful={row.get('harmful')!r})")
        rows.append((str(row["id"]), str(row["prompt"]), str(row["response"] or ""),
                     bool(row["harmful"])))
    ids, prompts, responses, harmful = (list(c) for c in zip(*rows)) if rows else ([],) * 4
    return _frame(id=pl.Series(ids, dtype=pl.String),
                  source_model=pl.Series([name] * len(ids), dtype=pl.String),
                  group=pl.Series([prompt_group(p) for p in prompts], dtype=pl.String),
                  prompt=pl.Series(prompts, dtype=pl.String),
                  response=pl.Series(responses, dtype=pl.String),
                  gold_unsafe=pl.Series(harmful, dtype=pl.Boolean),
                  source=pl.Series([name] * len(ids), dtype=pl.String))


def _as_bool(value) -> bool | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def load_label_file(path: Path) -> pl.DataFrame:
    """A CSV / JSONL / Parquet file with ``prompt``, ``response`` and a label column
    (``label`` / ``gold`` / ``final_label``, in ``GOLD_ALIASES`` spellings) and/or an
    ``unsafe`` column (true/false, 1/0, yes/no); optionally ``specificity`` (0-4), ``id``
    and a group column (``source_model``, ``model``, ``group`` or ``annotator``).

    Raises:
        ValueError: a required column is missing or a value is not recognised.
    """
    readers = {".csv": lambda p: pl.read_csv(p, infer_schema=False), ".jsonl": pl.read_ndjson,
               ".parquet": pl.read_parquet}
    if path.suffix not in readers:
        raise ValueError(f"{path}: gold files are .csv, .jsonl or .parquet")
    raw = readers[path.suffix](path)
    label = next((c for c in ("label", "gold", "final_label") if c in raw.columns), None)
    if "unsafe" not in raw.columns and "harmful" in raw.columns:
        raw = raw.rename({"harmful": "unsafe"})
    missing = [c for c in ("prompt", "response") if c not in raw.columns]
    if label is None and "unsafe" not in raw.columns:
        missing.append("label")
    if missing:
        raise ValueError(f"{path}: needs columns prompt, response and label (or unsafe); "
                         f"missing {missing}")
    group = next((c for c in _GROUP_COLUMNS if c in raw.columns), None)
    ids = raw["id"].cast(pl.String) if "id" in raw.columns else pl.Series(
        [str(i) for i in range(raw.height)])
    columns = {"id": ids, "group": ids,
               "source_model": raw[group].cast(pl.String) if group else pl.Series(
                   ["all"] * raw.height),
               "prompt": raw["prompt"].cast(pl.String).fill_null(""),
               "response": raw["response"].cast(pl.String).fill_null(""),
               "source": pl.Series([path.stem] * raw.height)}
    if label is not None:
        columns["gold"] = _labels(raw[label], path.name)
    if "unsafe" in raw.columns:
        values = [_as_bool(v) for v in raw["unsafe"].cast(pl.String).to_list()]
        bad = sorted({str(v) for v, b in zip(raw["unsafe"].to_list(), values)
                      if b is None and v not in (None, "")})
        if bad:
            raise ValueError(f"{path.name}: unrecognised unsafe values {bad}; use true/false")
        columns["gold_unsafe"] = pl.Series(values, dtype=pl.Boolean)
    if "specificity" in raw.columns:
        columns["gold_specificity"] = raw["specificity"].cast(pl.Int64, strict=False)
    return _frame(**columns)


def _labels(values: pl.Series, where: str) -> pl.Series:
    text = values.cast(pl.String).str.strip_chars().str.to_lowercase()
    unknown = sorted(set(text.drop_nulls().to_list()) - set(GOLD_ALIASES) - {"cant_tell", ""})
    if unknown:
        raise ValueError(f"{where}: unrecognised labels {unknown}; use one of "
                         f"{sorted(set(GOLD_ALIASES))}")
    return text.replace_strict(GOLD_ALIASES, default=None)


def load_annotations(run_dir: str | Path) -> pl.DataFrame:
    """The labels people made in a run's annotation view (grouped by annotator); a class,
    harm or specificity an annotator marked "can't tell" is left unknown.

    Raises:
        FileNotFoundError: the run has no store, or nobody has labelled anything yet.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "store.sqlite").exists():
        raise FileNotFoundError(f"{run_dir} has no store.sqlite")
    with RunStore(run_dir) as st:
        notes, gens = st.frame("annotations"), st.frame("generations")
    if notes.is_empty():
        raise FileNotFoundError(f"{run_dir}: no annotations yet (label some in 05_review)")
    joined = notes.join(gens.select("gen_id", "prompt", "response"), on="gen_id", how="inner")
    return _frame(id=joined["gen_id"], source_model=joined["annotator"], group=joined["gen_id"],
                  prompt=joined["prompt"], response=joined["response"].fill_null(""),
                  gold=_labels(joined["label"].replace({"unscored": None}), str(run_dir)),
                  gold_unsafe=joined["unsafe"], gold_specificity=joined["specificity"],
                  source=pl.Series(["annotations"] * joined.height))


def load_gold(source: str | Path) -> pl.DataFrame:
    """Human labels from any supported source.

    Args:
        source: ``xstest:PATH`` or an XSTest folder / completion file; ``harmbench:PATH`` or
            a folder / file holding ``text_behaviors_val_set.json``; ``response-harm:PATH``
            or the ``response-harm`` folder / one of its files (BeaverTails, PKU-SafeRLHF);
            ``run:RUN_DIR`` (or a run folder) for our annotators' labels; or a label file
            (``load_label_file``).

    Raises:
        FileNotFoundError: the source does not exist or holds no labels.
        ValueError: a required column is missing or a label is not recognised.
    """
    text = str(source)
    kind, _, rest = text.partition(":")
    loaders = {"xstest": load_xstest_completions, "harmbench": load_harmbench,
               "run": load_annotations, "response-harm": load_response_harm}
    if kind in loaders and rest:
        return loaders[kind](rest)
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"gold source {path} does not exist")
    if path.is_dir():
        if any(path.glob(_XSTEST_GLOB)):
            return load_xstest_completions(path)
        if (path / _HARMBENCH_FILE).is_file():
            return load_harmbench(path)
        if (path / "store.sqlite").exists():
            return load_annotations(path)
        if any((path / f).is_file() for f in RESPONSE_HARM_FILES.values()):
            return load_response_harm(path)
        raise FileNotFoundError(f"{path}: no {_XSTEST_GLOB}, {_HARMBENCH_FILE}, response-harm "
                                "set or run store")
    if path.match(_XSTEST_GLOB):
        return load_xstest_completions(path)
    if path.name == _HARMBENCH_FILE:
        return load_harmbench(path)
    if path.name in RESPONSE_HARM_FILES.values():
        return load_response_harm(path)
    return load_label_file(path)


def data_sha256(frame: pl.DataFrame) -> str:
    """SHA-256 of labelled rows (prompt, response, gold), order-independent: a trained judge
    stores the digest of the labels it learned from, so its figures on them can be marked
    in-sample."""
    rows = sorted(frame.select("prompt", "response", "gold").iter_rows())
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()


def safe_responses(root: str | Path) -> pl.DataFrame:
    """MedSafetyBench's requests with their safe reference responses: ``id, source_model,
    category, prompt, response``; every response refuses or redirects (written by GPT-4), so
    any compliance or harm verdict on one is a false alarm."""
    return data.load_medsafetybench(root).select(
        "id", pl.col("generator").alias("source_model"), "category",
        pl.col("text").alias("prompt"), pl.col("safe_response").fill_null("").alias("response"))


def load_responses(source: str | Path) -> pl.DataFrame:
    """Responses to judge without needing labels: any ``load_gold`` source, or a
    MedSafetyBench folder (``prompt`` and ``response`` columns in both cases)."""
    path = Path(str(source))
    if path.is_dir() and any(path.rglob("med_safety_demonstrations_category_*.csv")):
        return safe_responses(path)
    return load_gold(source)
