"""Fault tolerance of ``python -m jaxseq.train``: kills, signals, non-finite steps, full disks, locks, bad input.

Signals and kills go to real subprocesses; everything else calls ``train.main`` in-process (cheaper:
one jax import). The model is tiny (autoencoder, kernel 3, latent 6, window 40, batch 8) so each
run is dominated by process start-up; subprocesses share a persistent XLA compilation cache.
"""

from __future__ import annotations

import errno
import gzip
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseq import checkpoint, steps, train
from jaxseq import run as rundir
from jaxseq import config as config_lib
from jaxseq.config import load_config
from jaxseq.genome import default_fasta

SMALL = ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40",
         "train.batch_size=8", "train.steps_per_call=2", "train.log_every=2", "train.eval_every=1000",
         "train.histogram_every=0", "train.examples=0"]
KILL_STEPS = 40  # length of the reference run and of the runs killed at random moments
KILLS = 12
TMP_SUFFIX = ".orbax-checkpoint-tmp"


# ----------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Token cache, XLA compilation cache and a torch blocker shared by this module's runs."""
    root = tmp_path_factory.mktemp("faults")
    # torch may be installed for the PyTorch baseline; tensorboardX imports it when present, which costs
    # seconds per process and nothing here (jaxseq never uses it): subprocesses see it as absent.
    (root / "no-torch" / "torch").mkdir(parents=True)
    (root / "no-torch" / "torch" / "__init__.py").write_text("raise ImportError('hidden by tests/test_faults.py')\n")
    yield root
    for proc in Proc.started_procs:  # a failed test must not leave a 100000-step run behind
        if proc.poll() is None:
            proc.signal(signal.SIGKILL)
            proc.wait()


def sets(shared: Path, *extra: str) -> list[str]:
    return SMALL + [f"data.cache_dir={shared / 'cache'}", *extra]


def cli(workdir: Path, overrides: list[str], *flags: str) -> list[str]:
    args = ["--workdir", str(workdir)]
    for item in overrides:
        args += ["--set", item]
    return args + list(flags)


class Proc:
    """``python -m jaxseq.train`` in the background, output in files (a pipe could fill and block it)."""

    count = 0
    started_procs: list["Proc"] = []

    def __init__(self, shared: Path, args: list[str]):
        Proc.count += 1
        Proc.started_procs.append(self)
        self.workdir = Path(args[args.index("--workdir") + 1])
        self.out = shared / f"proc{Proc.count}.out"
        self.err = shared / f"proc{Proc.count}.err"
        path = os.pathsep.join(filter(None, [str(shared / "no-torch"), os.environ.get("PYTHONPATH")]))
        # The session's compilation cache (tests/conftest.py), where the in-process runs of the same model
        # left their programs too.
        cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(shared / "xla-cache")
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONPATH=path)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "jaxseq.train", *args], stdout=out, stderr=err,
                                          cwd=shared, env=env)
        self.started = time.monotonic()

    def poll(self):
        return self.popen.poll()

    def wait(self, timeout: float = 300) -> int:
        return self.popen.wait(timeout)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def last_line(self) -> str:
        return last_line(self.stderr())


