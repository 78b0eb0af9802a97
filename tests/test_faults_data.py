"""Issue 13, at the command line: damaged checkpoints, runs bound to their data, a damaged token cache,
non-finite settings, a deleted config.yaml.

ONE tiny 20-step run (checkpoints at steps 10 and 20, on its own copy of the lambda phage genome) is made
per module and copied per test; ``train.main`` / ``evaluate.main`` run in-process (a subprocess costs
seconds of start-up) and what they print is read with ``capfd``.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml

from jaxseq import checkpoint, evaluate, train, trained
from jaxseq import run as rundir
from jaxseq.config import load_config
from jaxseq.genome import default_fasta

SMALL = ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40",
         "train.batch_size=8", "train.steps_per_call=2", "train.log_every=10", "train.eval_every=1000",
         "train.eval_max_windows=16", "train.histogram_every=0", "train.examples=0", "train.checkpoint_every=10"]


LAMBDA = "gi|9626243|ref|NC_001416.1|"  # the record of the bundled genome


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """``root/run``: 20 steps of a tiny model trained on ``root/lambda.fa`` (a plain copy of the bundled genome)."""
    root = tmp_path_factory.mktemp("faults_data")
    (root / "lambda.fa").write_bytes(gzip.decompress(default_fasta().read_bytes()))
    code = train.main(args(root / "run", root, "train.num_steps=20"))
    assert code == 0
    return root


def args(workdir: Path, root: Path, *settings: str, flags: tuple[str, ...] = ()) -> list[str]:
    out = ["--workdir", str(workdir)]
    for item in [*SMALL, f"data.fasta={root / 'lambda.fa'}", f"data.cache_dir={root / 'cache'}", *settings]:
        out += ["--set", item]
    return out + list(flags)


@pytest.fixture
def run(base, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base / "run", copy, ignore=shutil.ignore_patterns(rundir.LOCK_FILE))
    return copy


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.name != rundir.LOCK_FILE}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def step_file(run: Path, kind: str, step: int = 20) -> Path:
    root = checkpoint.checkpoint_dir(run) / str(step)
    if kind == "largest array":
        return max((root / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    return root / kind


def damage(path: Path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(b"")
        return
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), max(1, len(data) // 8)):
        data[i] ^= 0xA5  # flipped bytes, same size
    path.write_bytes(bytes(data))


# Each kind of checkpoint file: the arrays, the OCDBT index, and every metadata file (flipped or emptied).
DAMAGES = [("largest array", "flip"), ("state/ocdbt.process_0/manifest.ocdbt", "flip"),
           ("state/_METADATA", "truncate"), ("meta/metadata", "truncate"), ("loader/metadata", "truncate"),
           ("_CHECKPOINT_METADATA", "truncate"), ("state/manifest.ocdbt", "flip")]


@pytest.mark.parametrize("kind,how", DAMAGES, ids=[k for k, _ in DAMAGES])
def test_evaluate_refuses_a_damaged_step_naming_file_and_intact_steps(run, capfd, kind, how):
    path = step_file(run, kind)
    damage(path, how)
    before = snapshot(run)
    assert evaluate.main([str(run), "--no-write"]) == 2
    captured = capfd.readouterr()
    line = one_error_line(captured.err)
    assert f"checkpoint step 20 is damaged: {path}" in line and "intact steps: 10 (use --step N)" in line, line
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(run) == before  # evaluation never moves or rewrites a checkpoint


def resume_and_check_fallback(base: Path, run: Path, damaged: list[Path], capfd, *flags: str) -> str:
    """Resumes to step 30 after damaging step 20; checks the fallback to step 10. Returns stdout + stderr."""
    kept = {path: path.read_bytes() for path in damaged}
    argv = ["--workdir", str(run), "--set", "train.num_steps=30", "--resume", *flags]
    assert train.main(argv) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    aside = next((checkpoint.checkpoint_dir(run) / checkpoint.DAMAGED_DIR).iterdir())
    warning = next(line for line in captured.out.splitlines() if "is damaged" in line)
    assert f"checkpoint step 20 is damaged: {damaged[0]}" in warning and str(aside) in warning, warning
    assert "continuing from checkpoint step 10, the newest intact one" in captured.out
    for path, data in kept.items():  # kept as found, never deleted
        assert (aside / path.relative_to(checkpoint.checkpoint_dir(run) / "20")).read_bytes() == data
    assert checkpoint.intact_steps(run) == [10, 20, 30]  # 20 and 30 trained again from step 10
    assert json.loads((run / rundir.FINAL_METRICS).read_text())["step"] == 30
    return text


def test_train_falls_back_over_damaged_arrays_a_damaged_cache_and_a_deleted_config(base, run, capfd):
    """Cases 1, 4 and 6 in one run's life: flipped bytes in step 20's largest array file, two bytes of
    the token cache out of the alphabet, config.yaml deleted; ``--resume`` continues from step 10."""
    path = step_file(run, "largest array")
    damage(path, "flip")
    from jaxseq.genome import Genome

    tokens = Genome.open(base / "lambda.fa", cache_dir=base / "cache").cache_path / "tokens.u8"
    good = tokens.read_bytes()
    tokens.write_bytes(b"\x07" * 2 + good[2:])
    (run / "config.yaml").unlink()
    text = resume_and_check_fallback(base, run, [path], capfd)
    assert "token cache" in text and "failed verification" in text and "rebuilding it from" in text
    assert tokens.read_bytes() == good
    # config.yaml rewritten from the checkpoint's config plus the validated change, which is recorded.
    assert load_config(run / "config.yaml").train.num_steps == 30
    history = [json.loads(line) for line in (run / rundir.HISTORY_FILE).read_text().splitlines()]
    assert [(h["step"], h["changes"]) for h in history] == [(10, ["train.num_steps: 20 -> 30"])]


def test_train_falls_back_over_truncated_metadata(base, run, capfd):
    """Case 2: emptied ``loader/metadata`` and ``state/_METADATA`` of step 20."""
    paths = [step_file(run, "loader/metadata"), step_file(run, "state/_METADATA")]  # checked in this order
    for path in paths:
        damage(path, "truncate")
    resume_and_check_fallback(base, run, paths, capfd)


def rewrite_bases(fasta: Path) -> None:
    """Same record names and lengths, other bases (A<->C, G<->T)."""
    lines = fasta.read_text().splitlines(keepends=True)
    swap = str.maketrans("ACGTacgt", "CATGcatg")
    fasta.write_text("".join(line if line.startswith(">") else line.translate(swap) for line in lines))


@pytest.fixture
def other_content(base, tmp_path) -> Path:
    """A root like ``base`` whose lambda.fa has other bases under the same names and lengths."""
    root = tmp_path / "other"
    root.mkdir()
    shutil.copy(base / "lambda.fa", root / "lambda.fa")
    rewrite_bases(root / "lambda.fa")
    return root


def test_resume_on_other_genome_content_is_refused_naming_both_fingerprints(base, run, other_content, capfd):
    before = snapshot(run)
    bound = json.loads((run / rundir.DATA_FILE).read_text())["fingerprint"]
    assert train.main(args(run, other_content, "train.num_steps=30", flags=("--resume",))) == 2
    line = one_error_line(capfd.readouterr().err)
    from jaxseq.genome import Genome

    now = Genome.open(other_content / "lambda.fa", cache_dir=other_content / "cache").fingerprint
    assert bound != now and bound in line and now in line and "new --workdir" in line, line
    assert snapshot(run) == before


def test_evaluate_on_other_genome_content_is_refused_but_fasta_other_is_allowed(run, other_content, capfd):
    # data.fasta pointed at another file with the same layout (names, lengths) but other bases.
    config = load_config(run / "config.yaml", [f"data.fasta={other_content / 'lambda.fa'}"])
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert evaluate.main([str(run), "--split", "test", "--no-write"]) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "was trained on genome content" in line and "--fasta" in line, line
    model = trained.load_run(run)
    with pytest.raises(checkpoint.CheckpointError, match="was trained on genome content"):
        model.evaluate("valid")
    report = model.evaluate(other_content / "lambda.fa")  # an explicit other genome stays allowed
    assert report["n_bases"] > 0 and report["split"] == "fasta-lambda"


def test_changed_data_settings_and_edited_bed_file_are_refused(base, run, tmp_path, capfd):
    bed = tmp_path / "regions.bed"
    bed.write_text(f"{LAMBDA}\t0\t40000\n")  # would change the training data
    before = snapshot(run)
    assert train.main(args(run, base, f"data.regions={bed}", flags=("--resume",))) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "settings that define the training data changed: data.regions: '' -> " in line, line
    assert snapshot(run) == before
    # The same path with other content: the file's hash is bound, not only its name.
    config = load_config(None, [f"data.regions={bed}"])
    bound = trained.data_binding(config, "f" * 40)
    bed.write_text(f"{LAMBDA}\t0\t30000\n")
    with pytest.raises(checkpoint.CheckpointError, match=r"another data.regions file: .*edited.*new --workdir"):
        trained.check_data_binding(bound, trained.data_binding(config, "f" * 40), "run R", "train in a new --workdir")


@pytest.mark.parametrize("setting", ["optim.learning_rate=nan", "optim.learning_rate=inf",
                                     "optim.learning_rate=1e999", "optim.b2=.nan"])
def test_non_finite_settings_change_nothing_on_new_or_existing_runs(base, run, tmp_path, capfd, setting):
    key = setting.split("=")[0]
    before = snapshot(run)
    assert train.main(args(run, base, setting, flags=("--resume",))) == 2
    assert key in one_error_line(capfd.readouterr().err)
    assert snapshot(run) == before  # config.yaml keeps its value; no history line, no new file
    new = tmp_path / "new"
    assert train.main(args(new, base, setting)) == 2
    assert key in one_error_line(capfd.readouterr().err)
    assert not new.exists()


def test_checkpoint_of_the_previous_release_evaluates_with_a_note(run, capfd):
    for step in (10, 20):  # an earlier release wrote neither checksums nor the data binding
        step_dir = checkpoint.checkpoint_dir(run) / str(step)
        (step_dir / checkpoint.MANIFEST).unlink()
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
        meta.pop("data")
        (step_dir / "meta" / "metadata").write_text(json.dumps(meta))
    assert evaluate.main([str(run), "--no-write"]) == 0
    captured = capfd.readouterr()
    assert "saved without a data fingerprint" in captured.err and "accuracy" in captured.out


def test_sweep_rerun_over_a_finished_run_on_other_content_is_refused(base, run, tmp_path):
    from jaxseq import sweep

    fasta = tmp_path / "lambda.fa"  # the finished run's FASTA, at a path of this test's own
    shutil.copy(base / "lambda.fa", fasta)
    config = load_config(run / "config.yaml", [f"data.fasta={fasta}"])
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert sweep.check_finished(sweep.Run("run", {}, config), run)  # same content: finished, skipped
    bound = json.loads((run / rundir.DATA_FILE).read_text())["fingerprint"]
    rewrite_bases(fasta)
    with pytest.raises(sweep.SweepError, match=f"finished run {run} was trained on genome content {bound}, "
                                               f"but the genome now has content [0-9a-f]{{40}} .*another --out"):
        sweep.check_finished(sweep.Run("run", {}, config), run)


def test_rerun_of_a_finished_run_on_other_content_is_refused(base, run, other_content, capfd):
    config = load_config(run / "config.yaml")
    shutil.copy(other_content / "lambda.fa", config.data.fasta)  # same path, other bases
    try:
        assert train.main(["--workdir", str(run)]) == 2
        line = one_error_line(capfd.readouterr().err)
        assert f"finished run {run} was trained on genome content" in line and "new --workdir" in line, line
    finally:
        rewrite_bases(Path(config.data.fasta))  # the swap is its own inverse: the module's genome again
    assert train.main(["--workdir", str(run)]) == 0
    assert "already finished at step 20" in capfd.readouterr().out
