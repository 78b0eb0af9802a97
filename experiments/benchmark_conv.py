"""The aemd model's convolutions one direction at a time: jaxseq's CPU kernels, XLA's own, PyTorch's (oneDNN).

For each layer shape (``C_in x C_out``, kernel ``k``, ``same`` padding, a batch of ``B`` windows of length
``L``, float32) and each implementation, times three programs separately:

* ``forward``: the convolution;
* ``input grad``: the gradient with respect to the input, given an output gradient;
* ``weight grad``: the gradient with respect to the kernel (for jaxseq: the transposes it needs included).

Implementations, each in its own subprocess so that thread pools never compete:

* ``jaxseq``: :func:`jaxseq.cpu_kernels.conv1d` (what ``model.conv_impl: cpu`` trains with), each direction
  one ``jax.jit`` of ``jax.vjp`` keeping only the output asked for (XLA drops the other half);
* ``xla``: ``lax.conv_general_dilated`` and its autodiff, the same way (outside any loop: inside a ``lax.scan``
  its gradients are far slower, jax-ml/jax#12868);
* ``torch T``: ``torch.nn.functional.conv1d`` and ``torch.ops.aten.convolution_backward`` with ``T`` intra-op
  threads (oneDNN on x86: ``torch._C._select_conv_backend`` says ``Mkldnn``). Skipped if torch is missing.

Each figure is the best of ``--repeats`` segments of ``--calls`` calls, after a warm-up. Every direction costs
``2 B L k C_in C_out`` FLOPs. Prints a table and writes JSON to ``--out``.

Run::

    python experiments/benchmark_conv.py [--shapes 24x24,4x24,24x4] [--batch 200] [--length 64] [--kernel 9]
        [--torch-threads 1,2] [--out experiments/out/benchmark_conv.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "out" / "benchmark_conv.json"
DIRECTIONS = ("forward", "input grad", "weight grad")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="24x24,4x24,24x4", help="comma-separated C_in x C_out")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--kernel", type=int, default=9)
    parser.add_argument("--calls", type=int, default=50, help="calls per timed segment")
    parser.add_argument("--repeats", type=int, default=5, help="timed segments; the best is reported")
    parser.add_argument("--torch-threads", default="1,2")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kernel % 2 == 0:
        parser.error("--kernel must be odd (PyTorch's padding is the same on both sides)")
    return args


def shapes(args) -> list[tuple[int, int]]:
    return [tuple(int(c) for c in s.split("x")) for s in args.shapes.split(",")]


def best_ms(fn, calls: int, repeats: int, wait) -> float:
    for _ in range(5):
        wait(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        wait(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def jax_programs(impl: str, args, c_in: int, c_out: int):
    import jax
    import numpy as np
    from jax import lax

    from jaxseq import cpu_kernels

    k, pad = args.kernel, (args.kernel // 2, args.kernel - 1 - args.kernel // 2)
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((args.batch, args.length, c_in), np.float32))
    w = jax.numpy.asarray(rng.standard_normal((k, c_in, c_out), np.float32) * 0.1)
    g = jax.numpy.asarray(rng.standard_normal((args.batch, args.length, c_out), np.float32))
    if impl == "jaxseq":
        conv = lambda x, w: cpu_kernels.conv1d(x, w, pad)  # noqa: E731
    else:
        conv = lambda x, w: lax.conv_general_dilated(x, w, (1,), (pad,), dimension_numbers=("NWC", "WIO", "NWC"))  # noqa: E731
    forward = jax.jit(conv)
    grads = [jax.jit(lambda x, w, g, i=i: jax.vjp(conv, x, w)[1](g)[i]) for i in (0, 1)]
    programs = {"forward": lambda: forward(x, w), "input grad": lambda: grads[0](x, w, g),
                "weight grad": lambda: grads[1](x, w, g)}
    return programs, jax.block_until_ready


def torch_programs(threads: int, args, c_in: int, c_out: int):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    k, pad = args.kernel, args.kernel // 2
    x = torch.randn(args.batch, c_in, args.length)
    w = torch.randn(c_out, c_in, k) * 0.1
    g = torch.randn(args.batch, c_out, args.length)

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, [1], [pad], [1], False, [0], 1, mask)

    programs = {"forward": lambda: torch.nn.functional.conv1d(x, w, padding=pad),
                "input grad": lambda: backward([True, False, False]),
                "weight grad": lambda: backward([False, True, False])}
    return programs, lambda out: None


def worker(args) -> list[dict]:
    """Rows of one implementation (``args.worker``: jaxseq, xla or torch:T), printed as JSON."""
    impl, _, threads = args.worker.partition(":")
    rows = []
    for c_in, c_out in shapes(args):
        if impl == "torch":
            programs, wait = torch_programs(int(threads), args, c_in, c_out)
        else:
            programs, wait = jax_programs(impl, args, c_in, c_out)
        flops = 2 * args.batch * args.length * args.kernel * c_in * c_out
        for direction in DIRECTIONS:
            ms = best_ms(programs[direction], args.calls, args.repeats, wait)
            rows.append({"implementation": impl if impl != "torch" else f"torch {threads}", "c_in": c_in,
                         "c_out": c_out, "direction": direction, "ms": ms, "gflops": flops / ms / 1e6})
    return rows


def run_worker(name: str, argv: list[str]) -> list[dict] | None:
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", name], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name}: skipped ({(proc.stderr.strip().splitlines() or ['failed'])[-1]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    names = ["jaxseq", "xla"] + [f"torch:{t}" for t in args.torch_threads.split(",") if t]
    rows = [row for name in names for row in (run_worker(name, argv) or [])]
    print(f"B {args.batch}, L {args.length}, k {args.kernel}, float32; best of {args.repeats} x {args.calls} calls")
    print(f"{'layer':<8}{'implementation':<16}" + "".join(f"{d + ' ms':>16}{'GFLOP/s':>9}" for d in DIRECTIONS))
    for c_in, c_out in shapes(args):
        for impl in dict.fromkeys(r["implementation"] for r in rows):
            cells = {r["direction"]: r for r in rows
                     if r["implementation"] == impl and (r["c_in"], r["c_out"]) == (c_in, c_out)}
            print(f"{f'{c_in}->{c_out}':<8}{impl:<16}"
                  + "".join(f"{cells[d]['ms']:>16.3f}{cells[d]['gflops']:>9.0f}" for d in DIRECTIONS))
    result = {"batch": args.batch, "length": args.length, "kernel": args.kernel, "calls": args.calls,
              "repeats": args.repeats, "rows": rows, "machine": platform.platform()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
