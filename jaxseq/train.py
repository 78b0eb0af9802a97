"""The main job: ``python -m jaxseq.train [--config FILE.yaml] [--workdir DIR] [--set key=value ...] [--resume]``.

Data flows FASTA -> token cache -> leak-free splits -> numpy loader -> sharded device arrays ->
a jitted scan of train steps (one-hot inside the model, masked cross-entropy) -> metric sums read
on the host once per logging interval -> tqdm, tensorboardX, orbax.

Interruptions and faults (exit codes in :func:`main`; tested in tests/test_faults.py):

* Bad input (config, FASTA, splits, no usable window, nothing to resume, a model or data change on
  resume) is one line ``error: ...`` on stderr and exit code 2, before the run directory is created
  or changed.
* SIGTERM/SIGINT: the current call finishes, a checkpoint of that step is committed, TensorBoard is
  closed, exit code 143/130. A second signal aborts at once; committed checkpoints stay intact.
* SIGKILL, OOM, power loss: rerunning (``--resume``, or the same command) continues from the last
  committed checkpoint; orbax writes a save into ``<step>.orbax-checkpoint-tmp`` and renames it when
  complete, so half-written saves are never resumed from and are deleted by the next run. At most
  ``train.checkpoint_every`` steps are lost.
* A non-finite loss or gradient is never applied nor saved (checked before every save): the run
  stops naming the step and quantity, or skips up to ``train.skip_nonfinite`` (``--skip-nonfinite``)
  such batches.
* A failed save (disk full, unwritable directory) stops with the step that failed and the latest
  committed checkpoint, which is intact.
* One training process per run directory: ``<workdir>/.lock`` is held with ``flock`` while training,
  and a second process refuses to start. The kernel releases the lock when its holder dies (even
  by SIGKILL), so there is never a stale lock to break and no ``--force`` option.
* Run directory (:mod:`jaxseq.run`): printed when training starts. Without ``--workdir`` a run goes
  to ``runs/<timestamp>``; a new one is refused while the newest of those is unfinished (the message
  gives the command that resumes it), and ``--resume`` alone resumes it. A finished run rerun says
  "already finished at step N" and trains nothing; one whose final evaluation was interrupted only
  evaluates. ``--resume`` without ``config.yaml`` takes the config saved in the checkpoint.
* Resuming with changed settings: architecture keys (``config.ARCHITECTURE_KEYS``) and the keys that
  pick the data (``trained.DATA_KEYS``) are refused with the list of changes; anything else (schedules,
  number of steps, ...) is allowed, printed as ``key: old -> new``, written to TensorBoard
  (``config/changes``) and appended to ``config_history.jsonl``.
* Damaged checkpoints (files that fail their checksums): set aside in ``checkpoints/damaged/`` and
  training continues from the newest intact step, saying so (:func:`jaxseq.run.restore_or_init`).
* A run is bound to its data (genome content fingerprint, region/alias file hashes; in every checkpoint's
  meta and ``data.json``): resuming on other data is refused naming both fingerprints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxseq import checkpoint, evaluator, parallel, steps, summary, trained
from jaxseq import config as config_lib
from jaxseq import run as rundir
from jaxseq.config import Config, ConfigError
from jaxseq.run import NonFiniteError, RunDirectoryError, TrainingInterrupted


class _Loop:
    """The moving parts of one run between steps; :func:`train_and_evaluate` tells the story."""

    def __init__(self, config: Config, workdir: Path, mesh, data, loader, manager, writer, stop, state, meta):
        self.config, self.t, self.workdir, self.mesh = config, config.train, workdir, mesh
        self.data, self.loader, self.manager, self.writer, self.stop, self.state = (
            data, loader, manager, writer, stop, state)
        self.main = parallel.is_main_process()
        self.steps = steps.build(config)
        self.model = steps.create_model(config)
        self.rng = jax.random.fold_in(jax.random.key(self.t.seed), 1)
        self.step = int(state.step)
        self.saved_step = self.step if meta is not None else None  # newest checkpoint saved or being saved
        self.skipped_total = int((meta or {}).get("skipped_nonfinite", 0))
        # An evaluation-only rerun keeps the throughput measured when the steps were trained.
        self.windows_per_sec = (meta or {}).get("windows_per_sec",
                                                (rundir.read_final_metrics(workdir) or {}).get("windows_per_sec"))
        self.bad = self.pending = None  # device sums since the last check / log
        self.bar, self.compiled, self.precompiling = None, False, None
        self.log_time, self.log_step = time.perf_counter(), self.step
        self.valid = evaluator.open_evaluator(config, "valid", data=data, max_windows=self.t.eval_max_windows)
        self.binding = trained.data_binding(config, data.genome.fingerprint)  # saved with every checkpoint

    def due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def variables(self) -> dict:
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}

    def start_precompile(self) -> None:
        """Compiles the histogram-gradient and evaluation programs in a background thread.

        Started before the first train call, whose compilation keeps one core busy: on a 2-core CPU the
        two compilations overlap, and the first histogram and evaluation no longer stall training for
        their own compilation (measured for aemd: ~2 s and ~1 s; experiments/RESULTS.md). Shapes only,
        no collective: every process compiles its own copy. A failure here is ignored: the real call
        compiles (and reports) as it would have.
        """
        t = self.t
        if self.step >= t.num_steps:
            return
        histogram = t.histogram_every > 0 and (self.step // t.histogram_every + 1) * t.histogram_every <= t.num_steps
        rows = t.batch_size // jax.process_count()
        state = parallel.abstract(self.state)  # the state is donated by the first call: shapes only
        batch = {"tokens": np.zeros((rows, self.config.data.window_len), np.int8),
                 "weights": np.zeros((rows,), np.float32)}
        variables = {"params": state.params, "batch_stats": state.batch_stats}

        def work():
            with contextlib.suppress(Exception):
                if histogram:
                    hparams = {name: jnp.float32(0.0) for name in self.steps.hparam_schedules}
                    self.steps.grads.lower(state, parallel.shard_batch(batch, self.mesh), self.rng, hparams).compile()
                self.valid.precompile(self.model, variables, self.mesh, examples=t.examples > 0)

        self.precompiling = threading.Thread(target=work, name="jaxseq-precompile", daemon=True)
        self.precompiling.start()

    def join_precompile(self) -> None:
        if self.precompiling is not None:
            self.precompiling.join()
            self.precompiling = None

    def check_writer(self) -> None:
        # Agreed across processes: one process raising alone would leave the others in a collective.
        if parallel.any_process(self.main and not summary.writer_alive(self.writer)):
            raise RunDirectoryError(f"the TensorBoard writer for {self.workdir / 'tensorboard'} stopped "
                                    f"(disk full or directory unwritable?)")

    def check_finite(self) -> None:
        """Counts bad steps since the last check; raises beyond train.skip_nonfinite."""
        if self.bad is None:
            return
        sums, self.bad = jax.device_get(self.bad), None
        count = int(sums["nonfinite_loss"] + sums["nonfinite_grads"])
        if not count:
            return
        self.skipped_total += count
        what = "loss" if sums["nonfinite_loss"] else "gradients"
        first = int(sums["first_bad_step"]) + 1
        if self.skipped_total > self.t.skip_nonfinite:
            raise NonFiniteError(
                f"non-finite {what} at step {first} ({self.skipped_total} bad batch(es), "
                f"train.skip_nonfinite={self.t.skip_nonfinite}); the update was not applied and no checkpoint "
                f"of it is saved (--skip-nonfinite N skips up to N such batches)")
        if self.main:
            self.bar.write(f"step {first}: skipped {count} batch(es) with non-finite {what} "
                           f"({self.skipped_total} of at most {self.t.skip_nonfinite})")

    def save(self) -> None:
        self.check_finite()  # never save a state whose steps were not checked
        checkpoint.save(self.manager, self.step, self.state, self.loader.state_dict(),
                        {"config": self.config.to_dict(), "step": self.step, "time": time.time(),
                         "skipped_nonfinite": self.skipped_total, "windows_per_sec": self.windows_per_sec,
                         "data": self.binding})
        self.saved_step = self.step

    def call(self) -> dict:
        """Trains up to the next event (log, eval, checkpoint, histogram, end); returns its last host batch."""
        t = self.t
        events = [e for e in (t.log_every, t.eval_every, t.checkpoint_every, t.histogram_every) if e > 0]
        next_event = min([(self.step // e + 1) * e for e in events] + [t.num_steps])
        k = min(t.steps_per_call, next_event - self.step)
        host = steps.stack_batches([next(self.loader) for _ in range(k)], size=t.steps_per_call)
        # A short call keeps the shape (K, ...) with its real steps marked: one more program, not one per length.
        active = None if k == t.steps_per_call else parallel.replicate(np.arange(t.steps_per_call) < k, self.mesh)
        self.state, metrics = self.steps.train(self.state, parallel.shard_batch(host, self.mesh, leading_axes=1),
                                               self.rng, active)
        if not self.compiled:  # the first call compiles: the rate starts after it
            self.compiled = jax.block_until_ready(metrics) is not None
            self.bar.set_description("train")
            self.bar.bar_format = None
            self.bar.last_print_t, self.bar.last_print_n = time.time(), self.bar.n
        self.step += k
        self.pending = steps.add_metrics(self.pending, metrics)
        self.bad = steps.add_metrics(self.bad, {key: metrics[key] for key in ("nonfinite_loss", "nonfinite_grads",
                                                                                "first_bad_step")})
        self.bar.update(k)
        return {key: value[k - 1] for key, value in host.items()}  # the last batch trained

    def log(self) -> None:
        self.check_finite()
        self.check_writer()
        sums, self.pending = jax.device_get(self.pending), None
        now = time.perf_counter()
        self.windows_per_sec = (self.step - self.log_step) * self.t.batch_size / max(now - self.log_time, 1e-9)
        self.log_time, self.log_step = now, self.step
        means = summary.metrics_from_sums(sums)
        hp = {f"hparams/{k}": v for k, v in self.steps.hparams(self.step).items()}
        summary.write_scalars(self.writer, self.step, {"train/loss": means["loss"], "train/accuracy": means["accuracy"],
                                                       "perf/windows_per_sec": self.windows_per_sec, **hp})
        self.bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}",
                             win_s=f"{self.windows_per_sec:,.0f}")

    def histograms(self, last: dict) -> None:
        self.join_precompile()
        self.check_writer()
        hparams = {name: jnp.float32(fn(self.step)) for name, fn in self.steps.hparam_schedules.items()}
        one = parallel.shard_batch(last, self.mesh)
        # The gradient function spans every process's devices: all processes run it, only process 0 writes.
        grads = parallel.fetch(self.steps.grads(self.state, one, self.rng, hparams))
        if self.main:
            summary.write_histograms(self.writer, self.step, "params", jax.device_get(self.state.params))
            summary.write_histograms(self.writer, self.step, "grads", grads)

    def evaluate(self) -> None:
        self.join_precompile()
        self.check_writer()
        report = self.valid.run(self.model, self.variables(), self.mesh, examples=range(self.t.examples))
        summary.write_scalars(self.writer, self.step, {"eval/loss": report["loss"], "eval/accuracy": report["accuracy"]})
        line = f"step {self.step}: valid loss {report['loss']:.4f}, accuracy {report['accuracy']:.4f}"
        if report["examples"]:
            text = "\n\n".join(e["text"] for e in report["examples"])
            summary.write_text(self.writer, self.step, "eval/examples", text)
            line += "\n" + text
        if self.main:
            self.bar.write(line)

    def train(self) -> None:
        """Trains to ``train.num_steps`` or a stop signal, logging, evaluating and saving on the way."""
        t = self.t
        # Not on a terminal (logs, CI) a line per refresh floods the file: refresh every 30 s there.
        self.bar = tqdm(total=t.num_steps, initial=self.step, disable=not self.main or self.step >= t.num_steps,
                        desc="compiling", unit="step", dynamic_ncols=True,
                        bar_format="{desc}: step {n}/{total} ({elapsed})",
                        mininterval=0.1 if sys.stderr.isatty() else 30.0)
        try:
            self.start_precompile()
            while self.step < t.num_steps and not parallel.any_process(self.stop.signum is not None):
                last = self.call()
                end = self.step == t.num_steps
                if self.due(t.log_every) or end:
                    self.log()
                if self.due(t.histogram_every):
                    self.histograms(last)
                if self.due(t.eval_every) or end:
                    self.evaluate()
                if self.due(t.checkpoint_every) or end:
                    self.save()
            if self.stop.signum is not None and self.step > 0 and self.saved_step != self.step:
                self.save()  # the step the signal interrupted, so no progress is lost
            checkpoint.wait(self.manager)
            self.check_finite()
        except BaseException as err:
            # Commit the save in flight (it passed the checks, so it is a good one), then report.
            with contextlib.suppress(Exception):
                checkpoint.wait(self.manager)
            if isinstance(err, (NonFiniteError, checkpoint.CheckpointError, RunDirectoryError)):
                raise type(err)(f"{err}; {rundir.latest_checkpoint_text(self.workdir)}") from err
            raise
        finally:
            self.join_precompile()
            self.bar.close()

    def interrupted(self, where: str) -> TrainingInterrupted:
        name = signal.Signals(self.stop.signum).name
        return TrainingInterrupted(f"stopped by {name} {where}; resume with: "
                                   f"{rundir.resume_command(self.workdir, self.step > 0)}", self.stop.signum, self.step)

    def final(self) -> dict:
        """Whole valid and test splits (interruptible by a signal); writes ``final_metrics.json``."""
        if self.stop.signum is not None:
            saved = (f"checkpoint step {self.step} is committed in {checkpoint.checkpoint_dir(self.workdir)}"
                     if self.step > 0 else "nothing was trained, so nothing was saved")
            raise self.interrupted(f"at step {self.step}: {saved}")
        reports = {}
        try:
            for split in ("valid", "test"):
                target = evaluator.open_evaluator(self.config, split, data=self.data)
                reports[split] = target.run(self.model, self.variables(), self.mesh,
                                            should_stop=lambda: self.stop.signum is not None)
        except evaluator.EvaluationStopped:
            raise self.interrupted(f"during the final evaluation (checkpoint step {self.step} is committed; "
                                   f"a rerun only evaluates)") from None
        valid, test = reports["valid"], reports["test"]
        result = {"step": self.step, "valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"],
                  "test_loss": test["loss"], "test_accuracy": test["accuracy"], "test_bases": float(test["n_bases"]),
                  "windows_per_sec": self.windows_per_sec}
        self.check_writer()  # a collective: every process calls it
        if self.main:
            summary.write_hparams(self.writer, self.config.to_dict(),
                                  {"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
            rundir.write_json(self.workdir / rundir.FINAL_METRICS, result)
        return result


def _open_inputs(config: Config, workdir: Path, require_checkpoint: bool):
    """The data and the train loader, checked before the run directory is touched."""
    from jaxseq.loader import LoaderError
    from jaxseq.splits import SplitError

    try:
        data = steps.open_data(config)
        # The loader rejects data with no usable window (all N, ...): built before touching the run directory.
        loader = steps.create_train_loader(config, data)
    except (SplitError, LoaderError) as err:  # name the file, as genome errors do
        raise type(err)(f"{config.data.fasta or 'the bundled lambda phage genome'}: {err}") from None
    if require_checkpoint and not checkpoint.committed_steps(workdir):
        loader.close()
        raise checkpoint.CheckpointError(f"--resume: no checkpoint to resume in {checkpoint.checkpoint_dir(workdir)}")
    return data, loader


def _finished(config: Config, workdir: Path) -> dict | None:
    """The final metrics of a run that already trained to ``train.num_steps`` and evaluated, else None.

    Only with unchanged settings: any change takes the normal path, which checks it (and refuses one
    that changes the model).
    """
    final = rundir.read_final_metrics(workdir)
    found = checkpoint.committed_steps(workdir)
    if not (final and found and final.get("step") == found[-1] >= config.train.num_steps):
        return None
    try:
        saved = config_lib.load_config(workdir / "config.yaml")
    except ConfigError:
        return None
    return None if config_lib.differences(saved, config) else final


def _open_run_directory(cleanup: contextlib.ExitStack, config: Config, workdir: Path, mesh, require_checkpoint: bool,
                        data):
    """Creates and locks the run directory, restores (the newest intact step, of this model and data) or
    initialises the state."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirectoryError(f"cannot create run directory {workdir}: "
                                f"{checkpoint.describe_os_error(err)}") from None
    if parallel.is_main_process():
        cleanup.enter_context(rundir.lock_run_directory(workdir))
    manager = checkpoint.create_manager(workdir, config.train.max_to_keep)
    cleanup.callback(rundir.close_quietly, manager)
    binding = trained.data_binding(config, data.genome.fingerprint)
    log = print if parallel.is_main_process() else (lambda line: None)
    state, loader_state, meta, changes = rundir.restore_or_init(config, workdir, mesh, manager, require_checkpoint,
                                                                binding=binding, log=log)
    return manager, state, loader_state, meta, changes, binding


