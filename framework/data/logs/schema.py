"""Production engagement logs: the Arrow schema and the day-partitioned layout.

One row is one impression of an item to a user, with its engagement labels::

    column            Arrow type   meaning
    user_id           int64        raw user id (any int64; not a row index)
    item_id           int64        raw item id
    ts                int64        event time, seconds since the Unix epoch (UTC)
    item_created_ts   int64        when the item was created (seconds); <= ts
    <label>           int8         one column per engagement type, 0/1: 1 negative (default ``skip``) and 5
                                   positive types (default ``click like share follow complete``); names in config
    <dense>           float32      optional dense features, named in config (absent columns are an error)

Layout (Hive-style, what a Spark or Flink logging job writes)::

    <root>/day=YYYY-MM-DD/part-00000.parquet
                          part-00001.parquet      parts in time order; rows time-sorted within and across parts
                          _SUCCESS                optional marker; files starting with "_" or "." are ignored

``root`` is a local path or any ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``). Nulls are not
allowed in ids or times; the reader counts and reports every violation (:mod:`framework.data.logs.reader`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

ID_COLUMNS = ("user_id", "item_id")
TIME_COLUMNS = ("ts", "item_created_ts")
DEFAULT_LABELS = ("skip", "click", "like", "share", "follow", "complete")
DEFAULT_NEGATIVE = "skip"
DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
PART_FILE = re.compile(r"^part-(\d{5,})\.(parquet|tar)$")
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class LogSchema:
    """Which label and dense columns a log has (ids and times are always the same four columns)."""

    labels: tuple[str, ...] = DEFAULT_LABELS
    """Engagement label columns, 0/1 int8; the model has one task per label."""
    negative: str = DEFAULT_NEGATIVE
    """The one negative engagement type among ``labels``; every other label is a positive type."""
    dense: tuple[str, ...] = field(default_factory=tuple)
    """Optional float32 dense-feature columns."""

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ValueError(f"labels must be distinct and non-empty, got {list(self.labels)}")
        if self.negative not in self.labels:
            raise ValueError(f"negative label {self.negative!r} is not one of labels {list(self.labels)}")
        clash = set(self.labels) & set(self.dense) | (set(self.labels) | set(self.dense)) & set(self.fixed_columns)
        if clash:
            raise ValueError(f"label/dense column names clash with each other or with ids/times: {sorted(clash)}")

    @property
    def fixed_columns(self) -> tuple[str, ...]:
        return (*ID_COLUMNS, *TIME_COLUMNS)

    @property
    def positives(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label != self.negative)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.fixed_columns, *self.labels, *self.dense)

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(c, pa.int64(), nullable=False) for c in self.fixed_columns]
        fields += [pa.field(c, pa.int8(), nullable=False) for c in self.labels]
        fields += [pa.field(c, pa.float32(), nullable=False) for c in self.dense]
        return pa.schema(fields)

    def problems(self, schema: pa.Schema) -> list[str]:
        """What makes a file's schema unreadable as this log (missing columns, wrong types); empty when fine.

        Integer label columns of any width and bool are accepted (cast to int8), as are float64 dense columns.
        """
        out = []
        for c in self.columns:
            idx = schema.get_field_index(c)
            if idx < 0:
                out.append(f"missing column {c!r}")
                continue
            t = schema.field(idx).type
            if c in self.fixed_columns and not pa.types.is_int64(t):
                out.append(f"column {c!r} is {t}, expected int64")
            elif c in self.labels and not (pa.types.is_integer(t) or pa.types.is_boolean(t)):
                out.append(f"label column {c!r} is {t}, expected an integer 0/1 type")
            elif c in self.dense and not pa.types.is_floating(t):
                out.append(f"dense column {c!r} is {t}, expected float32")
        return out


def day_name(day: dt.date) -> str:
    return f"day={day.isoformat()}"


def parse_day(text: str) -> dt.date:
    """``YYYY-MM-DD`` -> date (``ValueError`` naming the text otherwise)."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a YYYY-MM-DD date: {text!r}") from None


def day_start_ts(day: dt.date) -> int:
    """Seconds since the epoch at 00:00 UTC of ``day``."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def resolve_root(root: str) -> tuple[pafs.FileSystem, str]:
    """``root`` (local path or pyarrow.fs URI) -> (filesystem, path inside it)."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(root)


def list_days(root: str) -> list[dt.date]:
    """The days present under ``root`` (``day=YYYY-MM-DD`` directories), ascending; [] if ``root`` is missing."""
    fs, path = resolve_root(root)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    days = []
    for entry in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        m = DAY_DIR.match(entry.base_name)
        if entry.type == pafs.FileType.Directory and m:
            days.append(parse_day(m.group(1)))
    return sorted(days)


def day_parts(root: str, day: dt.date, suffix: str = "parquet") -> list[str]:
    """The part files of one day in part order (paths inside the filesystem of ``root``).

    Raises:
        FileNotFoundError: the day's directory does not exist, or holds no ``part-*.<suffix>`` file.
    """
    fs, path = resolve_root(root)
    day_path = f"{path.rstrip('/')}/{day_name(day)}"
    if fs.get_file_info(day_path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{root}: no directory {day_name(day)} (days present: {_summary(list_days(root))})")
    parts = []
    for entry in fs.get_file_info(pafs.FileSelector(day_path, recursive=False)):
        m = PART_FILE.match(entry.base_name)
        if entry.type == pafs.FileType.File and m and m.group(2) == suffix:
            parts.append((int(m.group(1)), entry.path))
    if not parts:
        raise FileNotFoundError(f"{day_path}: no part-NNNNN.{suffix} files")
    return [p for _, p in sorted(parts)]


def _summary(days: Sequence[dt.date]) -> str:
    if not days:
        return "none"
    return f"{len(days)}, {days[0]} .. {days[-1]}"
