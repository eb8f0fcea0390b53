"""Never lose, never repeat: kill -9 and resume, the run-folder lock, retried failures."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from medharm_nb import generate, store
from medharm_nb.cli import app
from medharm_nb.generate import Output
from medharm_nb.records import GenConfig, ModelSpec

STUDY = {
    "name": "resume",
    "queries": {"source": "medharm-open", "per_cell": 1, "categories": ["toxicology"],
                "framings": ["clinical", "educational"]},
    "models": [{"name": "plain", "source": "smollm2-135m"},
               {"name": "guarded", "source": "smollm2-135m",
                "system_prompt": "You are a careful medical assistant."}],
    # One prompt per group: many commits, so the kill lands between two of them.
    "generation": {"max_new_tokens": 16, "batch_size": 1},
}
COMMAND = ["generate", "--max-new-tokens", "4"]


def _config(tmp_path) -> str:
    path = tmp_path / "configs" / "study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(STUDY))
    return str(path)


def _stored(run_dir) -> int:
    """Rows in the store, read the way another process would (0 until the table exists)."""
    try:
        con = sqlite3.connect(f"file:{run_dir / store.STORE_FILE}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM generations").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def _start_generate(config: str, run_dir, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medharm_nb.cli", *COMMAND[:1], config, "--run-dir",
         str(run_dir), *COMMAND[1:]], stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_generate_resumes_to_the_records_of_an_uninterrupted_run(tmp_path,
                                                                       one_torch_thread):
    config = _config(tmp_path)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = _start_generate(config, killed, log)
        deadline = time.monotonic() + 300
        while _stored(killed) == 0:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no group was stored within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = _stored(killed)
    assert 1 <= kept < 8, f"the kill should land mid-run; {kept} of 8 stored"
    assert store.read_manifest(killed)["status"] == "started"  # the crash stays visible

    # The same command again: the dead process's lock does not block, nothing is redone.
    resumed = CliRunner().invoke(app, [COMMAND[0], config, "--run-dir", str(killed),
                                       *COMMAND[1:]])
    assert resumed.exit_code == 0, resumed.output
    uninterrupted = CliRunner().invoke(app, [COMMAND[0], config, "--run-dir", str(clean),
                                             *COMMAND[1:]])
    assert uninterrupted.exit_code == 0, uninterrupted.output
    assert "plain: total 4, cached 0, generated 4, failed 0" in uninterrupted.output

    manifest = store.read_manifest(killed)
    stats = {row["model"]: row for row in manifest["stages"]["generate"]}
    assert sum(row["cached"] for row in stats.values()) == kept
    assert sum(row["generated"] for row in stats.values()) == 8 - kept
    for row in stats.values():
        assert f"{row['model']}: total 4, cached {row['cached']}, " in resumed.output
        assert row["failed"] == 0 and row["total"] == 4
    assert manifest["status"] == "success" and manifest["mode"] == "generate"
    assert manifest["config"]["generation"]["max_new_tokens"] == 4
    assert manifest["device"] and manifest["versions"]["torch"] and manifest["seconds"] >= 0
    assert len(next(iter(manifest["inputs"]["models"]["plain"]["files"].values()))) == 64
    generating = [row for row in stats.values() if row["generated"]]
    assert all(r["tokens_per_s"] > 0 and r["wall_seconds"] > 0 for r in generating)

    # Every record exactly once, and greedy text equal to the uninterrupted run's.
    columns = ["gen_id", "model", "query_id", "variant", "sample", "response", "error"]
    after_kill = store.load_generations(killed).select(columns).sort("gen_id")
    reference = store.load_generations(clean).select(columns).sort("gen_id")
    assert after_kill.height == 8 and after_kill["gen_id"].n_unique() == 8
    assert after_kill["error"].null_count() == 8
    assert after_kill.equals(reference)
    assert store.read_table(killed, "generations").height == 8
    assert store.read_table(killed, "queries").height == 4


def test_a_second_generator_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from medharm_nb.store import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(300)",
         str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(store.RunLocked, match=f"pid {holder.pid} on .*, since 20"):
            store.RunLock(run_dir).acquire()
        # The command is refused before it writes or loads anything.
        result = CliRunner().invoke(app, ["generate", _config(tmp_path), "--run-dir",
                                          str(run_dir)])
        assert result.exit_code == 1
        assert f"{run_dir} is in use: another process is generating into it: pid " \
               f"{holder.pid}" in result.output
        # So is the notebook series, before its manifest would overwrite the holder's.
        result = CliRunner().invoke(app, ["run", _config(tmp_path), "--run-dir", str(run_dir)])
        assert result.exit_code == 1 and f"is in use: another process is generating into " \
            f"it: pid {holder.pid}" in result.output
        assert sorted(p.name for p in run_dir.iterdir()) == [store.LOCK_FILE]
        with store.RunStore(tmp_path / "mine") as other:  # another folder is free
            with pytest.raises(store.RunLocked):
                generate.generate(pl.DataFrame({"id": ["q"], "text": ["Hi."]}),
                                  ModelSpec(name="f", source="fake"), GenConfig(),
                                  store.RunStore(run_dir), backend=_Flaky(set()))
            generate.generate(pl.DataFrame({"id": ["q"], "text": ["Hi."]}),
                              ModelSpec(name="f", source="fake"), GenConfig(), other,
                              backend=_Flaky(set()), progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock; its stale note in the file does not matter.
    assert str(holder.pid) in (run_dir / store.LOCK_FILE).read_text()
    with store.RunLock(run_dir):
        assert f'"pid": {os.getpid()}' in (run_dir / store.LOCK_FILE).read_text()


class _Flaky:
    """A fake backend (machinery test only): fails the prompts in ``failing``, one way each."""

    def __init__(self, failing: set[str]):
        self.failing = failing
        self.asked: list[str] = []

    def render(self, messages):
        return "\n".join(m["content"] for m in messages)

    def prepare(self):
        pass

    def generate(self, requests, config):
        for r in requests:
            self.asked.append(r.rendered)
            if r.rendered not in self.failing:
                out = Output(f"answer to {r.rendered}", n_new_tokens=3, seconds=0.01)
            elif r.rendered.startswith("A"):
                out = Output(None, error="HTTP 503 after 5 tries")
            elif r.rendered.startswith("B"):  # text and error: still a failure
                out = Output("partial", error="connection reset")
            else:  # neither text nor error
                out = Output(None)
            yield [(r, out)]


def test_failures_are_stored_and_retried_and_a_success_replaces_them(tmp_path):
    queries = pl.DataFrame({"id": ["a", "b", "c", "d"],
                            "text": ["A question.", "B question.", "C question.", "D question."]})
    spec = ModelSpec(name="fake", source="fake")
    with store.RunStore(tmp_path) as st:
        first = _Flaky({"A question.", "B question.", "C question."})
        stats = generate.generate(queries, spec, GenConfig(), st, backend=first, progress=False)
        stored = st.frame("generations").sort("query_id")
        assert (stats.generated, stats.failed, stats.new_tokens) == (1, 3, 3)
        assert stored["response"].to_list() == [None, None, None, "answer to D question."]
        assert stored["error"].to_list() == ["HTTP 503 after 5 tries", "connection reset",
                                             "backend returned no text", None]

        second = _Flaky({"C question."})
        stats = generate.generate(queries, spec, GenConfig(), st, backend=second,
                                  progress=False)
        assert sorted(second.asked) == ["A question.", "B question.", "C question."]
        assert (stats.cached, stats.generated, stats.failed) == (1, 2, 1)

        third = _Flaky(set())
        generate.generate(queries, spec, GenConfig(), st, backend=third, progress=False)
        assert third.asked == ["C question."]
        final = st.frame("generations").sort("query_id")
    assert final.height == 4 and final["error"].null_count() == 4
    assert final["response"].to_list() == [f"answer to {t}" for t in queries["text"]]


def test_a_series_lock_covers_its_kernels_and_refuses_everyone_else(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from medharm_nb.store import RunLock; "
         "lock = RunLock(sys.argv[1], purpose='run').acquire(); print(lock.token, flush=True); "
         "time.sleep(300)", str(run_dir)], stdout=subprocess.PIPE, text=True)
    take = ("import sys; from medharm_nb.store import RunLock, RunLocked\n"
            "try:\n    RunLock(sys.argv[1], purpose='judge').acquire(); print('inside')\n"
            "except RunLocked as err:\n    print('refused:', err)")
    try:
        token = holder.stdout.readline().strip()
        assert len(token) == 16
        # A second series, or a notebook opened by hand, is refused while the first runs.
        with pytest.raises(store.RunLocked, match="running the notebook series in it"):
            store.RunLock(run_dir, purpose="run").acquire()
        result = CliRunner().invoke(app, ["run", _config(tmp_path), "--run-dir", str(run_dir)])
        assert result.exit_code == 1 and "running the notebook series" in result.output
        # A kernel the series started carries its token and works inside the lock ...
        env = {**os.environ, store.LOCK_ENV: token}
        inside = subprocess.run([sys.executable, "-c", take, str(run_dir)], env=env,
                                capture_output=True, text=True, check=True)
        assert inside.stdout.strip() == "inside"
        # ... and a process with another token does not.
        env[store.LOCK_ENV] = "0" * 16
        outside = subprocess.run([sys.executable, "-c", take, str(run_dir)], env=env,
                                 capture_output=True, text=True, check=True)
        assert outside.stdout.startswith("refused:")
        # Nor one that copies what the lock file says: the token itself is never written.
        written = (run_dir / store.LOCK_FILE).read_text()
        assert token not in written
        for value in json.loads(written).values():
            env[store.LOCK_ENV] = str(value)
            copied = subprocess.run([sys.executable, "-c", take, str(run_dir)], env=env,
                                    capture_output=True, text=True, check=True)
            assert copied.stdout.startswith("refused:"), value
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_blocked_request_is_counted_apart_and_not_asked_again(tmp_path):
    class Filtered(_Flaky):
        """Blocks the prompts in ``failing`` as a provider's content filter would."""

        def generate(self, requests, config):
            for r in requests:
                self.asked.append(r.rendered)
                blocked = r.rendered in self.failing
                yield [(r, Output(None, finish_reason="content_filter", block_reason="policy")
                        if blocked else Output(f"answer to {r.rendered}", n_new_tokens=3))]

    queries = pl.DataFrame({"id": ["a", "b", "c"],
                            "text": ["A question.", "B question.", "C question."]})
    spec = ModelSpec(name="fake", source="fake")
    with store.RunStore(tmp_path) as st:
        first = generate.generate(queries, spec, GenConfig(), st,
                                  backend=Filtered({"A question.", "B question."}),
                                  progress=False)
        again = Filtered(set())
        second = generate.generate(queries, spec, GenConfig(), st, backend=again,
                                   progress=False)
        stored = st.frame("generations").sort("query_id")
    assert (first.total, first.cached, first.generated, first.failed, first.blocked) == (
        3, 0, 1, 0, 2)
    assert (second.total, second.cached, second.generated, second.failed, second.blocked) == (
        3, 1, 0, 0, 2)
    assert again.asked == [] and first.new_tokens == 3
    assert stored["block_reason"].to_list() == ["policy", "policy", None]
    assert stored["finish_reason"].to_list()[:2] == ["content_filter"] * 2


