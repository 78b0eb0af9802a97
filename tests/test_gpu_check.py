"""experiments/gpu_check.sh in --cpu mode: every stage runs, the JSON and the table it writes say so.

Tiny on purpose (one setup, batch 8, a few steps, a fast test file): what is tested is the script,
its stages and its report, not the numbers (the GPU run measures those).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAMBDA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lambda_phage.fa.gz"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh"), "--cpu", str(out), "--fasta", str(LAMBDA),
         "--batches", "8", "--configs", "single", "--conv-impls", "flax,cpu", "--dtypes", "float32",
         "--tests", "tests/test_tokens.py"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.txt").read_text()


def test_every_stage_runs_and_succeeds(report):
    out, result, _ = report
    has_torch = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0
    expected = {"tests", "jax_b8", "loader", "train", "evaluate"} | ({"torch_b8"} if has_torch else set())
    assert set(result["stages"]) == expected
    assert result["ok"] and all(s["exit_code"] == 0 for s in result["stages"].values())
    assert result["mode"] == "cpu" and "jax" in result["environment"]
    assert sorted(p.name for p in out.iterdir()) == ["benchmarks.log", "env.txt", "gpu_check.json", "gpu_check.txt",
                                                     "tests.log", "train.log"]


def test_rows_cover_both_conv_impls_and_the_torch_baseline(report):
    _, result, table = report
    jax_rows = [r for r in result["rows"] if r["implementation"] == "jaxseq"]
    assert {r["variant"] for r in jax_rows} == {f"{impl} float32 {mode}" for impl in ("flax", "cpu")
                                                 for mode in ("compute", "end_to_end")}
    assert all(r["batch_size"] == 8 and r["setup"] == "single" and r["windows_per_sec"] > 0 for r in result["rows"])
    if "torch_b8" in result["stages"]:
        torch_rows = {r["variant"] for r in result["rows"] if r["implementation"] == "torch"}
        assert torch_rows == {"cpu float32 compute", "cpu bfloat16 compute"}
    for r in result["rows"]:
        assert f"{r['windows_per_sec']:12,.0f}" in table
    loader = result["loader"]
    assert loader["batch_size"] == 8 and [r["prefetch"] for r in loader["rows"]] == [0, 2]
    assert loader["windows_per_sec"] > 0 and loader["step_demand_windows_per_sec"] > 0
    assert f"loader (one core, batch 8): {loader['windows_per_sec']:,.0f} windows/s" in table


def test_aemd_trains_and_its_test_accuracy_is_reported(report):
    _, result, table = report
    train = result["train_aemd_ecoli"]
    assert train["exit_code"] == 0 and train["step"] == 6
    assert 0.0 < train["test_accuracy"] <= 1.0
    assert train["final_metrics"]["step"] == 6
    assert f"step 6, test accuracy {train['test_accuracy']:.4f}" in table
