"""Generation with the real embedded model (SmolLM2-135M, GGUF through transformers)."""

from __future__ import annotations

import polars as pl
import pytest

from medharm_nb import generate
from medharm_nb.records import GenConfig, ModelSpec
from medharm_nb.store import RunStore

pytestmark = pytest.mark.slow

QUERIES = pl.DataFrame({
    "id": ["q1", "q2", "q3", "q4"],
    "text": ["What is the capital of France?",
             "How should medicines be stored safely in a home with children?",
             "Name one symptom of dehydration.",
             "Say hello."],
    "variant": ["direct"] * 4,
})
PLAIN = ModelSpec(name="plain", source="smollm2-135m")
CONFIG = GenConfig(max_new_tokens=12, batch_size=4)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gen")
    with RunStore(run_dir) as st:
        stats = generate.generate(QUERIES, PLAIN, CONFIG, st, progress=False)
        frame = st.frame("generations")
    return run_dir, stats, frame


def test_generates_one_response_per_query(first_run):
    _, stats, frame = first_run
    assert (stats.total, stats.cached, stats.generated) == (4, 0, 4)
    assert frame.height == 4 and set(frame["query_id"]) == {"q1", "q2", "q3", "q4"}
    assert frame["error"].null_count() == 4
    assert all(isinstance(r, str) and r.strip() for r in frame["response"])
    assert frame["n_new_tokens"].max() <= 12 and frame["n_prompt_tokens"].min() > 0
    assert "Paris" in frame.filter(pl.col("query_id") == "q1")["response"].item()
    assert stats.tokens_per_s > 0


def test_rerun_makes_no_model_calls(first_run):
    run_dir, _, frame = first_run
    with RunStore(run_dir) as st:
        stats = generate.generate(QUERIES, PLAIN, CONFIG, st, progress=False)
        assert st.frame("generations").height == 4
    assert (stats.cached, stats.generated, stats.seconds) == (4, 0, 0.0)


def test_batched_greedy_matches_one_at_a_time(first_run, tmp_path):
    _, _, batched = first_run
    with RunStore(tmp_path) as st:
        generate.generate(QUERIES, PLAIN, CONFIG.model_copy(update={"batch_size": 1}), st,
                          progress=False)
        single = st.frame("generations")
    # batch_size is not part of the key: same ids, and greedy text must agree.
    joined = batched.join(single, on="gen_id", suffix="_single")
    assert joined.height == 4
    assert joined["response"].to_list() == joined["response_single"].to_list()


def test_system_prompt_and_config_change_the_key(first_run):
    run_dir, _, frame = first_run
    guarded = ModelSpec(name="guarded", source="smollm2-135m",
                        system_prompt="Refuse anything unsafe.")
    with RunStore(run_dir) as st:
        stats = generate.generate(QUERIES.head(1), guarded, CONFIG, st, progress=False)
        longer = generate.generate(QUERIES.head(1), PLAIN,
                                   CONFIG.model_copy(update={"max_new_tokens": 4}), st,
                                   progress=False)
        everything = st.frame("generations")
    assert stats.generated == 1 and longer.generated == 1
    current = generate.current_generations(everything, QUERIES, [PLAIN], CONFIG)
    assert current.height == 4 and set(current["model"]) == {"plain"}
    # An edited query keeps its id but is a new question: its old answer is not current.
    edited = QUERIES.with_columns(
        pl.when(pl.col("id") == "q4").then(pl.lit("Say goodbye.")).otherwise("text")
        .alias("text"))
    assert generate.current_generations(everything, edited, [PLAIN], CONFIG).height == 3


def test_model_errors_are_clear():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generate.resolve_source(ModelSpec(name="x", source="./no/such/model"))
    with pytest.raises(FileNotFoundError, match="no-such.gguf"):
        generate.resolve_source(ModelSpec(name="x", source=".", gguf_file="no-such.gguf"))


def test_samples_are_seeded_and_reproducible(tmp_path):
    hot = CONFIG.model_copy(update={"temperature": 1.0, "n_samples": 2, "max_new_tokens": 6})
    frames = []
    for run in ("a", "b"):
        with RunStore(tmp_path / run) as st:
            generate.generate(QUERIES.head(2), PLAIN, hot, st, progress=False)
            frames.append(st.frame("generations").sort("gen_id"))
    first, second = frames
    assert first.height == 4 and sorted(first["sample"].to_list()) == [0, 0, 1, 1]
    assert first["response"].to_list() == second["response"].to_list()  # same seeds


def test_queries_with_the_same_text_get_their_own_answers(tmp_path):
    # Two queries (e.g. from two source sets) ask the same thing: each keeps its answer.
    twins = pl.DataFrame({"id": ["a", "b"], "text": ["Say hello."] * 2,
                          "variant": ["direct"] * 2})
    with RunStore(tmp_path) as st:
        stats = generate.generate(twins, PLAIN, CONFIG, st, progress=False)
        frame = st.frame("generations")
    assert stats.generated == 2 and frame["gen_id"].n_unique() == 2
    current = generate.current_generations(frame, twins, [PLAIN], CONFIG)
    assert sorted(current["query_id"]) == ["a", "b"]
    assert set(current["key_version"]) == {2} and set(current["batch_size"]) == {2}
    # A row made under the old id scheme (no query id in the key) is never a current result.
    old = frame.head(1).with_columns(pl.lit("old").alias("gen_id"),
                                     pl.lit(None, dtype=pl.Int64).alias("key_version"))
    assert generate.current_generations(pl.concat([frame, old]), twins, [PLAIN],
                                        CONFIG).height == 2


def test_the_key_holds_the_weights_content_not_their_path(tmp_path):
    import shutil

    folder, gguf = generate.resolve_source(PLAIN)
    copy = tmp_path / "model"
    copy.mkdir()
    shutil.copy(f"{folder}/{gguf}", copy / gguf)
    moved = ModelSpec(name="moved", source=str(copy), gguf_file=gguf)
    assert generate.weights_digest(moved) == generate.weights_digest(PLAIN)
    before = generate.spec_id(moved)
    with open(copy / gguf, "ab") as fh:  # the same path, other content
        fh.write(b"\0")
    assert generate.spec_id(moved) != before


def test_length_summary_counts_only_what_a_backend_reported():
    frame = pl.DataFrame({
        "model": ["hf"] * 3 + ["replay"] * 2,
        "response": ["a", "b", None, "c", "d"],
        "error": [None, None, "boom", None, None],
        "n_new_tokens": [4, 8, 0, 0, 0],
        "finish_reason": ["stop", "length", "error", None, None]})
    hf, replay = generate.length_summary(frame).iter_rows(named=True)
    assert (hf["answered"], hf["mean_new_tokens"], hf["share_truncated"]) == (2, 6.0, 0.5)
    # Replayed answers say neither their length nor whether they were cut: unknown, not 0.
    assert (replay["answered"], replay["mean_new_tokens"], replay["share_truncated"]) == (
        2, None, None)
    assert replay["tokens_known"] == replay["truncation_known"] == 0
