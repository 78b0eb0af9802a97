"""Benchmarks the jitted train step: windows/s and FLOP/s against a measured fp32 matmul ceiling.

Two setups from the 2020 prototype, trained on E. coli K-12 MG1655 (``../shared/data``):

* ``single``: ``model.name=autoencoder``, kernel 3, latent 6, window 40, batch 20, SGD (like
  ``configs/autoencoder.yaml``). Tiny steps: the cost is per-step overhead, amortised by scanning
  ``train.steps_per_call`` (K) steps per jitted call; ``--sweep-k`` measures steps/s against K.
* ``aemd``: multilayer, kernel 9, latent 200, window 64, hidden 24, pool 2, 1 block of 2 convs,
  2 linear, batch 200, Adam, input dropout 0.03, hidden dropout 0.05, latent noise 0.2 (like
  ``configs/multilayer_aemd.yaml``).

Everything is jaxseq's real code: ``config.load_config(None, overrides)``, ``steps.create_train_state``,
the training loop's own jitted function ``steps.build(config).train`` (K steps in one ``lax.scan``) and
batches from ``steps.open_data`` + ``steps.create_train_loader``, stacked with ``steps.stack_batches`` and
placed with ``parallel.shard_batch`` as ``python -m jaxseq.train`` does. Two rates per setup, after warm-up:

* ``compute``: a few pre-generated stacks of real batches already on the device, cycled (the step alone);
* ``end_to_end``: the training loop's own path each call: K batches from the loader (prefetch
  thread), ``np.stack``, host->device transfer, the call, metric sums accumulated on the device and
  fetched once per timed segment (what ``python -m jaxseq.train`` achieves between evaluations).

FLOPs per step are counted two ways: ``analytic`` (the model's convolution and dense layers, forward
multiply-adds x 2, times 3 for forward + backward; elementwise work, BatchNorm, pooling and the
optimiser are not counted) and ``xla`` (``compiled.cost_analysis()["flops"]`` of one scan body,
i.e. ``steps.train_step`` with the schedules' hparams, jitted alone: XLA counts a ``scan`` body once,
not K times, so the K-step call's raw figure is reported separately and is ~one step's). The ``xla``
count includes work the implementation adds (elementwise ops, the optimiser, and the block-Toeplitz
matmuls of few-channel convolutions in ``cpu_kernels.py``, which do ~1.8x the multiply-adds of the
convolution for k = 9), so ``% ceil`` uses the analytic count. The ceiling is the best FLOP/s of a jitted
2048x2048 fp32 matmul, measured after every timed segment of this same run. The machine is shared, so
rates are the best of ``--repeats`` segments, ``% ceil`` is against the run's best ceiling and
``% local`` against the best ceiling measured between that row's own segments (same load: the fairer
ratio when other jobs come and go); the load average is recorded.

Variants, all measured in one run (each row names its own): every ``model.conv_impl`` of
``--conv-impls`` (flax's layers or the hand-written CPU kernels of ``jaxseq/cpu_kernels.py``) times every
``train.compute_dtype`` of ``--dtypes``.

Run::

    python experiments/benchmark_train.py [--configs single,aemd] [--steps N] [--steps-per-call K]
        [--conv-impls flax,cpu] [--dtypes float32,bfloat16]
        [--sweep-k single=1,10,30,1000 --sweep-k aemd=1,20] [--repeats 3] [--xla-flags=...]
        [--out experiments/out/benchmark_train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "benchmark_train.json"
DEFAULT_FASTA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecoli_k12_mg1655.fa.gz"

# The two setups as config overrides (mirroring configs/autoencoder.yaml and configs/multilayer_aemd.yaml).
SETUPS = {
    "single": [
        "model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40",
        "train.batch_size=20", "optim.optimizer=sgd", "optim.learning_rate=0.1", "optim.schedule=constant",
    ],
    "aemd": [
        "model.name=multilayer", "model.kernel_len=9", "model.latent_len=200", "data.window_len=64",
        "model.hidden_len=24", "model.pool=max", "model.pool_size=2", "model.n_conv_and_pool=1",
        "model.n_conv_before_pool=2", "model.n_linear=2", "model.hidden_dropout=0.05",
        "model.input_dropout=0.03", "model.latent_noise_std=0.2", "train.batch_size=200",
        "optim.optimizer=adam", "optim.learning_rate=0.003", "optim.schedule=warmup_cosine",
        "optim.warmup_steps=200",
    ],
}
# Default steps per call (train.steps_per_call) per setup, the configs' values. Measured (--sweep-k,
# interleaved): single peaks at K ~ 30 compute-only and K ~ 100 end to end (loader-bound); aemd gains
# under 10% from K = 1 to 50.
DEFAULT_K = {"single": 100, "aemd": 10}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="single,aemd", help="comma-separated: single, aemd")
    parser.add_argument("--steps", type=int, default=0,
                        help="train steps per timed segment (default: 20,000 single, 300 aemd)")
    parser.add_argument("--steps-per-call", type=int, default=0,
                        help="K, steps scanned per jitted call (default: %s)" % DEFAULT_K)
    parser.add_argument("--sweep-k", action="append", default=[], metavar="[SETUP=]K,K,...",
                        help="also measure the rates at these K values (all setups, or SETUP= only; repeatable)")
    parser.add_argument("--conv-impls", default="flax,cpu", help="model.conv_impl values to measure (comma-separated)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="train.compute_dtype values to measure (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3, help="timed segments per measurement (best is kept)")
    parser.add_argument("--fasta", default=str(DEFAULT_FASTA), help="genome to train on")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every setup (repeatable)")
    parser.add_argument("--xla-flags", default=None,
                        help="XLA_FLAGS for this run (set before jax is imported), e.g. "
                             "'--xla_cpu_multi_thread_eigen=false'")
    parser.add_argument("--ceiling-size", type=int, default=2048,
                        help="n of the n x n fp32 matmul whose FLOP/s is the ceiling (smaller: quicker, lower)")
    parser.add_argument("--skip-end-to-end", action="store_true", help="measure the compute-only rate only")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# FLOP counts


def analytic_flops_per_window(model, window_len: int) -> dict[str, int]:
    """Forward FLOPs (multiply-adds x 2) of each conv / dense layer for one window.

    A convolution costs output positions x k x C_in x C_out multiply-adds; a transposed convolution is
    counted as the convolution it is computed as (every output position, padding included).
    Forward + backward is 3x the total (the input and the weight gradient each cost about a forward
    pass; the first layer's unneeded input gradient is counted too, as is customary).
    """
    from jaxseq import models
    from jaxseq import tokens as tok

    bases = tok.NUM_BASES
    flops: dict[str, int] = {}
    if isinstance(model, models.Autoencoder):
        k, c = model.kernel_len, model.latent_len
        flops["enc_conv"] = 2 * (window_len - k + 1) * k * bases * c
        flops["dec_conv"] = 2 * window_len * k * c * bases
    elif isinstance(model, models.MultilayerAutoencoder):
        k, sizes, length = model.kernel_len, model.sizes, window_len
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for j in range(model.n_conv_before_pool):
                c_in = n_in if j == 0 else n_out
                flops[f"enc_conv_{i}{j}"] = 2 * length * k * c_in * n_out
                flops[f"dec_conv_{i}{j}"] = 2 * length * k * n_out * c_in
            length //= model.pool_size
        flat, latent = sizes[-1] * model.linear_size, model.latent_len
        flops["enc_linear_0"] = flops["dec_linear_0"] = 2 * flat * latent
        for i in range(1, model.n_linear):
            flops[f"enc_linear_{i}"] = flops[f"dec_linear_{i}"] = 2 * latent * latent
    else:
        raise TypeError(f"no analytic count for {type(model).__name__}")
    return flops


def _cost_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


# ---------------------------------------------------------------------------------------------------
# Timing


def measure_ceiling(jax, jnp, np, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a jitted fp32 ``n x n`` matmul (all cores XLA uses)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


class Setup:
    """One benchmark setup: config, state, the jitted K-step function, data."""

    def __init__(self, name: str, args, k: int, variant: dict[str, str] | None = None):
        import jax
        import numpy as np

        from jaxseq import config as config_lib
        from jaxseq import parallel, steps

        self.name, self.k = name, k
        self.variant = variant = dict(variant or {})
        overrides = SETUPS[name] + [f"data.fasta={args.fasta}", "data.block_len=10000",
                                    f"train.steps_per_call={k}"] + list(args.overrides)
        overrides += [f"model.conv_impl={variant.get('conv_impl', 'auto')}",
                      f"train.compute_dtype={variant.get('dtype', 'float32')}"]
        self.overrides = overrides
        self.config = cfg = config_lib.load_config(None, overrides)
        self.batch_size, self.window_len = cfg.train.batch_size, cfg.data.window_len
        self.mesh = parallel.create_mesh(cfg.train.devices)
        self.data = steps.open_data(cfg)
        self.loader = steps.create_train_loader(cfg, self.data)
        self.model = steps.create_model(cfg)
        self.state = steps.create_train_state(cfg, self.mesh)
        self.train_fn = steps.build(cfg).train  # the training loop's own jitted function
        self.rng = jax.random.fold_in(jax.random.key(cfg.train.seed), 1)
        self._steps, self._parallel, self._jax, self._np = steps, parallel, jax, np

        # FLOPs: XLA's count of one step (a call of K = 1: XLA counts a scan body once), XLA's raw count
        # of the K-step call, and the analytic count.
        self.xla_flops_per_step = _cost_flops(self.train_fn.lower(self.state, self.next_device_batches(1),
                                                                  self.rng).compile())
        start = time.perf_counter()
        compiled = self.train_fn.lower(self.state, self.next_device_batches(k), self.rng).compile()
        self.compile_seconds = time.perf_counter() - start
        self.xla_flops_per_call_raw = _cost_flops(compiled)
        self.analytic_layers = analytic_flops_per_window(self.model, self.window_len)
        self.analytic_flops_per_step = 3 * sum(self.analytic_layers.values()) * self.batch_size
        self.params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))

    def next_host_batches(self, k: int) -> dict:
        """K loader batches stacked ``(K, B, ...)``, as the training loop does."""
        return self._steps.stack_batches([next(self.loader) for _ in range(k)])

    def next_device_batches(self, k: int) -> dict:
        return self._parallel.shard_batch(self.next_host_batches(k), self.mesh, leading_axes=1)

    def warm_up(self) -> None:
        self.state, metrics = self.train_fn(self.state, self.next_device_batches(self.k), self.rng)
        self._jax.block_until_ready(metrics)

    def time_compute(self, calls: int, distinct: int = 4) -> float:
        """Seconds for ``calls`` calls on pre-generated device batches (cycled)."""
        stacks = [self.next_device_batches(self.k) for _ in range(min(distinct, calls))]
        self._jax.block_until_ready(stacks)
        add = self._steps.add_metrics
        pending = None
        start = time.perf_counter()
        for i in range(calls):
            self.state, metrics = self.train_fn(self.state, stacks[i % len(stacks)], self.rng)
            pending = add(pending, metrics)
        self._jax.device_get(pending)
        return time.perf_counter() - start

    def time_end_to_end(self, calls: int) -> float:
        """Seconds for ``calls`` calls, each drawing K batches from the loader and copying them in."""
        add = self._steps.add_metrics
        pending = None
        start = time.perf_counter()
        for _ in range(calls):
            batches = self.next_device_batches(self.k)
            self.state, metrics = self.train_fn(self.state, batches, self.rng)
            pending = add(pending, metrics)
        self._jax.device_get(pending)
        return time.perf_counter() - start

    def close(self) -> None:
        self.loader.close()


def rate_record(setup: Setup, mode: str, k: int, steps: int, seconds: list[float], ceiling: float,
                local_ceiling: float) -> dict:
    """Rates of the best segment; ``ceiling`` is the run's best, ``local_ceiling`` the best measured
    between this measurement's segments (same load conditions, so the fairer ratio on a shared machine)."""
    best = min(seconds)
    median = sorted(seconds)[len(seconds) // 2]
    windows = steps * setup.batch_size
    analytic = setup.analytic_flops_per_step * steps / best
    xla = setup.xla_flops_per_step * steps / best
    return {
        "setup": setup.name, "mode": mode, "steps_per_call": k, "steps": steps,
        "conv_impl": setup.model.conv_impl, "dtype": setup.config.train.compute_dtype,
        "seconds": seconds, "windows_per_sec": windows / best, "windows_per_sec_median": windows / median,
        "steps_per_sec": steps / best, "gflops_analytic": analytic / 1e9, "gflops_xla": xla / 1e9,
        "percent_of_ceiling": 100 * analytic / ceiling, "percent_of_ceiling_xla": 100 * xla / ceiling,
        "local_ceiling_gflops": local_ceiling / 1e9, "percent_of_local_ceiling": 100 * analytic / local_ceiling,
    }


def variants(args) -> list[tuple[int | None, dict]]:
    """``(K or None for the setup's default, variant)`` pairs to measure, in order."""
    impls = [v.strip() for v in args.conv_impls.split(",") if v.strip()]
    dtypes = [v.strip() for v in args.dtypes.split(",") if v.strip()]
    out = [(None, {"conv_impl": impl, "dtype": dtype}) for impl in impls for dtype in dtypes]
    return out


def measure(setup: Setup, steps: int, args, ceiling_now, ceilings: list[float]) -> list[dict]:
    """Warm-up, then ``args.repeats`` timed segments of each mode with a ceiling after each round."""
    calls = max(1, -(-steps // setup.k))
    setup.warm_up()
    modes = [("compute", setup.time_compute)] + ([] if args.skip_end_to_end else [("end_to_end", setup.time_end_to_end)])
    timings = {mode: [] for mode, _ in modes}
    first = len(ceilings)
    for _ in range(args.repeats):
        for mode, timer in modes:
            timings[mode].append(timer(calls))
        ceiling_now()
    local = max(ceilings[first:])
    return [rate_record(setup, mode, setup.k, calls * setup.k, timings[mode], max(ceilings), local)
            for mode, _ in modes]


def describe(setup: Setup) -> dict:
    return {
        "overrides": setup.overrides, "batch_size": setup.batch_size, "window_len": setup.window_len,
        "parameters": setup.params, "compile_seconds": setup.compile_seconds,
        "analytic_flops_per_window_forward": setup.analytic_layers,
        "analytic_flops_per_step": setup.analytic_flops_per_step,
        "xla_flops_per_step": setup.xla_flops_per_step,
        "xla_flops_per_call_raw": setup.xla_flops_per_call_raw,
        "xla_counts_scan_body_once": bool(abs(setup.xla_flops_per_call_raw - setup.xla_flops_per_step)
                                          < 0.5 * setup.xla_flops_per_step),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags
    import jax
    import jax.numpy as jnp
    import numpy as np

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        print(f"error: unknown setup(s) {unknown}; choices: {', '.join(SETUPS)}", file=sys.stderr)
        return 2
    sweeps: dict[str, list[int]] = {}
    for spec in args.sweep_k:
        target, _, values = spec.rpartition("=")
        for name in ([target] if target else names):
            sweeps.setdefault(name, []).extend(int(v) for v in values.split(",") if v.strip())

    ceilings: list[float] = []

    def ceiling_now() -> float:
        ceilings.append(measure_ceiling(jax, jnp, np, n=args.ceiling_size))
        return max(ceilings)

    load_start = os.getloadavg()
    ceiling_now()
    records, setups_out = [], {}
    for name in names:
        k_default = args.steps_per_call or DEFAULT_K[name]
        steps = args.steps or (20_000 if name == "single" else 300)
        todo = [(k or k_default, variant) for k, variant in variants(args)]
        todo += [(k, {}) for k in sweeps.get(name, []) if k != k_default]
        for k, variant in todo:
            setup = Setup(name, args, k, variant)
            key = "/".join([name, f"K{k}"] + [variant[v] for v in ("conv_impl", "dtype") if v in variant])
            setups_out[key] = describe(setup)
            records += measure(setup, steps, args, ceiling_now, ceilings)
            setup.close()
            r = records[-1]
            print(f"  {key}: {r['windows_per_sec']:,.0f} windows/s ({r['mode']})", flush=True)

    ceiling = max(ceilings)
    for r in records:  # against the best ceiling of the whole run
        r["percent_of_ceiling"] = 100 * r["gflops_analytic"] * 1e9 / ceiling
        r["percent_of_ceiling_xla"] = 100 * r["gflops_xla"] * 1e9 / ceiling
    result = {
        "ceiling_gflops": ceiling / 1e9, "ceiling_gflops_each": [c / 1e9 for c in ceilings],
        "setups": setups_out, "records": records,
        "environment": {
            "jax": jax.__version__, "backend": jax.default_backend(), "devices": len(jax.devices()),
            "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        },
    }
    print(f"fp32 matmul ceiling ({args.ceiling_size}^2, best of run): {ceiling / 1e9:.1f} GFLOP/s "
          f"(each: {', '.join(f'{c / 1e9:.0f}' for c in ceilings)}); load avg {load_start[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    for name, s in setups_out.items():
        print(f"{name}: {s['parameters']:,} params; per step: analytic {s['analytic_flops_per_step'] / 1e6:.2f} "
              f"MFLOP, XLA {s['xla_flops_per_step'] / 1e6:.2f} MFLOP "
              f"(K-step call raw {s['xla_flops_per_call_raw'] / 1e6:.2f})")
    header = (f"{'setup':8s} {'impl':4s} {'dtype':8s} {'mode':11s} {'K':>5s} {'windows/s':>11s} "
              f"{'(median)':>10s} {'steps/s':>9s} {'GFLOP/s':>8s} {'% ceil':>7s} {'local ceil':>10s} {'% local':>8s} "
              f"{'XLA GF/s':>9s}")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['setup']:8s} {r['conv_impl']:4s} {r['dtype']:8s} {r['mode']:11s} "
              f"{r['steps_per_call']:5d} {r['windows_per_sec']:11,.0f} {r['windows_per_sec_median']:10,.0f} "
              f"{r['steps_per_sec']:9,.0f} {r['gflops_analytic']:8.1f} "
              f"{r['percent_of_ceiling']:6.1f}% {r['local_ceiling_gflops']:10.0f} "
              f"{r['percent_of_local_ceiling']:7.1f}% {r['gflops_xla']:9.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
