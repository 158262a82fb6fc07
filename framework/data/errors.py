"""Errors every data family raises (ranking logs, MovieLens, image-caption shards, production logs)."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file (or in-memory log) does not have the expected format.

    Raised for malformed rows in input files; the message names the file and the
    1-based line number (or row group / row offset) so that the offending row can be found directly.
    """
