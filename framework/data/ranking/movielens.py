"""MovieLens rating loaders (ml-100k ``u.data`` and ml-20m/25m ``ratings.csv``).

The files are parsed in bulk with ``np.loadtxt`` (C speed; ml-20m has 20M rows).
Only when the bulk parse or the value checks fail is the file re-read line by
line, so that the error can name the exact line.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from framework.data.errors import DataFormatError
from framework.data.ranking.interactions import Interactions

MovieLensFormat = Literal["auto", "ml-100k", "ratings-csv"]

_ML100K_FILE = "u.data"
_CSV_FILE = "ratings.csv"
_CSV_HEADER = ("userId", "movieId", "rating", "timestamp")
_MIN_RATING = 0.5
_MAX_RATING = 5.0


def load_movielens(
    path: str | os.PathLike[str],
    *,
    positive_threshold: float = 4.0,
    fmt: MovieLensFormat = "auto",
) -> Interactions:
    """Loads MovieLens ratings as a single-task ("like") interaction log.

    Args:
        path: a MovieLens directory (containing ``u.data`` or ``ratings.csv``) or
            the ratings file itself.
        positive_threshold: ratings >= this are positive (label 1.0).
        fmt: "ml-100k" (tab-separated ``user item rating ts``, no header),
            "ratings-csv" (``userId,movieId,rating,timestamp`` with header) or
            "auto" (decided from the file name).

    Returns:
        Time-sorted :class:`Interactions` with one task named "like".

    Raises:
        FileNotFoundError: if the path or the expected ratings file is missing.
        DataFormatError: on malformed rows, with the file and 1-based line number.
        ValueError: on an unknown ``fmt``.
    """
    if fmt not in ("auto", "ml-100k", "ratings-csv"):
        raise ValueError(f"fmt must be 'auto', 'ml-100k' or 'ratings-csv', got {fmt!r}")
    file, fmt = resolve_ratings_file(Path(path), fmt)
    if fmt == "ml-100k":
        delimiter, has_header = "\t", False
    else:
        delimiter, has_header = ",", True
    rows_R4 = _parse(file, delimiter=delimiter, has_header=has_header)
    labels_R = (rows_R4[:, 2] >= positive_threshold).astype(np.float32)
    return Interactions.create(
        user_raw=rows_R4[:, 0].astype(np.int64),
        item_raw=rows_R4[:, 1].astype(np.int64),
        timestamp=rows_R4[:, 3].astype(np.int64),
        labels=labels_R,
        task_names=("like",),
        source=f"movielens:{file}",
    )


def resolve_ratings_file(path: Path, fmt: MovieLensFormat) -> tuple[Path, MovieLensFormat]:
    """The ratings file and its format for ``path`` (a MovieLens directory or file); FileNotFoundError if absent."""
    if path.is_dir():
        candidates = {"ml-100k": path / _ML100K_FILE, "ratings-csv": path / _CSV_FILE}
        if fmt != "auto":
            file = candidates[fmt]
            if not file.is_file():
                raise FileNotFoundError(f"MovieLens directory {path} has no {file.name} (expected for fmt={fmt!r})")
            return file, fmt
        for kind, file in candidates.items():
            if file.is_file():
                return file, kind  # type: ignore[return-value]
        raise FileNotFoundError(
            f"MovieLens directory {path} contains neither {_ML100K_FILE} (ml-100k) nor {_CSV_FILE} (ml-20m/ml-25m)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"MovieLens path {path} does not exist; expected a directory with {_ML100K_FILE} or "
            f"{_CSV_FILE}, or one of those files"
        )
    if fmt == "auto":
        fmt = "ratings-csv" if path.suffix.lower() == ".csv" else "ml-100k"
    return path, fmt


def _parse(file: Path, *, delimiter: str, has_header: bool) -> np.ndarray:
    """Parses a ratings file into float64 [R, 4] (user, item, rating, ts)."""
    first_data_line = 1
    if has_header:
        with open(file, encoding="utf-8") as f:
            header = f.readline().strip()
        fields = tuple(h.strip() for h in header.split(delimiter))
        if fields != _CSV_HEADER:
            raise DataFormatError(f"{file}, line 1: expected header {','.join(_CSV_HEADER)!r}, got {header!r}")
        first_data_line = 2
    try:
        with warnings.catch_warnings():
            # An empty file is reported below as a DataFormatError, not a warning.
            warnings.simplefilter("ignore", UserWarning)
            rows_R4 = np.loadtxt(
                file,
                delimiter=delimiter,
                comments=None,
                skiprows=first_data_line - 1,
                ndmin=2,
                dtype=np.float64,
                encoding="utf-8",
            )
    except ValueError as exc:
        _raise_first_bad_line(file, delimiter=delimiter, first_data_line=first_data_line)
        # Only reached if the line scanner accepts what loadtxt rejected.
        raise DataFormatError(f"{file}: {exc}") from exc
    if rows_R4.shape[0] == 0:
        raise DataFormatError(f"{file}: no rating rows found")
    if rows_R4.shape[1] != 4 or not _values_ok(rows_R4):
        _raise_first_bad_line(file, delimiter=delimiter, first_data_line=first_data_line)
        raise DataFormatError(f"{file}: malformed rows (could not locate the line)")
    return rows_R4


def _values_ok(rows_R4: np.ndarray) -> bool:
    ids_R3 = rows_R4[:, [0, 1, 3]]
    rating_R = rows_R4[:, 2]
    # NaN fails every comparison, so it is rejected by both checks.
    ids_ok = bool(np.all(np.isfinite(ids_R3)) and np.all(ids_R3 == np.floor(ids_R3)))
    ratings_ok = bool(np.all((rating_R >= _MIN_RATING) & (rating_R <= _MAX_RATING)))
    return ids_ok and ratings_ok


def _raise_first_bad_line(file: Path, *, delimiter: str, first_data_line: int) -> None:
    """Re-reads the file line by line and raises DataFormatError at the first bad row."""
    with open(file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line_no < first_data_line or not line.strip():
                continue
            fields = line.rstrip("\r\n").split(delimiter)
            if len(fields) != 4:
                raise DataFormatError(
                    f"{file}, line {line_no}: expected 4 fields separated by {delimiter!r}, got "
                    f"{len(fields)}: {line.rstrip()!r}"
                )
            try:
                user, item, rating, ts = (float(x) for x in fields)
            except ValueError:
                raise DataFormatError(f"{file}, line {line_no}: non-numeric field in {line.rstrip()!r}") from None
            for name, value in (("user id", user), ("item id", item), ("timestamp", ts)):
                if not np.isfinite(value) or value != np.floor(value):
                    raise DataFormatError(f"{file}, line {line_no}: {name} must be an integer, got {value!r}")
            if not _MIN_RATING <= rating <= _MAX_RATING:
                raise DataFormatError(
                    f"{file}, line {line_no}: rating {rating!r} outside [{_MIN_RATING}, {_MAX_RATING}]"
                )
