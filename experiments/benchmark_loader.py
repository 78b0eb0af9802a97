"""Benchmarks the data path: loader throughput, token-cache build time, loader memory vs genome size.

Sections (each printed as a table and written together as JSON to ``--out``):

1. ``throughput``: windows/s read from a :class:`jaxseq.loader.TrainLoader` iterator (64-bp windows,
   batch 1024, all four augmentations, N filter on) with and without the prefetch thread, with the
   process pinned to one core. Target: >= 1,000,000 windows/s.
2. ``cache_build``: seconds for ``Genome.open`` to build the token cache of the bundled lambda phage and of
   a synthetic FASTA (fresh cache folder), then to reopen it (re-hash + map). Skipped, and said so, when
   ``jaxseq.genome`` cannot be imported.
3. ``rss``: anonymous resident memory (``RssAnon``, i.e. not the page cache of the memmapped genome) while
   streaming batches from synthetic genomes of 100 Mb and 1 Gb stored as uint8 files on disk and opened
   with ``np.memmap``; each size runs in a fresh subprocess so the numbers don't mix. Target: < 1 GB and
   flat as the genome grows. The files live in a temporary folder that is removed at the end.

Run::

    python experiments/benchmark_loader.py [--out experiments/out/benchmark_loader.json] [--sizes-mb 100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxseq import tokens as tok
from jaxseq.loader import TrainLoader
from jaxseq.splits import compute_splits

ALL_AUGMENT = ("identity", "reverse", "complement", "reverse_complement")
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "benchmark_loader.json"
WRITE_CHUNK = 1 << 24  # bases generated and written per step, so writing 1 Gb needs ~16 MB of memory


def rss_anon_mb() -> float:
    """Anonymous resident memory of this process in MB (heap, stacks, numpy buffers; not mapped files)."""
    return _status_kb("RssAnon") / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def pin_to_one_core() -> int | None:
    """Restricts this process (and threads it starts later) to one CPU; returns it, or None if unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def synthetic_tokens(length: int, rng: np.random.Generator, n_runs: int = 5) -> np.ndarray:
    """Random ACGT uint8 tokens ``(length,)`` with a few runs of N (like assembly gaps)."""
    seq = rng.integers(0, 4, length, dtype=np.uint8)
    for start in rng.integers(0, max(length - 20_000, 1), n_runs):
        seq[start : start + int(rng.integers(100, 20_000))] = tok.N
    return seq


