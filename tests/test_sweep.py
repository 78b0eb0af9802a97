import csv
import json
import math
import os
import sys

import pytest
import yaml

from jaxseq import launch, summary, sweep, train
from jaxseq.config import save_config


def write_base(tmp_path, **train_settings):
    settings = {"batch_size": 8, "num_steps": 2, "steps_per_call": 2, "log_every": 2, "eval_every": 2,
                "checkpoint_every": 2, "histogram_every": 0, "examples": 0, "eval_max_windows": 64, **train_settings}
    base = {"data": {"window_len": 40, "cache_dir": str(tmp_path / "cache")},
            "model": {"name": "autoencoder", "kernel_len": 3, "latent_len": 6},
            "optim": {"optimizer": "sgd", "learning_rate": 0.1, "schedule": "constant"},
            "train": settings}
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "tiny.yaml").write_text(yaml.safe_dump(base))


def write_sweep(tmp_path, name="study", **spec):
    write_base(tmp_path)
    folder = tmp_path / "configs" / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": "../tiny.yaml", **spec}, sort_keys=False))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_md_table(path):
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    return header, [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


# ----------------------------------------------------------------------------------------------
# Expansion, names, errors (no training)


def test_grid_expands_in_key_order_last_key_fastest_with_stable_names(tmp_path):
    path = write_sweep(tmp_path, grid={"model.kernel_len": [3, 9], "model.latent_len": [6, 18, 27]})
    loaded = sweep.load_sweep(path)
    assert [r.name for r in loaded.runs] == [
        "kernel_len=3_latent_len=6", "kernel_len=3_latent_len=18", "kernel_len=3_latent_len=27",
        "kernel_len=9_latent_len=6", "kernel_len=9_latent_len=18", "kernel_len=9_latent_len=27"]
    assert [(r.config.model.kernel_len, r.config.model.latent_len) for r in loaded.runs] == [
        (3, 6), (3, 18), (3, 27), (9, 6), (9, 18), (9, 27)]
    assert loaded.override_keys == ["model.kernel_len", "model.latent_len"]
    assert loaded.name == "study" and loaded.modes == ("deterministic",)
    # Stable: the same file gives the same names again.
    assert [r.name for r in sweep.load_sweep(path).runs] == [r.name for r in loaded.runs]


def test_runs_list_combines_with_grid_and_settings_apply_in_order(tmp_path):
    path = write_sweep(tmp_path,
                       set={"train.num_steps": 7, "optim.learning_rate": 0.5},
                       runs=[{"optim.optimizer": "sgd"}, {"optim.optimizer": "adam", "optim.learning_rate": 0.01}],
                       grid={"train.seed": [0, 1]})
    loaded = sweep.load_sweep(path, ["train.num_steps=3"])
    assert [r.name for r in loaded.runs] == ["optimizer=sgd_seed=0", "optimizer=sgd_seed=1",
                                             "optimizer=adam_learning_rate=0.01_seed=0",
                                             "optimizer=adam_learning_rate=0.01_seed=1"]
    first, adam = loaded.runs[0].config, loaded.runs[2].config
    assert first.optim.learning_rate == 0.5  # sweep `set` over the base (0.1)
    assert adam.optim.learning_rate == 0.01  # the run's own override over `set`
    assert all(r.config.train.num_steps == 3 for r in loaded.runs)  # command line --set last
    assert loaded.runs[1].overrides == {"optim.optimizer": "sgd", "train.seed": 1}
    assert loaded.override_keys == ["optim.optimizer", "train.seed", "optim.learning_rate"]


def test_run_names_are_filesystem_safe_and_distinguish_keys():
    assert sweep.run_name({}) == "base"
    assert sweep.run_name({"model.dilations": [1, 2, 4], "model.pool": "avg"}) == "dilations=1-2-4_pool=avg"
    assert sweep.run_name({"model.input_dropout": {"schedule": "linear", "value": 0.1}}) == \
        "input_dropout=schedulelinear-value0.1"
    assert sweep.run_name({"data.fasta": "../a b/c.fa"}) == "fasta=..-a-b-c.fa"
    # Two keys with the same last part keep their groups.
    assert sweep.run_name({"train.seed": 1, "data.seed": 2}) == "train.seed=1_data.seed=2"
    long_a = sweep.run_name({"model.dilations": list(range(60))})
    long_b = sweep.run_name({"model.dilations": list(range(61))})
    assert len(long_a) <= sweep.MAX_NAME_LEN and long_a != long_b


@pytest.mark.parametrize("spec, args, expected", [
    ({"gird": {"model.kernel_len": [3]}}, [], "unknown key 'gird' (did you mean grid?)"),
    ({"grid": {"model.kernal_len": [3]}}, [], "unknown config key 'model.kernal_len'"),
    ({"runs": [{"model.kernel_len": 3}, {"optim.lr": 0.1}]}, [], "runs[1] (run lr=0.1): unknown config key 'optim.lr'"),
    ({"set": {"train.num_step": 5}}, [], "set: unknown config key 'train.num_step'"),
    ({"grid": {"model.kernel_len": 3}}, [], "grid.model.kernel_len must be a non-empty list"),
    ({"evaluate": ["random"]}, [], "'evaluate' must list modes"),
    ({"target_run": "nope"}, [], "target_run 'nope' is not one of the runs"),
    ({}, ["train.nope=1"], "--set: unknown config key 'train.nope'"),
    ({"grid": {"model.kernel_len": [3, 80]}}, [], "kernel_len=80"),  # invalid combination, caught before training
])
def test_errors_are_one_line_naming_the_sweep_file_and_key(tmp_path, capsys, spec, args, expected):
    path = write_sweep(tmp_path, **spec)
    with pytest.raises(sweep.SweepError) as info:
        sweep.load_sweep(path, args)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message
    # The command line reports it the same way, exit status 2, and trains nothing.
    assert sweep.main([str(path), "--out", str(tmp_path / "out"), *sum((["--set", a] for a in args), [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep file") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_expanded_runs_and_trains_nothing(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, grid={"model.latent_len": [6, 12]})
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail("dry run trained"))
    assert sweep.main([str(path), "--out", str(tmp_path / "out"), "--dry-run", "--set", "train.num_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "2 run(s)" in out and "train.num_steps=4" in out
    assert "[1] latent_len=6  (to run; 4 steps): model.latent_len=6" in out
    assert "[2] latent_len=12" in out
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Running (a fake trainer where the numbers do not matter; one real two-run sweep)


def fake_trainer(calls, fail=()):
    def train_fn(config, workdir):
        calls.append(workdir.name)
        if workdir.name in fail:
            raise FloatingPointError("non-finite loss at step 3")
        workdir.mkdir(parents=True, exist_ok=True)
        save_config(config, workdir / "config.yaml")
        acc = config.model.latent_len / 100
        (workdir / "final_metrics.json").write_text(json.dumps({
            "step": config.train.num_steps, "valid_loss": 1.0, "valid_accuracy": acc - 0.01, "test_loss": math.log(2),
            "test_accuracy": acc, "test_bases": 100.0, "windows_per_sec": 1234.5}))
        return {}
    return train_fn


def test_stochastic_columns_failed_runs_and_hparams_fallback(tmp_path):
    path = write_sweep(tmp_path, grid={"model.latent_len": [6, 12, 18]}, evaluate=["stochastic"])
    loaded = sweep.load_sweep(path)
    assert loaded.modes == ("deterministic", "stochastic")
    out = tmp_path / "out"
    # A stochastic report already on disk is read, not recomputed.
    (out / "latent_len=6").mkdir(parents=True)
    (out / "latent_len=6" / "eval_test_stochastic_step2.json").write_text(
        json.dumps({"accuracy": 0.5, "bits_per_base": 1.5, "step": 2}))
    calls = []
    rows = sweep.run_sweep(loaded, out, train_fn=fake_trainer(calls, fail={"latent_len=12"}), log=lambda m: None)
    assert calls == ["latent_len=6", "latent_len=12", "latent_len=18"]
    assert rows[0]["test_accuracy_stochastic"] == 0.5 and rows[0]["test_bits_per_base_stochastic"] == 1.5
    assert rows[1]["note"] == "failed: FloatingPointError: non-finite loss at step 3"
    header, md = read_md_table(out / "results.md")
    assert header == ["run", "model.latent_len", "test_accuracy", "test_bits_per_base", "test_accuracy_stochastic",
                      "test_bits_per_base_stochastic", "valid_accuracy", "steps", "wall_time_s", "windows_per_sec",
                      "note"]
    assert md[0]["test_accuracy_stochastic"] == "0.5000" and md[0]["test_bits_per_base"] == "1.0000"
    assert md[1]["note"].startswith("failed:") and md[1]["test_accuracy"] == ""
    assert md[0]["windows_per_sec"] == "1,234"
    # The fake trainer wrote no TensorBoard: the sweep wrote the HParams session itself.
    assert summary.has_hparams(out / "latent_len=6") and summary.has_hparams(out / "latent_len=18")
    # Only the failed run is retried.
    calls.clear()
    sweep.run_sweep(loaded, out, train_fn=fake_trainer(calls), log=lambda m: None)
    assert calls == ["latent_len=12"]
    assert "note" not in read_md_table(out / "results.md")[0]


def test_finished_run_of_another_config_is_refused_before_training(tmp_path):
    path = write_sweep(tmp_path, grid={"model.latent_len": [6, 12]})
    out = tmp_path / "out"
    calls = []
    sweep.run_sweep(sweep.load_sweep(path, ["train.num_steps=2"]), out, train_fn=fake_trainer(calls), log=print)
    with pytest.raises(sweep.SweepError, match=r"latent_len=6 is a finished run of another config "
                                               r"\(train.num_steps: 2 -> 5\)"):
        sweep.run_sweep(sweep.load_sweep(path, ["train.num_steps=5"]), out, train_fn=fake_trainer(calls))
    assert calls == ["latent_len=6", "latent_len=12"]
    # Settings that cannot change the numbers (cache folder, logging cadence) do not count as another config.
    sweep.run_sweep(sweep.load_sweep(path, ["train.num_steps=2", f"data.cache_dir={tmp_path / 'other'}",
                                            "train.log_every=1"]), out, train_fn=fake_trainer(calls), log=print)
    assert calls == ["latent_len=6", "latent_len=12"]


def test_real_sweep_tabulates_final_metrics_logs_hparams_and_skips_finished_runs(tmp_path, monkeypatch):
    # One run in this process (two real runs train as children below): its own target.
    path = write_sweep(tmp_path, grid={"model.latent_len": [6]}, target_run="latent_len=6")
    out = tmp_path / "out"
    calls = []

    def counting(config, workdir):
        calls.append(workdir.name)
        return train.train_and_evaluate(config, workdir)

    sweep.run_sweep(sweep.load_sweep(path), out, train_fn=counting, log=lambda m: None)
    assert calls == ["latent_len=6"]
    finals = {name: json.loads((out / name / "final_metrics.json").read_text()) for name in calls}

    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == ["run", "model.latent_len", "test_accuracy", "test_bits_per_base", "valid_accuracy",
                             "steps", "wall_time_s", "windows_per_sec", "steps_to_target", "seconds_to_target"]
    assert [r["run"] for r in rows] == calls and [r["model.latent_len"] for r in rows] == ["6"]
    for row in rows:
        final = finals[row["run"]]
        assert float(row["test_accuracy"]) == pytest.approx(final["test_accuracy"], abs=1e-12)
        assert float(row["test_bits_per_base"]) == pytest.approx(final["test_loss"] / math.log(2))
        assert float(row["valid_accuracy"]) == pytest.approx(final["valid_accuracy"])
        assert int(row["steps"]) == final["step"] == 2
        assert float(row["wall_time_s"]) > 0 and float(row["windows_per_sec"]) > 0
    # The target run reaches its own accuracy no later than its last evaluation (step 2) or never.
    assert rows[0]["steps_to_target"] in ("", "2")

    header, md = read_md_table(out / "results.md")
    assert header == list(rows[0])
    for row, line in zip(rows, md):
        assert line["run"] == row["run"]
        assert line["test_accuracy"] == f"{float(row['test_accuracy']):.4f}"
        assert line["test_bits_per_base"] == f"{float(row['test_bits_per_base']):.4f}"
    # train.py logs each run to TensorBoard's HParams view.
    for name in calls:
        assert summary.has_hparams(out / name)
    session = [v for e in summary.read_events(out / "latent_len=6" / "tensorboard" / "hparams")
               for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    data = HParamsPluginData.FromString(session[0].metadata.plugin_data.content)
    assert data.session_start_info.hparams["model.latent_len"].number_value == 6

    # Second invocation, through the command line: nothing trains, the tables are rewritten the same.
    mtimes = {name: (out / name / "final_metrics.json").stat().st_mtime_ns for name in calls}
    before = (out / "results.csv").read_text()
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail("finished run trained again"))
    assert sweep.main([str(path), "--out", str(out)]) == 0
    assert {name: (out / name / "final_metrics.json").stat().st_mtime_ns for name in calls} == mtimes
    assert (out / "results.csv").read_text() == before


def test_columns_show_each_runs_effective_value_of_every_varied_setting(tmp_path):
    path = write_sweep(tmp_path, runs=[{"model.latent_len": 12}, {"model.kernel_len": 5}])
    rows = sweep.run_sweep(sweep.load_sweep(path), tmp_path / "out", train_fn=fake_trainer([]), log=lambda m: None)
    assert [(r["run"], r["model.latent_len"], r["model.kernel_len"]) for r in rows] == [
        ("latent_len=12", 12, 3), ("kernel_len=5", 6, 5)]  # base: kernel 3, latent 6
    assert [(r["model.latent_len"], r["model.kernel_len"]) for r in read_csv(tmp_path / "out" / "results.csv")] == [
        ("12", "3"), ("6", "5")]


# ----------------------------------------------------------------------------------------------
# Devices, time limits, error lines (no training)


def test_device_slots_split_gpus_or_cpu_cores_between_concurrent_runs(monkeypatch):
    slots = launch.device_slots(2, gpus=["0", "1", "2", "3"])
    assert [(s.label, s.env, s.cores) for s in slots] == [("gpu 0,1", {"CUDA_VISIBLE_DEVICES": "0,1"}, None),
                                                           ("gpu 2,3", {"CUDA_VISIBLE_DEVICES": "2,3"}, None)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in launch.device_slots(3, gpus=["4", "5", "6", "7"])] == ["4", "5", "6"]
    with pytest.raises(launch.LaunchError, match=r"--jobs 3: only 2 GPU\(s\) visible \(0,1\)"):
        launch.device_slots(3, gpus=["0", "1"])
    slots = launch.device_slots(2, gpus=[], cores=[0, 1, 2, 3])
    assert [s.cores for s in slots] == [(0, 1), (2, 3)] and slots[0].env["OMP_NUM_THREADS"] == "2"
    assert [s.cores for s in launch.device_slots(3, gpus=[], cores=[0, 1])] == [(0,), (1,), (0,)]  # shared in turn
    # Which GPUs the children may use, read without starting JAX on them.
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert launch.visible_gpus() == []
    monkeypatch.delenv("JAX_PLATFORMS")
    assert launch.visible_gpus() == ["2", "5"]
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert launch.visible_gpus() == []


def test_children_are_pinned_to_their_slot_and_failures_give_their_error_line(tmp_path):
    core = sorted(os.sched_getaffinity(0))[-1]
    slot = launch.Slot(f"cpu {core}", {"OMP_NUM_THREADS": "1"}, (core,))
    code = "import os; print(sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'])"
    assert launch.spawn([sys.executable, "-c", code], slot, tmp_path / "a.log").wait(timeout=60) == 0
    assert (tmp_path / "a.log").read_text().split() == [f"[{core}]", "1"]
    (tmp_path / "b.log").write_text("train:  10%|#   | 1/10\rtrain:  20%\nerror: bad FASTA x.fa, line 3\n\n")
    assert launch.error_line(tmp_path / "b.log", 2) == "exit 2: error: bad FASTA x.fa, line 3"
    (tmp_path / "c.log").write_text("Traceback (most recent call last):\n  ...\nMemoryError: out\n")
    assert launch.error_line(tmp_path / "c.log", 1) == "exit 1: MemoryError: out"
    assert launch.error_line(tmp_path / "missing.log", -9) == "exit -9: no output"


def test_progress_board_logs_changed_lines_or_redraws_them_in_place(tmp_path, capsys):
    lines = []
    board = launch.Board(["a", "b"], log=lines.append)
    board.show()
    board.set("a", "running on cpu 0", launch.Task("a", tmp_path / "a", tmp_path / "a.yaml", 20))  # no events yet
    board.show()
    board.show()
    assert lines == ["a: queued", "b: queued", "a: running on cpu 0"]
    board = launch.Board(["a", "b"], redraw=True)
    board.show()
    board.set("b", "failed on cpu 1: exit 2: error: x")
    board.show()
    assert capsys.readouterr().out == ("\x1b[2Ka: queued\n\x1b[2Kb: queued\n"
                                       "\x1b[2F\x1b[2Ka: queued\n\x1b[2Kb: failed on cpu 1: exit 2: error: x\n")


@pytest.mark.parametrize("text, minutes", [("90", 90), ("90:30", 91), ("1:30:00", 90), ("2-0", 2880),
                                           ("1-02:03:00", 1563)])
def test_slurm_time_limits(text, minutes):
    assert launch.slurm_minutes(text) == minutes


@pytest.mark.parametrize("args, expected", [
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--slurm-partition", "gpu"], "--slurm-partition needs --executor slurm"),
    (["--executor", "slurm", "--slurm-time", "1:2:3:4"], "--slurm-time '1:2:3:4': expected minutes"),
    (["--executor", "slurm"], "--executor slurm: sbatch and srun not on PATH"),
])
def test_launch_errors_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, expected):
    path = write_sweep(tmp_path, grid={"model.latent_len": [6]})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, whatever the machine
    assert sweep.main([str(path), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {expected}") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Real runs as child processes (--jobs) and as submitit jobs (its local executor), on CPU


@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
    """CPU-only children sharing one token cache and one compilation cache; returns the --set list."""
    root = tmp_path_factory.mktemp("children")
    patch = pytest.MonkeyPatch()
    patch.setenv("JAX_PLATFORMS", "cpu")
    patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # Optimisation level 0 halves the children's compile time, which dominates these tiny runs (and changes
    # nothing they compute); one compilation cache lets a child reuse what another compiled.
    patch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(root / "xla-cache"))
    patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    patch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    yield ["--set", f"data.cache_dir={root / 'cache'}", "--set", "train.num_steps=20", "--set", "train.log_every=10",
           "--set", "train.eval_every=10", "--set", "train.checkpoint_every=20"]
    patch.undo()


def test_jobs_train_runs_at_once_in_pinned_children_and_a_failed_run_does_not_stop_the_others(
        tmp_path, capsys, child_env):
    # The third run asks for 3 devices on a 1-device CPU: its child exits 2 with one error line.
    path = write_sweep(tmp_path, runs=[{"model.latent_len": 2}, {"model.latent_len": 6}, {"train.devices": 3}])
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out), "--jobs", "2", *child_env]) == 1
    captured = capsys.readouterr()
    error = "exit 2: error: train.devices=3 but only 1 local device(s) exist"
    assert "1 run(s) failed: devices=3" in captured.err
    lines = captured.out.splitlines()
    assert any(line.startswith("latent_len=2: running on cpu ") for line in lines)
    assert any(line.startswith("latent_len=6: finished in ") for line in lines)
    assert any(line.startswith("devices=3: failed on cpu ") and line.endswith(error) for line in lines)

    rows = read_csv(out / "results.csv")
    assert [r["run"] for r in rows] == ["latent_len=2", "latent_len=6", "devices=3"]
    assert rows[2]["note"] == f"failed: {error}" and rows[2]["test_accuracy"] == ""
    info = {}
    for row in rows[:2]:
        final = json.loads((out / row["run"] / "final_metrics.json").read_text())
        assert final["step"] == 20 and float(row["test_accuracy"]) == pytest.approx(final["test_accuracy"], abs=1e-12)
        info[row["run"]] = json.loads((out / row["run"] / "sweep_run.json").read_text())
        assert float(row["wall_time_s"]) == pytest.approx(info[row["run"]]["wall_time_s"])
        assert summary.has_hparams(out / row["run"])  # train.py's HParams, read back by the one event reader
    first, second = info["latent_len=2"], info["latent_len=6"]
    assert second["started"] < first["started"] + first["wall_time_s"]  # both trained at the same time...
    if len(os.sched_getaffinity(0)) >= 2:  # ...each on its own core
        assert first["devices"] != second["devices"]

    # Rerun without the failed run: the finished runs are skipped, nothing trains, the table is the same.
    mtimes = {r["run"]: (out / r["run"] / "final_metrics.json").stat().st_mtime_ns for r in rows[:2]}
    write_sweep(tmp_path, runs=[{"model.latent_len": 2}, {"model.latent_len": 6}])
    assert sweep.main([str(path), "--out", str(out), "--jobs", "2", *child_env]) == 0
    assert "[1/2] latent_len=2: finished, skipped" in capsys.readouterr().out
    assert {r: (out / r / "final_metrics.json").stat().st_mtime_ns for r in mtimes} == mtimes
    assert read_csv(out / "results.csv") == [{k: v for k, v in r.items() if k not in ("note", "train.devices")}
                                            for r in rows[:2]]


def test_executor_slurm_path_through_submitits_local_executor(tmp_path, child_env):
    # latent_len=2: the same model as a run above, so the child finds its programs in the compilation cache.
    path = write_sweep(tmp_path, grid={"model.latent_len": [2]}, evaluate=["stochastic"])
    loaded = sweep.load_sweep(path, child_env[1::2])
    out, lines = tmp_path / "out", []
    rows = sweep.run_sweep(loaded, out, cluster=launch.ClusterOptions(cluster="local", time_min=10), log=lines.append)
    final = json.loads((out / "latent_len=2" / "final_metrics.json").read_text())
    assert rows[0]["test_accuracy"] == final["test_accuracy"] and rows[0]["steps"] == 20
    assert "note" not in rows[0]
    assert any(line.startswith("latent_len=2: finished in ") for line in lines)
    info = json.loads((out / "latent_len=2" / "sweep_run.json").read_text())
    assert info["devices"].startswith("local job ") and list((out / "submitit").glob("*_log.out"))
    # Stochastic evaluation ran in this process (jaxseq.evaluate.evaluate) and wrote its report.
    report = json.loads((out / "latent_len=2" / "eval_test_stochastic_step20.json").read_text())
    assert report["mode"] == "stochastic" and rows[0]["test_accuracy_stochastic"] == report["accuracy"]
    assert 0.0 < report["accuracy"] <= 1.0
