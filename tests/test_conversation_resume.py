"""Conversations never lose and never repeat a turn: kill -9 mid-conversation, resume, and get
the records of an uninterrupted run; the attacker's path with the embedded model."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from medharm_nb import store
from medharm_nb.cli import app

STUDY = {
    "name": "talk",
    "queries": {"source": "medharm-open", "per_cell": 1, "categories": ["toxicology"],
                "framings": ["clinical"]},
    "models": [{"name": "plain", "source": "smollm2-135m"}],
    # One prompt per group: a commit per turn, so the kill lands between two of them.
    "generation": {"max_new_tokens": 16, "batch_size": 1},
    "judges": ["rules"],
    "conversations": {
        "scripted": ["escalate-2"],
        "attacker": {"model": {"name": "att", "source": "smollm2-135m"}, "turns": 2,
                     "queries": 1, "judge": "rules",
                     "generation": {"max_new_tokens": 8, "batch_size": 1}}},
}
COMMAND = ["generate", "--max-new-tokens", "4"]


def _config(tmp_path) -> str:
    path = tmp_path / "configs" / "talk.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(STUDY))
    return str(path)


def _turns_stored(run_dir) -> int:
    """Conversation turns in the store (their query ids are '<conv>#<turn>'), read the way
    another process would; 0 until the table exists."""
    try:
        con = sqlite3.connect(f"file:{run_dir / store.STORE_FILE}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM generations WHERE query_id LIKE '%#%'"
                               ).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_a_run_killed_mid_conversation_resumes_to_the_records_of_an_uninterrupted_run(
        tmp_path, one_torch_thread):
    config = _config(tmp_path)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medharm_nb.cli", COMMAND[0], config, "--run-dir",
             str(killed), *COMMAND[1:]], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while _turns_stored(killed) == 0:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no turn was stored within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = store.load_generations(killed).height
    assert kept >= 3, f"the kill should land after a turn was stored; {kept} stored"
    assert store.read_manifest(killed)["status"] == "started"

    resumed = CliRunner().invoke(app, [COMMAND[0], config, "--run-dir", str(killed),
                                       *COMMAND[1:]])
    assert resumed.exit_code == 0, resumed.output
    uninterrupted = CliRunner().invoke(app, [COMMAND[0], config, "--run-dir", str(clean),
                                             *COMMAND[1:]])
    assert uninterrupted.exit_code == 0, uninterrupted.output
    assert "plain · conversations: total 4, cached 0, generated 4, failed 0" in \
        uninterrupted.output

    # Nothing stored was asked again, and everything missing was asked once.
    stats = {r["model"]: r for r in store.read_manifest(killed)["stages"]["generate"]}
    assert set(stats) == {"plain", "plain · conversations", "plain · attacked",
                          "attacker att -> plain"}
    assert sum(r["cached"] for r in stats.values()) == kept
    total = store.load_generations(clean).height
    assert kept < total, f"the kill should land mid-run; {kept} of {total} stored"
    assert sum(r["generated"] for r in stats.values()) == total - kept

    # Every record once, greedy text equal to the uninterrupted run's; the same turns.
    columns = ["gen_id", "model", "query_id", "variant", "prompt", "response", "error"]
    after = store.load_generations(killed).select(columns).sort("gen_id")
    reference = store.load_generations(clean).select(columns).sort("gen_id")
    assert after["gen_id"].n_unique() == after.height and after.equals(reference)
    keys = ["model", "conv_id", "sample", "turn"]
    turns = store.read_table(killed, "turns").sort(keys)
    assert turns.equals(store.read_table(clean, "turns").sort(keys))
    assert turns.filter(pl.col("kind") == "scripted").height == 4
    attacked = turns.filter(pl.col("kind") == "attacker")
    assert attacked.height >= 1 and attacked["attacker_gen_id"].null_count() == 0
    assert set(attacked["stop_reason"]) <= {"success", "refused", "budget", "attacker_empty"}
    # A turn answers the model's own earlier answer: turn 2's history holds turn 1's.
    for conv in turns.filter(pl.col("turn") == 2).iter_rows(named=True):
        first = turns.filter((pl.col("conv_id") == conv["conv_id"]) & (pl.col("turn") == 1))
        assert first["response"][0] in conv["history"]

    # Once more: nothing is asked at all.
    again = CliRunner().invoke(app, [COMMAND[0], config, "--run-dir", str(clean),
                                     *COMMAND[1:]])
    assert again.exit_code == 0, again.output
    stats = store.read_manifest(clean)["stages"]["generate"]
    assert sum(r["generated"] for r in stats) == 0
