"""Training runs as child processes: several at once on this machine's devices, or as cluster jobs.

:mod:`jaxseq.sweep` hands over its unfinished runs as :class:`Task` s. Each one is trained by the
training command line, ``python -m jaxseq.train --config RUN/sweep_config.yaml --workdir RUN``, with its
output in ``RUN/sweep.log``; while they train, one progress line per run (status, devices, step, last
``train/loss`` and ``eval/accuracy`` from the run's TensorBoard) is redrawn on a terminal, or printed
when it changes. A run that fails does not stop the others; its :class:`Outcome` carries its error line.

Devices (:func:`device_slots`, local runs): GPUs are split between the concurrent runs with
``CUDA_VISIBLE_DEVICES``. Without GPUs, the CPU cores are split by CPU affinity
(``os.sched_setaffinity``), which JAX 0.10's CPU client honours: it sizes its thread pool from the
affinity mask (measured: a 1-core mask gives CPU time / wall time 1.0, the 2-core default 2.0). XLA flags
do not do it: ``--xla_cpu_multi_thread_eigen=false`` is accepted and changes nothing, and
``intra_op_parallelism_threads`` (a TensorFlow option) makes XLA abort. OMP/MKL/OpenBLAS thread counts
follow the slot (numpy on the host).

Cluster jobs (:func:`run_cluster`) go through submitit: one job per run (a job array), each job running
the same command line on the GPUs and CPUs it was given; this process waits and gathers the outcomes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from jaxseq import config as config_lib
from jaxseq import summary

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Scalars shown on a run's progress line (the last value of each).
PROGRESS_TAGS = ("train/loss", "eval/accuracy")


class LaunchError(ValueError):
    """Runs cannot be launched as asked (more jobs than GPUs, no SLURM, a bad time limit): one line."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT stopped the launcher; every running child was asked once to save and stop.

    Attributes:
      exit_code: ``128 + signum``.
    """

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}: running runs saved a checkpoint")
        self.exit_code = 128 + signum


@dataclasses.dataclass(frozen=True)
class Task:
    """One run to train: its name, run directory, the config file the child reads, and its step count."""

    name: str
    run_dir: Path
    config_path: Path
    num_steps: int


@dataclasses.dataclass
class Outcome:
    """How a run's training ended: ``error`` is None when it finished, else one line saying why not."""

    error: str | None
    wall_time_s: float  # child start to end: interpreter start, compilation, training, final evaluation
    started: float  # Unix time
    devices: str = ""  # "cpu 0", "gpu 2,3", "slurm job 123_0", "in process"


@dataclasses.dataclass(frozen=True)
class Slot:
    """The devices of one concurrent run: a label, environment settings, CPU cores to pin (None: not pinned)."""

    label: str
    env: dict
    cores: tuple[int, ...] | None = None


@dataclasses.dataclass
class ClusterOptions:
    """Cluster jobs through submitit, one per run.

    ``cluster`` is submitit's executor name: ``slurm``, or ``local`` (the jobs run on this machine,
    through the same submitit machinery: tests). ``cpus_per_run`` None: the cluster's default.
    """

    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    time_min: int = 60
    cluster: str = "slurm"


def train_command(task: Task) -> list[str]:
    """The child's command line: ``python -m jaxseq.train --config ... --workdir ...``."""
    return [sys.executable, "-m", "jaxseq.train", "--config", str(task.config_path), "--workdir", str(task.run_dir)]


def log_path(task: Task) -> Path:
    """``RUN/sweep.log``: the child's stdout and stderr, rewritten by each attempt."""
    return task.run_dir / "sweep.log"


def error_line(log_file: Path, exit_code: int) -> str:
    """``exit N: <its last 'error: ...' line, else its last line>`` from a failed child's log."""
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    lines = [part.strip() for line in text.splitlines() for part in line.split("\r") if part.strip()]  # tqdm: \r
    errors = [line for line in lines if line.startswith("error:")]
    return f"exit {exit_code}: {(errors or lines or ['no output'])[-1]}"


