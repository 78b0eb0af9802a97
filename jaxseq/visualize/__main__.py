"""Command line: ``python -m jaxseq.visualize {sequence,annotations,kmers,errors} ...``.

Examples::

    python -m jaxseq.visualize sequence genome.fa.gz --record chr1 --out chr1.png [--raw chr1_full.png]
    python -m jaxseq.visualize annotations genes.gff3 --features gene,CDS [--seqid NC_011025.1] --out genes.png
    python -m jaxseq.visualize kmers genome.fa.gz --k 1..6 --out kmers.png      # or --k 4
    python -m jaxseq.visualize errors runs/lambda --fasta genome.fa --out errors.png [--bedgraph errors.bedgraph]
    python -m jaxseq.visualize errors runs/lambda --bed regions.bed --out regions.png   # a panel per region

Every subcommand takes ``--max-size PX``: the largest width/height of the PNG. Hilbert images keep an
exact scale (stated in the title): ``N x N`` screen pixels per base when small, or one pixel per
``4**j`` consecutive bases when large; ``sequence --raw`` also writes one pixel per base.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxseq.visualize import images

_DESCRIPTION = "Hilbert-curve images of genomes, annotations, k-mer spectra and reconstruction errors."


def _open_genome(fasta: str, cache_dir: str | None):
    from jaxseq.genome import Genome  # pyfaidx et al. are only needed by the FASTA subcommands

    return Genome.open(fasta, cache_dir=cache_dir)


def _check_record(genome, record: str) -> None:
    if record not in genome.names:
        shown = ", ".join(genome.names[:10]) + (", ..." if len(genome.names) > 10 else "")
        raise ValueError(f"{genome.path}: no record named {record!r} (records: {shown})")


def _report(rendered, extra: str = "") -> None:
    width, height = rendered.size
    scales = "; ".join(dict.fromkeys(s.describe(rendered.reducer) for s in rendered.scales))
    print(f"wrote {rendered.path} ({width}x{height} px{', ' + scales if scales else ''}){extra}")


def cmd_sequence(args) -> None:
    """Handles ``sequence``: one record of a FASTA as a Hilbert image."""
    from jaxseq.visualize.sequence import render_sequence

    genome = _open_genome(args.fasta, args.cache_dir)
    record = args.record
    if record is None:
        record = genome.names[0]
        if len(genome.names) > 1:
            print(f"{args.fasta}: {len(genome.names)} records; drawing the first, {record!r} "
                  "(choose with --record)", file=sys.stderr)
    _check_record(genome, record)
    rendered = render_sequence(genome.tokens(record), args.out, soft_mask=genome.soft_mask(record),
                               record=record, max_size=args.max_size, raw_out=args.raw)
    _report(rendered)
    if args.raw:
        print(f"wrote {args.raw} (one pixel per base)")


def cmd_annotations(args) -> None:
    """Handles ``annotations``: GFF3 overlap counts per sequence and type."""
    from jaxseq.visualize.annotations import render_annotations
    from jaxseq.visualize.gff3 import read_gff3

    annotations = read_gff3(args.gff3)
    types = [t.strip() for t in args.features.split(",") if t.strip()] if args.features else None
    _report(render_annotations(annotations, args.out, types=types, seqid=args.seqid, max_size=args.max_size))


def cmd_kmers(args) -> None:
    """Handles ``kmers``: k-mer spectrum of all records (or ``--record``)."""
    from jaxseq.visualize.kmers import parse_k, render_kmers

    ks = parse_k(args.k)  # before opening the genome: a typo should not cost a cache build
    genome = _open_genome(args.fasta, args.cache_dir)
    if args.record:
        _check_record(genome, args.record)
        sequences = {args.record: genome.tokens(args.record)}
    else:
        sequences = genome.as_mapping()
    label = args.record or Path(args.fasta).name
    _report(render_kmers(sequences, args.out, ks, label=label, n_labels=args.labels, max_size=args.max_size))


def cmd_errors(args) -> None:
    """Handles ``errors``: the evaluator's per-base error rates as image and bedGraph."""
    from jaxseq.visualize.errors import render_error_map, write_bedgraph

    try:
        # The evaluator imports jax and restores a checkpoint: only pay for it when asked.
        from jaxseq.evaluate import per_base_errors
    except ImportError as e:
        raise RuntimeError(f"per-base errors need jaxseq.evaluate.per_base_errors, which is not "
                           f"available ({e})") from None

    # Only the options given are passed on; the evaluator's defaults hold for the rest.
    options = {k: v for k, v in (("step", args.step), ("stride", args.stride), ("cache_dir", args.cache_dir),
                                 ("bed", args.bed)) if v is not None}
    panels = _bed_panels(args) if args.bed else None  # bad BED lines are reported before any compute
    rates = per_base_errors(args.run_dir, args.fasta, **options)  # dict record -> float array, NaN = unscored
    tracks = {label: rates[c][a:b] for label, (c, a, b) in panels.items()} if panels else rates
    rendered = render_error_map(tracks, args.out, vmax=args.vmax, label=str(args.run_dir),
                                max_size=args.max_size)
    bedgraph = Path(args.bedgraph) if args.bedgraph else Path(args.out).with_suffix(".bedgraph")
    lines = 0
    for i, (record, rate) in enumerate(rates.items()):
        lines += write_bedgraph(bedgraph, record, rate, append=i > 0,
                                track_name=f"reconstruction error {Path(args.run_dir).name}" if i == 0 else None)
    _report(rendered)
    print(f"wrote {bedgraph} ({lines:,} runs)")


