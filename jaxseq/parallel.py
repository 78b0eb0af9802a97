"""Device mesh, batch sharding and multi-host start-up.

Data parallelism is ``jit`` with named shardings on a 1-D ``data`` mesh: batches are split along
their batch axis, the train state is replicated. Because ``jit`` computes on global arrays, batch
norm statistics, losses and metrics are already over the global batch: no explicit collectives.
Across hosts, ``jax.distributed`` (JAX's own multi-controller runtime) joins the processes; each
process feeds its own rows of every global batch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class ParallelError(ValueError):
    """Device or batch settings that cannot work together."""


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-process run through ``jax.distributed.initialize``.

    Arguments left as None come from the environment (``JAXSEQ_COORDINATOR``,
    ``JAXSEQ_NUM_PROCESSES``, ``JAXSEQ_PROCESS_ID``), or from JAX's own cluster detection
    (SLURM, Open MPI, ...) when those are unset. Must run before anything touches a device.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAXSEQ_COORDINATOR")
    if num_processes is None and "JAXSEQ_NUM_PROCESSES" in env:
        num_processes = int(env["JAXSEQ_NUM_PROCESSES"])
    if process_id is None and "JAXSEQ_PROCESS_ID" in env:
        process_id = int(env["JAXSEQ_PROCESS_ID"])
    # CPU collectives across processes need gloo; harmless on GPU/TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def create_mesh(devices: str | int = "all") -> Mesh:
    """A 1-D ``data`` mesh.

    Args:
      devices: "all" (every device of every process) or a number of this process's local devices
        (single-process runs only).

    Raises:
      ParallelError: more devices asked for than exist, or a count with several processes.
    """
    if devices == "all":
        return Mesh(np.array(jax.devices()), (DATA_AXIS,))
    count = int(devices)
    local = jax.local_devices()
    if jax.process_count() > 1:
        raise ParallelError("train.devices must be 'all' in a multi-process run")
    if count > len(local):
        raise ParallelError(f"train.devices={count} but only {len(local)} local device(s) exist")
    return Mesh(np.array(local[:count]), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> None:
    """The global batch must split evenly over devices (and so over processes)."""
    n = mesh.devices.size
    if batch_size % n:
        raise ParallelError(f"{name}={batch_size} is not divisible by the {n} devices of the mesh; "
                            f"use a multiple of {n}")


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding of a batch split along its batch axis, after ``leading_axes`` unsplit axes (e.g. steps)."""
    return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, leading_axes: int = 0) -> dict[str, jax.Array]:
    """Places this process's rows of a global batch onto the mesh as one global array per entry.

    Args:
      batch: host arrays holding this process's share of the batch axis (all of it with one process).
      mesh: from :func:`create_mesh`.
      leading_axes: unsplit axes before the batch axis (1 for a stack of steps ``(K, B, ...)``).

    Returns:
      Global ``jax.Array`` per key, sharded along the batch axis; each device receives only its rows
      (no full copy per device).
    """
    sharding = batch_sharding(mesh, leading_axes)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def is_main_process() -> bool:
    """Only process 0 prints, writes TensorBoard and writes files outside orbax."""
    return jax.process_index() == 0
