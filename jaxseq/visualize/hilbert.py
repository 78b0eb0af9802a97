"""The Hilbert curve: position along a sequence <-> pixel of a square image.

A Hilbert curve of order ``p`` visits every pixel of a ``2**p x 2**p`` square once, moving one
pixel at a time, so bases close on the sequence stay close in the image. It starts at the top-left
pixel ``(x=0, y=0)`` and ends at the top-right pixel ``(x=2**p - 1, y=0)``; ``y`` is the image row.

A property the renderers rely on: the ``4**j`` consecutive indices ``[m * 4**j, (m + 1) * 4**j)``
fill exactly the aligned ``2**j x 2**j`` block at curve position ``m`` of the order ``p - j`` curve.
So an image downscaled by ``2**j`` is the order ``p - j`` curve of values aggregated over runs of
``4**j`` consecutive bases, which never needs the full-resolution square in memory.

Both mappings are vectorised over indices: the Python loop runs over the ``p`` bits of the order
only, so a 5 Mb genome maps in well under a second.
"""

from __future__ import annotations

import numpy as np

#: Largest order supported: ``x`` and ``y`` must fit int32 and ``d`` int64.
MAX_ORDER = 30


def hilbert_order(length: int) -> int:
    """Returns the smallest order ``p`` whose square (``4**p`` pixels) holds ``length`` values.

    Args:
      length: number of values to lay out, ``>= 0``.

    Returns:
      ``p >= 0`` with ``4**p >= length`` (``0`` for lengths 0 and 1).
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    order = 0
    while 4**order < length:
        order += 1
    if order > MAX_ORDER:
        raise ValueError(f"length {length} needs Hilbert order {order} > {MAX_ORDER}")
    return order


def _check_order(order: int) -> None:
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"Hilbert order must be in 0..{MAX_ORDER}, got {order}")


def d2xy(d: np.ndarray | int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps curve indices to pixel coordinates.

    Args:
      d: integer array (any shape) of indices in ``[0, 4**order)``.
      order: the curve order ``p``; the square side is ``2**p``.

    Returns:
      ``(x, y)``: int64 arrays shaped like ``d``; ``x`` is the column, ``y`` the row.

    Raises:
      ValueError: if an index is outside the square.
    """
    _check_order(order)
    t = np.array(d, dtype=np.int64, copy=True)
    if t.size and (t.min() < 0 or t.max() >= 4**order):
        raise ValueError(f"Hilbert index out of range [0, {4**order}) for order {order}")
    if order <= 15:
        # Coordinates below 2**15 fit int32, which halves memory traffic on genome-sized arrays.
        t = t.astype(np.int32)
    x = np.zeros_like(t)
    y = np.zeros_like(t)
    # Build the coordinates from the lowest quadrant digit up: at level s the partial (x, y) is a
    # position inside an s x s sub-square, which the quadrant's rotation/reflection reorients.
    # Reflection and swap are done with XOR masks in place (s - 1 - v == v ^ (s - 1) for v < s)
    # because np.where allocations dominate the run time on genome-sized arrays.
    s = 1
    rx = np.empty_like(t)
    ry = np.empty_like(t)
    tmp = np.empty_like(t)
    for _ in range(order):
        np.right_shift(t, 1, out=rx)
        rx &= 1
        np.bitwise_xor(t, rx, out=ry)
        ry &= 1
        # tmp = 1 where ry == 0 (quadrants 0 and 3 are transposed, 3 also reflected).
        np.bitwise_xor(ry, 1, out=tmp)
        flip = tmp * rx * (s - 1)
        x ^= flip
        y ^= flip
        np.bitwise_xor(x, y, out=flip)
        flip *= tmp
        x ^= flip
        y ^= flip
        x += s * rx
        y += s * ry
        t >>= 2
        s <<= 1
    return x.astype(np.int64), y.astype(np.int64)


def xy2d(x: np.ndarray | int, y: np.ndarray | int, order: int) -> np.ndarray:
    """Maps pixel coordinates to curve indices (the inverse of :func:`d2xy`).

    Args:
      x: integer array of columns in ``[0, 2**order)``.
      y: integer array of rows, same shape as ``x``.
      order: the curve order ``p``.

    Returns:
      int64 array of indices in ``[0, 4**order)``, shaped like ``x``.
    """
    _check_order(order)
    n = 1 << order
    x = np.array(x, dtype=np.int64, copy=True)
    y = np.array(y, dtype=np.int64, copy=True)
    if x.shape != y.shape:
        raise ValueError(f"x and y shapes differ: {x.shape} vs {y.shape}")
    for v, name in ((x, "x"), (y, "y")):
        if v.size and (v.min() < 0 or v.max() >= n):
            raise ValueError(f"{name} out of range [0, {n}) for order {order}")
    d = np.zeros_like(x)
    s = n >> 1
    while s > 0:
        rx = ((x & s) > 0).astype(np.int64)
        ry = ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        # Undo this quadrant's orientation so the lower bits read as a standard curve.
        flip = (ry == 0) & (rx == 1)
        x = np.where(flip, n - 1 - x, x)
        y = np.where(flip, n - 1 - y, y)
        swap = ry == 0
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return d


def to_square(values: np.ndarray, order: int, fill) -> np.ndarray:
    """Lays values out along the Hilbert curve.

    Args:
      values: array ``(n, ...)`` with ``n <= 4**order``; trailing axes (e.g. RGB) are kept.
      order: the curve order ``p``.
      fill: value of the pixels past the end of ``values`` (the unused tail of the square).

    Returns:
      array ``(2**p, 2**p, ...)`` of ``values.dtype``: ``out[y, x] = values[d]`` where
      ``(x, y) = d2xy(d)``.
    """
    values = np.asarray(values)
    n = values.shape[0]
    side = 1 << order
    if n > side * side:
        raise ValueError(f"{n} values do not fit a Hilbert square of order {order} ({side}x{side})")
    out = np.empty((side, side) + values.shape[1:], dtype=values.dtype)
    out[...] = fill
    x, y = d2xy(np.arange(n, dtype=np.int64), order)
    out[y, x] = values
    return out