def last_line(text: str) -> str:
    # tqdm redraws with \r; the last non-empty line is what the user sees last.
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def wait_until(condition, proc: Proc | None = None, timeout: float = 240, poll: float = 0.02):
    """Polls ``condition()`` until truthy; fails if ``proc`` exits first or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited with {proc.poll()} while waiting:\n{proc.stderr()[-2000:]}")
        time.sleep(poll)
    pytest.fail("timed out" + (f":\n{proc.stderr()[-2000:]}" if proc else ""))


def tmp_entries(workdir: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(checkpoint.checkpoint_dir(workdir)) if TMP_SUFFIX in name)
    except FileNotFoundError:
        return []


def restore(workdir: Path, step: int | None = None):
    """``(step, state, loader_state, meta)`` of a committed checkpoint (default: the latest)."""
    manager = checkpoint.create_manager(workdir, read_only=True)
    try:
        step = checkpoint.latest_step(manager) if step is None else step
        config = config_lib.from_dict(checkpoint.read_meta(manager, step)["config"])
        state, loader_state, meta = checkpoint.restore(manager, step, steps.create_train_state(config))
    finally:
        manager.close()
    return step, jax.device_get(state), loader_state, meta


def leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves({"params": state.params, "opt_state": state.opt_state,
                                                    "step": state.step})]


def assert_all_finite(state) -> None:
    for leaf in leaves(state):
        if np.issubdtype(leaf.dtype, np.floating):
            assert np.all(np.isfinite(leaf))


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``directory`` (but the lock file) with size and mtime."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.name == rundir.LOCK_FILE:
            continue
        st = path.stat()
        out[str(path.relative_to(directory))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return out


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def reference(shared) -> Path:
    """An uninterrupted run of KILL_STEPS steps (also fills the token and compilation caches)."""
    run = shared / "reference"
    proc = Proc(shared, cli(run, sets(shared, f"train.num_steps={KILL_STEPS}", "train.checkpoint_every=2")))
    assert proc.wait() == 0, proc.stderr()[-3000:]
    return run


# ----------------------------------------------------------------------------------------------
# SIGKILL


def _kill_at(proc: Proc, run: Path, moment: str, rng: random.Random) -> tuple[float, bool] | None:
    """Waits for ``moment`` and SIGKILLs.

    Returns:
      ``(seconds since start, whether a save of this process was left half-written)``, or None if
      the run finished first.
    """
    committed = checkpoint.committed_steps(run)
    start_step = committed[-1] if committed else 0
    leftovers = set(tmp_entries(run))
    if moment == "startup":  # importing, restoring, compiling
        deadline = proc.started + rng.uniform(0.05, 2.0)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
    elif moment == "checkpoint write":  # a save's temporary directory exists
        # Leftovers of the previous kill go first (the new run deletes them), then wait for a new save.
        wait_until(lambda: not (leftovers & set(tmp_entries(run))) or proc.poll() is not None, timeout=240,
                   poll=0.002)
        wait_until(lambda: tmp_entries(run) or proc.poll() is not None, timeout=240, poll=0.001)
        time.sleep(rng.uniform(0.0, 0.01))
    else:  # "training": some time after this run committed a checkpoint of its own
        wait_until(lambda: any(s > start_step for s in checkpoint.committed_steps(run)) or proc.poll() is not None,
                   timeout=240, poll=0.005)
        time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
        return None
    proc.signal(signal.SIGKILL)
    code = proc.wait()
    if code == 0:
        return None
    assert code == -signal.SIGKILL, proc.stderr()[-2000:]
    return time.monotonic() - proc.started, moment == "checkpoint write" and bool(tmp_entries(run))


def test_sigkill_at_12_random_moments_then_resume_is_bit_identical(shared, reference):
    """12 SIGKILLs (start-up, mid-training, mid-checkpoint-write), each followed by a resume; the runs
    that reach the end match the uninterrupted reference exactly (state and loader position)."""
    _, want, want_loader, _ = restore(reference, KILL_STEPS)
    rng = random.Random(20251125)  # fixed: the same moments are chosen every time
    # Most kills aim at checkpoint writes, the moment that can corrupt state; each kill is a process start.
    plan = ["startup"] * 1 + ["checkpoint write"] * 8 + ["training"] * 3
    rng.shuffle(plan)
    overrides = sets(shared, f"train.num_steps={KILL_STEPS}", "train.checkpoint_every=2")
    kills, finished, run = [], [], None
    while len(kills) < KILLS or run is not None:
        if run is None:
            run = shared / f"killed{len(finished)}"
        resume = bool(checkpoint.committed_steps(run))
        proc = Proc(shared, cli(run, overrides, *(["--resume"] if resume else [])))
        if len(kills) < KILLS:
            moment = plan[len(kills)]
            before = checkpoint.committed_steps(run)
            killed = _kill_at(proc, run, moment, rng)
            if killed is not None:
                kills.append((moment, round(killed[0], 2), before[-1] if before else None, killed[1]))
                continue
        assert proc.wait() == 0, f"resume failed:\n{proc.stderr()[-3000:]}"
        step, got, got_loader, _ = restore(run)
        assert step == KILL_STEPS
        for a, b in zip(leaves(want), leaves(got), strict=True):
            np.testing.assert_array_equal(a, b)
        assert got_loader == want_loader
        assert not tmp_entries(run), "half-written checkpoints were not cleaned"
        finished.append(run)
        run = None
    print(f"\n{len(kills)} SIGKILLs (moment, seconds after start, committed step before, save left half-written):")
    for kill in kills:
        print("   ", kill)
    print(f"{len(finished)} run(s) finished after them, all bit-identical to the reference")
    assert len(kills) == KILLS and finished
    assert any(k[3] for k in kills), "no kill landed during a checkpoint write"  # timing-dependent, but 8 tries


def test_half_written_checkpoint_is_ignored_cleaned_and_changed_settings_are_logged(shared, reference, capfd):
    run = shared / "half"
    shutil.copytree(reference, run)
    ckpt = checkpoint.checkpoint_dir(run)
    # A complete-looking save that was never renamed into place, and a barely started one.
    shutil.copytree(ckpt / str(KILL_STEPS), ckpt / f"{KILL_STEPS + 10}{TMP_SUFFIX}")
    (ckpt / f"{KILL_STEPS + 12}{TMP_SUFFIX}" / "state").mkdir(parents=True)
    (ckpt / f"{KILL_STEPS + 12}{TMP_SUFFIX}" / "state" / "partial").write_bytes(b"\0" * 100)
    assert checkpoint.committed_steps(run)[-1] == KILL_STEPS
    assert restore(run)[0] == KILL_STEPS

    code = train.main(cli(run, [f"train.num_steps={KILL_STEPS + 2}", "optim.learning_rate=0.001"], "--resume"))
    out = capfd.readouterr().out
    assert code == 0
    assert not tmp_entries(run)
    assert checkpoint.committed_steps(run)[-1] == KILL_STEPS + 2
    assert f"resuming {run} at step {KILL_STEPS} with changed settings:" in out
    assert f"train.num_steps: {KILL_STEPS} -> {KILL_STEPS + 2}" in out and "optim.learning_rate: 0.003 -> 0.001" in out
    texts = tensorboard_texts(run)
    assert any(tag.startswith("config/changes") and f"train.num_steps: {KILL_STEPS} -> {KILL_STEPS + 2}" in text
               for tag, text in texts)


def tensorboard_texts(run: Path) -> list[tuple[str, str]]:
    """(tag, text) of every text summary in a run's event files."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.string_val:
                    out.append((value.tag, b"".join(value.tensor.string_val).decode()))
    return out