def _bed_panels(args) -> dict:
    """``--bed``: a panel per region (its record's names resolved as the run resolves them)."""
    import contextlib

    from jaxseq.evaluator import read_bed_regions
    from jaxseq.trained import open_run
    from jaxseq.visualize.errors import region_panels

    with contextlib.closing(open_run(args.run_dir, args.step)) as run:
        _, regions = read_bed_regions(run.config, args.bed, args.fasta, args.cache_dir)
    return region_panels(regions)


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of ``python -m jaxseq.visualize``."""
    parser = argparse.ArgumentParser(prog="python -m jaxseq.visualize", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, fasta: bool):
        p.add_argument("--out", required=True, help="PNG file to write")
        p.add_argument("--max-size", type=int, default=images.DEFAULT_MAX_SIZE, metavar="PX",
                       help=f"largest width/height of the PNG in pixels (default {images.DEFAULT_MAX_SIZE})")
        if fasta:
            p.add_argument("--cache-dir", default=None,
                           help="token cache root (default $JAXSEQ_CACHE_DIR or ~/.cache/jaxseq)")

    p = sub.add_parser("sequence", help="one pixel per base on a Hilbert curve, coloured A C G T N, "
                                        "soft-masked darker")
    p.add_argument("fasta", help="FASTA file (plain, gzip or bgzip)")
    p.add_argument("--record", help="record to draw (default: the first)")
    p.add_argument("--raw", metavar="PNG", help="also write the full-resolution image, one pixel per base")
    common(p, fasta=True)
    p.set_defaults(func=cmd_sequence)

    p = sub.add_parser("annotations", help="GFF3 feature overlap counts on a Hilbert curve, one panel per "
                                           "sequence and feature type")
    p.add_argument("gff3", help="GFF3 file (plain or gzip)")
    p.add_argument("--features", metavar="TYPES",
                   help="comma-separated feature types, e.g. gene,CDS (default: all but region-like types)")
    p.add_argument("--seqid", help="draw only this sequence")
    common(p, fasta=False)
    p.set_defaults(func=cmd_annotations)

    p = sub.add_parser("kmers", help="observed k-mer counts vs uniform and Markov expectations")
    p.add_argument("fasta", help="FASTA file")
    p.add_argument("--k", required=True, metavar="K",
                   help="a single k (e.g. 4) or an inclusive range (e.g. 1..8); one panel per k")
    p.add_argument("--record", help="count this record only (default: all records together)")
    p.add_argument("--labels", type=int, default=5, metavar="N",
                   help="label the N most over- and under-represented words per k (default 5)")
    common(p, fasta=True)
    p.set_defaults(func=cmd_kmers)

    p = sub.add_parser("errors", help="per-base reconstruction error of a trained run (Hilbert map + bedGraph)")
    p.add_argument("run_dir", help="training run directory (config + checkpoints)")
    p.add_argument("--fasta", help="genome to evaluate (default: the run's data.fasta)")
    p.add_argument("--bed", help="draw only these regions (BED), a panel each; the bedGraph covers them alone")
    p.add_argument("--bedgraph", help="bedGraph output (default: --out with suffix .bedgraph)")
    p.add_argument("--vmax", type=float, help="error rate at the top of the colour scale (default: max)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--stride", type=int, help="distance between scored window starts (default: window_len // 4, "
                                              "so each base is scored by ~4 windows)")
    common(p, fasta=True)
    p.set_defaults(func=cmd_errors)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (errors are one line on stderr, status 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_size < images.MIN_LEGEND_WIDTH:
        parser.error(f"--max-size must be at least {images.MIN_LEGEND_WIDTH} pixels, got {args.max_size}")
    try:
        args.func(args)
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # GenomeError, GFF3Error: ValueErrors
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