def write_token_file(path: Path, length: int, seed: int) -> None:
    """Writes ``length`` random ACGT tokens with a few N runs to ``path`` in chunks (flat memory)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, length, WRITE_CHUNK):
            synthetic_tokens(min(WRITE_CHUNK, length - start), rng, n_runs=2).tofile(f)


# --------------------------------------------------------------------------------------------------
# 1. Throughput


def bench_throughput(args) -> list[dict]:
    rng = np.random.default_rng(0)
    genome = {f"chr{i}": synthetic_tokens(4_000_000, rng) for i in range(5)}
    splits = compute_splits({k: len(v) for k, v in genome.items()}, block_len=10_000, seed=0)
    rows = []
    for prefetch in (0, 2):
        with TrainLoader(genome, splits["train"], window_len=args.window_len, batch_size=args.batch_size,
                         seed=0, augment=ALL_AUGMENT, prefetch=prefetch) as loader:
            for _ in range(20):  # warm-up: thread start, first page touches
                next(loader)
            windows, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                windows += next(loader)["tokens"].shape[0]
            elapsed = time.perf_counter() - start
        rows.append({
            "mode": "random starts, 4 augmentations, N filter",
            "prefetch": prefetch,
            "window_len": args.window_len,
            "batch_size": args.batch_size,
            "windows_per_sec": windows / elapsed,
            "bases_per_sec": windows * args.window_len / elapsed,
            "meets_target_1M": windows / elapsed >= 1_000_000,
        })
    return rows


# --------------------------------------------------------------------------------------------------
# 2. Token-cache build


def write_fasta(path: Path, total_mb: int, seed: int, line_len: int = 60, record_mb: int = 25) -> int:
    """Synthetic FASTA with mixed-case ACGT, N runs, ``record_mb`` Mb records; returns its number of bases."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGTNacgtn", dtype=np.uint8)
    total = total_mb * 1_000_000
    with open(path, "wb") as f:
        for index, start in enumerate(range(0, total, record_mb * 1_000_000)):
            length = min(record_mb * 1_000_000, total - start)
            f.write(f">chr{index + 1} synthetic\n".encode())
            seq = synthetic_tokens(length, rng)
            seq += 5 * (rng.random(length) < 0.3).astype(np.uint8)  # ~30% soft-masked (lowercase)
            text = letters[seq]
            full = length // line_len * line_len
            lines = np.empty((length // line_len, line_len + 1), dtype=np.uint8)
            lines[:, :line_len] = text[:full].reshape(-1, line_len)
            lines[:, line_len] = ord("\n")
            f.write(lines.tobytes())
            if full < length:
                f.write(text[full:].tobytes() + b"\n")
    return total


def bench_cache_build(args, tmp: Path) -> dict:
    try:
        from jaxseq.genome import Genome, default_fasta
    except Exception as error:  # genome.py is written in parallel; absent or broken -> skip, and say so
        return {"skipped": f"jaxseq.genome not importable: {type(error).__name__}: {error}"}
    inputs = [("lambda phage (bundled, gzip)", default_fasta())]
    fasta = tmp / "synthetic.fa"
    write_fasta(fasta, args.fasta_mb, seed=1)
    inputs.append((f"synthetic {args.fasta_mb} Mb (plain)", fasta))
    rows = []
    for label, path in inputs:
        cache_dir = tmp / f"cache-{len(rows)}"
        try:
            start = time.perf_counter()
            genome = Genome.open(path, cache_dir=cache_dir)
            build = time.perf_counter() - start
            start = time.perf_counter()
            Genome.open(path, cache_dir=cache_dir)
            reopen = time.perf_counter() - start
        except Exception as error:
            rows.append({"input": label, "error": f"{type(error).__name__}: {error}"})
            continue
        bases = sum(genome.lengths.values())
        rows.append({
            "input": label,
            "file_mb": path.stat().st_size / 1e6,
            "bases": bases,
            "records": len(genome.names),
            "build_sec": build,
            "build_mbases_per_sec": bases / build / 1e6,
            "reopen_sec": reopen,
        })
    return {"rows": rows}


# --------------------------------------------------------------------------------------------------
# 3. Memory while streaming (one subprocess per genome size)


def rss_child(folder: Path, batches: int, window_len: int, batch_size: int) -> dict:
    """Runs in a fresh process: maps the genome in ``folder``, streams batches, reports RssAnon."""
    baseline = rss_anon_mb()
    meta = json.loads((folder / "meta.json").read_text())
    tokens = {name: np.memmap(folder / f"{name}.u8", dtype=np.uint8, mode="r", shape=(length,))
              for name, length in meta["lengths"].items()}
    start = time.perf_counter()
    splits = compute_splits(meta["lengths"], block_len=10_000, seed=0)
    splits_sec = time.perf_counter() - start
    after_splits = rss_anon_mb()
    start = time.perf_counter()
    loader = TrainLoader(tokens, splits["train"], window_len=window_len, batch_size=batch_size, seed=0,
                         augment=ALL_AUGMENT, prefetch=2)
    build_sec = time.perf_counter() - start
    after_build = rss_anon_mb()
    peak = after_build
    start = time.perf_counter()
    for index in range(batches):
        next(loader)
        if index % 25 == 0:
            peak = max(peak, rss_anon_mb())
    elapsed = time.perf_counter() - start
    peak = max(peak, rss_anon_mb())
    loader.close()
    return {
        "genome_mb": sum(meta["lengths"].values()) / 1e6,
        "train_intervals": len(splits["train"]),
        "rss_anon_baseline_mb": baseline,
        "rss_anon_after_splits_mb": after_splits,
        "rss_anon_after_loader_mb": after_build,
        "rss_anon_peak_streaming_mb": peak,
        "rss_anon_growth_mb": peak - baseline,
        "rss_file_end_mb": _status_kb("RssFile") / 1024,
        "splits_sec": splits_sec,
        "loader_build_sec": build_sec,
        "batches": batches,
        "windows_per_sec": batches * batch_size / elapsed,
        "meets_target_1GB": peak < 1024,
    }


def bench_rss(args, tmp: Path) -> list[dict]:
    rows = []
    for size_mb in args.sizes_mb:
        folder = tmp / f"genome-{size_mb}mb"
        folder.mkdir()
        total = size_mb * 1_000_000
        # Records of at most 250 Mb, like large chromosomes.
        lengths = {}
        for index, start in enumerate(range(0, total, 250_000_000)):
            lengths[f"chr{index + 1}"] = min(250_000_000, total - start)
        start = time.perf_counter()
        for seed, (name, length) in enumerate(lengths.items()):
            write_token_file(folder / f"{name}.u8", length, seed)
        (folder / "meta.json").write_text(json.dumps({"lengths": lengths}))
        write_sec = time.perf_counter() - start
        command = [sys.executable, __file__, "--rss-child", str(folder), "--stream-batches", str(args.stream_batches),
                   "--window-len", str(args.window_len), "--batch-size", str(args.batch_size)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            rows.append({"genome_mb": size_mb, "error": result.stderr.strip().splitlines()[-1:]})
        else:
            rows.append({**json.loads(result.stdout.strip().splitlines()[-1]), "write_sec": write_sec})
        shutil.rmtree(folder)  # 1 GB on disk; drop it before writing the next size
    return rows


# --------------------------------------------------------------------------------------------------
# Report


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Prints rows as a fixed-width table; ``columns`` are (key, header, format)."""
    print(f"\n{title}")
    headers = [header for _, header, _ in columns]
    cells = [[("-" if row.get(key) is None else format(row[key], fmt)) for key, _, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row_cells in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row_cells, widths)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    parser.add_argument("--window-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per throughput measurement")
    parser.add_argument("--fasta-mb", type=int, default=100, help="size of the synthetic FASTA for the cache build")
    parser.add_argument("--sizes-mb", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000],
                        help="genome sizes for the memory measurement, comma separated")
    parser.add_argument("--stream-batches", type=int, default=2000, help="batches streamed per memory measurement")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the temporary genome files go")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: throughput,cache,rss")
    parser.add_argument("--rss-child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rss_child is not None:
        pin_to_one_core()
        print(json.dumps(rss_child(args.rss_child, args.stream_batches, args.window_len, args.batch_size)))
        return {}
    skip = set(filter(None, args.skip.split(",")))
    cpu = pin_to_one_core()
    results = {
        "config": {"window_len": args.window_len, "batch_size": args.batch_size, "pinned_cpu": cpu,
                   "python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count()},
    }
    tmp = Path(tempfile.mkdtemp(prefix="jaxseq-bench-", dir=args.tmp_dir))
    try:
        if "throughput" not in skip:
            results["throughput"] = bench_throughput(args)
            print_table("1. TrainLoader throughput (one core)", results["throughput"], [
                ("prefetch", "prefetch", "d"), ("window_len", "L", "d"), ("batch_size", "B", "d"),
                ("windows_per_sec", "windows/s", ",.0f"), ("meets_target_1M", ">=1M/s", "")])
        if "cache" not in skip:
            results["cache_build"] = bench_cache_build(args, tmp)
            if "skipped" in results["cache_build"]:
                print(f"\n2. Token cache build: SKIPPED ({results['cache_build']['skipped']})")
            else:
                print_table("2. Token cache build (Genome.open, fresh cache dir)", results["cache_build"]["rows"], [
                    ("input", "input", ""), ("file_mb", "file MB", ".1f"), ("records", "records", "d"),
                    ("build_sec", "build s", ".2f"), ("build_mbases_per_sec", "Mb/s", ".1f"),
                    ("reopen_sec", "reopen s", ".2f"), ("error", "error", "")])
        if "rss" not in skip:
            results["rss"] = bench_rss(args, tmp)
            print_table("3. Anonymous RSS while streaming (fresh process per size, memmapped genome)", results["rss"], [
                ("genome_mb", "genome Mb", ",.0f"), ("train_intervals", "intervals", ",d"),
                ("loader_build_sec", "loader build s", ".2f"), ("rss_anon_baseline_mb", "RssAnon base MB", ".0f"),
                ("rss_anon_after_splits_mb", "+splits MB", ".0f"), ("rss_anon_after_loader_mb", "+loader MB", ".0f"),
                ("rss_anon_peak_streaming_mb", "RssAnon peak MB", ".0f"), ("rss_anon_growth_mb", "growth MB", ".0f"),
                ("windows_per_sec", "windows/s", ",.0f"), ("meets_target_1GB", "<1GB", ""), ("error", "error", "")])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