# ----------------------------------------------------------------------------------------------
# SIGTERM, SIGINT, lock


def stopped_at(proc: Proc, name: str) -> int:
    """The step in the final message ``stopped by NAME at step N: checkpoint step N is committed ...``."""
    message = proc.last_line()
    assert message.startswith(f"stopped by {name} at step "), proc.stderr()[-2000:]
    step = int(message.split("at step ")[1].split(":")[0])
    assert f"checkpoint step {step} is committed in {proc.workdir / 'checkpoints'}" in message
    assert message.endswith(f"resume with: python -m jaxseq.train --workdir {proc.workdir} --resume")
    return step


def test_sigterm_143_lock_sigint_130_and_second_sigint_aborts(shared, capfd):
    """One run directory, three processes: SIGTERM (with a second writer refused meanwhile), then a
    resume stopped by SIGINT, then a resume aborted by a second SIGINT."""
    run = shared / "signals"
    overrides = sets(shared, "train.num_steps=100000", "train.checkpoint_every=10")
    proc = Proc(shared, cli(run, overrides))
    wait_until(lambda: checkpoint.committed_steps(run), proc)

    # A second training process on the same run directory refuses before doing anything.
    config_stamp = (run / "config.yaml").stat().st_mtime_ns
    code = train.main(cli(run, overrides))
    line = one_error_line(capfd.readouterr().err)
    assert code == 2
    assert f"run directory {run} is in use by pid {proc.popen.pid}" in line and ".lock" in line
    assert (run / "config.yaml").stat().st_mtime_ns == config_stamp  # the refused process wrote nothing

    proc.signal(signal.SIGTERM)
    assert proc.wait(120) == 143, proc.stderr()[-2000:]
    assert "received SIGTERM: stopping after the current step" in proc.stderr()
    step = stopped_at(proc, "SIGTERM")
    # Saved at the step it stopped (not only at the last multiple of checkpoint_every), checked finite.
    assert checkpoint.committed_steps(run)[-1] == step
    _, state, loader_state, _ = restore(run)
    assert int(state.step) == step and loader_state["batch_index"] == step
    assert_all_finite(state)
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)

    # The lock went with the process. Resume (a changed setting is allowed and reported), stop by SIGINT.
    proc = Proc(shared, cli(run, ["train.checkpoint_every=2"], "--resume"))
    wait_until(lambda: checkpoint.committed_steps(run)[-1] > step, proc)
    proc.signal(signal.SIGINT)
    assert proc.wait(120) == 130, proc.stderr()[-2000:]
    assert f"resuming {run} at step {step} with changed settings: train.checkpoint_every: 10 -> 2" in proc.stdout()
    step = stopped_at(proc, "SIGINT")
    assert checkpoint.committed_steps(run)[-1] == step

    # A second SIGINT while the first is being handled aborts at once. The second must arrive after the
    # first was seen (the kernel merges a signal into an identical pending one) and before the process
    # finished stopping on its own: on a loaded machine that window can be missed, so try up to 3 times.
    for attempt in range(3):
        proc = Proc(shared, cli(run, [], "--resume"))
        wait_until(lambda: checkpoint.committed_steps(run)[-1] > step, proc)
        proc.signal(signal.SIGINT)
        while "received SIGINT: stopping" not in proc.stderr() and proc.poll() is None:
            time.sleep(0.001)
        if proc.poll() is None:
            proc.signal(signal.SIGINT)
        assert proc.wait(60) == 130
        err = proc.stderr()
        if "received SIGINT again" in err:
            break
        step = stopped_at(proc, "SIGINT")  # stopped cleanly before the second signal: again
    assert "received SIGINT again: aborting now" in err and "stopped by SIGINT" not in err
    # Whatever was being written, the latest committed checkpoint is whole.
    latest, state, _, _ = restore(run)
    assert latest > step and int(state.step) == latest
    assert_all_finite(state)


