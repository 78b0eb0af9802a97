"""tensorboardX helpers. Named ``summary`` so it does not shadow the standard library's ``logging``.

Tags follow docs/STYLE.md (``train/loss``, ``eval/accuracy``, ``hparams/learning_rate``,
``perf/windows_per_sec``, ...); the PyTorch baseline writes the same ones through these helpers.
Only process 0 writes: other processes get a :class:`NullWriter`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class NullWriter:
    """Accepts every call and writes nothing (processes other than 0, or logging turned off)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _import_summary_writer():
    # tensorboardX imports torch at import time whenever it is installed: seconds of start-up, and the
    # core must not import torch. Hide it for that import unless it is already loaded (the baseline).
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def create_writer(workdir: str | Path, enabled: bool = True):
    """A ``SummaryWriter`` on ``workdir/tensorboard`` (appending on resume), or a :class:`NullWriter`."""
    if not enabled:
        return NullWriter()
    return _import_summary_writer()(str(Path(workdir) / "tensorboard"), flush_secs=10)


def _event_writers(writer) -> list:
    # tensorboardX internals (SummaryWriter -> FileWriter -> EventFileWriter); empty if they change.
    if isinstance(writer, NullWriter):
        return []
    file_writers = getattr(writer, "all_writers", None) or {}
    return [w.event_writer for w in file_writers.values() if hasattr(w, "event_writer")]


def writer_alive(writer) -> bool:
    """False once tensorboardX's worker thread died (a failed write: disk full, directory gone).

    Later ``add_*`` calls would block forever on its bounded queue, so the loop checks this first.
    """
    workers = [getattr(events, "_worker", None) for events in _event_writers(writer)]
    return all(worker is None or worker.is_alive() for worker in workers)


def close_writer(writer) -> None:
    """Flushes and closes; on an I/O error, stops the writer quietly (the caller reports the error)."""
    try:
        writer.close()
    except OSError:
        for events in _event_writers(writer):
            with contextlib.suppress(Exception):
                worker = getattr(events, "_worker", None)
                if worker is not None and worker.is_alive():
                    worker.stop()
                # tensorboardX closes again at exit, which would print a traceback after our error message.
                events._closed = True


def write_scalars(writer, step: int, scalars: Mapping[str, float]) -> None:
    """One scalar per tag at ``step``."""
    for tag, value in scalars.items():
        writer.add_scalar(tag, float(value), step)


def write_histograms(writer, step: int, prefix: str, tree: Any) -> None:
    """A histogram per array leaf of a pytree, tagged ``prefix/path/to/leaf``."""
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        writer.add_histogram(f"{prefix}/{name}", np.asarray(leaf).ravel(), step)


def write_text(writer, step: int, tag: str, text: str) -> None:
    """Preformatted text (shown monospaced: TensorBoard renders markdown)."""
    writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)


def write_hparams(writer, config: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, float]) -> None:
    """The flattened config in TensorBoard's HParams view, with final metrics."""
    flat = {}
    for group, values in config.items():
        for key, value in values.items():
            flat[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    writer.add_hparams(flat, {f"hparam/{k}": float(v) for k, v in metrics.items()}, name="hparams")


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Means from metric sums (``loss_sum``, ``correct``, ``count``): exact over whatever was summed."""
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}
