"""The run directory (jaxseq.run and the train CLI): where a run goes, resuming, finished runs, messages."""

import json
import shlex
from pathlib import Path

import pytest

from jaxseq import checkpoint, run, train

SMALL = ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40",
         "train.batch_size=8", "train.num_steps=2", "train.log_every=2", "train.eval_every=2",
         "train.checkpoint_every=2", "train.histogram_every=0", "train.steps_per_call=2", "train.examples=0",
         "train.eval_max_windows=16"]


def sets(*settings):
    return [a for s in settings for a in ("--set", s)]


def fake_run(folder: Path, step: int | None, final_step: int | None = None) -> Path:
    """A run directory as the scans see it: committed checkpoint folders and maybe final_metrics.json."""
    (folder / "checkpoints").mkdir(parents=True)
    if step is not None:
        (folder / "checkpoints" / str(step)).mkdir()
    if final_step is not None:
        (folder / "final_metrics.json").write_text(json.dumps({"step": final_step}))
    return folder


def test_new_run_goes_to_a_timestamped_folder(tmp_path):
    workdir, note = run.choose_workdir(None, False, tmp_path / "runs")
    assert workdir.parent == tmp_path / "runs" and len(workdir.name) == 15 and note is None
    assert run.choose_workdir("mine", False, tmp_path / "runs") == (Path("mine"), None)


def test_unfinished_previous_run_is_named_with_its_resume_command(tmp_path):
    root = tmp_path / "my runs"
    fake_run(root / "20200101-000000", 4, final_step=4)
    previous = fake_run(root / "20200102-000000", 6)
    with pytest.raises(run.RunDirectoryError) as info:
        run.choose_workdir(None, False, root)
    message = str(info.value)
    assert f"{previous.absolute()} is unfinished (checkpoint step 6)" in message
    assert f"python -m jaxseq.train --workdir {shlex.quote(str(previous.absolute()))} --resume" in message
    assert "'" in shlex.quote(str(previous.absolute()))  # the space is quoted
    workdir, note = run.choose_workdir(None, True, root)
    assert workdir == previous and "resuming the newest run" in note and "step 6" in note


def test_finished_previous_run_is_mentioned_and_a_new_one_started(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "20200101-000000", 4, final_step=4)
    workdir, note = run.choose_workdir(None, False, root)
    assert workdir.name != "20200101-000000" and "finished at step 4" in note and str(workdir.absolute()) in note


def test_resume_without_workdir_and_nothing_to_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume without --workdir: no run with a checkpoint in ") and "\n" not in err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 2-step run trained through the CLI into a folder whose name has a space, and its output."""
    root = tmp_path_factory.mktemp("run")
    workdir = root / "a run"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    out, err = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", out)
    capture.setattr(sys, "stderr", err)
    try:
        code = train.main(["--workdir", str(workdir)] + sets(*SMALL, f"data.cache_dir={root / 'cache'}"))
    finally:
        capture.undo()
    assert code == 0, err.getvalue()
    return workdir, out.getvalue(), err.getvalue(), root / "cache"


def test_run_directory_printed_at_start_and_compiling_shown(finished):
    workdir, out, err, _ = finished
    lines = out.splitlines()
    assert lines[0] == f"run directory: {workdir} (training from step 0)"
    assert "compiling: step 0/2" in err
    assert lines[-1].startswith("held-out (test split) accuracy ")


def test_finished_run_is_not_redone(finished, capsys):
    workdir, _, _, cache = finished
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    final = (workdir / "final_metrics.json").read_text()
    assert train.main(["--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"{workdir} already finished at step 2" in out
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert (workdir / "final_metrics.json").read_text() == final


def test_evaluation_only_rerun_keeps_throughput_and_config_comes_from_the_checkpoint(finished, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(finished[0], workdir)
    first = json.loads((workdir / "final_metrics.json").read_text())
    assert first["windows_per_sec"] > 0
    (workdir / "final_metrics.json").unlink()
    (workdir / "config.yaml").unlink()  # --resume takes the config saved in the checkpoint
    assert train.main(["--workdir", str(workdir), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already trained to step 2; evaluating" in out
    again = json.loads((workdir / "final_metrics.json").read_text())
    assert again["windows_per_sec"] == first["windows_per_sec"]
    assert again["test_accuracy"] == first["test_accuracy"] and again["step"] == 2
    assert "latent_len: 6" in (workdir / "config.yaml").read_text()
    assert checkpoint.committed_steps(workdir) == [2]


def test_all_n_genome_says_no_base_was_scored(tmp_path, capsys):
    fasta = tmp_path / "n.fa"
    fasta.write_text(">r\n" + "N" * 4000 + "\n")
    argv = ["--workdir", str(tmp_path / "run")] + sets(*SMALL, f"data.cache_dir={tmp_path / 'cache'}",
                                                       f"data.fasta={fasta}", "data.max_n_fraction=1",
                                                       "data.block_len=400")
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out (test split): no base was scored" in out and "accuracy 0.0000" not in out