def test_run_directory_lock_is_exclusive_and_released(tmp_path):
    first = rundir.lock_run_directory(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=f"run directory {tmp_path} is in use by pid {os.getpid()} "):
        rundir.lock_run_directory(tmp_path)
    first.release()
    with rundir.lock_run_directory(tmp_path):  # free again; the file left behind is no lock
        pass


def test_orbax_io_errors_are_described_by_errno():
    err = ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/x/_sharding\": Failed to write 4030 bytes "
                     "[os_error_code='28'] [tensorstore_spec='{...}']")
    assert checkpoint.describe_os_error(err) == "[Errno 28] No space left on device"
    try:
        try:
            raise OSError(errno.EROFS, "ro")
        except OSError:
            raise RuntimeError("commit failed")
    except RuntimeError as chained:
        assert checkpoint.describe_os_error(chained) == f"[Errno {errno.EROFS}] {os.strerror(errno.EROFS)}"


# ----------------------------------------------------------------------------------------------
# Non-finite steps

SPIKE = "model.latent_noise_std={schedule: piecewise, boundaries: [2, 3], values: [0, 3.0e+38, 0]}"


def test_nonfinite_spike_stops_and_skip_nonfinite_continues(shared, tmp_path, capfd):
    # A latent-noise spike (std 3e38 at step 3 only) makes one batch's loss non-finite; unlike a huge
    # learning rate (sgd, lr 1e30: every step from 2 on is non-finite), training can go on after it.
    run = tmp_path / "run"
    overrides = sets(shared, "train.num_steps=6", "train.checkpoint_every=1", SPIKE)
    assert train.main(cli(run, overrides)) == 2
    line = last_line(capfd.readouterr().err)
    assert line.startswith("error: non-finite loss at step 3 ")
    assert f"the latest committed checkpoint is step 2 in {run / 'checkpoints'}" in line
    assert checkpoint.committed_steps(run)[-1] == 2

    assert train.main(cli(run, [], "--resume", "--skip-nonfinite", "1")) == 0
    out = capfd.readouterr().out
    assert "step 3: skipped 1 batch(es) with non-finite loss (1 of at most 1)" in out
    step, state, _, meta = restore(run)
    assert step == 6 and int(state.step) == 6 and meta["skipped_nonfinite"] == 1
    assert_all_finite(state)


