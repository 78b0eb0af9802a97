"""The run directory: lock, signals, atomic JSON, resume decisions and their messages.

A run directory holds ``config.yaml``, ``checkpoints/`` (orbax: train state, loader state, meta),
``tensorboard/`` and ``final_metrics.json``. Runs started without ``--workdir`` go to
``runs/<YYYYmmdd-HHMMSS>``; a new one is refused while the newest of those is unfinished (the message
says how to resume it), and ``--resume`` alone resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from jaxseq import checkpoint, steps
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


def resolve_config(config_path: str | None, overrides: Sequence[str], workdir: Path, resume: bool) -> Config:
    """The run's config: ``--config`` (or the defaults), else the run directory's own, plus ``--set`` overrides.

    An existing run's base is its ``config.yaml``, or without that file the config saved in its newest
    checkpoint.

    Raises:
      ConfigError: a bad setting; CheckpointError: ``--resume`` and nothing to resume.
    """
    saved = workdir / "config.yaml"
    if config_path is None and saved.is_file():
        return config_lib.load_config(saved, overrides)
    found = checkpoint.committed_steps(workdir)
    if config_path is None and found:
        manager = checkpoint.create_manager(workdir, read_only=True)
        try:
            meta = checkpoint.read_meta(manager, found[-1])
        finally:
            manager.close()
        config = config_lib.from_dict(meta.get("config") or {})
        for text in overrides:
            key, value = config_lib.parse_override(text)
            group, _, name = key.partition(".")
            config_lib.from_dict({group: {name: value}}, config)
        config_lib.validate(config)
        return config
    if resume:
        raise checkpoint.CheckpointError(f"--resume: {workdir} has no config.yaml or checkpoint to resume")
    return config_lib.load_config(config_path, overrides)


def changed_settings(old: Config, new: Config) -> list[str]:
    """``"group.key: old -> new"`` for every setting that differs."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{group}.{key}: {a[group][key]!r} -> {b[group][key]!r}"
            for group in b for key in b[group] if a.get(group, {}).get(key) != b[group][key]]


def restore_or_init(config: Config, workdir: Path, mesh, manager, require_checkpoint: bool):
    """The latest checkpoint's state, or a fresh one.

    Returns:
      ``(state, loader_state, meta, changes)``; ``loader_state``/``meta`` are None for a fresh state,
      ``changes`` lists the settings (none of them architectural) that differ from the checkpoint's.

    Raises:
      CheckpointError: ``require_checkpoint`` and nothing to resume; ConfigError: the model changed.
    """
    step = checkpoint.latest_step(manager)
    if step is None:
        if require_checkpoint:
            raise checkpoint.CheckpointError(f"--resume: no checkpoint to resume in {checkpoint.checkpoint_dir(workdir)}")
        return steps.create_train_state(config, mesh), None, None, []
    # Compare configs before touching arrays: the message then names the setting, not a tensor shape.
    saved = config_lib.from_dict(checkpoint.read_meta(manager, step)["config"])
    changed = config_lib.architecture_changes(saved, config)
    if changed:
        raise ConfigError(f"cannot resume {workdir} (checkpoint step {step}): settings that define the model "
                          f"changed: {'; '.join(changed)}; undo them or train into a new --workdir")
    state, loader_state, meta = checkpoint.restore(manager, step, steps.create_train_state(config, mesh))
    return state, loader_state, meta, changed_settings(saved, config)



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
