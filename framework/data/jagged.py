"""Vectorized index helpers for jagged (offsets + values) data, shared by the ranking batches and the log state."""

from __future__ import annotations

import numpy as np


def concat_ranges(begins: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(b, b + n)`` for each (b, n), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    out_start = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(begins, dtype=np.int64) - out_start, lengths) + np.arange(total, dtype=np.int64)
