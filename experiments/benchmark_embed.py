"""Benchmarks ``python -m jaxseq.embed --genome`` on E. coli: windows/s and peak resident memory.

The model is the prototype's ``aemd`` (``configs/multilayer_aemd.yaml``: multilayer, window 64,
latent 200), trained for ``--train-steps`` steps (default 200) into ``experiments/out/embed_aemd/``
unless ``--run`` names a run directory (the benchmark measures embedding, not accuracy).

Each measurement runs in a fresh Python process calling :func:`jaxseq.embed.embed` on the whole
genome, so its peak RSS (``VmHWM`` of ``/proc/self/status``) is its own; it also reports the RSS
just before embedding (model loaded, genome mapped, nothing embedded). The cases vary the output
format and the stride: stride 16 writes 4x the rows of stride 64, so equal peaks show that resident
memory does not grow with the output. ``windows/s`` counts windows over the embedding loop (after
the one compile); ``total s`` is the whole process (imports, restore, compile, embedding). The
outputs go to a temporary folder removed at the end. The machine is shared: the load average
before and after is recorded.

Run::

    python experiments/benchmark_embed.py [--run RUN_DIR] [--train-steps 200] [--strides 64,16]
        [--formats h5,npy] [--batch-size 256] [--out experiments/out/benchmark_embed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "out" / "benchmark_embed.json"
DEFAULT_RUN = ROOT / "experiments" / "out" / "embed_aemd"
DEFAULT_FASTA = ROOT.parent / "shared" / "data" / "ecoli_k12_mg1655.fa.gz"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run directory (default: train aemd into experiments/out/embed_aemd)")
    parser.add_argument("--train-steps", type=int, default=200, help="steps to train the default run (default 200)")
    parser.add_argument("--fasta", default=str(DEFAULT_FASTA), help="genome to embed (default: E. coli K-12)")
    parser.add_argument("--strides", default="64,16", help="comma-separated strides (default 64,16)")
    parser.add_argument("--formats", default="h5,npy", help="comma-separated output formats (default h5,npy)")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per model call (default 256)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "OUTPUT", "STRIDE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB: ``VmRSS`` (resident now) or ``VmHWM`` (peak resident).

    Not ``resource.getrusage(...).ru_maxrss``: Linux carries it across ``execve``, so a measurement
    process would report its parent's peak (the training run's) whenever that is larger.
    """
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def child(run: str, output: str, stride: int, fasta: str, batch_size: int) -> None:
    """One measurement (in its own process): prints a JSON line."""
    started = time.perf_counter()
    import jaxseq
    from jaxseq.embed import embed

    model = jaxseq.load_run(run)
    from jaxseq.genome import Genome

    Genome.open(fasta, cache_dir=model.config.data.cache_dir or None)  # cache built outside the RSS of interest
    before = status_mb("VmRSS")
    summary = embed(model, None, output, fasta=fasta, stride=stride, batch_size=batch_size)
    print(json.dumps({"windows": summary["windows"], "shape": summary["shape"], "embed_s": summary["seconds"],
                      "windows_per_sec": summary["windows_per_sec"], "total_s": time.perf_counter() - started,
                      "rss_before_mb": before, "peak_rss_mb": status_mb("VmHWM"),
                      "output_mb": sum(Path(p).stat().st_size for p in summary["out"]) / 2**20}))


def train_default_run(steps: int, fasta: str) -> Path:
    """Trains the aemd config for ``steps`` steps (a finished run is reused)."""
    from jaxseq import train
    from jaxseq.config import load_config

    config = load_config(ROOT / "configs" / "multilayer_aemd.yaml", [
        f"data.fasta={fasta}", f"train.num_steps={steps}", f"optim.warmup_steps={min(steps, 200) // 4}",
        f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.log_every=50",
        "train.eval_max_windows=2000", "train.examples=0", "train.histogram_every=0"])
    train.train_and_evaluate(config, DEFAULT_RUN)
    return DEFAULT_RUN


def measure(run: Path, args, fmt: str, stride: int, folder: Path) -> dict:
    output = folder / f"ecoli_stride{stride}.{fmt}"
    command = [sys.executable, __file__, "--child", str(run), str(output), str(stride), "--fasta", args.fasta,
               "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"error: measurement failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
    for path in folder.iterdir():
        path.unlink()
    return {"format": fmt, "stride": stride, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.fasta, args.batch_size)
        return 0
    run = Path(args.run) if args.run else train_default_run(args.train_steps, args.fasta)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="benchmark_embed-") as folder:
        for fmt in args.formats.split(","):
            for stride in map(int, args.strides.split(",")):
                rows.append(measure(run, args, fmt, stride, Path(folder)))
                print(f"  {fmt} stride {stride}: {rows[-1]['windows_per_sec']:,.0f} windows/s", file=sys.stderr)
    result = {"run": str(run), "fasta": args.fasta, "batch_size": args.batch_size, "cpus": os.cpu_count(),
              "machine": platform.platform(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "rows": rows}
    print(f"\nembedding {Path(args.fasta).name} (--genome), run {run}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} -> {result['load_average_after'][0]:.1f}")
    print(f"{'format':>6} {'stride':>6} {'windows':>9} {'rows x dims':>14} {'windows/s':>10} {'embed s':>8} "
          f"{'total s':>8} {'RSS before MB':>13} {'peak RSS MB':>11} {'output MB':>9}")
    for r in rows:
        print(f"{r['format']:>6} {r['stride']:>6} {r['windows']:>9,} {' x '.join(map(str, r['shape'])):>14} "
              f"{r['windows_per_sec']:>10,.0f} {r['embed_s']:>8.1f} {r['total_s']:>8.1f} {r['rss_before_mb']:>13.0f} "
              f"{r['peak_rss_mb']:>11.0f} {r['output_mb']:>9.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