def train_and_evaluate(config: Config, workdir: str | Path, *, require_checkpoint: bool = False) -> dict:
    """Trains (resuming from the run directory's latest checkpoint, if any), evaluates, saves.

    Faults: see the module docstring ("Interruptions and faults"). Bad input never leaves a half-made
    run directory or changes an existing one; SIGTERM/SIGINT commit a checkpoint of the current step
    and raise :class:`TrainingInterrupted`; a non-finite step is never applied nor saved.

    Args:
      config: a validated config.
      workdir: the run directory: ``config.yaml``, ``checkpoints/``, ``tensorboard/``, ``final_metrics.json``.
      require_checkpoint: fail if there is nothing to resume (``--resume``).

    Returns:
      Final metrics: ``step``, ``valid_loss``, ``valid_accuracy``, ``test_loss``, ``test_accuracy``,
      ``test_bases``, ``windows_per_sec`` (None if never measured).

    Raises:
      ConfigError, GenomeError, SplitError, LoaderError, ParallelError: bad input (nothing written).
      CheckpointError: nothing to resume, run directory in use or unwritable, or a save failed.
      NonFiniteError, TrainingInterrupted, RunDirectoryError: see above.
    """
    workdir = Path(workdir).absolute()
    mesh = parallel.create_mesh(config.train.devices)
    parallel.check_batch_size(config.train.batch_size, mesh)
    main = parallel.is_main_process()
    finished = _finished(config, workdir)
    if finished is not None:
        rundir.check_bound_data(workdir, config, f"finished run {workdir}", "train on this data in a new --workdir")
        if main:
            print(f"{workdir} already finished at step {finished['step']} (final_metrics.json); nothing to do "
                  f"(raise train.num_steps to train further, or train into a new --workdir)", flush=True)
        return finished
    data, loader = _open_inputs(config, workdir, require_checkpoint)
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: writer, manager, lock, signals, loader
        cleanup.callback(loader.close)
        stop = cleanup.enter_context(rundir.StopSignals())
        manager, state, loader_state, meta, changes, binding = _open_run_directory(cleanup, config, workdir, mesh,
                                                                                   require_checkpoint, data)
        start_step = int(state.step)
        if loader_state is not None:
            try:
                loader.load_state_dict(loader_state)
            except ValueError as err:  # before anything is written: the run directory stays as it was
                raise ConfigError(f"cannot resume {workdir} (checkpoint step {start_step}): its training data "
                                  f"differs ({'; '.join(changes) or 'same settings: the FASTA content changed'}): "
                                  f"{err}") from None
        if main:  # only now: the settings are validated and the checkpoint accepted them
            config_lib.save_config(config, workdir / "config.yaml")
            rundir.record_resume(workdir, start_step, changes, binding)
        writer = summary.create_writer(workdir, enabled=main)
        cleanup.callback(summary.close_writer, writer)
        if start_step == 0 and main:
            summary.write_text(writer, 0, "config", json.dumps(config.to_dict(), indent=2))
        if changes and main:
            print(f"resuming {workdir} at step {start_step} with changed settings: {'; '.join(changes)}", flush=True)
            summary.write_text(writer, start_step, "config/changes", "\n".join(changes))
        if main:
            what = ("training from step 0" if meta is None else f"resuming at step {start_step}"
                    if start_step < config.train.num_steps else f"already trained to step {start_step}; evaluating")
            print(f"run directory: {workdir} ({what})", flush=True)
            if config.model.conv_impl == "flax" and jax.default_backend() == "cpu":
                print("note: model.conv_impl=flax on CPU trains ~15x slower than auto/cpu (flax's convolution "
                      "gradients inside the scanned step, jax-ml/jax#12868)", flush=True)
        loop = _Loop(config, workdir, mesh, data, loader, manager, writer, stop, state, meta)
        loop.train()
        return loop.final()


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseq.train", description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 done; 2 error (one line on stderr); 143/130 stopped by SIGTERM/SIGINT after saving a "
               "checkpoint (rerun with --resume). One process per --workdir (locked while training).")
    parser.add_argument("--config", help="YAML config (configs/*.yaml); default: built-in defaults, or the run "
                                         "directory's saved config when resuming")
    parser.add_argument("--workdir", help="run directory (default: runs/<timestamp>); an existing one with "
                                          "checkpoints is resumed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.num_steps=500 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="require a checkpoint in --workdir and resume from it")
    parser.add_argument("--skip-nonfinite", type=int, metavar="N",
                        help="skip up to N batches whose loss or gradients are not finite instead of stopping "
                             "at the first (same as --set train.skip_nonfinite=N)")
    parser.add_argument("--devices", help="'all' (default) or a number of local devices; same as --set train.devices=")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-process run with jax.distributed (see README: Scaling out)")
    parser.add_argument("--coordinator", help="coordinator address host:port for --distributed")
    parser.add_argument("--num-processes", type=int, help="number of processes for --distributed")
    parser.add_argument("--process-id", type=int, help="this process's index for --distributed")
    return parser


def resolve_config(args) -> tuple[Config, Path]:
    """Config and run directory from the command line (see :func:`jaxseq.run.choose_workdir`)."""
    # Quoted: YAML would read "4" as an int, which train.devices (a string) rejects.
    overrides = list(args.overrides) + ([f"train.devices='{args.devices}'"] if args.devices else [])
    if getattr(args, "skip_nonfinite", None) is not None:
        overrides.append(f"train.skip_nonfinite={args.skip_nonfinite}")
    workdir, note = rundir.choose_workdir(args.workdir, args.resume)
    config = rundir.resolve_config(args.config, overrides, workdir, args.resume)
    if note and parallel.is_main_process():
        print(note, flush=True)
    return config, workdir


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code.

    Exit codes: 0 done; 2 an error, reported as one line ``error: ...`` on stderr (bad config or
    FASTA, nothing to resume, run directory locked or unwritable, non-finite training, failed save);
    ``128 + signum`` stopped by a signal after committing a checkpoint (143 SIGTERM, 130 SIGINT).
    A second SIGTERM/SIGINT terminates the process by that signal at once.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.distributed or parallel.distributed_requested():
            parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        config, workdir = resolve_config(args)
        result = train_and_evaluate(config, workdir, require_checkpoint=args.resume)
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training set up its handlers: nothing to save yet
        print("error: interrupted (SIGINT) before training started; nothing was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ConfigError, checkpoint.CheckpointError, parallel.ParallelError, NonFiniteError, ValueError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if parallel.is_main_process():
        print(f"run directory: {workdir.absolute()}")
        if not result["test_bases"]:
            print(f"held-out (test split): no base was scored (every test position is N; step {result['step']})")
        else:
            print(f"held-out (test split) accuracy {result['test_accuracy']:.4f}, cross-entropy "
                  f"{result['test_loss']:.4f} nats/base over {int(result['test_bases']):,} bases "
                  f"(step {result['step']})")
    return 0


if __name__ == "__main__":
    exit_code = main()
    if exit_code:
        # The error is reported. Background save tasks that failed with it (orbax/asyncio) would be
        # logged again at interpreter exit ("exception was never retrieved"), after the message.
        import logging

        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.exit(exit_code)