def slurm_minutes(text: str) -> int:
    """A SLURM time limit (``90``, ``90:30``, ``1:30:00``, ``2-0``, ``2-12:00:00``) in whole minutes.

    Raises:
      LaunchError: not one of those forms.
    """
    try:
        days, rest = text.split("-", 1) if "-" in text else (None, text)
        parts = [int(p) for p in rest.split(":")]
        if len(parts) > 3 or min(parts) < 0 or (days is not None and int(days) < 0):
            raise ValueError
        if days is not None:  # D-H[:M[:S]]
            h, m, s = (parts + [0, 0])[:3]
            seconds = int(days) * 86400 + h * 3600 + m * 60 + s
        else:  # M, M:S or H:M:S
            seconds = parts[0] * 3600 + parts[1] * 60 + parts[2] if len(parts) == 3 else parts[0] * 60 + sum(parts[1:])
    except ValueError:
        raise LaunchError(f"--slurm-time {text!r}: expected minutes, MM:SS, H:MM:SS or D-HH:MM:SS") from None
    if seconds <= 0:
        raise LaunchError(f"--slurm-time {text!r}: must be positive")
    return math.ceil(seconds / 60)


# ----------------------------------------------------------------------------------------------
# Devices


def visible_gpus() -> list[str]:
    """GPU ids the children may use: none when ``JAX_PLATFORMS`` leaves CUDA out, else those of
    ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``'s (the parent never starts JAX on them)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and not any(name in platforms for name in ("cuda", "gpu")):
        return []
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        ids = [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def device_slots(jobs: int, gpus: Sequence[str] | None = None, cores: Sequence[int] | None = None) -> list[Slot]:
    """Splits this machine's devices into ``jobs`` disjoint slots, one per concurrent run.

    Args:
      jobs: number of runs at once.
      gpus: GPU ids (default :func:`visible_gpus`); each slot gets ``len(gpus) // jobs`` of them.
      cores: CPU cores, used when there are no GPUs (default: this process's affinity); each slot gets
        ``len(cores) // jobs`` of them, or one (shared in turn) when there are more jobs than cores.

    Returns:
      ``jobs`` slots.

    Raises:
      LaunchError: more jobs than GPUs.
    """
    gpus = visible_gpus() if gpus is None else list(gpus)
    if gpus:
        if jobs > len(gpus):
            raise LaunchError(f"--jobs {jobs}: only {len(gpus)} GPU(s) visible ({','.join(gpus)}); use --jobs "
                              f"{len(gpus)} or fewer, or CUDA_VISIBLE_DEVICES= to train on CPU cores")
        per = len(gpus) // jobs
        return [Slot(f"gpu {','.join(ids)}", {"CUDA_VISIBLE_DEVICES": ",".join(ids)})
                for ids in (gpus[i * per:(i + 1) * per] for i in range(jobs))]
    if cores is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = list(cores)
    per = max(1, len(cores) // jobs)
    slots = []
    for i in range(jobs):
        own = tuple(cores[(i * per + k) % len(cores)] for k in range(per))
        slots.append(Slot(f"cpu {','.join(map(str, own))}", {name: str(per) for name in THREAD_VARIABLES}, own))
    return slots


def spawn(command: Sequence[str], slot: Slot, log_file: Path) -> subprocess.Popen:
    """Starts ``command`` on ``slot``'s devices, stdout and stderr into ``log_file``."""
    env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1"}
    # The child inherits the CPU affinity of the thread that starts it: set ours for the moment, rather than
    # a preexec_fn (Python code between fork and exec, unsafe next to JAX's threads).
    previous = os.sched_getaffinity(0) if slot.cores is not None and hasattr(os, "sched_setaffinity") else None
    try:
        if previous is not None:
            os.sched_setaffinity(0, slot.cores)
        with open(log_file, "wb") as out:
            # A session of its own: Ctrl-C reaches this process only, which then asks each child once to stop
            # (a second signal would make the child abort without saving).
            return subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)


# ----------------------------------------------------------------------------------------------
# Progress