# ----------------------------------------------------------------------------------------------
# Full disk, unwritable run directory


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount permission, else skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_on_a_real_tmpfs_reports_and_keeps_the_previous_checkpoint(shared, tiny_disk, capfd):
    run = tiny_disk / "run"
    overrides = sets(shared, "train.checkpoint_every=2")
    assert train.main(cli(run, overrides + ["train.num_steps=4"])) == 0
    _, before, _, _ = restore(run, 4)
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    # Leave room for config.yaml and a little TensorBoard, not for a checkpoint (~100 KiB).
    (tiny_disk / "ballast").write_bytes(b"\0" * (free - 24 * 1024))

    proc = Proc(shared, cli(run, overrides + ["train.num_steps=8"]))
    assert proc.wait() == 2
    # The last line (nothing from orbax's failed background tasks after it) names step, reason and what is kept.
    assert proc.last_line() == (
        f"error: cannot save checkpoint step 6 in {run / 'checkpoints'}: [Errno 28] No space left on device; "
        f"the latest committed checkpoint is step 4 in {run / 'checkpoints'} (a rerun with --resume continues "
        f"from it)"), proc.stderr()[-3000:]
    assert checkpoint.committed_steps(run) == [2, 4]
    _, after, _, _ = restore(run, 4)
    for a, b in zip(leaves(before), leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)

    # Read-only run directory: refused before any compute, nothing changed.
    (tiny_disk / "ballast").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    capfd.readouterr()
    assert train.main(cli(run, ["train.num_steps=8"], "--resume")) == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"run directory {run}" in line and os.strerror(errno.EROFS) in line


# orbax's background thread leaves an "Event loop is closed" behind after the failed save.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_full_disk_in_orbax_writer_reports_step_and_keeps_the_previous_checkpoint(shared, tmp_path, monkeypatch,
                                                                                  capfd):
    """Always runs: orbax's file writes fail with ENOSPC from step 6 on (in its background thread)."""
    from orbax.checkpoint._src.path import async_path

    write_text = async_path.write_text

    async def full_disk(path, text):
        if f"/6{TMP_SUFFIX}" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return await write_text(path, text)

    monkeypatch.setattr(async_path, "write_text", full_disk)
    run = tmp_path / "run"
    code = train.main(cli(run, sets(shared, "train.num_steps=8", "train.checkpoint_every=2")))
    assert code == 2
    line = last_line(capfd.readouterr().err)
    assert line == (f"error: cannot save checkpoint step 6 in {run / 'checkpoints'}: [Errno 28] No space left on "
                    f"device; the latest committed checkpoint is step 4 in {run / 'checkpoints'} (a rerun with "
                    f"--resume continues from it)")
    assert checkpoint.committed_steps(run) == [2, 4]
    step, state, _, _ = restore(run)
    assert step == 4 and int(state.step) == 4
    assert_all_finite(state)


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, before anything is written