KILL_JUDGE = """
import os, signal, sys
import polars as pl
from medharm_nb import judge, store
from medharm_nb.judge.rules import RuleJudge

class DiesMidway(RuleJudge):
    # The real rule judge, killed (SIGKILL, no cleanup) at its 50th response.
    seen = 0
    def judge(self, prompt, response):
        DiesMidway.seen += 1
        if DiesMidway.seen == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().judge(prompt, response)

gens = pl.read_parquet(sys.argv[2])
j = DiesMidway()
with store.RunStore(sys.argv[1]) as st:
    done = st.existing_ids("judgements", judge.judgement_ids(j, gens))
    made = judge.judge_generations(j, gens, progress=False, done=done,
                                   save=lambda part: st.add("judgements", part))
    print("judged", len(made))
"""


def test_a_judge_killed_mid_run_keeps_its_saved_batches_and_resumes_after_them(tmp_path):
    texts = [f"Answer number {i}: please contact poison control." for i in range(80)]
    gens = pl.DataFrame({"gen_id": [f"g{i:02d}" for i in range(80)], "prompt": ["q?"] * 80,
                         "response": texts, "error": [None] * 80},
                        schema_overrides={"error": pl.String})
    gens.write_parquet(tmp_path / "gens.parquet")
    run = [sys.executable, "-c", KILL_JUDGE, str(tmp_path / "run"), str(tmp_path / "gens.parquet")]
    killed = subprocess.run([*run, "50"], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with store.RunStore(tmp_path / "run") as st:
        kept = st.frame("judgements")
    # Batches of 32: the first was saved before the kill, the second was in flight.
    assert kept.height == 32 and kept["gen_id"].to_list() == [f"g{i:02d}" for i in range(32)]
    resumed = subprocess.run([*run, "0"], capture_output=True, text=True, check=True)
    assert resumed.stdout.strip() == "judged 48"  # only what the kill lost
    with store.RunStore(tmp_path / "run") as st:
        assert st.frame("judgements")["gen_id"].n_unique() == 80
