"""A thin wrapper over orbax's ``CheckpointManager``: train state + loader state + metadata per step.

Each checkpoint step directory holds three items: ``state`` (params, optimiser state, batch
statistics, step; a pytree of arrays), ``loader`` (the loader's JSON state, so a resumed run sees
the batches an uninterrupted one would) and ``meta`` (JSON: the resolved config and free-form
facts). orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves no step that :func:`latest_step` would return; leftovers are
removed when the manager is next created.

Failures while saving (disk full, an unwritable or vanished run directory, ...) surface as
:class:`CheckpointError` naming the step that could not be saved and the reason (``[Errno 28] No
space left on device``), whether they happen in the call or in orbax's background thread; a failed
save never touches the checkpoints committed before it. :func:`lock_run_directory` keeps two
training processes from writing the same run directory.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import time
import weakref
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model being restored."""


def checkpoint_dir(workdir: str | Path) -> Path:
    """Where a run directory keeps its checkpoints (absolute: orbax requires it)."""
    return Path(workdir).absolute() / "checkpoints"


def create_manager(workdir: str | Path, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """Opens (creating if needed) the checkpoint manager of a run directory.

    Args:
      workdir: the run directory.
      max_to_keep: older steps beyond this many are deleted after each save.
      read_only: never create, delete or clean anything (used by evaluation).

    Returns:
      An orbax ``CheckpointManager``; saves are asynchronous, call :func:`wait` before exiting.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=True,
    )
    # Handlers named up front, so a manager opened on an existing run (evaluation, resume) can read
    # item metadata before anything was saved through it.
    handlers = {"state": ocp.StandardCheckpointHandler(), "loader": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


# The step each manager is saving in the background, so an error orbax raises later (at the next
# save or at wait) names the step that failed rather than the one being started.
_pending_steps: "weakref.WeakKeyDictionary[ocp.CheckpointManager, int]" = weakref.WeakKeyDictionary()


def describe_os_error(err: BaseException) -> str:
    """A short reason for an I/O failure: ``[Errno 28] No space left on device`` when an errno is known.

    orbax/tensorstore report file-system errors as ``ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']")``
    with a long JSON spec; the errno is dug out of the exception chain or that text.
    """
    seen = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return f"[Errno {e.errno}] {os.strerror(e.errno)}"
        match = re.search(r"os_error_code='?(\d+)", str(e))
        if match and int(match.group(1)):
            code = int(match.group(1))
            return f"[Errno {code}] {os.strerror(code)}"
        e = e.__cause__ or e.__context__
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= 300 else text[:300] + "..."


def save(manager: ocp.CheckpointManager, step: int, state: Any, loader_state: dict, meta: dict) -> None:
    """Starts saving ``state`` at ``step``; the previous save is finished first.

    Args:
      manager: from :func:`create_manager`.
      step: the number of trained batches; names the checkpoint.
      state: pytree of arrays (the train state).
      loader_state: JSON-serialisable loader state.
      meta: JSON-serialisable facts (config, wall time, ...).

    Raises:
      CheckpointError: the previous save failed in the background, or this one cannot start
        (disk full, unwritable directory, ...); checkpoints committed earlier are untouched.
    """
    wait(manager)
    _pending_steps[manager] = step
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                loader=ocp.args.JsonSave(loader_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
    except Exception as err:  # orbax/tensorstore raise ValueError, OSError, RuntimeError for I/O failures
        _pending_steps.pop(manager, None)
        raise CheckpointError(f"cannot save checkpoint step {step} in {manager.directory}: "
                              f"{describe_os_error(err)}") from err


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until pending saves are committed to disk (an async save is lost if the process exits first).

    Raises:
      CheckpointError: the background save failed; names its step and the reason.
    """
    try:
        manager.wait_until_finished()
    except Exception as err:
        step = _pending_steps.pop(manager, None)
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        raise CheckpointError(f"cannot save {what} in {manager.directory}: {describe_os_error(err)}") from err
    _pending_steps.pop(manager, None)


def committed_steps(workdir: str | Path) -> list[int]:
    """Steps whose checkpoints are complete on disk, oldest first (read afresh; half-written ones excluded).

    A manager that just failed to save may still list the failed step in memory; this asks the disk.
    orbax names a finished step directory by the bare step number (``checkpoints/120``) and an
    unfinished one ``120.orbax-checkpoint-tmp...``, so the names alone tell them apart.
    """
    root = checkpoint_dir(workdir)
    try:
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())
    except FileNotFoundError:
        return []


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest committed step, or None."""
    return manager.latest_step()


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The ``meta`` item of a step (config etc.), without touching the arrays."""
    restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """Restores a step onto the structure (and shardings) of ``abstract_state``.

    Args:
      manager: from :func:`create_manager`.
      step: which checkpoint.
      abstract_state: a pytree like the saved state (arrays or ``jax.ShapeDtypeStruct`` with
        shardings); restored arrays take its shapes, dtypes and shardings, so a checkpoint saved on
        4 devices restores onto 1 and vice versa.

    Returns:
      ``(state, loader_state, meta)``.

    Raises:
      CheckpointError: the step does not exist, or its arrays do not match ``abstract_state``
        (the message lists the differing entries).
    """
    if step not in manager.all_steps():
        raise CheckpointError(f"no checkpoint at step {step} in {manager.directory}; "
                              f"available: {sorted(manager.all_steps()) or 'none'}")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    stored = manager.item_metadata(step)["state"]
    differences = _structure_differences(stored, target)
    if differences:
        shown = "; ".join(differences[:6]) + (f"; ... ({len(differences)} in all)" if len(differences) > 6 else "")
        raise CheckpointError(f"checkpoint step {step} in {manager.directory} does not match the model: {shown}")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            loader=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored["state"], restored["loader"], restored["meta"]


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flatten(tree: Any) -> dict[str, Any]:
    # orbax stores dataclasses, named tuples and tuples as dicts: compare by plain names ("params/enc_conv/kernel").
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _structure_differences(stored: Any, target: Any) -> list[str]:
    """Human-readable differences between stored array metadata and the expected state."""
    have = _flatten(stored)
    want = _flatten(target)
    out = [f"missing in checkpoint: {k}" for k in want if k not in have]
    out += [f"unexpected in checkpoint: {k}" for k in have if k not in want]
    for key in want:
        if key in have:
            shape = tuple(getattr(have[key], "shape", ()) or ())
            if shape != tuple(want[key].shape):
                out.append(f"{key} shape {shape} vs model {tuple(want[key].shape)}")
    return out


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
        raise CheckpointError(f"cannot write to run directory {path.parent}: {describe_os_error(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # No flock on this file system (some network mounts): run unlocked rather than not at all.
            os.close(fd)
            logging.getLogger(__name__).warning(
                "cannot lock %s (%s): make sure no other process trains into this run directory",
                path, describe_os_error(err))
            return RunDirectoryLock(path, None)
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        except OSError:
            holder = "another process"
        os.close(fd)
        raise CheckpointError(f"run directory {path.parent} is in use by {holder} (it holds {path}); wait for "
                              f"it to finish or stop it, or train into another --workdir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
    except OSError as err:
        os.close(fd)
        raise CheckpointError(f"cannot write to run directory {path.parent}: {describe_os_error(err)}") from None
    return RunDirectoryLock(path, fd)