def bgzf(data: bytes, block: int = 1000) -> bytes:
    """BGZF (bgzip) blocks: gzip members with the 'BC' extra field, then the empty EOF block."""
    out = []
    for i in range(0, len(data), block):
        chunk = data[i:i + block]
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = deflate.compress(chunk) + deflate.flush()
        out.append(struct.pack("<4BI2BH2BHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, len(body) + 25) + body
                   + struct.pack("<II", zlib.crc32(chunk), len(chunk)))
    eof = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
    return b"".join(out) + eof


LAMBDA = gzip.decompress(default_fasta().read_bytes())
SHORT = b"".join(b">r%d\n" % i + b"ACGTACGTAC" * 3 + b"\n" for i in range(10))

CATALOGUE = [
    # id, FASTA bytes (None: no file), settings, flags, expected in the message
    ("missing-fasta", None, [], [], "FASTA file not found"),
    ("empty-fasta", b"", [], [], "FASTA file is empty"),
    ("no-header", b"ACGT\nACGT\n", [], [], "line 1: no FASTA header"),
    ("bare-header", b">\nACGT\n", [], [], "line 1: header '>' has no record name"),
    ("record-without-sequence", b">a\n>b\nACGT\n", [], [], "record 'a', line 1: record has no sequence"),
    ("inconsistent-lines", b">a\nACGTACGT\nACG\nACGTACGT\n", [], [], "inconsistent line length"),
    ("cr-only-endings", b">a\rACGT\rACGT\r", [], [], "carriage return not followed by a line feed"),
    ("mixed-crlf-lf", b">a\nACGT\r\nACGT\nACGT\n", [], [], "record 'a', line 3: inconsistent line endings"),
    ("duplicate-names", b">a\nACGT\n>a\nACGT\n", [], [], "duplicate record name 'a'"),
    ("invalid-character", b">a\nACGT1ACGT\n", [], [], "invalid character '1' at position 5"),
    ("truncated-gzip", gzip.compress(LAMBDA)[:5000], [], [], "truncated or corrupt gzip data"),
    ("truncated-bgzip", bgzf(LAMBDA)[:5000], [], [], "truncated or corrupt gzip data"),
    ("window-longer-than-records", SHORT, ["data.split=records", "data.valid_records=[r1]", "data.test_records=[r2]"],
     [], "split 'train' has no interval of at least window_len=40 bases (longest is 30 bases"),
    ("split-without-window", None, ["data.proportions=[1.0, 0.0, 0.0]"], [], "split 'valid' is empty"),
    ("all-n-genome", b">a\n" + b"N" * 20000 + b"\n", ["data.block_len=1000"], [],
     "no window of window_len=40 with N fraction <= max_n_fraction=0.0"),
    ("unknown-key", None, ["train.batch_sise=3"], [], "unknown config key 'train.batch_sise' (did you mean"),
    ("wrong-type", None, ["data.window_len=abc"], [], "data.window_len: expected an integer, got str 'abc'"),
    ("out-of-range", None, ["data.max_n_fraction=2"], [], "data.max_n_fraction must be in [0, 1], got 2.0"),
    ("negative-skip", None, [], ["--skip-nonfinite", "-1"], "train.skip_nonfinite must be >= 0, got -1"),
    ("missing-config-file", None, [], ["--config", "nope.yaml"], "config file nope.yaml does not exist"),
    ("resume-nothing", None, [], ["--resume"], "--resume: "),
]


@pytest.mark.parametrize("name,fasta,settings,flags,expected", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_exit_2_and_nothing_written(shared, tmp_path, monkeypatch, capfd,
                                                          name, fasta, settings, flags, expected):
    monkeypatch.chdir(tmp_path)
    extra = []
    if fasta is not None or name == "missing-fasta":
        path = tmp_path / f"{name}.fa"
        if fasta is not None:
            path.write_bytes(fasta)
        extra.append(f"data.fasta={path}")
    run = tmp_path / "run"
    code = train.main(cli(run, sets(shared, *extra, *settings), *flags))
    line = one_error_line(capfd.readouterr().err)
    assert code == 2
    assert expected in line
    if fasta is not None or name == "missing-fasta":
        assert f"{name}.fa" in line  # names the file
    assert not run.exists()


def test_resume_without_checkpoint_leaves_the_run_directory_as_it_was(shared, reference, tmp_path, capfd):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "config.yaml", run / "config.yaml")
    before = snapshot(run)
    assert train.main(["--workdir", str(run), "--resume"]) == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"--resume: no checkpoint to resume in {run / 'checkpoints'}" in line
    assert snapshot(run) == before and not (run / "checkpoints").exists()


@pytest.mark.parametrize("settings,expected", [
    (["model.latent_len=7", "model.kernel_len=5"], "model.kernel_len: 3 -> 5; model.latent_len: 6 -> 7"),
    (["data.window_len=48"], "data.window_len: 40 -> 48"),
    (["data.block_len=3000"], "its training data differs (data.block_len: 2000 -> 3000)"),
])
def test_resume_with_other_architecture_or_data_is_refused_and_changes_nothing(shared, reference, tmp_path, capfd,
                                                                               settings, expected):
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns(rundir.LOCK_FILE))
    before = snapshot(run)
    code = train.main(cli(run, settings, "--resume"))
    line = one_error_line(capfd.readouterr().err)
    assert code == 2 and expected in line and f"cannot resume {run}" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["unknown-key", "all-n-genome"])