class Board:
    """One line per run, ``name: status``: redrawn in place (``redraw``, a terminal) or logged when it changes."""

    def __init__(self, names: Sequence[str], log: Callable[[str], None] = print, redraw: bool = False):
        self.names, self.log, self.redraw = list(names), log, redraw
        self.lines = {name: "queued" for name in self.names}
        self.shown: dict[str, str] = {}
        self.drawn = 0
        self._events: dict[str, tuple] = {}

    def set(self, name: str, status: str, task: Task | None = None) -> None:
        """Sets a run's status; with ``task``, adds its latest step and metrics."""
        detail = self._progress(task) if task is not None else ""
        self.lines[name] = status + (f", {detail}" if detail else "")

    def show(self) -> None:
        """Redraws every line, or logs the lines that changed since the last call."""
        rows = [f"{name}: {self.lines[name]}" for name in self.names]
        if self.redraw:
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            sys.stdout.write(up + "".join(f"\x1b[2K{row}\n" for row in rows))
            sys.stdout.flush()
            self.drawn = len(rows)
            return
        for name, row in zip(self.names, rows):
            if self.shown.get(name) != row:
                self.shown[name] = row
                self.log(row)

    def _progress(self, task: Task) -> str:
        # Re-read a run's events only when its files grew (TensorBoard flushes every 10 s).
        logdir = task.run_dir / "tensorboard"
        try:
            key = tuple((p.name, p.stat().st_size) for p in summary.event_files(logdir))
            if self._events.get(task.name, (None,))[0] != key:
                self._events[task.name] = (key, summary.event_scalars(summary.read_events(logdir)))
        except (OSError, ValueError):  # a file being replaced, or damaged: the run itself will say
            return ""
        scalars = self._events[task.name][1]
        steps = [step for values in scalars.values() for step, _, _ in values]
        parts = [f"step {max(steps)}/{task.num_steps}"] if steps else []
        return ", ".join(parts + [f"{tag} {scalars[tag][-1][2]:.4f}" for tag in PROGRESS_TAGS if tag in scalars])


