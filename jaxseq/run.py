"""The run directory: lock, signals, atomic JSON, resume decisions and their messages.

A run directory holds ``config.yaml``, ``checkpoints/`` (orbax: train state, loader state, meta),
``tensorboard/`` and ``final_metrics.json``. Runs started without ``--workdir`` go to
``runs/<YYYYmmdd-HHMMSS>``; a new one is refused while the newest of those is unfinished (the message
says how to resume it), and ``--resume`` alone resumes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shlex
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from jaxseq import checkpoint, steps, trained
from jaxseq import config as config_lib
from jaxseq.config import Config, ConfigError

#: Where runs started without --workdir go, each in a timestamped folder.
RUNS_ROOT = Path("runs")
_TIMESTAMP = re.compile(r"^\d{8}-\d{6}$")
FINAL_METRICS = "final_metrics.json"


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


class TrainingInterrupted(BaseException):
    """SIGTERM or SIGINT stopped training at a step boundary, after committing a checkpoint of that step.

    A ``BaseException`` like ``KeyboardInterrupt``: a request to stop, which ``except Exception``
    handlers (e.g. a sweep that carries on after a failed run) must not swallow.

    Attributes:
      signum: the signal received.
      step: the step training stopped at.
      exit_code: the conventional ``128 + signum`` (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum = signum
        self.step = step
        self.exit_code = 128 + signum


class RunDirectoryError(OSError):
    """The run directory (or its TensorBoard log) cannot be written, or is not the one to use."""


# ----------------------------------------------------------------------------------------------
# Files


def write_json(path: Path, payload: Any) -> None:
    """Writes JSON atomically: a process killed meanwhile leaves the old file or none, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def read_final_metrics(workdir: Path) -> dict | None:
    """``final_metrics.json`` of a run, or None when missing or unreadable."""
    try:
        return json.loads((Path(workdir) / FINAL_METRICS).read_text())
    except (OSError, ValueError):
        return None


def resume_command(workdir: Path, resume: bool = True) -> str:
    """The shell command that continues a run (the path quoted for the shell)."""
    return f"python -m jaxseq.train --workdir {shlex.quote(str(workdir))}{' --resume' if resume else ''}"


def latest_checkpoint_text(workdir: Path) -> str:
    """Where the newest committed checkpoint is, for error messages."""
    try:
        found = checkpoint.committed_steps(workdir)
    except Exception:  # reporting must not hide the error being reported
        return f"see {checkpoint.checkpoint_dir(workdir)} for the committed checkpoints"
    if not found:
        return f"no checkpoint is committed in {checkpoint.checkpoint_dir(workdir)}"
    return (f"the latest committed checkpoint is step {found[-1]} in {checkpoint.checkpoint_dir(workdir)} "
            f"(a rerun with --resume continues from it)")


def close_quietly(manager) -> None:
    """Closes a checkpoint manager whose saves were already waited for; closing must not mask an error."""
    with contextlib.suppress(Exception):
        manager.close()


# ----------------------------------------------------------------------------------------------
# Which run directory, which config


def _newest_timestamped_run(root: Path) -> Path | None:
    try:
        found = sorted(p for p in root.iterdir() if p.is_dir() and _TIMESTAMP.match(p.name))
    except OSError:
        return None
    return found[-1] if found else None


def choose_workdir(workdir: str | None, resume: bool, root: Path = RUNS_ROOT) -> tuple[Path, str | None]:
    """The run directory to train in, and a note to print about the previous run (or None).

    Without ``--workdir``: ``--resume`` takes the newest ``runs/<timestamp>`` that has a checkpoint;
    otherwise a new ``runs/<timestamp>`` is made, unless the newest one is unfinished.

    Raises:
      RunDirectoryError: ``--resume`` with no run to resume, or a new run while the previous one is unfinished.
    """
    if workdir:
        return Path(workdir), None
    previous = _newest_timestamped_run(root)
    found = checkpoint.committed_steps(previous) if previous is not None else []
    if resume:
        if not found:
            raise RunDirectoryError(f"--resume without --workdir: no run with a checkpoint in "
                                    f"{root.absolute()}; pass --workdir DIR")
        return previous, f"--resume: resuming the newest run, {previous.absolute()} (checkpoint step {found[-1]})"
    new = root / time.strftime("%Y%m%d-%H%M%S")
    if not found:
        return new, None
    final = read_final_metrics(previous)
    if final is None:
        raise RunDirectoryError(f"the previous run {previous.absolute()} is unfinished (checkpoint step {found[-1]}); "
                                f"resume it with: {resume_command(previous.absolute())}, or pass --workdir DIR to "
                                f"start another run")
    return new, (f"the previous run {previous.absolute()} finished at step {final.get('step', found[-1])}; "
                 f"starting a new run in {new.absolute()}")


def _config_from_checkpoint(workdir: Path, found: list[int]) -> Config | None:
    """The config saved in the newest checkpoint whose metadata is intact (None if none is)."""
    manager = checkpoint.create_manager(workdir, read_only=True)
    try:
        for step in reversed(found):
            with contextlib.suppress(checkpoint.CorruptCheckpointError):
                return config_lib.from_dict(checkpoint.read_meta(manager, step).get("config") or {})
    finally:
        manager.close()
    return None


def resolve_config(config_path: str | None, overrides: Sequence[str], workdir: Path, resume: bool) -> Config:
    """The run's config: ``--config`` (or the defaults), else the run directory's own, plus ``--set`` overrides.

    An existing run's base is its ``config.yaml``, or without that file the config saved in its newest
    checkpoint with intact metadata. Every setting is validated here, before anything is written.

    Raises:
      ConfigError: a bad setting; CheckpointError: ``--resume`` and nothing to resume.
    """
    saved = workdir / "config.yaml"
    if config_path is None and saved.is_file():
        return config_lib.load_config(saved, overrides)
    found = checkpoint.committed_steps(workdir)
    config = _config_from_checkpoint(workdir, found) if config_path is None and found else None
    if config is not None:
        for text in overrides:
            key, value = config_lib.parse_override(text)
            group, _, name = key.partition(".")
            config_lib.from_dict({group: {name: value}}, config)
        config_lib.validate(config)
        return config
    if resume:
        raise checkpoint.CheckpointError(f"--resume: {workdir} has no config.yaml and no checkpoint with intact "
                                         f"metadata to resume")
    return config_lib.load_config(config_path, overrides)


# ----------------------------------------------------------------------------------------------
# Resume decisions: the model and the data must stay those of the checkpoint

DATA_FILE = "data.json"
HISTORY_FILE = "config_history.jsonl"


def _check_resumable(workdir: Path, config: Config, binding: dict | None, step: int, meta: dict,
                     log) -> None:
    """Refuses a checkpoint of another model or other data (ConfigError / CheckpointError, one line)."""
    saved = config_lib.from_dict(meta.get("config") or {})
    where = f"cannot resume {workdir} (checkpoint step {step})"
    changed = config_lib.architecture_changes(saved, config)
    if changed:
        raise ConfigError(f"{where}: settings that define the model changed: {'; '.join(changed)}; "
                          f"undo them or train into a new --workdir")
    changed = config_lib.differences(saved, config, trained.DATA_KEYS)
    if changed:
        raise ConfigError(f"{where}: settings that define the training data changed: {'; '.join(changed)}; "
                          f"undo them or train into a new --workdir")
    if binding is None:
        return
    if not meta.get("data"):
        log(f"note: checkpoint step {step} in {workdir} was saved without a data fingerprint (earlier release): "
            f"its data cannot be checked; binding the run to genome content {binding['fingerprint']} from now on")
    trained.check_data_binding(meta.get("data"), binding, where,
                               "undo the change, or train on this data in a new --workdir")


def restore_or_init(config: Config, workdir: Path, mesh, manager, require_checkpoint: bool,
                    binding: dict | None = None, log=print):
    """The newest intact checkpoint's state, or a fresh one.

    Damaged steps (files that fail their checksums or cannot be read) are moved to
    ``checkpoints/damaged/`` with one line each on ``log``, and training continues from the newest
    intact step (also said on ``log``).

    Args:
      config: the run's validated config.
      workdir: the run directory.
      mesh: device mesh of the state.
      manager: from :func:`jaxseq.checkpoint.create_manager` (writable: damaged steps are moved).
      require_checkpoint: ``--resume``: fail if there is nothing to resume.
      binding: :func:`jaxseq.trained.data_binding` of the data about to be trained on; None: not checked.
      log: receives the lines about damaged steps and earlier-release checkpoints.

    Returns:
      ``(state, loader_state, meta, changes)``; ``loader_state``/``meta`` are None for a fresh state,
      ``changes`` lists the settings (none of them architectural) that differ from the checkpoint's.

    Raises:
      CheckpointError: ``require_checkpoint`` and nothing to resume, every step damaged, or other data
        (both fingerprints named); ConfigError: the model or the data settings changed.
    """
    fresh = steps.create_train_state(config, mesh)
    damaged = []

    def on_damaged(line: str) -> None:
        damaged.append(line)
        log(line)

    found = checkpoint.restore_latest_intact(
        manager, fresh, log=on_damaged,
        check_meta=lambda step, meta: _check_resumable(workdir, config, binding, step, meta, log))
    if found is None:
        if require_checkpoint:
            raise checkpoint.CheckpointError(f"--resume: no checkpoint to resume in "
                                             f"{checkpoint.checkpoint_dir(workdir)}")
        return fresh, None, None, []
    step, state, loader_state, meta = found
    if damaged:
        log(f"continuing from checkpoint step {step}, the newest intact one")
    saved = config_lib.from_dict(meta["config"])
    return state, loader_state, meta, config_lib.differences(saved, config)


def record_resume(workdir: Path, step: int, changes: list[str], binding: dict | None) -> None:
    """Writes ``data.json`` (what the run is bound to) and appends accepted setting changes to
    ``config_history.jsonl`` (one JSON object per resume: ``time``, ``step``, ``changes``)."""
    if binding is not None:
        write_json(workdir / DATA_FILE, binding)
    if changes:
        with open(workdir / HISTORY_FILE, "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "changes": changes}) + "\n")


def check_bound_data(workdir: Path, config: Config, where: str, remedy: str) -> None:
    """Refuses a run directory whose ``data.json`` names other data than ``config`` does now.

    Opens the config's genome only when the run has a ``data.json`` (runs of earlier releases pass).

    Raises:
      CheckpointError: other genome content or region/alias files (both fingerprints named, then ``remedy``).
      GenomeError: the config's FASTA cannot be read.
    """
    try:
        bound = json.loads((Path(workdir) / DATA_FILE).read_text())
    except (OSError, ValueError):
        return
    from jaxseq.genome import Genome, default_fasta

    genome = Genome.open(config.data.fasta or default_fasta(), cache_dir=config.data.cache_dir or None)
    trained.check_data_binding(bound, trained.data_binding(config, genome.fingerprint), where, remedy)


# ----------------------------------------------------------------------------------------------
# Lock


LOCK_FILE = ".lock"


class RunDirectoryLock:
    """An exclusive ``flock`` on ``<run directory>/.lock``, held until :meth:`release` or process exit.

    The kernel drops a ``flock`` when its holder dies (even by SIGKILL), so a crashed run never
    leaves a stale lock behind: there is nothing to break by hand. The file itself stays (it only
    records who holds the lock) and is harmless.
    """

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Unlocks (safe to call twice)."""
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunDirectoryLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def lock_run_directory(workdir: str | Path) -> RunDirectoryLock:
    """Takes the run directory's lock so that no second process trains into it at the same time.

    Args:
      workdir: an existing run directory.

    Returns:
      The held lock; call ``release()`` when done (exiting the process also releases it).

    Raises:
      CheckpointError: another live process holds the lock (the message names its pid and host), or
        the run directory is not writable.
    """
    path = Path(workdir).absolute() / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise checkpoint.CheckpointError(f"cannot write to run directory {path.parent}: "
                                         f"{checkpoint.describe_os_error(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # No flock on this file system (some network mounts): run unlocked rather than not at all.
            os.close(fd)
            logging.getLogger(__name__).warning(
                "cannot lock %s (%s): make sure no other process trains into this run directory",
                path, checkpoint.describe_os_error(err))
            return RunDirectoryLock(path, None)
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        except OSError:
            holder = "another process"
        os.close(fd)
        raise checkpoint.CheckpointError(f"run directory {path.parent} is in use by {holder} (it holds {path}); "
                                         f"wait for it to finish or stop it, or train into another --workdir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
    except OSError as err:
        os.close(fd)
        raise checkpoint.CheckpointError(f"cannot write to run directory {path.parent}: "
                                         f"{checkpoint.describe_os_error(err)}") from None
    return RunDirectoryLock(path, fd)


# ----------------------------------------------------------------------------------------------
# Signals


class StopSignals:
    """SIGTERM/SIGINT during training: the first asks the loop to stop at the next step boundary (after
    a checkpoint); a second one ends the process at once with ``128 + signum``, even while the main
    thread is busy in a long XLA call (committed checkpoints are untouched: orbax renames a save into
    place only when it is complete, and a half-written one is deleted by the next run).

    Python runs signal handlers only in the main thread and only between bytecodes, and it merges
    signals that arrive before its handler runs. The C-level handler, however, writes one byte per
    signal to the wakeup fd (``signal.set_wakeup_fd``): a watcher thread reads those, so every signal
    is counted the moment it arrives. Installed only in the main thread (Python allows no other);
    the previous handlers and wakeup fd are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._previous_fd = None
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            # A Python handler must be set for the C handler to run; the watcher does the work.
            self._previous[signum] = signal.signal(signum, lambda *_: None)
        self._watcher = threading.Thread(target=self._watch, name="jaxseq-signals", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        read_fd = self._pipe[0]
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:  # write end closed: __exit__
                return
            for signum in data:
                if signum not in self.SIGNALS:
                    continue
                name = signal.Signals(signum).name
                if self.signum is None:
                    self.signum = signum
                    os.write(2, f"\nreceived {name}: stopping after the current step and saving a checkpoint "
                                f"(send it again to abort at once; committed checkpoints stay intact)\n".encode())
                else:
                    os.write(2, f"\nreceived {name} again: aborting now; the checkpoints committed so far are "
                                f"intact (a half-written one is ignored and deleted by the next run)\n".encode())
                    os._exit(128 + signum)

    def __exit__(self, *exc_info) -> None:
        if self._pipe is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
        os.close(self._pipe[1])  # the watcher reads end-of-file and returns
        self._watcher.join(timeout=5)
        os.close(self._pipe[0])
        self._previous, self._pipe, self._watcher = {}, None, None
