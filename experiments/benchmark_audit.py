"""Benchmarks the leak audit (jaxseq.shared_kmers): wall time, peak memory and the shared fractions it finds.

Cases (each in a fresh subprocess, so peak memory does not mix; the table and JSON hold all):

* ``ecoli``, ``vcholerae``: the bacterial genomes in ``../shared/data`` with the default config's
  splits (blocks of ``data.block_len``, proportions 0.8/0.1/0.1, ``data.split_seed``), window 64;
* ``synthetic``: a random genome of ``--synthetic-mb`` Mb (default 100, one record) with 2% of it
  copied elsewhere (half reverse-complemented, 5 kb pieces) and a few N runs, stored as a uint8 file
  and memory-mapped like the token cache, split the same way.

Measured per case: wall and CPU seconds of :func:`jaxseq.shared_kmers.audit_splits` (the genome already
opened; CPU time is the fairer figure on a shared machine),
``VmRSS`` before it and ``VmHWM`` (peak resident memory of the process) after it, both in MB; the
memory-mapped genome's pages count in both. The audit runs with the default ``max_kmers_per_pass``
(2**24 k-mers, 128 MB per sorted set), so a 100 Mb genome takes several hash-bucket passes.

Run::

    python experiments/benchmark_audit.py [--out experiments/out/benchmark_audit.json] [--synthetic-mb 100] [--k 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GENOMES = {"ecoli": DATA / "ecoli_k12_mg1655.fa.gz", "vcholerae": DATA / "vcholerae_o395.fa.gz"}
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "benchmark_audit.json"


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def synthetic_genome(folder: Path, megabases: int, seed: int = 0) -> np.ndarray:
    """A memory-mapped random genome uint8 ``(megabases * 1e6,)`` with planted repeats and N runs."""
    n = megabases * 1_000_000
    rng = np.random.default_rng(seed)
    tokens = np.lib.format.open_memmap(folder / "synthetic.npy", mode="w+", dtype=np.uint8, shape=(n,))
    for start in range(0, n, 1 << 24):
        tokens[start:start + (1 << 24)] = rng.integers(0, 4, min(1 << 24, n - start), dtype=np.uint8)
    piece = 5_000
    for i in range(n // 50 // piece):  # 2% of the genome copied, half of it as reverse complement
        src, dst = rng.integers(0, n - piece, 2)
        copy = np.array(tokens[src:src + piece])
        tokens[dst:dst + piece] = (3 - copy)[::-1] if i % 2 else copy
    for start in rng.integers(0, n - 1_000, 20):
        tokens[start:start + 1_000] = 4
    tokens.flush()
    return np.load(folder / "synthetic.npy", mmap_mode="r")


def run_case(name: str, k: int, megabases: int) -> dict:
    """Opens one genome, audits it, returns the measurements (runs inside the subprocess)."""
    from jaxseq import shared_kmers
    from jaxseq.config import load_config
    from jaxseq.splits import compute_splits

    d = load_config(None).data
    with tempfile.TemporaryDirectory() as tmp:
        if name == "synthetic":
            tokens = {"synthetic": synthetic_genome(Path(tmp), megabases)}
        else:
            from jaxseq.genome import Genome
            tokens = Genome.open(GENOMES[name], cache_dir=tmp).as_mapping()
        splits = compute_splits({r: len(t) for r, t in tokens.items()}, strategy="blocks", block_len=d.block_len,
                                proportions=tuple(d.proportions), seed=d.split_seed)
        rss_before = _status_mb("VmRSS")
        start, cpu_start = time.perf_counter(), time.process_time()
        report = shared_kmers.audit_splits(tokens, splits, k=k, window_len=d.window_len, top=3)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak = _status_mb("VmHWM")
    bases = sum(len(t) for t in tokens.values())
    return dict(case=name, bases=bases, k=k, seconds=seconds, cpu_seconds=cpu_seconds, rss_before_mb=rss_before,
                peak_rss_mb=peak,
                splits={s: {key: v[key] for key in ("windows", "shared_windows", "shared_window_fraction",
                                                    "bases", "shared_bases", "shared_base_fraction")}
                        for s, v in report["splits"].items()},
                train=report["train"], regions=report["regions"])


def format_table(results: list[dict]) -> str:
    lines = [f"{'case':<10} {'Mb':>7} {'k':>3} {'seconds':>8} {'cpu s':>7} {'RSS MB':>7} {'peak MB':>8} "
             f"{'valid win %':>11} {'test win %':>10} {'valid bp %':>10} {'test bp %':>9}"]
    for r in results:
        v, t = r["splits"]["valid"], r["splits"]["test"]
        lines.append(f"{r['case']:<10} {r['bases'] / 1e6:>7.1f} {r['k']:>3} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} "
                     f"{r['rss_before_mb']:>7.0f} {r['peak_rss_mb']:>8.0f} {100 * v['shared_window_fraction']:>11.2f} "
                     f"{100 * t['shared_window_fraction']:>10.2f} {100 * v['shared_base_fraction']:>10.2f} "
                     f"{100 * t['shared_base_fraction']:>9.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--synthetic-mb", type=int, default=100)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--cases", default="ecoli,vcholerae,synthetic")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.k, args.synthetic_mb)))
        return
    results = []
    for name in args.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--case", name, "--k", str(args.k),
                              "--synthetic-mb", str(args.synthetic_mb)], check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.splitlines()[-1]))
        print(f"{name}: {results[-1]['seconds']:.1f} s", flush=True)
    print()
    print(format_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(results=results), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