def test_bad_input_through_the_real_command_prints_only_the_error(shared, tmp_path, name):
    """End to end: nothing (jax, absl) is printed before the one error line."""
    _, fasta, settings, _, expected = next(c for c in CATALOGUE if c[0] == name)
    extra = []
    if fasta is not None:
        (tmp_path / "g.fa").write_bytes(fasta)
        extra.append(f"data.fasta={tmp_path / 'g.fa'}")
    proc = Proc(shared, cli(tmp_path / "run", sets(shared, *extra, *settings)))
    assert proc.wait() == 2
    assert expected in one_error_line(proc.stderr())
    assert proc.stdout() == "" and not (tmp_path / "run").exists()


# Accepted input: documented behaviour, checked on the tokens training would see.


def tokens_of(shared: Path, fasta: Path) -> dict[str, np.ndarray]:
    data = steps.open_data(load_config(None, sets(shared, f"data.fasta={fasta}", "data.split=records",
                                                  "data.valid_records=[b]", "data.test_records=[c]",
                                                  "data.window_len=4")))
    return {name: np.asarray(data.genome.tokens(name)) for name in data.genome.names}


THREE = b">a\nACGTACGTAC\nGGTTA\n>b\nTTTTACGTAC\nNNNN\n>c\nacgtacgtac\nA\n"


@pytest.mark.parametrize("variant", ["crlf", "gzip", "bgzip"])
def test_crlf_gzip_and_bgzip_read_like_plain_lf(shared, tmp_path, variant):
    plain = tmp_path / "plain.fa"
    plain.write_bytes(THREE)
    other = tmp_path / f"other.fa{'' if variant == 'crlf' else '.gz'}"
    other.write_bytes({"crlf": THREE.replace(b"\n", b"\r\n"), "gzip": gzip.compress(THREE),
                       "bgzip": bgzf(THREE, block=7)}[variant])
    want, got = tokens_of(shared, plain), tokens_of(shared, other)
    assert list(want) == list(got) == ["a", "b", "c"]
    for name in want:
        np.testing.assert_array_equal(want[name], got[name])


def test_fasta_in_a_read_only_folder_is_read(shared, tiny_disk):
    (tiny_disk / "g.fa").write_bytes(THREE)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    assert list(tokens_of(shared, tiny_disk / "g.fa")) == ["a", "b", "c"]
    assert os.listdir(tiny_disk) == ["g.fa"]


def test_fasta_replaced_by_an_older_file_is_read_afresh_and_its_folder_untouched(shared, tmp_path):
    # pyfaidx would trust a .fai newer than the FASTA; the cache is keyed by content instead.
    folder = tmp_path / "data"
    folder.mkdir()
    fasta = folder / "g.fa"
    fasta.write_bytes(THREE)
    first = tokens_of(shared, fasta)
    (folder / "g.fa.fai").write_text("a\t15\t3\t10\t11\n")  # stale index lying next to it
    replaced = THREE.replace(b"ACGTACGTAC\nGGTTA", b"CCCCCCCCCC\nCCCCC")
    fasta.write_bytes(replaced)
    old = time.time() - 10 * 86400
    os.utime(fasta, (old, old))
    listing = sorted(os.listdir(folder))
    second = tokens_of(shared, fasta)
    assert not np.array_equal(first["a"], second["a"])
    assert (second["a"] == 1).all()  # all C
    assert sorted(os.listdir(folder)) == listing  # nothing written beside the FASTA (read-only folders work)
