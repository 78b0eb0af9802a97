"""Tests for jaxseq.checkpoint's verification: checksums per step, damaged files named, fallback to an intact step.

One tiny run (a 3-kernel autoencoder's TrainState saved at steps 10 and 20) is written once per module and
copied per test; each test damages one file of step 20 and checks what the user is told.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseq import checkpoint, steps
from jaxseq.config import load_config

SMALL = ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, object, dict]:
    """A run directory with steps 10 and 20 (step 20's parameters are step 10's plus one), a state like
    theirs (the restore target) and the first parameter array saved at each step."""
    workdir = tmp_path_factory.mktemp("ckpt") / "run"
    state = steps.create_train_state(load_config(None, SMALL))
    manager = checkpoint.create_manager(workdir)
    first = {}
    for step in (10, 20):
        bumped = state.replace(step=step, params=jax.tree.map(lambda x: x + step // 10 - 1, state.params))
        first[step] = np.asarray(jax.tree.leaves(bumped.params)[0])
        checkpoint.save(manager, step, bumped, {"position": step}, {"config": {"step": step}})
    checkpoint.wait(manager)
    manager.close()
    return workdir, state, first


@pytest.fixture
def run(saved, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(saved[0], copy)
    return copy


def step_file(run: Path, kind: str, step: int = 20) -> Path:
    root = checkpoint.checkpoint_dir(run) / str(step)
    if kind == "largest array":
        return max((root / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    return root / kind


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), max(1, len(data) // 8)):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def restore(run: Path, state, step: int = 20):
    manager = checkpoint.create_manager(run, read_only=True)
    try:
        return checkpoint.restore(manager, step, state)
    finally:
        manager.close()


def assert_quiet(capfd) -> None:
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop" not in err and "absl" not in err, err


def test_clean_steps_verify_and_restore(saved, capfd):
    workdir, state, first = saved
    manifest = json.loads((checkpoint.checkpoint_dir(workdir) / "20" / checkpoint.MANIFEST).read_text())["files"]
    assert {"state/_METADATA", "meta/metadata", "loader/metadata", "state/manifest.ocdbt"} <= set(manifest)
    assert any(k.startswith("state/ocdbt.process_0/d/") for k in manifest)
    assert [checkpoint.verify(workdir, s) for s in (10, 20)] == [True, True]
    assert checkpoint.intact_steps(workdir) == [10, 20]
    restored, loader_state, meta = restore(workdir, state)
    assert loader_state == {"position": 20} and meta == {"config": {"step": 20}} and int(restored.step) == 20
    np.testing.assert_array_equal(jax.tree.leaves(restored.params)[0], first[20])
    assert_quiet(capfd)


@pytest.mark.parametrize("kind, damage, what", [
    ("largest array", flip, "sha256 differs"),
    ("state/manifest.ocdbt", flip, "sha256 differs"),
    ("state/ocdbt.process_0/manifest.ocdbt", flip, "sha256 differs"),
    ("meta/metadata", flip, "sha256 differs"),
    ("loader/metadata", flip, "sha256 differs"),
    ("state/_METADATA", lambda p: p.write_bytes(b""), "0 bytes, but"),
    ("meta/metadata", lambda p: p.write_bytes(b""), "0 bytes, but"),
    ("loader/metadata", lambda p: p.write_bytes(b""), "0 bytes, but"),
    ("_CHECKPOINT_METADATA", lambda p: p.write_bytes(b""), "0 bytes, but"),
    ("largest array", Path.unlink, "missing"),
    (checkpoint.MANIFEST, flip, "not UTF-8 text"),
    (checkpoint.MANIFEST, lambda p: p.write_text('{"files": {"meta/metadata": 3}}'), "not a checksum manifest"),
])
def test_damaged_file_is_named_with_its_step(run, saved, capfd, kind, damage, what):
    path = step_file(run, kind)
    damage(path)
    with pytest.raises(checkpoint.CorruptCheckpointError) as info:
        restore(run, saved[1])
    message = str(info.value)
    assert message.startswith(f"checkpoint step 20 is damaged: {path}: {what}") and "\n" not in message
    assert (info.value.step, info.value.file) == (20, path)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="checkpoint step 20"):
        checkpoint.verify(run, 20)
    assert checkpoint.intact_steps(run) == [10]
    assert_quiet(capfd)


def test_read_meta_names_truncated_metadata(run):
    path = step_file(run, "meta/metadata")
    path.write_bytes(b"")
    manager = checkpoint.create_manager(run, read_only=True)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=f"checkpoint step 20 is damaged: {path}: 0 bytes"):
        checkpoint.read_meta(manager, 20)
    assert checkpoint.read_meta(manager, 10) == {"config": {"step": 10}}
    manager.close()


@pytest.mark.parametrize("kind, damage, what", [
    ("state/_METADATA", lambda p: p.write_bytes(b""), "empty"),
    ("meta/metadata", lambda p: p.write_bytes(b"{\"config\": "), "not valid JSON"),
    ("loader/metadata", flip, "not UTF-8"),
    ("state/manifest.ocdbt", flip, "cannot be read"),
])
def test_step_without_manifest_is_accepted_but_damage_is_still_one_line(run, saved, capfd, kind, damage, what):
    for step in (10, 20):
        (checkpoint.checkpoint_dir(run) / str(step) / checkpoint.MANIFEST).unlink()
    assert checkpoint.verify(run, 10) is False  # verification not available, the step is accepted
    assert int(restore(run, saved[1], step=10)[0].step) == 10
    path = step_file(run, kind)
    damage(path)
    with pytest.raises(checkpoint.CorruptCheckpointError) as info:
        restore(run, saved[1])
    assert str(info.value).startswith(f"checkpoint step 20 is damaged: {path}: {what}")
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert_quiet(capfd)


def test_restore_latest_intact_sets_the_damaged_step_aside_and_falls_back(run, saved, capfd):
    path = step_file(run, "largest array")
    flip(path)
    damaged_bytes = path.read_bytes()
    manager = checkpoint.create_manager(run)
    lines, checked = [], []
    step, state, loader_state, meta = checkpoint.restore_latest_intact(
        manager, saved[1], log=lines.append, check_meta=lambda s, m: checked.append((s, m)))
    assert checked == [(10, {"config": {"step": 10}})]  # step 20's arrays failed verification before it
    assert (step, int(state.step), loader_state) == (10, 10, {"position": 10})
    np.testing.assert_array_equal(jax.tree.leaves(state.params)[0], saved[2][10])
    (aside,) = (checkpoint.checkpoint_dir(run) / checkpoint.DAMAGED_DIR).iterdir()
    assert aside.name.startswith("20-")
    assert (aside / path.relative_to(path.parents[3])).read_bytes() == damaged_bytes  # moved, not altered
    assert len(lines) == 1 and "checkpoint step 20 is damaged" in lines[0] and str(aside) in lines[0]
    assert checkpoint.committed_steps(run) == [10] and manager.latest_step() == 10
    # The run goes on: a new save next to the damaged folder, and the fallback is now a plain restore.
    checkpoint.save(manager, 30, state, {"position": 30}, {})
    checkpoint.wait(manager)
    assert checkpoint.intact_steps(run) == [10, 30]
    assert checkpoint.restore_latest_intact(manager, saved[1], log=lines.append)[0] == 30 and len(lines) == 1

    def refuse(step, meta):
        raise ValueError(f"step {step}: another model")

    with pytest.raises(ValueError, match="step 30: another model"):  # the caller's check propagates; nothing moved
        checkpoint.restore_latest_intact(manager, saved[1], check_meta=refuse)
    assert checkpoint.committed_steps(run) == [10, 30]
    manager.close()
    assert_quiet(capfd)


def test_restore_latest_intact_with_every_step_damaged_keeps_them_all(run, saved):
    for step in (10, 20):
        step_file(run, "loader/metadata", step).write_bytes(b"")
    manager = checkpoint.create_manager(run)
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint .*damaged steps 20, 10 were moved"):
        checkpoint.restore_latest_intact(manager, saved[1], log=lambda line: None)
    manager.close()
    assert checkpoint.committed_steps(run) == []
    assert len(list((checkpoint.checkpoint_dir(run) / checkpoint.DAMAGED_DIR).iterdir())) == 2
    assert checkpoint.restore_latest_intact(checkpoint.create_manager(run), saved[1]) is None
