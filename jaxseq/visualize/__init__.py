"""Pictures of genomes: Hilbert-curve images, annotations, k-mer spectra, reconstruction errors.

Modules (one concern each):

* :mod:`~jaxseq.visualize.hilbert`: the curve, index <-> (x, y), vectorised;
* :mod:`~jaxseq.visualize.images`: exact-scale figure layout and PNG writing shared by all pictures;
* :mod:`~jaxseq.visualize.sequence`: bases as colours (soft-masked darker, N grey);
* :mod:`~jaxseq.visualize.gff3`: GFF3 parsing;
* :mod:`~jaxseq.visualize.annotations`: per-base feature overlap counts and their image;
* :mod:`~jaxseq.visualize.kmers`: k-mer counting and the observed-vs-expected plot;
* :mod:`~jaxseq.visualize.errors`: per-base reconstruction error map and bedGraph track.

Command line: ``python -m jaxseq.visualize --help``. Matplotlib is used only through the Agg canvas
(never pyplot), so importing this package leaves the user's backend alone. Numpy only, no jax.
"""

from jaxseq.visualize.annotations import feature_overlaps, overlap_counts, render_annotations
from jaxseq.visualize.errors import error_runs, render_error_map, write_bedgraph
from jaxseq.visualize.gff3 import Annotations, Feature, GFF3Error, read_gff3
from jaxseq.visualize.hilbert import d2xy, hilbert_order, to_square, xy2d
from jaxseq.visualize.images import Rendered, Scale
from jaxseq.visualize.kmers import count_kmers, kmer_words, markov_expected, parse_k, render_kmers
from jaxseq.visualize.sequence import compose_sequence_image, render_sequence

__all__ = [
    "Annotations", "Feature", "GFF3Error", "Rendered", "Scale", "compose_sequence_image", "count_kmers",
    "d2xy", "error_runs", "feature_overlaps", "hilbert_order", "kmer_words", "markov_expected",
    "overlap_counts", "parse_k", "read_gff3", "render_annotations", "render_error_map", "render_kmers",
    "render_sequence", "to_square", "write_bedgraph", "xy2d",
]