def _describe(outcome: Outcome) -> str:
    if outcome.error is None:
        return f"finished in {outcome.wall_time_s:.1f} s on {outcome.devices}"
    return f"failed on {outcome.devices}: {outcome.error}"


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Interrupted` in the main thread while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# ----------------------------------------------------------------------------------------------
# Local child processes


def _finish(task: Task, code: int, started: float, devices: str) -> Outcome:
    done = code == 0 and (task.run_dir / "final_metrics.json").is_file()
    return Outcome(None if done else error_line(log_path(task), code), time.time() - started, started, devices)


def run_local(tasks: Sequence[Task], slots: Sequence[Slot], *, log: Callable[[str], None] = print,
              redraw: bool = False, poll_s: float = 1.0) -> dict[str, Outcome]:
    """Trains ``tasks`` as child processes, as many at once as there are ``slots``, each on its own slot.

    Args:
      tasks: runs in order; each starts when a slot is free.
      slots: from :func:`device_slots`.
      log: progress lines (when not ``redraw``).
      redraw: redraw the progress lines in place (a terminal).
      poll_s: seconds between looks at the children.

    Returns:
      run name -> :class:`Outcome`, for every task.

    Raises:
      Interrupted: SIGTERM/SIGINT; each running child was sent SIGTERM once (it saves a checkpoint and
        stops) and has exited; runs not started yet were not started.
    """
    board = Board([t.name for t in tasks], log, redraw)
    pending, free = list(tasks), list(slots)
    running: dict[str, tuple[Task, Slot, subprocess.Popen, float]] = {}
    outcomes: dict[str, Outcome] = {}
    with _signals_raise():
        try:
            while pending or running:
                while pending and free:
                    task, slot = pending.pop(0), free.pop(0)
                    running[task.name] = (task, slot, spawn(train_command(task), slot, log_path(task)), time.time())
                for name, (task, slot, child, started) in list(running.items()):
                    code = child.poll()
                    if code is None:
                        board.set(name, f"running on {slot.label}", task)
                        continue
                    del running[name]
                    free.append(slot)
                    outcomes[name] = _finish(task, code, started, slot.label)
                    board.set(name, _describe(outcomes[name]), task)
                board.show()
                if pending or running:
                    time.sleep(poll_s)
        except Interrupted:
            _stop([child for _, _, child, _ in running.values()])
            raise
    return outcomes


def _stop(children: list[subprocess.Popen]) -> None:
    """Asks each child once to stop (SIGTERM: it saves a checkpoint) and waits; a second signal aborts them."""
    for child in children:
        child.send_signal(signal.SIGTERM)
    while any(child.poll() is None for child in children):
        try:
            time.sleep(0.2)
        except Interrupted:  # the user insists: a second SIGTERM makes each run abort at once
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)


# ----------------------------------------------------------------------------------------------
# Cluster jobs (submitit)


def run_job(command: list[str], log_file: str, cwd: str) -> float:
    """A cluster job's body: runs ``command`` in ``cwd``, output into ``log_file``.

    Returns:
      wall seconds.

    Raises:
      RuntimeError: the command failed; the message is its :func:`error_line`.
    """
    started = time.time()
    with open(log_file, "wb") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if code:
        raise RuntimeError(error_line(Path(log_file), code))
    return time.time() - started


def check_cluster(options: ClusterOptions) -> None:
    """Raises :class:`LaunchError` when ``options`` cannot submit from here (before anything is written)."""
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if options.cluster == "slurm" and missing:
        raise LaunchError(f"--executor slurm: {' and '.join(missing)} not on PATH (submit from a SLURM login node)")
    if options.gpus_per_run < 0 or (options.cpus_per_run is not None and options.cpus_per_run < 1):
        raise LaunchError("--slurm-gpus-per-run must be >= 0 and --slurm-cpus-per-run >= 1")


def _job_outcome(task: Task, job, started: float) -> Outcome:
    devices = f"{job.__class__.__name__.removesuffix('Job').lower() or 'cluster'} job {job.job_id}"
    try:
        wall = float(job.result())
    except Exception as err:  # a failed, cancelled or timed-out job: the last line of its message says why
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        return Outcome(lines[-1].removeprefix("RuntimeError: "), time.time() - started, started, devices)
    if not (task.run_dir / "final_metrics.json").is_file():
        return Outcome(f"job ended without {task.run_dir / 'final_metrics.json'}", wall, started, devices)
    return Outcome(None, wall, started, devices)


def run_cluster(tasks: Sequence[Task], options: ClusterOptions, folder: Path, *, jobs: int | None = None,
                log: Callable[[str], None] = print, redraw: bool = False, poll_s: float = 5.0) -> dict[str, Outcome]:
    """Submits one cluster job per task through submitit (a job array) and waits for all of them.

    Args:
      tasks: runs to train.
      options: partition, GPUs and CPUs per run, time limit, submitit cluster.
      folder: submitit's folder (job scripts, pickles, its own logs).
      jobs: most jobs running at once (SLURM array parallelism); None: no limit.
      log, redraw, poll_s: as for :func:`run_local`.

    Returns:
      run name -> :class:`Outcome`.

    Raises:
      Interrupted: SIGTERM/SIGINT; the unfinished jobs were cancelled (SLURM sends them SIGTERM: they save).
    """
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    executor.update_parameters(name="jaxseq-sweep", nodes=1, tasks_per_node=1, timeout_min=options.time_min,
                               gpus_per_node=options.gpus_per_run or None, cpus_per_task=options.cpus_per_run,
                               slurm_partition=options.partition, slurm_array_parallelism=jobs)
    with executor.batch():
        submitted = [executor.submit(run_job, train_command(t), str(log_path(t)), os.getcwd()) for t in tasks]
    started, wait = time.time(), 0.25
    board = Board([t.name for t in tasks], log, redraw)
    outcomes: dict[str, Outcome] = {}
    with _signals_raise():
        try:
            while len(outcomes) < len(tasks):
                for task, job in zip(tasks, submitted):
                    if task.name in outcomes:
                        continue
                    if job.done():
                        outcomes[task.name] = _job_outcome(task, job, started)
                        board.set(task.name, _describe(outcomes[task.name]), task)
                    else:
                        board.set(task.name, f"{job.state.lower()} (job {job.job_id})", task)
                board.show()
                if len(outcomes) < len(tasks):
                    time.sleep(wait)
                    wait = min(2 * wait, poll_s)  # quick jobs are seen at once, long ones polled gently
        except Interrupted:
            for job in submitted:
                with contextlib.suppress(Exception):
                    if not job.done():
                        job.cancel(check=False)
            raise
    return outcomes


# ----------------------------------------------------------------------------------------------
# Entry


def train_runs(runs: Sequence[tuple[str, Path, Any]], out: Path, *, jobs: int | None = None,
               slots: Sequence[Slot] | None = None, cluster: ClusterOptions | None = None,
               log: Callable[[str], None] = print, redraw: bool = False) -> dict[str, Outcome]:
    """Trains each ``(name, run_dir, config)`` as a child process (``slots``) or a cluster job (``cluster``).

    Writes each config to ``RUN/sweep_config.yaml`` (what the child trains), then :func:`run_local` or
    :func:`run_cluster` (submitit's folder: ``out/submitit``).

    Returns:
      run name -> :class:`Outcome`.
    """
    tasks = []
    for name, run_dir, config in runs:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save_config(config, run_dir / "sweep_config.yaml")
        tasks.append(Task(name, run_dir, run_dir / "sweep_config.yaml", config.train.num_steps))
    if not tasks:
        return {}
    if cluster is not None:
        log(f"submitting {len(tasks)} run(s) as {cluster.cluster} jobs")
        return run_cluster(tasks, cluster, out / "submitit", jobs=jobs, log=log, redraw=redraw)
    slots = device_slots(jobs or 1) if slots is None else slots
    log(f"training {len(tasks)} run(s), up to {len(slots)} at once on: {'; '.join(s.label for s in slots)}")
    return run_local(tasks, slots, log=log, redraw=redraw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--executor`` and the ``--slurm-*`` flags (read back by :func:`cluster_options`)."""
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="train up to N runs at once, each a child process on its own GPUs or CPU cores "
                             "(default 1: in this process, one after another; with --executor slurm: no limit)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="local: this machine (default); slurm: one SLURM job per run, through submitit")
    parser.add_argument("--slurm-partition", metavar="P", help="SLURM partition of the jobs (default: the cluster's)")
    parser.add_argument("--slurm-gpus-per-run", type=int, default=0, metavar="G", help="GPUs per job (default 0)")
    parser.add_argument("--slurm-cpus-per-run", type=int, metavar="C", help="CPUs per job (default: the cluster's)")
    parser.add_argument("--slurm-time", default="60", metavar="TIME",
                        help="time limit per job: minutes, H:MM:SS or D-HH:MM:SS (default 60 minutes)")


def cluster_options(args: argparse.Namespace) -> ClusterOptions | None:
    """The :class:`ClusterOptions` of ``--executor slurm``, else None.

    Raises:
      LaunchError: ``--slurm-*`` flags without ``--executor slurm``, or a bad ``--slurm-time``.
    """
    if args.executor != "slurm":
        given = [flag for flag, value, default in (("--slurm-partition", args.slurm_partition, None),
                                                    ("--slurm-gpus-per-run", args.slurm_gpus_per_run, 0),
                                                    ("--slurm-cpus-per-run", args.slurm_cpus_per_run, None),
                                                    ("--slurm-time", args.slurm_time, "60")) if value != default]
        if given:
            raise LaunchError(f"{', '.join(given)} needs --executor slurm")
        return None
    return ClusterOptions(partition=args.slurm_partition, gpus_per_run=args.slurm_gpus_per_run,
                          cpus_per_run=args.slurm_cpus_per_run, time_min=slurm_minutes(args.slurm_time))
