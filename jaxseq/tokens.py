"""The token alphabet: bytes of a FASTA sequence <-> small integers.

``A=0, C=1, G=2, T=3`` (so the complement of a base ``b`` is ``3 - b``), ``N=4`` for unknown bases
(IUPAC ambiguity codes included), ``MASK=5`` for positions hidden from the model. Lowercase
(soft-masked) letters map to the same token as uppercase; :func:`soft_mask` keeps that track.

This module is numpy only: the loader uses it on host arrays and must not import jax.
"""

from __future__ import annotations

import numpy as np

A, C, G, T, N, MASK = 0, 1, 2, 3, 4, 5
NUM_BASES = 4
NUM_TOKENS = 6
#: Text for each token, indexed by token; MASK shows as ``?``.
SYMBOLS = "ACGTN?"

_IUPAC_AMBIGUOUS = "RYKMSWBDHVN"

#: byte -> token, or -1 where the byte is not a sequence letter.
BYTE_TO_TOKEN = np.full(256, -1, dtype=np.int16)
for _token, _letter in enumerate("ACGT"):
    BYTE_TO_TOKEN[ord(_letter)] = _token
    BYTE_TO_TOKEN[ord(_letter.lower())] = _token
for _letter in _IUPAC_AMBIGUOUS:
    BYTE_TO_TOKEN[ord(_letter)] = N
    BYTE_TO_TOKEN[ord(_letter.lower())] = N
# U (RNA) is read as T: RNA references are rare but unambiguous.
BYTE_TO_TOKEN[ord("U")] = T
BYTE_TO_TOKEN[ord("u")] = T

_COMPLEMENT = np.array([T, G, C, A, N, MASK], dtype=np.uint8)
_SYMBOL_BYTES = np.frombuffer(SYMBOLS.encode(), dtype=np.uint8)


class InvalidSequenceError(ValueError):
    """A byte that is not a nucleotide letter or IUPAC code appeared in a sequence."""


def encode(sequence: bytes | str | np.ndarray, record: str | None = None, offset: int = 0) -> np.ndarray:
    """Converts sequence text to tokens.

    Args:
      sequence: letters as ``bytes``, ``str`` or a uint8 array of byte values; no newlines.
      record: name used in the error message.
      offset: 0-based position of ``sequence[0]`` within its record, for the error message.

    Returns:
      uint8 array ``(len(sequence),)`` of tokens in ``0..4``.

    Raises:
      InvalidSequenceError: naming the record, the 1-based position and the offending character.
    """
    if isinstance(sequence, str):
        sequence = sequence.encode("latin-1", errors="replace")
    raw = np.frombuffer(sequence, dtype=np.uint8) if isinstance(sequence, (bytes, bytearray, memoryview)) else sequence
    tokens = BYTE_TO_TOKEN[raw]
    bad = np.flatnonzero(tokens < 0)
    if bad.size:
        where = f"record {record!r}" if record is not None else "sequence"
        position = offset + int(bad[0])
        raise InvalidSequenceError(
            f"{where}: invalid character {chr(raw[bad[0]])!r} at position {position + 1} "
            f"(expected A C G T, lowercase, or an IUPAC code; {bad.size} invalid in this stretch)"
        )
    return tokens.astype(np.uint8)


def soft_mask(sequence: bytes | str | np.ndarray) -> np.ndarray:
    """Returns a bool array ``(len(sequence),)``: True where the letter is lowercase (soft-masked).

    Meant for valid sequence (see :func:`encode`), where every byte ``>= 'a'`` is a lowercase letter.
    """
    if isinstance(sequence, str):
        sequence = sequence.encode("latin-1", errors="replace")
    raw = np.frombuffer(sequence, dtype=np.uint8) if isinstance(sequence, (bytes, bytearray, memoryview)) else sequence
    return raw >= ord("a")


def complement(tokens: np.ndarray) -> np.ndarray:
    """Complements bases (A<->T, C<->G); N and MASK stay themselves. Any shape, same dtype."""
    return _COMPLEMENT[tokens].astype(tokens.dtype, copy=False)


def reverse(tokens: np.ndarray) -> np.ndarray:
    """Reverses along the last axis (the sequence axis)."""
    return tokens[..., ::-1]


def reverse_complement(tokens: np.ndarray) -> np.ndarray:
    """Reverse complement along the last axis."""
    return complement(reverse(tokens))


def decode(tokens: np.ndarray) -> str:
    """Tokens ``(length,)`` -> text, MASK shown as ``?``."""
    return _SYMBOL_BYTES[np.asarray(tokens, dtype=np.intp)].tobytes().decode()


_SHADES = " .:-=+*#%@"


def format_reconstruction(target: np.ndarray, predicted: np.ndarray, confidence: np.ndarray | None = None,
                          width: int = 100) -> str:
    """Aligned text of a reconstruction: target line, a line marking mismatches with ``^``, prediction.

    Args:
      target: tokens ``(length,)``; positions holding N are never counted as mismatches.
      predicted: tokens ``(length,)``.
      confidence: optional probabilities ``(length,)`` in [0, 1] of the predicted base, drawn as a
        fourth line of shading characters from `` `` (0) to ``@`` (1).
      width: characters per block; longer windows wrap into several blocks.

    Returns:
      Multi-line text.
    """
    target = np.asarray(target)
    predicted = np.asarray(predicted)
    marks = np.where((target != predicted) & (target < N), "^", " ")
    blocks = []
    for start in range(0, len(target), width):
        stop = start + width
        lines = [
            "target     " + decode(target[start:stop]),
            "mismatch   " + "".join(marks[start:stop]),
            "predicted  " + decode(predicted[start:stop]),
        ]
        if confidence is not None:
            levels = np.clip((np.asarray(confidence[start:stop]) * (len(_SHADES) - 1)).round().astype(int),
                             0, len(_SHADES) - 1)
            lines.append("confidence " + "".join(_SHADES[i] for i in levels))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
