"""Device mesh, batch sharding and multi-host start-up.

Data parallelism is ``jit`` with named shardings on a 1-D ``data`` mesh: batches are split along
their batch axis, the train state is replicated. Because ``jit`` computes on global arrays, batch
norm statistics, losses and metrics are already over the global batch: no explicit collectives.
Random bits do not depend on the sharding either (``jax_threefry_partitionable``, on by default
since JAX 0.5), so 1, 4 or 2x2 devices draw the same dropout masks and noise for the same global batch.

Across hosts, ``jax.distributed`` (JAX's own multi-controller runtime) joins the processes; each
process feeds its own rows of every global batch (rows ``[p*B/P, (p+1)*B/P)``, see the loader), and
the mesh orders devices by process so those rows land where the single-process run would put them.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables read by initialize_distributed when an argument is not given.
ENV_COORDINATOR = "JAXSEQ_COORDINATOR"
ENV_NUM_PROCESSES = "JAXSEQ_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXSEQ_PROCESS_ID"
ENV_INIT_TIMEOUT = "JAXSEQ_INIT_TIMEOUT"


class ParallelError(ValueError):
    """Device or batch settings that cannot work together."""


def distributed_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for a multi-process run (``JAXSEQ_COORDINATOR`` is set)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get(ENV_COORDINATOR))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_seconds: int | None = None) -> None:
    """Joins a multi-process run through ``jax.distributed.initialize``.

    Arguments left as None come from the environment (``JAXSEQ_COORDINATOR`` = host:port of process 0,
    ``JAXSEQ_NUM_PROCESSES``, ``JAXSEQ_PROCESS_ID``, ``JAXSEQ_INIT_TIMEOUT`` seconds), or from JAX's own
    cluster detection (SLURM, Open MPI, TPU pods) when those are unset. Must run before anything touches
    a device (``jax.devices()``, any computation): JAX refuses afterwards.

    Raises:
      ParallelError: called too late, incomplete settings, or the processes could not connect in time.
    """
    from jax._src import xla_bridge  # no public query for "has a backend been created" in jax 0.10

    env = os.environ
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    try:
        if num_processes is None and env.get(ENV_NUM_PROCESSES):
            num_processes = int(env[ENV_NUM_PROCESSES])
        if process_id is None and env.get(ENV_PROCESS_ID):
            process_id = int(env[ENV_PROCESS_ID])
        if timeout_seconds is None:
            timeout_seconds = int(env.get(ENV_INIT_TIMEOUT) or 300)
    except ValueError as err:
        raise ParallelError(f"bad distributed setting in the environment: {err}") from None
    # Anything still None is left to JAX's cluster detection (SLURM, Open MPI, ...), which names what is missing.
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ParallelError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if xla_bridge.backends_are_initialized():
        raise ParallelError("jax.distributed must be initialised before any device is used; "
                            "call initialize_distributed first thing in the program")
    # CPU-only runs need cross-process collectives: gloo (the default in jax 0.10; set explicitly so a user
    # setting cannot turn it off). GPU and TPU backends ignore this option.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_seconds)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ParallelError(f"jax.distributed.initialize failed (coordinator={coordinator_address}, "
                            f"num_processes={num_processes}, process_id={process_id}): {first}") from err


def create_mesh(devices: str | int = "all") -> Mesh:
    """A 1-D ``data`` mesh.

    Devices are ordered by process, then id, so process ``p``'s rows of a global batch (the loader's
    share) sit at the same global positions as in a single-process run.

    Args:
      devices: "all" (every device of every process) or a number of this process's local devices
        (single-process runs only).

    Raises:
      ParallelError: more devices asked for than exist, or a count with several processes.
    """
    if devices == "all":
        ordered = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        return Mesh(np.array(ordered), (DATA_AXIS,))
    count = int(devices)
    local = jax.local_devices()
    if jax.process_count() > 1:
        raise ParallelError("train.devices must be 'all' in a multi-process run")
    if count > len(local):
        raise ParallelError(f"train.devices={count} but only {len(local)} local device(s) exist")
    return Mesh(np.array(local[:count]), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> None:
    """The global batch must split evenly over devices (and so over processes).

    Raises:
      ParallelError: naming the setting, the device count and what would work.
    """
    n = mesh.devices.size
    if batch_size % n:
        lower = batch_size // n * n
        hint = f"e.g. {lower} or {lower + n}" if lower else f"e.g. {n}"
        raise ParallelError(f"{name}={batch_size} is not divisible by the {n} devices of the mesh; "
                            f"use a multiple of {n} ({hint}) or fewer devices (--devices)")


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding of a batch split along its batch axis, after ``leading_axes`` unsplit axes (e.g. steps)."""
    return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, leading_axes: int = 0) -> dict[str, jax.Array]:
    """Places this process's rows of a global batch onto the mesh as one global array per entry.

    Args:
      batch: host arrays holding this process's share of the batch axis (all of it with one process),
        batch axis after ``leading_axes`` axes; its length must divide over this process's devices.
      mesh: from :func:`create_mesh`.
      leading_axes: unsplit axes before the batch axis (1 for a stack of steps ``(K, B, ...)``).

    Returns:
      Global ``jax.Array`` per key (batch axis ``B`` = local rows x processes), sharded along the batch
      axis; each device receives only its rows, copied straight from ``batch`` (no full copy per device).
    """
    sharding = batch_sharding(mesh, leading_axes)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a pytree (the same value in every process) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` stand-ins (shape, dtype, sharding, weak type) for a pytree of committed arrays.

    Lowering a jitted function with them compiles the program a later call with the arrays runs (the
    compilation is cached), without holding the arrays, e.g. a train state about to be donated.
    """
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding,
                                                       weak_type=getattr(x, "weak_type", False)), tree)


def fetch(tree: Any) -> Any:
    """Host numpy copies of a pytree of (possibly multi-process) arrays.

    Replicated arrays are read from a local copy; arrays sharded over devices of other processes are
    gathered (a collective: every process must call this with the same tree).
    """
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def is_main_process() -> bool:
    """Only process 0 prints, writes TensorBoard and writes files outside orbax."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process: decisions that end a loop must be taken by all together.

    One process: ``flag`` itself, no communication.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.array(bool(flag)))).any())
