"""Write one day of logs in the layout of :mod:`framework.data.logs.schema`, atomically.

The parts go to ``<root>/day=YYYY-MM-DD.partial/`` and the directory is renamed to ``day=YYYY-MM-DD`` when the last
part is closed (with a ``_SUCCESS`` marker, as Spark writes): a reader never sees half a day, and a crash leaves only
a ``.partial`` directory, which the next write of that day replaces. Local paths only (object stores have no atomic
directory rename; write there with the logging pipeline's own committer).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framework.data.logs.schema import LogSchema, day_name
from framework.io import fsync_dir


def to_table(columns: Mapping[str, np.ndarray], schema: LogSchema) -> pa.Table:
    """Numpy columns -> an Arrow table of ``schema`` (columns cast to its types; a missing column is a KeyError)."""
    arrow = schema.arrow_schema()
    return pa.Table.from_arrays([pa.array(np.asarray(columns[f.name]), type=f.type) for f in arrow], schema=arrow)


@contextmanager
def atomic_day_dir(root: str | Path, day: dt.date) -> Iterator[Path]:
    """Yields an empty ``<root>/day=YYYY-MM-DD.partial/`` to fill; on success it gets ``_SUCCESS`` and is renamed to
    ``day=YYYY-MM-DD`` (replacing an older copy). A leftover ``.partial`` from a crash is removed first."""
    root = Path(root)
    final = root / day_name(day)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # an interrupted earlier write of this day
    partial.mkdir(parents=True)
    yield partial
    (partial / "_SUCCESS").touch()
    fsync_dir(partial)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    fsync_dir(root)


def write_day(
    root: str | Path,
    day: dt.date,
    parts: Iterable[Mapping[str, np.ndarray] | pa.Table],
    schema: LogSchema,
    *,
    row_group_rows: int = 65_536,
    compression: str = "zstd",
) -> Path:
    """Write each element of ``parts`` (time-ordered rows) as ``part-NNNNN.parquet`` of the day; returns its dir.

    Args:
        root: the log root (a local directory; created if missing).
        day: the day the rows belong to.
        parts: one table or dict of numpy columns per part file, in time order.
        schema: label and dense columns.
        row_group_rows: rows per Parquet row group (the reader's unit of reading and seeking).
        compression: Parquet codec.
    """
    with atomic_day_dir(root, day) as partial:
        for i, part in enumerate(parts):
            table = part if isinstance(part, pa.Table) else to_table(part, schema)
            pq.write_table(table, partial / f"part-{i:05d}.parquet", row_group_size=row_group_rows,
                           compression=compression)  # fmt: skip
    return Path(root) / day_name(day)
