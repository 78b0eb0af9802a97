"""tensorboardX helpers. Named ``summary`` so it does not shadow the standard library's ``logging``.

Tags follow docs/STYLE.md (``train/loss``, ``eval/accuracy``, ``hparams/learning_rate``,
``perf/windows_per_sec``, ...); the PyTorch baseline writes the same ones through these helpers.
Only process 0 writes: other processes get a :class:`NullWriter`.

This module also holds the project's one event-file reader (:func:`read_events`, :func:`read_scalars`,
:func:`read_tags`): TFRecord framing parsed here, events decoded with tensorboardX's protobufs, so
reading needs neither TensorFlow nor the ``tensorboard`` package. Sweeps and ``experiments/`` use it.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


class NullWriter:
    """Accepts every call and writes nothing (processes other than 0, or logging turned off)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _tensorboardx():
    """The ``tensorboardX`` module, imported without torch.

    tensorboardX imports torch at import time whenever it is installed (``tensorboardX.writer``), which
    costs over a second per process, and the core must not import torch. Hide torch for that import
    unless it is already loaded (the PyTorch baseline).
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX tolerates
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


def create_writer(workdir: str | Path, enabled: bool = True):
    """A ``SummaryWriter`` on ``workdir/tensorboard`` (appending on resume), or a :class:`NullWriter`."""
    if not enabled:
        return NullWriter()
    return _tensorboardx().SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=10)


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


def has_hparams(workdir: str | Path) -> bool:
    """Whether a run's TensorBoard holds an HParams session (``<workdir>/tensorboard/hparams``)."""
    return "_hparams_/session_start_info" in read_tags(Path(workdir) / "tensorboard" / "hparams")


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Means from metric sums (``loss_sum``, ``correct``, ``count``): exact over whatever was summed."""
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}


# ----------------------------------------------------------------------------------------------
# Reading event files


class EventFileError(ValueError):
    """An event file that is not a TFRecord stream of ``Event`` protos (message names the file and byte)."""


def event_files(logdir: str | Path) -> list[Path]:
    """The event files directly in ``logdir`` (not its subfolders), oldest first (names start with the time)."""
    return sorted(p for p in Path(logdir).glob("events.out.tfevents.*") if p.is_file())


def _records(path: Path, check_crc: bool) -> Iterator[bytes]:
    # TFRecord: 8-byte little-endian length, masked CRC-32C of the length, the data, masked CRC of the data.
    # The length CRC is always checked (it catches any framing error); the data CRC on request (pure
    # Python: about 0.2 s per MB). A truncated last record (a writer still open or killed) ends the file.
    _tensorboardx()
    from tensorboardX.record_writer import masked_crc32c

    data, offset = path.read_bytes(), 0
    while offset + 12 <= len(data):
        length_bytes = data[offset:offset + 8]
        if masked_crc32c(length_bytes) != struct.unpack("<I", data[offset + 8:offset + 12])[0]:
            raise EventFileError(f"{path}: corrupt record header at byte {offset}")
        (length,) = struct.unpack("<Q", length_bytes)
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            return
        if check_crc and masked_crc32c(data[start:end]) != struct.unpack("<I", data[end:end + 4])[0]:
            raise EventFileError(f"{path}: corrupt record data at byte {offset}")
        yield data[start:end]
        offset = end + 4


def read_events(logdir: str | Path, *, check_crc: bool = False) -> list:
    """Every ``Event`` proto of the event files directly in ``logdir``, in file (creation) order.

    Args:
      logdir: a folder of event files, e.g. ``RUN/tensorboard`` (a run resumed several times has several).
      check_crc: also verify each record's data CRC.

    Returns:
      list of ``tensorboardX.proto.event_pb2.Event`` (``step``, ``wall_time``, ``summary.value``).

    Raises:
      EventFileError: a corrupt record header (or, with ``check_crc``, corrupt data).
    """
    _tensorboardx()
    from tensorboardX.proto import event_pb2

    return [event_pb2.Event.FromString(record) for path in event_files(logdir) for record in _records(path, check_crc)]


def event_scalars(events: list) -> dict[str, list[tuple[int, float, float]]]:
    """Scalars of ``events`` by tag: ``(step, wall_time, value)`` in event order.

    Scalars are read from ``simple_value`` (tensorboardX, torch) or a one-element float tensor (TensorFlow 2);
    text, histograms and HParams entries are left out.
    """
    scalars: dict[str, list[tuple[int, float, float]]] = {}
    for event in events:
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                number = value.simple_value
            elif kind == "tensor" and (value.tensor.float_val or value.tensor.double_val):
                number = (value.tensor.float_val or value.tensor.double_val)[0]
            else:
                continue
            scalars.setdefault(value.tag, []).append((int(event.step), float(event.wall_time), float(number)))
    return scalars


def read_scalars(logdir: str | Path, tag: str) -> list[tuple[int, float, float]]:
    """``(step, wall_time, value)`` of every scalar ``tag`` in ``logdir``'s event files, in event order."""
    return event_scalars(read_events(logdir)).get(tag, [])


def read_tags(logdir: str | Path) -> set[str]:
    """Every tag written to ``logdir``'s event files: scalars, text, histograms and HParams entries."""
    return {value.tag for event in read_events(logdir) for value in event.summary.value}
