"""Training throughput of jaxseq against the PyTorch baseline, same config, same data, same batches.

Two setups, both on E. coli K-12 (``../shared/data/ecoli_k12_mg1655.fa.gz`` from the repository root by default, ``--fasta``):

* ``single``: the prototype's single-layer autoencoder, kernel 3, latent 6, window 40, batch 20;
* ``aemd``: the multilayer "aemd" config, kernel 9, latent 200, window 64, hidden 24, pool 2, 1 block,
  2 convs before the pool, 2 linear layers, batch 200.

Both train with plain SGD at a constant learning rate 0.1 (the prototype's optimiser).

Each implementation runs in its own subprocess (so thread pools never compete inside one process) and
times its train loop only, after ``--warmup`` steps that absorb start-up, jit compilation and the
loader's first batches:

* jaxseq: :func:`jaxseq.steps.create_train_state`, then :func:`jaxseq.steps.build`'s train function under
  ``jax.jit`` (state donated), ``train.steps_per_call`` steps per call (``lax.scan``), batches from
  :func:`jaxseq.steps.create_train_loader` stacked and placed with :func:`jaxseq.parallel.shard_batch`,
  metric sums accumulated on device: the loop of ``python -m jaxseq.train`` without logging,
  evaluation and checkpoints. The clock stops after ``block_until_ready`` on the final state. Run with
  the config files' ``train.steps_per_call`` (100 single, 10 aemd), with 1, and as ``step``:
  ``jax.jit(train_step)`` called once per batch with no scan at all (not what ``jaxseq.train`` does). The
  last shows what the scan costs: with flax's convolutions XLA:CPU runs their gradients far slower inside
  a loop body (https://github.com/jax-ml/jax/issues/12868); with the CPU kernels (``conv_impl: auto`` on
  CPU) it costs nothing measurable (experiments/RESULTS.md, "Scan or unroll").
* torch: :func:`experiments.torch_baseline.train.train_step` per batch from the same loader (same
  seed, so the same windows), metric sums accumulated, ``torch.set_num_threads(T)``. Run twice: with
  ``T = os.cpu_count()`` (the baseline's default) and with ``T = 1``, because on a shared or busy machine
  intra-op threads that wait for each other can make eager PyTorch many times slower.

End to end (``--end-to-end``, on by default): the training commands themselves, ``python -m jaxseq.train``
and ``python -m experiments.torch_baseline --threads T``, each a subprocess on the setup's config file
(``configs/autoencoder.yaml``, ``configs/multilayer_aemd.yaml``: aemd with Adam, dropout and noise) for
``--e2e-steps-*`` steps, logging every twelfth of the run, evaluation (the whole validation split) and
checkpoints at the config's own cadence (every 2,000 steps for aemd, 5,000 for single; single runs its
config's whole 20,000 steps by default). Their own ``perf/windows_per_sec`` (TensorBoard) is read back; the
first interval (start-up, compilation) is dropped and the rest combined as windows over seconds: loader,
evaluation, checkpoints and any later compilation (the histogram gradients, the evaluator) included in their
real proportion, as a user sees it. A second figure counts the whole process, start-up and the first
compilation too (steps x batch / the subprocess's wall time).

The torch worker runs on ``--torch-device`` (cpu, or cuda in cuDNN benchmark mode) at each of
``--torch-precisions`` (float32, bfloat16 = ``torch.autocast``); ``--implementations torch`` measures the
baseline alone (``experiments/gpu_check.sh`` does, at batch sizes set with ``--set train.batch_size=N``).

windows/s = timed steps x batch size / seconds; each worker times ``--repeats`` consecutive blocks of
``--steps`` steps and reports their median (all blocks are kept in the JSON). Ratios: jaxseq's
windows/s over torch's, both at their defaults (config ``steps_per_call``, ``os.cpu_count()`` threads),
and best setting over best setting.
The load average is recorded around each worker: on a shared machine, numbers move with it.

Run::

    python experiments/benchmark_vs_torch.py [--setups single,aemd] [--steps-single 1000] [--steps-aemd 100]
        [--warmup 50] [--repeats 3] [--torch-threads cpu,1] [--jax-steps-per-call config,1,step]
        [--out experiments/out/benchmark_vs_torch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "experiments" / "out" / "benchmark_vs_torch.json"
DEFAULT_FASTA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecoli_k12_mg1655.fa.gz"
# End to end: the training commands on the configs users run (aemd with Adam, dropout and noise).
E2E_CONFIGS = {"single": "configs/autoencoder.yaml", "aemd": "configs/multilayer_aemd.yaml"}

COMMON = ["optim.optimizer=sgd", "optim.schedule=constant", "optim.learning_rate=0.1", "train.seed=0"]
SETUPS = {
    # train.steps_per_call: the config files' values (configs/autoencoder.yaml 100, multilayer_aemd.yaml 10).
    "single": ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40",
               "train.batch_size=20", "train.steps_per_call=100"],
    "aemd": ["model.name=multilayer", "model.kernel_len=9", "model.latent_len=200", "data.window_len=64",
             "model.hidden_len=24", "model.pool=max", "model.pool_size=2", "model.n_conv_and_pool=1",
             "model.n_conv_before_pool=2", "model.n_linear=2", "train.batch_size=200", "train.steps_per_call=10"],
}


# ----------------------------------------------------------------------------------------------
# Workers (run in subprocesses)


def _config(setup: str, fasta: str, num_steps: int, extra: list[str]):
    from jaxseq.config import load_config

    return load_config(None, SETUPS[setup] + COMMON + [f"data.fasta={fasta}", f"train.num_steps={num_steps}", *extra])


def _time_runs(run, warmup: int, steps: int, repeats: int) -> tuple[float, list[float], dict]:
    """Runs ``warmup`` steps (start-up, compilation), then ``repeats`` timed runs of ``steps``."""
    t0 = time.perf_counter()
    run(warmup)
    warmup_seconds = time.perf_counter() - t0
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sums = run(steps)
        seconds.append(time.perf_counter() - t0)
    return warmup_seconds, seconds, sums


def worker_jax(setup: str, fasta: str, steps: int, warmup: int, repeats: int, extra: list[str],
               steps_per_call: int | None = None) -> dict:
    import functools

    import jax

    from jaxseq import parallel
    from jaxseq import steps as jt

    plain = steps_per_call == 0  # jit(train_step) per batch, no scan
    if steps_per_call:
        extra = [*extra, f"train.steps_per_call={steps_per_call}"]
    probe = _config(setup, fasta, 1, extra)
    k = 1 if plain else probe.train.steps_per_call
    steps, warmup = -(-steps // k) * k, -(-warmup // k) * k  # whole calls
    config = _config(setup, fasta, warmup + steps * repeats, extra)
    data = jt.open_data(config)
    mesh = parallel.create_mesh(config.train.devices)
    state = jt.create_train_state(config, mesh)
    loader = jt.create_train_loader(config, data)
    built = jt.build(config)  # the jitted functions python -m jaxseq.train uses
    rng = jax.random.fold_in(jax.random.key(config.train.seed), 1)
    if plain:
        import numpy as np

        step_fn = jax.jit(functools.partial(jt.train_step, neighbour_loss_weight=config.model.neighbour_loss_weight),
                          donate_argnums=(0,))
        steps_total = config.train.num_steps
        tables = {name: np.broadcast_to(np.asarray(fn(np.arange(steps_total + 1)), np.float32), (steps_total + 1,))
                  for name, fn in built.hparam_schedules.items()}
    done = 0

    def run(n_steps: int):
        nonlocal state, done
        pending = None
        for _ in range(n_steps // k):
            if plain:
                hparams = {name: table[done] for name, table in tables.items()}
                state, metrics = step_fn(state, parallel.shard_batch(next(loader), mesh), rng, hparams)
            else:
                host = jt.stack_batches([next(loader) for _ in range(k)])
                state, metrics = built.train(state, parallel.shard_batch(host, mesh, leading_axes=1), rng)
            pending = jt.add_metrics(pending, metrics)
            done += k
        jax.block_until_ready(state)
        return jax.device_get(pending)

    warmup_seconds, seconds, sums = _time_runs(run, warmup, steps, repeats)
    loader.close()
    return {"implementation": "jaxseq", "steps": steps, "warmup_steps": warmup,
            "steps_per_call": "step" if plain else k,
            "seconds": seconds, "warmup_seconds": warmup_seconds, "batch_size": config.train.batch_size,
            "final_train_loss": float(sums["loss_sum"]) / max(float(sums["count"]), 1.0),
            "devices": [str(d) for d in mesh.devices.flat], "jax": jax.__version__}


def worker_torch(setup: str, fasta: str, steps: int, warmup: int, repeats: int, extra: list[str],
                 threads: int, device: str = "cpu", precision: str = "float32") -> dict:
    import torch

    from experiments.torch_baseline import train as tb
    from experiments.torch_baseline.models import create_model
    from jaxseq import steps as jt

    dev = tb.setup_device(device, threads)
    config = _config(setup, fasta, warmup + steps * repeats, extra)
    torch.manual_seed(config.train.seed)
    model = create_model(config).to(dev).train()
    optimizer, scheduler, _ = tb.create_optimizer(model, config)
    tables = tb.create_hparam_tables(config)
    data = jt.open_data(config)
    loader = jt.create_train_loader(config, data)
    nlw, clip = config.model.neighbour_loss_weight, config.optim.grad_clip_norm
    step = 0

    def run(n_steps: int):
        nonlocal step
        pending = None
        for _ in range(n_steps):
            hparams = {name: float(table[step]) for name, table in tables.items()}
            sums, _ = tb.train_step(model, optimizer, scheduler, tb.to_torch(next(loader), dev), hparams,
                                    neighbour_loss_weight=nlw, grad_clip_norm=clip, precision=precision)
            pending = sums if pending is None else {key: pending[key] + sums[key] for key in sums}
            step += 1
        return {key: float(v) for key, v in pending.items()}  # float() waits for the device

    warmup_seconds, seconds, sums = _time_runs(run, warmup, steps, repeats)
    loader.close()
    return {"implementation": "torch", "threads": threads, "device": device, "precision": precision,
            "steps": steps, "warmup_steps": warmup,
            "seconds": seconds, "warmup_seconds": warmup_seconds, "batch_size": config.train.batch_size,
            "final_train_loss": sums["loss_sum"] / max(sums["count"], 1.0), "torch": torch.__version__}


# ----------------------------------------------------------------------------------------------
# Driver


def run_worker(kind: str, setup: str, args, threads: int | None = None, steps_per_call: int | None = None,
               precision: str | None = None) -> dict:
    steps = args.steps_single if setup == "single" else args.steps_aemd
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--setups", setup, "--fasta", str(args.fasta),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--steps-single", str(steps),
           "--steps-aemd", str(steps)]
    for text in args.overrides:
        cmd += ["--set", text]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if steps_per_call is not None:
        cmd += ["--steps-per-call", str(steps_per_call)]
    if kind == "torch":
        cmd += ["--torch-device", args.torch_device, "--torch-precisions", precision or "float32"]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {setup} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average_before"], result["load_average_after"] = load_before, os.getloadavg()[0]
    result["process_seconds"] = time.perf_counter() - t0
    rates = [result["steps"] * result["batch_size"] / s for s in result["seconds"]]
    result["windows_per_sec_each"] = rates
    result["windows_per_sec"] = statistics.median(rates)
    return result


def run_end_to_end(kind: str, setup: str, args, threads: int | None = None) -> dict:
    """``python -m jaxseq.train`` (kind ``jax``) or the baseline's CLI (``torch``) on the setup's config file.

    Returns:
      a row: ``windows_per_sec`` (median of the logged rates after the first interval), each logged
      rate, the final test accuracy, the process's wall seconds and load averages.
    """
    import tempfile

    from jaxseq import summary
    from jaxseq.config import load_config

    steps = args.e2e_steps_single if setup == "single" else args.e2e_steps_aemd
    every = max(1, steps // 12)  # logging only: evaluation and checkpoints keep the config's cadence
    overrides = [f"data.fasta={args.fasta}", f"train.num_steps={steps}", f"train.log_every={every}", *args.overrides]
    with tempfile.TemporaryDirectory(prefix=f"e2e-{kind}-") as tmp:
        module = "jaxseq.train" if kind == "jax" else "experiments.torch_baseline"
        cmd = [sys.executable, "-m", module, "--config", str(REPO / E2E_CONFIGS[setup]), "--workdir", tmp]
        cmd += [a for o in overrides for a in ("--set", o)]
        if kind == "torch":
            cmd += ["--threads", str(threads), "--device", args.torch_device]
        load_before, t0 = os.getloadavg()[0], time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        if proc.returncode != 0:
            raise RuntimeError(f"end-to-end {kind} {setup} failed:\n{proc.stderr[-3000:]}")
        rates = [value for _, _, value in summary.read_scalars(Path(tmp) / "tensorboard", "perf/windows_per_sec")]
        final = json.loads((Path(tmp) / "final_metrics.json").read_text())
        batch_size = load_config(Path(tmp) / "config.yaml").train.batch_size
    row = {"implementation": "jaxseq" if kind == "jax" else "torch", "mode": "end_to_end", "steps": steps,
           "log_every": every, "windows_per_sec_each": rates,
           # windows over seconds after the first interval (equal intervals: the harmonic mean of their rates)
           "windows_per_sec": statistics.harmonic_mean(rates[1:] or rates),
           "test_accuracy": final["test_accuracy"], "process_seconds": time.perf_counter() - t0,
           # everything counted: start-up, compilation, every evaluation and save, the final evaluation
           "windows_per_sec_whole_process": steps * batch_size / (time.perf_counter() - t0),
           "load_average_before": load_before, "load_average_after": os.getloadavg()[0], "command": cmd}
    if kind == "torch":
        row.update(threads=threads, device=args.torch_device, precision="float32")
    return row


def _name(r: dict) -> str:
    if r.get("mode") == "end_to_end":
        what = "python -m jaxseq.train" if r["implementation"] == "jaxseq" else (
            f"torch CLI, {r['threads']} thread{'s' * (r['threads'] > 1)}")
        return f"end to end: {what}"
    if r["implementation"] == "jaxseq":
        if r["steps_per_call"] == "step":
            return "jaxseq (jit(train_step), no scan)"
        return f"jaxseq (steps_per_call {r['steps_per_call']})"
    where = f"{r['threads']} thread{'s' * (r['threads'] > 1)}" if r.get("device", "cpu") == "cpu" else r["device"]
    return f"torch ({where}{', bf16 autocast' if r.get('precision') == 'bfloat16' else ''})"


def format_table(rows: list[dict]) -> str:
    headers = ["setup", "implementation", "windows/s", "ms/step", "steps x repeats", "÷ best torch", "load avg"]
    def ms_per_step(r):
        return 1000.0 * r.get("batch_size", 0) / r["windows_per_sec"] if "seconds" not in r else (
            1000.0 * statistics.median(r["seconds"]) / r["steps"])

    table = [[r["setup"], _name(r), f"{r['windows_per_sec']:,.0f}",
              f"{ms_per_step(r):.2f}" if "seconds" in r else "-",
              f"{r['steps']} x {len(r['seconds'])}" if "seconds" in r else f"{r['steps']} (1 run)",
              f"{r['vs_best_torch']:.2f}x" if "vs_best_torch" in r else "-", f"{r['load_average_before']:.1f}"]
             for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in table]
    return "\n".join(lines)


def format_ratios(setup: str, ratio: dict) -> str:
    text = (f"{setup}: jaxseq / torch = {ratio['defaults']:.2f}x at defaults ({ratio['defaults_are']}), "
            f"{ratio['best_vs_best']:.2f}x best vs best ({ratio['best_are']})")
    if "end_to_end" in ratio:
        text += (f"; end to end {ratio['end_to_end']:.2f}x ({ratio['end_to_end_are']}), "
                 f"{ratio['end_to_end_whole_process']:.2f}x counting the whole process (start-up and compilation)")
    return text


def measure_setup(setup: str, args, thread_counts: list[int], spc_values: list) -> tuple[list[dict], dict]:
    """Every worker of one setup (compute-only, then end to end), rows tagged, and the ratios of this run."""
    impls = args.implementations.split(",")
    precisions = [p for p in args.torch_precisions.split(",") if p]
    jax_rows = [run_worker("jax", setup, args, steps_per_call=n) for n in spc_values] if "jax" in impls else []
    torch_rows = [run_worker("torch", setup, args, threads=n, precision=p)
                  for n in (thread_counts if args.torch_device == "cpu" else thread_counts[:1]) for p in precisions
                  ] if "torch" in impls else []
    e2e_jax = [run_end_to_end("jax", setup, args)] if args.end_to_end and jax_rows else []
    e2e_torch = ([run_end_to_end("torch", setup, args, threads=n) for n in thread_counts]
                 if args.end_to_end and torch_rows and args.torch_device == "cpu" else [])
    rows = [{"setup": setup, "mode": "compute", **r} for r in jax_rows + torch_rows]
    rows += [{"setup": setup, **r} for r in e2e_jax + e2e_torch]
    if not (jax_rows and torch_rows):
        return rows, {}
    best_jax = max(jax_rows, key=lambda r: r["windows_per_sec"])
    best_torch = max(torch_rows, key=lambda r: r["windows_per_sec"])
    ratios = {"defaults": jax_rows[0]["windows_per_sec"] / torch_rows[0]["windows_per_sec"],
              "best_vs_best": best_jax["windows_per_sec"] / best_torch["windows_per_sec"],
              "defaults_are": f"jaxseq steps_per_call={jax_rows[0]['steps_per_call']}, "
                              f"torch {torch_rows[0]['threads']} threads",
              "best_are": f"jaxseq steps_per_call={best_jax['steps_per_call']}, {_name(best_torch)}"}
    for r in rows:
        if r["mode"] == "compute":
            r["vs_best_torch"] = r["windows_per_sec"] / best_torch["windows_per_sec"]
    if e2e_jax and e2e_torch:
        best_e2e = max(e2e_torch, key=lambda r: r["windows_per_sec"])
        ratios["end_to_end"] = e2e_jax[0]["windows_per_sec"] / best_e2e["windows_per_sec"]
        best_whole = max(e2e_torch, key=lambda r: r["windows_per_sec_whole_process"])
        ratios["end_to_end_whole_process"] = (e2e_jax[0]["windows_per_sec_whole_process"]
                                              / best_whole["windows_per_sec_whole_process"])
        ratios["end_to_end_are"] = f"python -m jaxseq.train over the best torch CLI ({best_e2e['threads']} thread(s))"
        for r in rows:
            if r["mode"] == "end_to_end":
                r["vs_best_torch"] = r["windows_per_sec"] / best_e2e["windows_per_sec"]
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="single,aemd", help="comma-separated: single, aemd")
    parser.add_argument("--fasta", default=str(DEFAULT_FASTA))
    parser.add_argument("--steps-single", type=int, default=1000, help="timed steps per repeat, single setup")
    parser.add_argument("--steps-aemd", type=int, default=100, help="timed steps per repeat, aemd setup")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps first (start-up, compilation)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per worker; the median is reported")
    parser.add_argument("--torch-threads", default="cpu,1",
                        help="torch thread counts to run, comma-separated ('cpu' = os.cpu_count())")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for both implementations (e.g. train.steps_per_call=20)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--jax-steps-per-call", default="config,1,step",
                        help="jaxseq variants, comma-separated: steps_per_call values ('config' = the config's) "
                             "or 'step' (jit(train_step) per batch, no lax.scan)")
    parser.add_argument("--implementations", default="jax,torch", help="comma-separated: jax, torch")
    parser.add_argument("--torch-device", default="cpu", help="cpu or cuda (cuDNN benchmark mode)")
    parser.add_argument("--torch-precisions", default="float32",
                        help="comma-separated: float32, bfloat16 (torch.autocast)")
    parser.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the training commands themselves (see the module docstring)")
    parser.add_argument("--e2e-steps-single", type=int, default=20_000, help="end-to-end run length, single")
    parser.add_argument("--e2e-steps-aemd", type=int, default=2_400, help="end-to-end run length, aemd")
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps-per-call", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setups = [s for s in args.setups.split(",") if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown setup(s) {unknown}; choose from {', '.join(SETUPS)}")

    if args.worker:
        (setup,) = setups
        steps = args.steps_single if setup == "single" else args.steps_aemd
        if args.worker == "jax":
            result = worker_jax(setup, args.fasta, steps, args.warmup, args.repeats, args.overrides,
                                args.steps_per_call)
        else:
            result = worker_torch(setup, args.fasta, steps, args.warmup, args.repeats, args.overrides, args.threads,
                                  args.torch_device, args.torch_precisions)
        print(json.dumps(result))
        return 0

    # Build the token cache once, before workers race to it.
    from jaxseq.genome import Genome

    Genome.open(args.fasta)
    thread_counts = []
    for t in args.torch_threads.split(","):
        n = (os.cpu_count() or 1) if t == "cpu" else int(t)
        if n not in thread_counts:
            thread_counts.append(n)
    spc_values = []
    for v in args.jax_steps_per_call.split(","):
        n = None if v == "config" else 0 if v == "step" else int(v)
        if n not in spc_values:
            spc_values.append(n)
    rows, ratios = [], {}
    for setup in setups:
        setup_rows, ratios[setup] = measure_setup(setup, args, thread_counts, spc_values)
        rows += setup_rows
        print(format_table(setup_rows), flush=True)
        if ratios[setup]:
            print(format_ratios(setup, ratios[setup]) + "\n", flush=True)
    print(format_table(rows))
    for setup in setups:
        if ratios[setup]:
            print(format_ratios(setup, ratios[setup]))

    result = {
        "description": "training windows/s, same config/data/batches; median of timed blocks after warm-up; "
                       "each implementation in its own subprocess",
        "method": {
            "jaxseq": "jax.jit(train_steps) with train.steps_per_call steps per call (lax.scan), state donated, "
                      "batches from create_train_loader stacked + shard_batch, metric sums accumulated on device; "
                      "block_until_ready at the end of each timed block; compile and first calls in the warm-up",
            "torch": "experiments.torch_baseline.train.train_step per batch from the same loader, eager PyTorch, "
                     "torch.set_num_threads(T) for each T in --torch-threads, on --torch-device at each of "
                     "--torch-precisions",
            "end_to_end": "python -m jaxseq.train / python -m experiments.torch_baseline on configs/autoencoder.yaml "
                          "or configs/multilayer_aemd.yaml, logging every twelfth of the run, evaluation and "
                          "checkpoints at the config's cadence; harmonic mean of their own perf/windows_per_sec "
                          "after the first interval; vs_best_torch against the best "
                          "torch CLI row",
            "variants": "jaxseq with each --jax-steps-per-call value ('step': jax.jit(train_step) once per batch, "
                        "no lax.scan, hparams from a host table; not what jaxseq.train runs today), torch with each "
                        "--torch-threads value; the first of each is the implementation's default",
            "windows_per_sec": "steps * batch_size / seconds of a timed block; median over --repeats blocks",
        },
        "setups": {name: SETUPS[name] + COMMON for name in setups},
        "fasta": str(args.fasta),
        "overrides": args.overrides,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()[0],
                    "note": "load averages above cpu_count mean other jobs shared the CPU (see load_average_* "
                            "per row): compare rows measured together, not with other machines"},
        "ratios_jaxseq_over_torch": ratios,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
