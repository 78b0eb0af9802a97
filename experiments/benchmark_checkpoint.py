"""Benchmarks checkpoint verification: seconds per restore of one step with and without checking its checksums.

The state is a freshly initialised ``TrainState`` (parameters, Adam moments, batch statistics) of a
config's model, by default ``configs/multilayer_aemd.yaml`` (401,636 parameters). It is saved once
with :func:`jaxseq.checkpoint.save` into a temporary run directory, then restored ``--repeats`` times
each way, alternating:

* ``verified``: :func:`jaxseq.checkpoint.restore` (sha256 of every file of the step, then orbax);
* ``unverified``: the same restore with the check skipped (what the previous release did);
* ``verify only``: :func:`jaxseq.checkpoint.verify` alone;
* ``manifest write``: :func:`jaxseq.checkpoint.write_manifest`, paid once per save, after the commit.

Files are in the page cache after the first read (as when a run resumes right after it stopped); the
table gives the median of the repeats. Prints a table and writes JSON to ``--out``.

Run::

    python experiments/benchmark_checkpoint.py [--config configs/multilayer_aemd.yaml] [--repeats 7]
        [--out experiments/out/benchmark_checkpoint.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax

from jaxseq import checkpoint, steps
from jaxseq.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "out" / "benchmark_checkpoint.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "multilayer_aemd.yaml"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    return parser.parse_args(argv)


def unverified_restore(manager, step: int, abstract):
    """:func:`jaxseq.checkpoint.restore` with the checksum check skipped (the previous release's path)."""
    original = checkpoint._verify_step
    checkpoint._verify_step = lambda *args, **kwargs: True
    try:
        return checkpoint.restore(manager, step, abstract)
    finally:
        checkpoint._verify_step = original


def seconds(fn) -> float:
    """Wall time of ``fn()``, waiting for the arrays of a restored ``(state, loader, meta)``."""
    start = time.perf_counter()
    result = fn()
    if isinstance(result, tuple):
        jax.block_until_ready(result[0])
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = load_config(args.config)
    state = steps.create_train_state(config)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    times: dict[str, list[float]] = {"verified": [], "unverified": [], "verify only": [], "manifest write": []}
    with tempfile.TemporaryDirectory() as tmp:
        manager = checkpoint.create_manager(tmp)
        checkpoint.save(manager, 1, state, {"position": 0}, {"config": config.to_dict()})
        checkpoint.wait(manager)
        step_dir = checkpoint.checkpoint_dir(tmp) / "1"
        files = [p for p in step_dir.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        unverified_restore(manager, 1, state)  # warm the page cache and orbax's code paths
        for _ in range(args.repeats):
            times["verified"].append(seconds(lambda: checkpoint.restore(manager, 1, state)))
            times["unverified"].append(seconds(lambda: unverified_restore(manager, 1, state)))
            times["verify only"].append(seconds(lambda: checkpoint.verify(tmp, 1)))
            times["manifest write"].append(seconds(lambda: checkpoint.write_manifest(step_dir)))
        manager.close()
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{Path(args.config).name}: {n_params:,} parameters, step of {len(files)} files, {size / 1e6:.2f} MB")
    print(f"{'operation':<16}{'median s':>10}{'min s':>10}")
    for key, values in times.items():
        print(f"{key:<16}{median[key]:>10.4f}{min(values):>10.4f}")
    overhead = median["verified"] - median["unverified"]
    print(f"verification adds {overhead:.4f} s per restore ({overhead / median['unverified']:+.0%})")
    result = {"config": str(args.config), "parameters": int(n_params), "files": len(files), "bytes": size,
              "repeats": args.repeats, "seconds": times, "median_seconds": median,
              "overhead_seconds": overhead, "machine": platform.platform(), "jax": jax.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
