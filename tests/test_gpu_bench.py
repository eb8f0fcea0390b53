"""benchmarks/gpu_bench.py on a CPU: its phases and the engine's split, with the tiny random
model the script builds (``--tiny``); no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_bench_reports_the_engine_split_on_the_tiny_model(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "tiny.json"
    results = bench.main(["--tiny", "--quant", "none", "--n", "24", "--naive-n", "1",
                          "--batch-sizes", "1,4", "--engine-batch", "8",
                          "--raw-workload-batch", "8", "--folder", str(tmp_path / "model"),
                          "--out", str(out)])
    engine = results["formats"]["none"]["engine"]
    split = engine["split"]
    assert engine["prompts"] == 24 and engine["rows"] == 8
    assert split["steps"] == sum(g["steps"] for g in split["by_rows"])
    assert split["by_rows"][0]["rows"] == "8"  # the full batch first, then as it shrinks
    # Each answer's first token comes from its prefill, the others from decoding steps.
    assert split["row_steps"] >= engine["tokens"] - engine["prompts"]
    assert 0 < split["other_share"] < 1 and split["prefill_tokens"] > 0
    assert json.loads(out.read_text())["formats"]["none"]["engine"]["split"] == split
    printed = capsys.readouterr().out
    assert "[bf16] engine split: forward" in printed and "[bf16]   rows         8:" in printed
