"""experiments/compare_runs.py: reads TensorBoard event files without tensorboard, tabulates and plots runs."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/ lives at the repository root

from experiments import compare_runs  # noqa: E402
from jaxseq import summary  # noqa: E402

# (step, seconds after the writer opened, eval accuracy, eval loss, windows/s)
FAST = [(100, 10.0, 0.50, 1.20, 100.0), (200, 20.0, 0.80, 0.60, 1000.0), (300, 30.0, 0.92, 0.30, 1200.0),
        (400, 40.0, 0.95, 0.20, 1400.0)]
SLOW = [(100, 20.0, 0.40, 1.30, 50.0), (200, 40.0, 0.87, 0.70, 60.0), (300, 60.0, 0.70, 0.50, 70.0),
        (400, 80.0, 0.85, 0.40, 80.0)]


def write_run(workdir: Path, points, marker: str) -> tuple[float, float]:
    """A run directory whose event file holds ``points``; returns the interval in which the writer opened."""
    workdir.mkdir(parents=True)
    (workdir / marker).mkdir() if marker == "checkpoints" else (workdir / marker).write_bytes(b"")
    before = time.time()
    writer = summary.create_writer(workdir)
    after = time.time()
    for step, seconds, accuracy, loss, speed in points:
        for tag, value in (("eval/accuracy", accuracy), ("eval/loss", loss), ("perf/windows_per_sec", speed)):
            writer.add_scalar(tag, value, step, walltime=after + seconds)
    summary.write_scalars(writer, 400, {"train/loss": 0.1})  # real time: before the last eval event
    summary.write_text(writer, 0, "config", "not a scalar")
    summary.write_histograms(writer, 400, "params", {"w": np.arange(5.0)})
    writer.close()
    return before, after


@pytest.fixture()
def two_runs(tmp_path):
    fast = write_run(tmp_path / "jaxseq_run", FAST, "checkpoints")
    slow = write_run(tmp_path / "torch_run", SLOW, "model.pt")
    return tmp_path, fast, slow


def test_summary_rows_hold_the_written_values(two_runs):
    root, (before, after), _ = two_runs
    rows = compare_runs.compare([root / "jaxseq_run", root / "torch_run"], target_accuracy=0.9, out=None)
    fast, slow = rows
    assert (fast["label"], fast["implementation"]) == ("jaxseq_run", "jaxseq")
    assert (slow["label"], slow["implementation"]) == ("torch_run", "torch")
    assert fast["final_accuracy"] == pytest.approx(0.95) and fast["best_accuracy"] == pytest.approx(0.95)
    assert slow["final_accuracy"] == pytest.approx(0.85) and slow["best_accuracy"] == pytest.approx(0.87)
    assert fast["final_loss"] == pytest.approx(0.20) and slow["final_loss"] == pytest.approx(0.40)
    assert fast["steps"] == slow["steps"] == 400
    # The first logging interval (start-up, compilation) is left out of the mean speed.
    assert fast["windows_per_sec"] == pytest.approx(1200.0) and slow["windows_per_sec"] == pytest.approx(70.0)
    # Times count from the writer's first event (written when it opened, between `before` and `after`).
    assert 30.0 <= fast["time_to_target"] <= 30.0 + (after - before) + 1e-3
    assert fast["step_to_target"] == 300
    assert 40.0 <= fast["wall_time"] <= 40.0 + (after - before) + 1e-3
    assert slow["time_to_target"] is None and slow["step_to_target"] is None
    assert 80.0 <= slow["wall_time"] <= 81.0


def test_table_and_png(two_runs, capsys):
    root, _, _ = two_runs
    out, js = root / "compare.png", root / "compare.json"
    code = compare_runs.main([str(root / "jaxseq_run"), str(root / "torch_run"), "--target-accuracy", "0.9",
                              "--out", str(out), "--json", str(js), "--labels", "jax,torch"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    header, jax_row, torch_row = lines[0], lines[2], lines[3]
    assert "final acc" in header and "t→0.9 s" in header and "step→0.9" in header
    assert jax_row.split()[:6] == ["jax", "jaxseq", "0.9500", "0.9500", "0.2000", "400"]
    assert jax_row.split()[7] == "1,200" and jax_row.split()[-1] == "300"
    assert torch_row.split()[:6] == ["torch", "torch", "0.8500", "0.8700", "0.4000", "400"]
    assert torch_row.split()[-2:] == ["-", "-"]

    image = Image.open(out)
    assert image.size == (1000, 700)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert len(colours) > 20  # not blank
    # One line per run in matplotlib's first two cycle colours.
    assert (31, 119, 180) in colours and (255, 127, 14) in colours

    saved = json.loads(js.read_text())
    assert [r["label"] for r in saved["runs"]] == ["jax", "torch"]
    accuracy = saved["series_step_seconds_value"]["jax"]["eval/accuracy"]
    assert [p[0] for p in accuracy] == [100, 200, 300, 400]
    assert [p[2] for p in accuracy] == pytest.approx([0.5, 0.8, 0.92, 0.95])


def test_reader_checks_crcs_and_tolerates_a_truncated_last_record(two_runs):
    root, _, _ = two_runs
    run = compare_runs.read_run(root / "jaxseq_run", check_crc=True)
    assert [s.value for s in run.scalars["eval/loss"]] == pytest.approx([1.2, 0.6, 0.3, 0.2])
    (path,) = compare_runs.event_files(root / "jaxseq_run")
    assert summary.event_files(root / "jaxseq_run" / "tensorboard") == [path]
    data = path.read_bytes()
    path.write_bytes(data + data[:20])  # a writer killed mid-record
    assert len(compare_runs.read_run(root / "jaxseq_run").scalars["eval/loss"]) == 4
    path.write_bytes(data[:8] + b"\0\0\0\0" + data[12:])
    with pytest.raises(summary.EventFileError, match="corrupt record header at byte 0"):
        compare_runs.read_run(root / "jaxseq_run")
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # last record's data CRC
    assert len(compare_runs.read_run(root / "jaxseq_run").scalars["eval/loss"]) == 4
    with pytest.raises(summary.EventFileError, match="corrupt record data"):
        compare_runs.read_run(root / "jaxseq_run", check_crc=True)


def test_cli_errors_on_a_folder_without_events(tmp_path, capsys):
    assert compare_runs.main([str(tmp_path), "--out", ""]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err


def test_default_labels_tell_same_named_runs_apart(tmp_path):
    assert compare_runs.default_labels([tmp_path / "a" / "run", tmp_path / "b" / "run"]) == ["a/run", "b/run"]
    (tmp_path / "y" / "tensorboard").mkdir(parents=True)  # a run's tensorboard/ folder stands for the run
    assert compare_runs.default_labels([tmp_path / "x", tmp_path / "y" / "tensorboard"]) == ["x", "y"]


def test_one_event_reader_reads_scalars_and_tags_without_importing_torch(two_runs):
    root, _, _ = two_runs
    logdir = root / "jaxseq_run" / "tensorboard"
    accuracy = summary.read_scalars(logdir, "eval/accuracy")
    assert [(step, value) for step, _, value in accuracy] == [(s, pytest.approx(a)) for s, _, a, _, _ in FAST]
    assert summary.read_scalars(logdir, "no/such/tag") == []
    assert {"eval/accuracy", "train/loss", "config/text_summary", "params/w"} <= summary.read_tags(logdir)
    # tensorboardX imports torch whenever it is installed; jaxseq hides it (seconds of start-up per process).
    code = ("import sys; from jaxseq import summary; "
            f"assert len(summary.read_scalars({str(logdir)!r}, 'eval/loss')) == 4; "
            "summary.create_writer(sys.argv[1]).close(); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(root / "w")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and summary.event_files(root / "w" / "tensorboard")
