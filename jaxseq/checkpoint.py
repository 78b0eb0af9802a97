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
save never touches the checkpoints committed before it.

Checkpoints are verified: once a step has committed (:func:`wait`, which every :func:`save` calls
first, confirms orbax's rename), the size and sha256 of each of its files go to ``<step>/checksums.json``;
:func:`restore` and :func:`read_meta` check them first and raise :class:`CorruptCheckpointError` (step,
file, what differs). A step without a manifest (earlier release, or killed before it was written) is
accepted unverified, its failures reported the same way. :func:`restore_latest_intact` moves damaged
steps to ``checkpoints/damaged/`` (never deleting them) and restores the newest intact one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model being restored."""


class CorruptCheckpointError(CheckpointError):
    """A committed step is damaged: ``file`` (a Path) of ``step`` differs from its checksum, is missing or
    unreadable; ``what`` says which."""

    def __init__(self, step: int, file: str | Path, what: str):
        self.step, self.file, self.what = int(step), Path(file), what
        super().__init__(f"checkpoint step {step} is damaged: {file}: {what}")


MANIFEST = "checksums.json"
DAMAGED_DIR = "damaged"
# The JSON files orbax parses; checked for readability in steps without a manifest.
_JSON_FILES = ("_CHECKPOINT_METADATA", "meta/metadata", "loader/metadata", "state/_METADATA")


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
    # Handlers named up front, so a manager opened on an existing run (evaluation, resume) can read
    # item metadata before anything was saved through it.
    handlers = {"state": ocp.StandardCheckpointHandler(), "loader": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    with _quiet_orbax():
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only, enable_async_checkpointing=True)
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def read_only_manager(workdir: str | Path) -> ocp.CheckpointManager:
    """Opens a run's checkpoints read-only, its ``state`` item as a plain pytree, so that a subset of it
    (params, batch statistics) can be restored with :func:`restore_subset` (evaluation, ``load_run``).

    Args:
      workdir: the run directory.

    Returns:
      An orbax ``CheckpointManager`` that never creates, deletes or cleans anything.
    """
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "loader": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    with _quiet_orbax():  # orbax warns that a read-only manager will not save
        options = ocp.CheckpointManagerOptions(create=False, read_only=True, cleanup_tmp_directories=False)
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def restore_subset(manager: ocp.CheckpointManager, step: int, target: dict, verified: bool) -> dict:
    """Restores some top-level entries of a step's ``state`` (e.g. ``params`` and ``batch_stats``).

    Args:
      manager: from :func:`read_only_manager`.
      step: a step that :func:`verify` passed (``verified``: it had a manifest) .
      target: ``{name: pytree of jax.ShapeDtypeStruct with shardings}``, names among the state's entries.

    Returns:
      ``{name: pytree of arrays}`` for the names of ``target`` (an empty subtree is not stored: absent).

    Raises:
      CheckpointError: the stored arrays do not match ``target`` (lists what differs); a failure to read
        (CorruptCheckpointError for a step without manifest) in one line naming the step.
    """
    step_dir = Path(manager.directory) / str(step)
    with _reading(step_dir, step, verified):
        stored = manager.item_metadata(step)["state"]
    differences = _structure_differences({k: stored[k] for k in target if k in stored}, target)
    if differences:
        raise CheckpointError(f"checkpoint step {step} in {manager.directory} does not match the model: "
                              f"{_shown(differences)}")
    target = {k: v for k, v in target.items() if jax.tree.leaves(v)}  # orbax stores an empty subtree as nothing
    args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    with _reading(step_dir, step, verified):
        return manager.restore(step, args=ocp.args.Composite(state=args))["state"]


def _shown(differences: list[str]) -> str:
    return "; ".join(differences[:6]) + (f"; ... ({len(differences)} in all)" if len(differences) > 6 else "")


@contextlib.contextmanager
def _quiet_orbax():
    """Silences orbax's absl log lines while it opens or reads steps.

    It logs a damaged ``_CHECKPOINT_METADATA`` as an ERROR with the file's content, and announces
    read-only options as WARNINGs; damage is reported by this module in one line instead.
    """
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    return _first_line(err, 300)


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
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   loader=ocp.args.JsonSave(loader_state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as err:  # orbax/tensorstore raise ValueError, OSError, RuntimeError for I/O failures
        _pending_steps.pop(manager, None)
        raise CheckpointError(f"cannot save checkpoint step {step} in {manager.directory}: "
                              f"{describe_os_error(err)}") from err


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until pending saves are committed to disk (an async save is lost if the process exits first),
    then writes the committed step's ``checksums.json``.

    Raises:
      CheckpointError: the background save, or the manifest of the step it committed, failed; names its
        step and the reason (a step committed without manifest stays usable, unverified).
    """
    try:
        manager.wait_until_finished()
    except Exception as err:
        step = _pending_steps.pop(manager, None)
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        raise CheckpointError(f"cannot save {what} in {manager.directory}: {describe_os_error(err)}") from err
    step = _pending_steps.pop(manager, None)
    step_dir = Path(manager.directory) / str(step)
    # One writer: with several processes they share the directory, and racing renames of the same
    # temporary file would fail on all but one of them.
    if step is not None and jax.process_index() == 0 and step_dir.is_dir():
        try:
            write_manifest(step_dir)
        except OSError as err:
            raise CheckpointError(f"cannot save the checksums of checkpoint step {step} in {manager.directory}: "
                                  f"{describe_os_error(err)}") from err


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: str | Path) -> Path:
    """Records the size and sha256 of every file of a committed step in ``<step_dir>/checksums.json``.

    Written to a temporary file and renamed, so a step has either a whole manifest or none.

    Args:
      step_dir: a committed step directory, ``checkpoints/<step>``.

    Returns:
      The manifest's path.

    Raises:
      OSError: the step cannot be read or the manifest cannot be written (the step stays as it was).
    """
    step_dir = Path(step_dir)
    files = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and not path.name.startswith(MANIFEST):
            files[path.relative_to(step_dir).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    tmp, final = step_dir / (MANIFEST + ".tmp"), step_dir / MANIFEST
    try:
        with open(tmp, "w") as f:
            json.dump({"version": 1, "files": files}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return final


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
    """The ``meta`` item of a step (config etc.), without touching the arrays.

    Raises:
      CorruptCheckpointError: the step's metadata files fail verification or cannot be read.
    """
    step_dir = Path(manager.directory) / str(step)
    return _read_meta_checked(manager, step, _verify_step(step_dir, step, only=("meta/", "_CHECKPOINT_METADATA")))


def _read_meta_checked(manager: ocp.CheckpointManager, step: int, verified: bool) -> dict:
    with _reading(Path(manager.directory) / str(step), step, verified):
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


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
      CorruptCheckpointError: the step fails verification (checked first) or cannot be read.
      CheckpointError: the step does not exist, or its arrays do not match ``abstract_state``
        (the message lists the differing entries).
    """
    if step not in manager.all_steps():
        raise CheckpointError(f"no checkpoint at step {step} in {manager.directory}; "
                              f"available: {sorted(manager.all_steps()) or 'none'}")
    step_dir = Path(manager.directory) / str(step)
    return _restore_checked(manager, step, abstract_state, _verify_step(step_dir, step))


def _restore_checked(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                     verified: bool) -> tuple[Any, dict, dict]:
    """:func:`restore` of a step that :func:`_verify_step` passed (``verified``: it had a manifest)."""
    step_dir = Path(manager.directory) / str(step)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    with _reading(step_dir, step, verified):
        stored = manager.item_metadata(step)["state"]
    differences = _structure_differences(stored, target)
    if differences:
        raise CheckpointError(f"checkpoint step {step} in {manager.directory} does not match the model: "
                              f"{_shown(differences)}")
    with _reading(step_dir, step, verified):
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), loader=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["loader"], restored["meta"]


def verify(workdir: str | Path, step: int) -> bool:
    """Checks every file of a committed step against the checksums recorded when it was saved.

    Args:
      workdir: the run directory.
      step: a committed step.

    Returns:
      True when the step was checked against its manifest; False when it has none (committed by an
      earlier release, or the process stopped between commit and manifest): verification is not
      available, only its JSON metadata was checked for readability.

    Raises:
      CorruptCheckpointError: a file is missing, has another size or sha256, or cannot be read;
        or the manifest itself is unreadable.
      CheckpointError: there is no such step.
    """
    return _verify_step(checkpoint_dir(workdir) / str(step), step)


def _verify_step(step_dir: Path, step: int, only: tuple[str, ...] = ()) -> bool:
    """:func:`verify` on a step directory; ``only``: check just the files whose paths start so."""
    if not step_dir.is_dir():
        raise CheckpointError(f"no checkpoint at step {step} in {step_dir.parent}")
    manifest = _read_json(step_dir / MANIFEST, step, missing_ok=True)
    if manifest is None:
        for rel in _JSON_FILES:
            if not only or rel.startswith(only):
                _read_json(step_dir / rel, step)
        return False
    try:
        files = {rel: (int(entry["size"]), str(entry["sha256"])) for rel, entry in manifest["files"].items()}
    except (KeyError, TypeError, AttributeError, ValueError):
        raise CorruptCheckpointError(step, step_dir / MANIFEST, "not a checksum manifest") from None
    for rel, (size, digest) in files.items():
        if only and not rel.startswith(only):
            continue
        path = step_dir / rel
        try:
            if path.stat().st_size != size:
                raise CorruptCheckpointError(step, path, f"{path.stat().st_size} bytes, but {size} were written")
            if _sha256(path) != digest:
                raise CorruptCheckpointError(step, path, "sha256 differs from the one recorded when it was saved")
        except FileNotFoundError:
            raise CorruptCheckpointError(step, path, f"missing (listed in {MANIFEST})") from None
        except OSError as err:
            raise CorruptCheckpointError(step, path, f"cannot read: {describe_os_error(err)}") from None
    return True


def _read_json(path: Path, step: int, missing_ok: bool = False) -> Any:
    """A JSON file of a step, parsed (None if missing and ``missing_ok``); damage raises naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
        if not text.strip():
            raise CorruptCheckpointError(step, path, "empty (truncated)")
        return json.loads(text)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CorruptCheckpointError(step, path, "missing") from None
    except OSError as err:
        raise CorruptCheckpointError(step, path, f"cannot read: {describe_os_error(err)}") from None
    except UnicodeDecodeError:
        raise CorruptCheckpointError(step, path, "not UTF-8 text (damaged)") from None
    except ValueError as err:
        raise CorruptCheckpointError(step, path, f"not valid JSON ({_first_line(err)})") from None


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _reading(step_dir: Path, step: int, verified: bool):
    """Turns any failure of orbax to read a step into one line naming the step and, when known, the file.

    A verified step's files are intact, so a failure is not damage (a plain CheckpointError);
    an unverified step's failure is taken as damage, naming the file tensorstore names.
    """
    _ignore_closed_loop_callbacks()  # before reading: a failing read's other reads may complete at any time
    try:
        with _quiet_orbax():
            yield
    except CheckpointError:
        raise
    except Exception as err:  # orbax/tensorstore raise ValueError, OSError, JSONDecodeError, RuntimeError
        if verified:
            raise CheckpointError(f"cannot read checkpoint step {step} in {step_dir.parent}: "
                                  f"{_first_line(err)}") from None
        named = re.findall(r'local file "([^"]+)"', str(err))  # the last is the innermost: the file itself
        path = Path(named[-1]) if named else step_dir / "state"
        raise CorruptCheckpointError(step, path, f"cannot be read ({_first_line(err, 160)})") from None


def _closed_loop(value: BaseException | None) -> bool:
    return type(value) is RuntimeError and str(value) == "Event loop is closed"


def _ignore_closed_loop_callbacks() -> None:
    """Keeps tensorstore's late callbacks of an aborted orbax read from printing tracebacks.

    When one read of a damaged step fails, orbax closes its asyncio loop while tensorstore still
    completes the other reads; each completion calls ``loop.call_soon_threadsafe`` on the closed loop
    and the resulting ``RuntimeError: Event loop is closed`` is printed through ``sys.excepthook`` or
    ``sys.unraisablehook``, until the process exits. Those are the only errors these hooks drop.
    """
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind, value, tb):
        if not _closed_loop(value):
            excepthook(kind, value, tb)

    def on_unraisable(info):
        if not _closed_loop(info.exc_value):
            unraisablehook(info)

    # Each hook wrapped once (a test runner may have replaced one since).
    if not getattr(excepthook, "_drops_closed_loop", False):
        on_exception._drops_closed_loop = True
        sys.excepthook = on_exception
    if not getattr(unraisablehook, "_drops_closed_loop", False):
        on_unraisable._drops_closed_loop = True
        sys.unraisablehook = on_unraisable


def intact_steps(workdir: str | Path) -> list[int]:
    """Committed steps that pass :func:`verify` (steps without a manifest count as intact), oldest first."""
    out = []
    for step in committed_steps(workdir):
        with contextlib.suppress(CorruptCheckpointError):
            verify(workdir, step)
            out.append(step)
    return out


def set_aside(workdir: str | Path, step: int) -> Path:
    """Moves a damaged step out of the manager's way, to ``checkpoints/damaged/<step>-<time>``; never deletes it.

    Args:
      workdir: the run directory.
      step: a committed step.

    Returns:
      The step directory's new path (a manager opened before must ``reload()``).

    Raises:
      CheckpointError: the step cannot be moved (names the reason).
    """
    root = checkpoint_dir(workdir)
    target = root / DAMAGED_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        target, n = target.with_name(f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    try:
        target.parent.mkdir(exist_ok=True)
        os.rename(root / str(step), target)
    except OSError as err:
        raise CheckpointError(f"cannot set aside damaged checkpoint step {step} in {root}: "
                              f"{describe_os_error(err)}") from None
    return target


def restore_latest_intact(manager: ocp.CheckpointManager, abstract_state: Any, log: Callable[[str], None] = print,
                          check_meta: Callable[[int, dict], None] | None = None) -> tuple[int, Any, dict, dict] | None:
    """Restores the newest intact step, setting aside (and reporting) every damaged newer one.

    Args:
      manager: from :func:`create_manager` (not read-only: damaged steps are moved).
      abstract_state: as for :func:`restore`.
      log: receives one line per damaged step set aside.
      check_meta: called with ``(step, meta)`` of the step about to be restored, after its metadata
        is verified and before its arrays are read; what it raises propagates (e.g. a ConfigError
        naming the model settings that changed, rather than a list of tensor shapes).

    Returns:
      ``(step, state, loader_state, meta)``, or None when no step is committed.

    Raises:
      CheckpointError: every committed step was damaged (all set aside; names where), a step cannot be
        set aside, or an intact step does not match ``abstract_state``.
    """
    workdir = Path(manager.directory).parent
    damaged = []
    try:
        for step in reversed(committed_steps(workdir)):
            try:
                verified = verify(workdir, step)  # every file, once, before the caller's check
                if check_meta is not None:
                    check_meta(step, _read_meta_checked(manager, step, verified))
                return (step, *_restore_checked(manager, step, abstract_state, verified))
            except CorruptCheckpointError as err:
                place = set_aside(workdir, step)
                damaged.append(step)
                log(f"warning: {err}; moved it to {place} and falling back to the previous checkpoint")
    finally:
        if damaged:
            manager.reload()
    if damaged:
        raise CheckpointError(f"no intact checkpoint in {checkpoint_dir(workdir)}: damaged steps "
                              f"{', '.join(map(str, damaged))} were moved to {checkpoint_dir(workdir) / DAMAGED_DIR}")
    return None


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
