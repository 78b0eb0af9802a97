"""Run a study: ``python -m jaxseq.sweep SWEEP.yaml [--out DIR] [--set key=value ...] [--jobs N] [--dry-run]``.

A sweep file (``configs/sweeps/*.yaml``) names a base config and the settings to vary::

    # Run: python -m jaxseq.sweep configs/sweeps/ae_window_size.yaml
    base: ../ae_window_size.yaml        # relative to this sweep file
    description: latent channels vs kernel width
    set:                                # common overrides, for every run (not part of run names)
      train.num_steps: 3000
    grid:                               # cartesian product, in the order written (last key fastest)
      model.kernel_len: [3, 9]
      model.latent_len: [6, 18]
    runs:                               # and/or a list of override dicts
      - {model.pool: max}
      - {model.pool: avg, model.n_conv_and_pool: 2}
    evaluate: [deterministic, stochastic]   # test-split modes (default: deterministic)
    target_run: optimizer=sgd            # optional: add steps/seconds to reach this run's test accuracy

With both ``runs`` and ``grid``, every run is combined with every grid point (runs outer). Overrides are
applied in the order: base file, ``set``, the run's own overrides, then ``--set`` from the command line.
Every run's config is built and validated before anything trains, so a typo fails at once, naming the
sweep file and the key.

Each run trains into ``OUT/<run name>``; the name is made from the run's own overrides
(``kernel_len=3_latent_len=6``: the last part of each key unless two of its keys share it), so it stays the
same from one invocation to the next. A run with ``final_metrics.json`` is finished and skipped (its config
must equal the one the sweep would use now, up to settings that cannot change results such as
``data.cache_dir``; otherwise the sweep stops: results of another setup are never mixed into a table); a run
with checkpoints but no final metrics resumes from its latest checkpoint. A failed run does not stop the
others: the table shows its error line, and the next invocation retries it.

Where runs train: by default in this process, one after another (:func:`jaxseq.train.train_and_evaluate`).
``--jobs N``: up to N at once, each a child ``python -m jaxseq.train`` pinned to its own GPUs or CPU cores
(:mod:`jaxseq.launch`), one progress line per run. ``--executor slurm``: one SLURM job per run through
submitit (``--slurm-partition``, ``--slurm-gpus-per-run``, ``--slurm-cpus-per-run``, ``--slurm-time``;
``--jobs N`` caps the jobs running at once), this process waiting for them.

Evaluation on the test split: deterministic mode is the one training did (``final_metrics.json``);
stochastic mode (input dropout and latent noise on, at the schedule values of the last step) calls
:func:`jaxseq.evaluate.evaluate` in this process, which writes ``eval_test_stochastic_step<N>.json``.

Outputs: ``OUT/results.csv`` (full precision) and ``OUT/results.md`` (Markdown): the run name, one column
per varied setting (the run's effective value), test accuracy and bits per base (per mode), validation
accuracy, steps, wall time (training and its evaluation, including compilation and, for a child, its
start-up), training windows per second (last logging interval), and with ``target_run`` the first
validation evaluation at or above the target run's final test accuracy (step, and seconds since the run's
TensorBoard writer started). TensorBoard's HParams view compares the runs (``tensorboard --logdir OUT``):
each run's config and test metrics are in ``<run>/tensorboard/hparams`` (written by training, else here).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from jaxseq import config as config_lib
from jaxseq import launch, summary
from jaxseq import run as rundir
from jaxseq.checkpoint import CheckpointError
from jaxseq.config import Config, ConfigError
from jaxseq.run import TrainingInterrupted

SWEEP_KEYS = ("base", "description", "set", "grid", "runs", "evaluate", "target_run")
EVAL_MODES = ("deterministic", "stochastic")
#: Longest run name before it is shortened with a hash of its overrides.
MAX_NAME_LEN = 96
RESULT_COLUMNS = ("test_accuracy", "test_bits_per_base")
TAIL_COLUMNS = ("valid_accuracy", "steps", "wall_time_s", "windows_per_sec")
TARGET_COLUMNS = ("steps_to_target", "seconds_to_target")


class SweepError(ValueError):
    """The sweep file or an existing run directory cannot be used (one-line message)."""


@dataclasses.dataclass
class Run:
    """One expanded run: its name, its own overrides (dotted key -> value) and the full config."""

    name: str
    overrides: dict[str, Any]
    config: Config


@dataclasses.dataclass
class Sweep:
    """A loaded, validated sweep file."""

    path: Path
    name: str
    base: Path
    description: str
    common: dict[str, Any]  # the sweep file's ``set``
    cli: dict[str, Any]  # command-line ``--set``
    runs: list[Run]
    modes: tuple[str, ...]
    target_run: str | None

    @property
    def override_keys(self) -> list[str]:
        """Every varied setting, in order of first appearance."""
        keys: list[str] = []
        for run in self.runs:
            keys += [k for k in run.overrides if k not in keys]
        return keys


# ----------------------------------------------------------------------------------------------
# Expansion and names


def expand(grid: Mapping[str, Sequence[Any]] | None, runs: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """The override dicts of a sweep: each of ``runs`` combined with each point of ``grid``.

    Args:
      grid: dotted key -> list of values; the cartesian product in key order, last key varying fastest.
      runs: list of override dicts.

    Returns:
      list of dicts (dotted key -> value), runs outer, grid inner; ``[{}]`` when both are empty.
    """
    runs = list(runs) if runs else [{}]
    keys = list(grid) if grid else []
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] if keys else [{}]
    return [{**run, **point} for run in runs for point in points]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value)
    if isinstance(value, Mapping):
        return "-".join(f"{k}{_format_value(v)}" for k, v in value.items())
    return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
    """A stable, filesystem-safe directory name for a run's overrides.

    ``{"model.kernel_len": 3, "optim.learning_rate": 0.1}`` -> ``kernel_len=3_learning_rate=0.1``. Keys
    are shortened to their last part unless that part is shared by another key of the same run. Lists
    join with ``-``; characters other than letters, digits and ``._=+-`` become ``-``. Names longer
    than :data:`MAX_NAME_LEN` are cut and end with a hash of the overrides, so they stay unique.
    No overrides: ``base``.
    """
    if not overrides:
        return "base"
    last = [key.rsplit(".", 1)[-1] for key in overrides]
    parts = []
    for key, short in zip(overrides, last):
        label = short if last.count(short) == 1 else key
        parts.append(f"{label}={_format_value(overrides[key])}")
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-.") or "run"
    if len(name) > MAX_NAME_LEN:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LEN - 9]}-{digest}"
    return name


def _apply_overrides(config: Config, overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if not isinstance(key, str) or key.count(".") != 1:
            raise ConfigError(f"setting {key!r}: expected group.name, e.g. model.kernel_len")
        group, name = key.split(".")
        config_lib.from_dict({group: {name: copy.deepcopy(value)}}, config)


# ----------------------------------------------------------------------------------------------
# Loading


def _read_spec(path: Path) -> dict[str, Any]:
    """The sweep file's mapping with its shape checked; ``base`` resolved, ``evaluate`` a list of modes."""
    def fail(message: str) -> SweepError:
        return SweepError(f"sweep file {path}: {message}")

    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise fail(f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise fail(f"expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in spec:
        if key not in SWEEP_KEYS:
            raise fail(f"unknown key {key!r}{config_lib._close(str(key), SWEEP_KEYS)}; "
                       f"allowed: {', '.join(SWEEP_KEYS)}")
    if "base" not in spec or not isinstance(spec["base"], str):
        raise fail("'base' must name a config file (relative to the sweep file)")
    base = (path.parent / spec["base"]).resolve()
    if not base.is_file():
        raise fail(f"base config {spec['base']} does not exist ({base})")
    if not isinstance(spec.get("set") or {}, dict):
        raise fail("'set' must be a mapping of group.key: value")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise fail("'grid' must be a mapping of group.key: [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise fail(f"grid.{key} must be a non-empty list of values, got {values!r}")
    runs = spec.get("runs") or []
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise fail("'runs' must be a list of mappings of group.key: value")
    modes = spec.get("evaluate", ["deterministic"])
    modes = [modes] if isinstance(modes, str) else modes
    if not isinstance(modes, list) or not modes or any(m not in EVAL_MODES for m in modes):
        raise fail(f"'evaluate' must list modes among {', '.join(EVAL_MODES)}, got {modes!r}")
    return {**spec, "base": base, "set": dict(spec.get("set") or {}), "grid": grid, "runs": runs,
            "evaluate": modes if "deterministic" in modes else ["deterministic", *modes]}


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Reads a sweep file, expands its runs and builds and validates every run's config.

    Args:
      path: the sweep YAML.
      overrides: command-line ``key=value`` strings applied to every run, last.

    Returns:
      the :class:`Sweep`.

    Raises:
      SweepError: one line naming the sweep file and the key at fault (unknown sweep key, unknown or
        invalid config key or value, grid values that are not a list, duplicate run names, ...).
    """
    path = Path(path)
    spec = _read_spec(path)
    common, grid, runs = spec["set"], spec["grid"], spec["runs"]

    def fail(message: str) -> SweepError:
        return SweepError(f"sweep file {path}: {message}")

    cli = {}
    for text in overrides:
        try:
            key, value = config_lib.parse_override(text)
        except ConfigError as err:
            raise SweepError(str(err)) from None
        cli[key] = value
    try:
        base_config = config_lib.load_config(spec["base"])
    except ConfigError as err:
        raise fail(f"base: {err}") from None
    # Check the common settings once, so their errors are not blamed on a run.
    for where, settings in (("set", common), ("--set", cli)):
        try:
            _apply_overrides(copy.deepcopy(base_config), settings)
        except ConfigError as err:
            raise fail(f"{where}: {err}") from None

    points = len(expand(grid, None))
    expanded: list[Run] = []
    for i, run_overrides in enumerate(expand(grid, runs)):
        name = run_name(run_overrides)
        config = copy.deepcopy(base_config)
        try:
            _apply_overrides(config, common)
            _apply_overrides(config, run_overrides)
            _apply_overrides(config, cli)
            config_lib.validate(config)
        except ConfigError as err:
            where = f"runs[{i // points}]" if runs else "grid"
            raise fail(f"{where} (run {name}): {err}") from None
        expanded.append(Run(name, dict(run_overrides), config))

    seen: dict[str, int] = {}
    for i, run in enumerate(expanded):
        if run.name in seen:
            raise fail(f"runs {seen[run.name]} and {i} have the same name {run.name!r} (same overrides?)")
        seen[run.name] = i
    target = spec.get("target_run")
    if target is not None and target not in seen:
        raise fail(f"target_run {target!r} is not one of the runs: {', '.join(seen)}")
    return Sweep(path=path, name=path.stem, base=spec["base"], description=str(spec.get("description", "")).strip(),
                 common=common, cli=cli, runs=expanded, modes=tuple(spec["evaluate"]), target_run=target)


# ----------------------------------------------------------------------------------------------
# Running


#: Settings that cannot change a finished run's numbers: a run may be reused whatever their values.
NOT_RESULT_KEYS = frozenset({"data.cache_dir", "data.prefetch", "train.log_every", "train.examples",
                             "train.histogram_every", "train.checkpoint_every", "train.max_to_keep"})


def check_finished(run: Run, run_dir: Path) -> bool:
    """True if ``run_dir`` holds a finished run of ``run.config`` (up to :data:`NOT_RESULT_KEYS`) on the same data.

    Raises:
      SweepError: the finished run was trained with another config, or on other genome content or other
        region files than the config now names (both fingerprints named).
    """
    if not (run_dir / "final_metrics.json").is_file():
        return False
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        saved = config_lib.from_dict(yaml.safe_load(saved_path.read_text()))
        changed = config_lib.differences(saved, run.config,
                                         [k for k in config_lib.setting_keys() if k not in NOT_RESULT_KEYS])
        if changed:
            raise SweepError(f"{run_dir} is a finished run of another config ({'; '.join(changed[:3])}"
                             f"{'; ...' if len(changed) > 3 else ''}): use another --out, or delete that run")
    try:
        rundir.check_bound_data(run_dir, run.config, f"finished run {run_dir}", "use another --out to train on it")
    except (CheckpointError, ValueError) as err:  # ValueError: GenomeError, the FASTA itself is bad
        raise SweepError(str(err)) from None
    return True


def evaluate_stochastic(run_dir: Path, step: int, log: Callable[[str], None] = print) -> dict | None:
    """The run's stochastic-mode test report: read from its JSON, else computed (in this process) and written.

    Returns:
      the report dict (``accuracy``, ``bits_per_base``, ...), or None when the evaluation fails (logged;
      the table then leaves the stochastic columns empty).
    """
    path = run_dir / f"eval_test_stochastic_step{step}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from jaxseq import evaluate

    try:
        return evaluate.evaluate(run_dir, split="test", mode="stochastic", step=step, write=True)
    except Exception as err:  # one run's evaluation must not lose the table of the others
        first = (str(err).splitlines() or [""])[0]
        log(f"  {run_dir.name}: stochastic evaluation failed: {type(err).__name__}: {first}")
        return None


def _first_reaching(run_dir: Path, target: float) -> tuple[int | None, float | None]:
    """First validation evaluation at or above ``target``: (step, seconds since the writer started)."""
    events = summary.read_events(run_dir / "tensorboard")
    if not events:
        return None, None
    start = min(e.wall_time for e in events)
    for step, wall, value in sorted(summary.event_scalars(events).get("eval/accuracy", [])):
        if value >= target:
            return step, wall - start
    return None, None


def effective_values(run: Run, keys: Sequence[str]) -> dict[str, Any]:
    """The run's value of each dotted key (its own override, else the base or ``set`` value)."""
    tree = run.config.to_dict()
    return {key: tree[key.split(".")[0]][key.split(".")[1]] for key in keys}


def collect_row(sweep: Sweep, run: Run, run_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One results row: run name, overrides, test metrics per mode, steps, timings."""
    final = json.loads((run_dir / "final_metrics.json").read_text())
    info_path = run_dir / "sweep_run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    row: dict[str, Any] = {"run": run.name, **effective_values(run, sweep.override_keys), "test_accuracy":
                           final["test_accuracy"], "test_bits_per_base": final["test_loss"] / math.log(2.0)}
    if "stochastic" in sweep.modes:
        report = evaluate_stochastic(run_dir, int(final["step"]), log) or {}
        row["test_accuracy_stochastic"], row["test_bits_per_base_stochastic"] = (report.get("accuracy"),
                                                                                 report.get("bits_per_base"))
    return {**row, "valid_accuracy": final["valid_accuracy"], "steps": int(final["step"]),
            "wall_time_s": info.get("wall_time_s"), "windows_per_sec": final.get("windows_per_sec")}


def _add_target_columns(sweep: Sweep, rows: list[dict], out: Path) -> float | None:
    if sweep.target_run is None:
        return None
    target = next((r.get("test_accuracy") for r in rows if r["run"] == sweep.target_run), None)
    for row in rows if target is not None else []:
        if "note" not in row:
            row["steps_to_target"], row["seconds_to_target"] = _first_reaching(out / row["run"], target)
    return target


def _result_row(sweep: Sweep, run: Run, run_dir: Path, outcome: launch.Outcome | None,
                log: Callable[[str], None]) -> dict[str, Any]:
    """The run's results row; a failed run's row has its name, settings and ``note``."""
    if outcome is not None and outcome.error is not None:
        return {"run": run.name, **effective_values(run, sweep.override_keys), "note": f"failed: {outcome.error}"}
    if outcome is not None:
        (run_dir / "sweep_run.json").write_text(json.dumps(
            {"sweep": str(sweep.path), "overrides": run.overrides, "wall_time_s": outcome.wall_time_s,
             "started": outcome.started, "devices": outcome.devices}, indent=2, default=str))
    if not summary.has_hparams(run_dir):  # training writes them; a run from elsewhere may lack them
        final = json.loads((run_dir / "final_metrics.json").read_text())
        writer = summary.create_writer(run_dir)
        try:
            summary.write_hparams(writer, run.config.to_dict(), {k: final[k] for k in ("test_accuracy", "test_loss")})
        finally:
            writer.close()
    row = collect_row(sweep, run, run_dir, log)
    log(f"  {run.name}: test accuracy {row['test_accuracy']:.4f}, {row['test_bits_per_base']:.4f} bits/base"
        + (f", wall {row['wall_time_s']:.1f} s" if row["wall_time_s"] is not None else ""))
    return row


def run_sweep(sweep: Sweep, out: str | Path, *, train_fn: Callable | None = None, jobs: int | None = None,
              cluster: launch.ClusterOptions | None = None, log: Callable[[str], None] = print,
              redraw: bool = False) -> list[dict[str, Any]]:
    """Trains every unfinished run, evaluates, and writes ``results.csv`` and ``results.md``.

    Args:
      sweep: from :func:`load_sweep`.
      out: output folder; one subfolder per run.
      train_fn: ``(config, workdir) -> metrics`` for runs trained in this process; default
        :func:`jaxseq.train.train_and_evaluate`.
      jobs: None or 1: in this process, in order; N > 1: up to N child processes at once, each on its own
        devices (:func:`jaxseq.launch.device_slots`); with ``cluster``: most jobs at once (None: all).
      cluster: submit each run as a cluster job through submitit (:class:`jaxseq.launch.ClusterOptions`).
      log, redraw: progress messages; redraw the children's progress lines in place (a terminal).

    Returns:
      the result rows (as written to ``results.csv``); a run whose training failed has only its name,
      overrides and ``note`` ("failed: <error line>"), and is retried by the next invocation.

    Raises:
      SweepError, launch.LaunchError: a finished run in ``out`` has another config, or the devices or
        cluster cannot run the sweep as asked (before anything is trained or written).
      TrainingInterrupted, launch.Interrupted: stopped by a signal after the running runs saved.
    """
    out = Path(out)
    if jobs is not None and jobs < 1:
        raise launch.LaunchError(f"--jobs must be >= 1, got {jobs}")
    in_process = cluster is None and (jobs or 1) == 1
    # Refuse before training anything if any finished run conflicts or the devices do not fit.
    finished = {run.name: check_finished(run, out / run.name) for run in sweep.runs}
    slots = launch.device_slots(jobs) if not in_process and cluster is None else None
    if cluster is not None:
        launch.check_cluster(cluster)
    out.mkdir(parents=True, exist_ok=True)
    for i, run in enumerate(sweep.runs, 1):
        log(f"[{i}/{len(sweep.runs)}] {run.name}: " + ("finished, skipped" if finished[run.name] else
                                                       f"{run.config.train.num_steps} steps to train"))
    todo = [run for run in sweep.runs if not finished[run.name]]
    if in_process:
        if train_fn is None:
            from jaxseq import train

            train_fn = train.train_and_evaluate
        rows = []
        for run in sweep.runs:  # train, then tabulate at once: a stopped sweep keeps every evaluation done
            outcome, started = None, time.time()
            if run in todo:
                try:
                    train_fn(run.config, out / run.name)
                    outcome = launch.Outcome(None, time.time() - started, started, "in process")
                except Exception as err:  # one failed run (e.g. diverged) must not lose the others
                    outcome = launch.Outcome(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}",
                                             time.time() - started, started, "in process")
                    log(f"  failed: {outcome.error}")
            rows.append(_result_row(sweep, run, out / run.name, outcome, log))
    else:
        outcomes = launch.train_runs([(run.name, out / run.name, run.config) for run in todo], out, jobs=jobs,
                                     slots=slots, cluster=cluster, log=log, redraw=redraw)
        rows = [_result_row(sweep, run, out / run.name, outcomes.get(run.name), log) for run in sweep.runs]
    target = _add_target_columns(sweep, rows, out)
    write_results(sweep, rows, out, target=target)
    log(f"wrote {out / 'results.csv'} and {out / 'results.md'}")
    return rows


# ----------------------------------------------------------------------------------------------
# Tables


def result_columns(sweep: Sweep) -> list[str]:
    """Column order of the results table."""
    columns = ["run", *sweep.override_keys, *RESULT_COLUMNS]
    if "stochastic" in sweep.modes:
        columns += ["test_accuracy_stochastic", "test_bits_per_base_stochastic"]
    columns += list(TAIL_COLUMNS)
    if sweep.target_run is not None:
        columns += list(TARGET_COLUMNS)
    return columns + ["note"]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _md_value(column: str, value: Any) -> str:
    if value is None or value == "":
        return "n/a" if column in TARGET_COLUMNS else ""
    if column in ("wall_time_s", "seconds_to_target"):
        return f"{value:.1f}"
    if column == "windows_per_sec":
        return f"{value:,.0f}"
    if column.startswith(("test_", "valid_")) and isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value).replace("|", "\\|")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("|", "\\|")


def write_results(sweep: Sweep, rows: list[dict], out: str | Path, target: float | None = None) -> None:
    """``results.csv`` (full precision) and ``results.md`` (rounded Markdown table) in ``out``."""
    out = Path(out)
    columns = result_columns(sweep)
    if not any(row.get("note") for row in rows):
        columns.remove("note")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row.get(c)) for c in columns])
    common = {**sweep.common, **sweep.cli}
    lines = [f"# Sweep `{sweep.name}`", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    lines += [f"Base config `{sweep.base.name}`; common settings: "
              + (", ".join(f"`{k}={_csv_value(v)}`" for k, v in common.items()) or "none") + ".",
              "Test split, whole, deterministic mode" + (" and stochastic mode (dropout and noise on)"
                                                         if "stochastic" in sweep.modes else "")
              + "; bits/base = cross-entropy / ln 2; wall time = training + evaluation, including compilation.", ""]
    if target is not None:
        lines += [f"Target: {target:.4f}, the final test accuracy of `{sweep.target_run}`; steps/seconds to target: "
                  f"first validation evaluation at or above it (n/a: never reached).", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_md_value(c, row.get(c)) for c in columns) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxseq.sweep", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("sweep", help="sweep file (configs/sweeps/*.yaml)")
    parser.add_argument("--out", help="output folder (default: runs/sweeps/<sweep file stem>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting in every run, e.g. --set train.num_steps=20 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    launch.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 with a one-line error)."""
    args = build_parser().parse_args(argv)
    try:
        sweep = load_sweep(args.sweep, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
        if args.dry_run:
            print(f"sweep {sweep.name}: {len(sweep.runs)} run(s) of {sweep.base} into {out}")
            common = {**sweep.common, **sweep.cli}
            if common:
                print("  common: " + ", ".join(f"{k}={_csv_value(v)}" for k, v in common.items()))
            for i, run in enumerate(sweep.runs, 1):
                state = "finished" if check_finished(run, out / run.name) else "to run"
                settings = ", ".join(f"{k}={_csv_value(v)}" for k, v in run.overrides.items()) or "(base)"
                print(f"  [{i}] {run.name}  ({state}; {run.config.train.num_steps} steps): {settings}")
            return 0
        cluster = launch.cluster_options(args)
        rows = run_sweep(sweep, out, jobs=args.jobs, cluster=cluster, redraw=sys.stdout.isatty())
    except (SweepError, ConfigError, launch.LaunchError, summary.EventFileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrainingInterrupted, launch.Interrupted) as err:  # checkpoints saved; rerunning the sweep resumes
        print(f"{err}; rerun the sweep to continue", file=sys.stderr)
        return err.exit_code
    failed = [row["run"] for row in rows if row.get("note")]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
