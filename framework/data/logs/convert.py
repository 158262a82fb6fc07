"""Copy Parquet log days into WebDataset tar shards of the same rows (``scalefirst convert-logs --to webdataset``).

``<out>/day=YYYY-MM-DD/part-NNNNN.tar`` per Parquet part, one sample per row group (written with webdataset's
``TarWriter``): ``<rg>.arrow`` (an Arrow IPC stream of the row group, every column) and ``<rg>.json``
(``{"rows", "source", "row_group"}``). Object stores and WebDataset tooling stream tars; the reader
(:class:`~framework.data.logs.reader.LogReader` with ``fmt="webdataset"``) numbers, seeks and validates the rows
exactly as for Parquet. Days are written atomically (``day=….partial`` renamed, ``_SUCCESS``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from framework.data.logs.schema import day_parts, list_days
from framework.data.logs.writer import atomic_day_dir


def to_webdataset(root: str, out: str | Path, days: list[dt.date] | None = None) -> list[dt.date]:
    """Convert ``days`` (default: every day under ``root``) into tar shards under ``out``; returns the days."""
    import webdataset as wds

    out = Path(out)
    days = days if days is not None else list_days(root)
    for day in days:
        with atomic_day_dir(out, day) as partial:
            for path in day_parts(root, day):
                pf = pq.ParquetFile(path)
                with wds.TarWriter(str(partial / Path(path).with_suffix(".tar").name), mtime=0) as sink:
                    for rg in range(pf.metadata.num_row_groups):
                        table = pf.read_row_group(rg)
                        stream = pa.BufferOutputStream()
                        with pa.ipc.new_stream(stream, table.schema) as writer:
                            writer.write_table(table)
                        meta = {"rows": table.num_rows, "source": Path(path).name, "row_group": rg}
                        sink.write({"__key__": f"{rg:06d}", "arrow": stream.getvalue().to_pybytes(),
                                    "json": json.dumps(meta).encode()})  # fmt: skip
    return days
