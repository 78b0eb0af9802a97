"""A thin wrapper over orbax's ``CheckpointManager``: train state + loader state + metadata per step.

Each checkpoint step directory holds three items: ``state`` (params, optimiser state, batch
statistics, step; a pytree of arrays), ``loader`` (the loader's JSON state, so a resumed run sees
the batches an uninterrupted one would) and ``meta`` (JSON: the resolved config and free-form
facts). orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves no step that :func:`latest_step` would return; leftovers are
removed when the manager is next created.
"""

from __future__ import annotations

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


def save(manager: ocp.CheckpointManager, step: int, state: Any, loader_state: dict, meta: dict) -> None:
    """Starts saving ``state`` at ``step``; the previous save is finished first.

    Args:
      manager: from :func:`create_manager`.
      step: the number of trained batches; names the checkpoint.
      state: pytree of arrays (the train state).
      loader_state: JSON-serialisable loader state.
      meta: JSON-serialisable facts (config, wall time, ...).
    """
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            loader=ocp.args.JsonSave(loader_state),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until pending saves are committed to disk (an async save is lost if the process exits first)."""
    manager.wait_until_finished()


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
