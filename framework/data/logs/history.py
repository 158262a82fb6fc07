"""History state across days, and the featurizer that turns a day of raw logs into training rows.

Design (issue 8, item 3): **lists are materialized per day by a separate, restartable stage.** One process reads
the day's raw rows in time order and, for each row, writes the row plus its history lists computed from every event
strictly before the row's timestamp; then it folds the row into the state. The trainer streams these featurized rows
and needs no state: ranks and DataLoader workers split rows freely, and a row's lists are the same whatever the world
size, since they were computed once, from all events of the day ("cross-rank visibility" is exact by construction).

Per channel (a positive label, e.g. ``click``; one list per channel and table):

* ``item_hist``: the user's most recent ``N = max_item_hist`` positive items with their timestamps (ICR's user
  representation), kept as a ring of N raw ids per user: ``16·N`` bytes per user and channel, plus 8 for the count.
* ``user_hist``: a uniform sample of ``<= M = max_user_hist`` of the item's earlier positive users (UC-Sampling),
  **drawn afresh for each row**. The state keeps a uniform random subset of ``R = item_reservoir >= M`` of the item's
  positive events (bottom-R of a hash key per event: a reservoir sample), ``24·R + 16`` bytes per item and channel.
  A row's draw is exact in distribution: with ``n`` events in the reservoir's stream and ``k`` earlier positives in
  the current chunk, it takes ``h ~ Hypergeometric(n, k, m)`` from the reservoir and ``m - h`` from the chunk
  (``m = min(M, n + k)``), each uniformly, so every earlier positive user is in the list with probability
  ``m / (n + k)``. **Remaining bias**: rows of the same item close in time draw from the same R-subset, so two such
  lists share about ``M²/R`` users instead of ``M²/(n + k)``; with ``R = 4M`` the overlap is a quarter of a list.
  ``R = M`` would make every row of a popular item see nearly the same sample, the bias the seed warns about.
* Activeness: positive engagements (any positive label) per user so far, bucketed into 5 segments by
  ``segment_edges`` (default 10, 30, 100, 300: the seed's "< 10 engagements" bucket first). A row's segment is
  its user's count before the row's chunk.

Items without a positive event for ``evict_after_days`` days leave the state at the end of a day (their lists
restart empty if they come back): memory is bounded by the live inventory, not by the days. Users are never evicted.
The state is a set of numpy arrays saved to one ``.npz`` file, atomically (:meth:`HistoryState.save`).
Deterministic: every random choice is keyed by (seed, day, chunk index), and the chunking is fixed by the config.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from framework.data.jagged import concat_ranges
from framework.data.logs.ids import IdIndex
from framework.data.logs.schema import SECONDS_PER_DAY, LogSchema, day_start_ts
from framework.data.ranking.hashing import stream_keys
from framework.io import atomic_write

logger = logging.getLogger(__name__)

_TAG_RESERVOIR, _TAG_DRAW = 11, 12


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    channels: tuple[str, ...] = ("click",)
    """Positive labels whose events feed the lists, one list per channel and table."""
    max_item_hist: int = 32
    """N: most recent positive items per user (ICR)."""
    max_user_hist: int = 32
    """M: sampled positive users per item and row (UCR)."""
    item_reservoir: int = 128
    """R >= M: uniform subset of each item's positive events kept in the state."""
    segment_edges: tuple[int, ...] = (10, 30, 100, 300)
    """Activeness segment edges on positive engagements so far: len + 1 segments."""
    evict_after_days: int = 30
    chunk_rows: int = 8192
    """Rows featurized at once (fixed: part of what makes the draws deterministic)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("channels must name at least one positive label")
        if min(self.max_item_hist, self.max_user_hist, self.chunk_rows, self.evict_after_days) < 1:
            raise ValueError("max_item_hist, max_user_hist, chunk_rows and evict_after_days must be >= 1")
        if self.item_reservoir < self.max_user_hist:
            raise ValueError(f"item_reservoir ({self.item_reservoir}) must be >= max_user_hist ({self.max_user_hist})")
        if list(self.segment_edges) != sorted(set(self.segment_edges)):
            raise ValueError(f"segment_edges must increase strictly, got {list(self.segment_edges)}")


def _grow(a: np.ndarray, rows: int, fill: int = 0) -> np.ndarray:
    if a.shape[0] >= rows:
        return a
    new = np.full((max(rows, 2 * a.shape[0], 16), *a.shape[1:]), fill, a.dtype)
    new[: a.shape[0]] = a
    return new


@dataclass(frozen=True, eq=False)
class Lists:
    """Jagged lists of a chunk's rows: row e's entries are ``values[offsets[e]:offsets[e+1]]``, oldest first."""

    offsets: np.ndarray
    values: np.ndarray
    ts: np.ndarray


class HistoryState:
    """Per-user item rings, per-item user reservoirs, activeness counts (module docstring)."""

    def __init__(self, cfg: HistoryConfig, positives: tuple[str, ...] | None = None) -> None:
        """``positives``: the labels that count as engagements for activeness (default: the log schema's)."""
        self.cfg = cfg
        self.positives = tuple(positives) if positives is not None else LogSchema().positives
        C, N, R = len(cfg.channels), cfg.max_item_hist, cfg.item_reservoir
        self.users, self.items = IdIndex(), IdIndex()
        self.u_items = np.zeros((0, C, N), np.int64)
        self.u_ts = np.zeros((0, C, N), np.int64)
        self.u_count = np.zeros((0, C), np.int64)
        self.u_engaged = np.zeros(0, np.int64)
        self.i_users = np.zeros((0, C, R), np.int64)
        self.i_ts = np.zeros((0, C, R), np.int64)
        self.i_key = np.zeros((0, C, R), np.uint64)
        self.i_count = np.zeros((0, C), np.int64)
        self.i_last_ts = np.zeros(0, np.int64)
        self.days: list[str] = []
        """Days folded in, in order."""
        self.last_ts = np.iinfo(np.int64).min
        """Time of the latest row folded in: the next chunk must start after it (chunks never split a second)."""

    # ------------------------------------------------------------------------------------------- persistence

    def nbytes(self) -> dict[str, int]:
        users = [self.u_items, self.u_ts, self.u_count, self.u_engaged]
        items = [self.i_users, self.i_ts, self.i_key, self.i_count, self.i_last_ts]
        return {
            "users": len(self.users),
            "items": len(self.items),
            "bytes_per_user": sum(a[:1].nbytes for a in users) + 8,
            "bytes_per_item": sum(a[:1].nbytes for a in items) + 8,
            "bytes": sum(a[: len(self.users)].nbytes for a in users)
            + sum(a[: len(self.items)].nbytes for a in items)
            + 8 * (len(self.users) + len(self.items)),
        }

    def save(self, path: str | Path) -> None:
        """One .npz, written to ``path.tmp`` and renamed (fsynced): a crash leaves the old file or the new one."""
        nu, ni = len(self.users), len(self.items)
        with atomic_write(path, "wb") as f:
            np.savez(
                f, user_ids=self.users.ids, item_ids=self.items.ids,
                u_items=self.u_items[:nu], u_ts=self.u_ts[:nu], u_count=self.u_count[:nu], u_engaged=self.u_engaged[:nu],
                i_users=self.i_users[:ni], i_ts=self.i_ts[:ni], i_key=self.i_key[:ni], i_count=self.i_count[:ni],
                i_last_ts=self.i_last_ts[:ni], days=np.array(self.days, dtype=str), last_ts=np.int64(self.last_ts),
                config=np.array(repr(sorted(asdict(self.cfg).items()))),
            )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path, cfg: HistoryConfig, positives: tuple[str, ...] | None = None) -> HistoryState:
        """Read a saved state; ``ValueError`` if it was built with another history config."""
        with np.load(path, allow_pickle=False) as z:
            saved = str(z["config"])
            if saved != repr(sorted(asdict(cfg).items())):
                raise ValueError(f"{path}: history state built with {saved}, not with {sorted(asdict(cfg).items())}")
            state = cls(cfg, positives)
            state.users, state.items = IdIndex(z["user_ids"]), IdIndex(z["item_ids"])
            for name in ("u_items", "u_ts", "u_count", "u_engaged", "i_users", "i_ts", "i_key", "i_count",
                         "i_last_ts"):  # fmt: skip
                setattr(state, name, z[name].copy())
            state.days = [str(d) for d in z["days"]]
            state.last_ts = int(z["last_ts"])
        return state

    # ------------------------------------------------------------------------------------------- featurizing

    def _ensure(self, nu: int, ni: int) -> None:
        for name in ("u_items", "u_ts", "u_count", "u_engaged"):
            setattr(self, name, _grow(getattr(self, name), nu))
        for name in ("i_users", "i_ts", "i_key", "i_count", "i_last_ts"):
            setattr(self, name, _grow(getattr(self, name), ni))

    def featurize(
        self, cols: dict[str, np.ndarray], positions: np.ndarray, day_index: int, chunk_index: int
    ) -> dict[str, object]:
        """Lists (and segment) of a chunk of time-sorted rows from the state, then fold the rows in.

        Returns ``{"segment": int8 [E], "item_hist/<ch>": Lists, "user_hist/<ch>": Lists}`` in row order.
        ``positions`` (the rows' positions in the day) key the reservoir hash of each event.
        """
        cfg = self.cfg
        ts = np.asarray(cols["ts"], np.int64)
        E = ts.size
        if E and ts[0] <= self.last_ts:
            raise ValueError(
                f"chunk starts at ts {ts[0]}, not after the state's latest row ({self.last_ts}): a chunk may not split "
                "a second (the state would hold rows of the second the chunk's rows are in); use aligned_chunks()"
            )
        u = self.users.add(cols["user_id"])
        i = self.items.add(cols["item_id"])
        self._ensure(len(self.users), len(self.items))
        out: dict[str, object] = {
            "segment": np.searchsorted(np.asarray(cfg.segment_edges), self.u_engaged[u], side="right").astype(np.int8)
        }
        # Dense time rank inside the chunk: "strictly before" compares ranks, so equal timestamps never see each other.
        rank = np.concatenate([[0], np.cumsum(ts[1:] != ts[:-1])]).astype(np.int64) if E else ts
        rng = np.random.default_rng([cfg.seed, _TAG_DRAW, day_index, chunk_index])
        pos_by_channel = [np.flatnonzero(np.asarray(cols[channel]) == 1) for channel in cfg.channels]
        for c, (channel, pos) in enumerate(zip(cfg.channels, pos_by_channel, strict=True)):
            out[f"item_hist/{channel}"] = self._item_lists(c, u, i, ts, rank, pos)
            out[f"user_hist/{channel}"] = self._user_lists(c, u, i, ts, rank, pos, rng)
        for c, pos in enumerate(pos_by_channel):  # folded only after every channel's lists: they see earlier rows only
            keys = stream_keys(cfg.seed, _TAG_RESERVOIR, c, day_index, positions[pos])
            self._fold(
                c, u[pos], i[pos], ts[pos], keys, np.asarray(cols["user_id"])[pos], np.asarray(cols["item_id"])[pos]
            )
        engaged = np.zeros(E, np.int64)
        for label in self.positives:
            engaged |= np.asarray(cols[label], np.int64)
        np.add.at(self.u_engaged, u, engaged)
        if E:
            touched = np.unique(np.concatenate(pos_by_channel))
            np.maximum.at(self.i_last_ts, i[touched], ts[touched])
            self.last_ts = int(ts[-1])
        return out

    @staticmethod
    def _earlier_in_chunk(
        owner: np.ndarray, rank: np.ndarray, pos: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each row: its owner's positives of this chunk strictly earlier, as a [start, end) range of ``order``
        (the chunk's positive rows sorted by owner, then time)."""
        T = int(rank[-1]) + 2 if rank.size else 1
        order = pos[np.lexsort((pos, owner[pos]))]  # by owner, then row (= time) order
        keys = owner[order] * T + rank[order]
        start = np.searchsorted(keys, owner * T, side="left")
        end = np.searchsorted(keys, owner * T + rank, side="left")
        return order, start, end

    def _item_lists(self, c: int, u: np.ndarray, i: np.ndarray, ts: np.ndarray, rank: np.ndarray,
                    pos: np.ndarray) -> Lists:  # fmt: skip
        N = self.cfg.max_item_hist
        order, start, end = self._earlier_in_chunk(u, rank, pos)
        fresh = np.minimum(end - start, N)
        stored = np.minimum(self.u_count[u, c], N)
        from_state = np.minimum(stored, N - fresh)
        lengths = from_state + fresh
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        row = np.repeat(np.arange(u.size), lengths)
        j = np.arange(int(offsets[-1])) - offsets[row]  # 0..len-1 within each list, oldest first
        is_state = j < from_state[row]
        values = np.empty(j.size, np.int64)
        times = np.empty(j.size, np.int64)
        # Ring slot of the k-th most recent stored entry, oldest of those taken first.
        rs = row[is_state]
        slot = (self.u_count[u[rs], c] - from_state[rs] + j[is_state]) % N
        values[is_state] = self.u_items[u[rs], c, slot]
        times[is_state] = self.u_ts[u[rs], c, slot]
        rf = row[~is_state]
        src = order[end[rf] - fresh[rf] + (j[~is_state] - from_state[rf])]
        values[~is_state] = self.items.ids[i[src]]
        times[~is_state] = ts[src]
        return Lists(offsets, values, times)

    def _user_lists(self, c: int, u: np.ndarray, i: np.ndarray, ts: np.ndarray, rank: np.ndarray, pos: np.ndarray,
                    rng: np.random.Generator) -> Lists:  # fmt: skip
        M, R = self.cfg.max_user_hist, self.cfg.item_reservoir
        order, start, end = self._earlier_in_chunk(i, rank, pos)
        k = end - start
        n = self.i_count[i, c]
        r = np.minimum(n, R)
        m = np.minimum(M, n + k)
        h = np.zeros_like(m)
        some = m > 0
        h[some] = rng.hypergeometric(n[some], k[some], m[some])
        # Uniform h-of-r from the reservoir and (m-h)-of-k from the chunk (Floyd's algorithm: O(M²) per row,
        # whatever r and k are; a popular item can have thousands of same-chunk positives).
        rr, slot = floyd_sample(r, h, rng)
        res_users, res_ts = self.i_users[i[rr], c, slot], self.i_ts[i[rr], c, slot]
        rn, pick = floyd_sample(k, m - h, rng)
        src = order[start[rn] + pick]
        rows = np.concatenate([rr, rn])
        users = np.concatenate([res_users, self.users.ids[u[src]]])
        times = np.concatenate([res_ts, ts[src]])
        o = np.lexsort((times, rows))  # per row, oldest first
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=i.size))]).astype(np.int64)
        return Lists(offsets, users[o], times[o])

    def _fold(self, c: int, u: np.ndarray, i: np.ndarray, ts: np.ndarray, keys: np.ndarray, user_raw: np.ndarray,
              item_raw: np.ndarray) -> None:  # fmt: skip
        """Append positives (time order) to the users' rings and merge them into the items' reservoirs.

        ``u``/``i`` index the state's rows; the rings and reservoirs store raw ids (item rows move on eviction)."""
        N, R = self.cfg.max_item_hist, self.cfg.item_reservoir
        if not u.size:
            return
        # Rings: the k-th positive of user x in this chunk goes to slot (count + k) % N; only the last N matter.
        o = np.argsort(u, kind="stable")
        us = u[o]
        first = np.searchsorted(us, us, side="left")
        k = np.arange(us.size) - first
        total = np.bincount(us, minlength=self.u_count.shape[0])
        keep = k >= total[us] - N
        slot = (self.u_count[us[keep], c] + k[keep]) % N
        self.u_items[us[keep], c, slot] = item_raw[o][keep]
        self.u_ts[us[keep], c, slot] = ts[o][keep]
        self.u_count[:, c] += total
        # Reservoirs: keep the R smallest keys among the stored entries and the new events of each touched item.
        items = np.unique(i)
        have = np.minimum(self.i_count[items, c], R)
        rows_old = np.repeat(items, have)
        slots_old = concat_ranges(np.zeros_like(have), have)
        cand_item = np.concatenate([rows_old, i])
        cand_key = np.concatenate([self.i_key[rows_old, c, slots_old], keys])
        cand_user = np.concatenate([self.i_users[rows_old, c, slots_old], user_raw])
        cand_ts = np.concatenate([self.i_ts[rows_old, c, slots_old], ts])
        o = np.lexsort((cand_key, cand_item))
        ci = cand_item[o]
        within = np.arange(ci.size) - np.searchsorted(ci, ci, side="left")
        take = within < R
        dst_item, dst_slot = ci[take], within[take]
        self.i_key[dst_item, c, dst_slot] = cand_key[o][take]
        self.i_users[dst_item, c, dst_slot] = cand_user[o][take]
        self.i_ts[dst_item, c, dst_slot] = cand_ts[o][take]
        np.add.at(self.i_count[:, c], i, 1)

    def evict(self, now_ts: int) -> int:
        """Drop items with no positive event for ``evict_after_days``; returns how many. Item indices change."""
        keep = self.i_last_ts[: len(self.items)] >= now_ts - self.cfg.evict_after_days * SECONDS_PER_DAY
        dropped = int((~keep).sum())
        if dropped:
            for name in ("i_users", "i_ts", "i_key", "i_count", "i_last_ts"):
                setattr(self, name, getattr(self, name)[: len(self.items)][keep])
            self.items = IdIndex(self.items.ids[keep])
        return dropped


def floyd_sample(n: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniform ``s[e]``-subset of ``range(n[e])`` for every row e (needs ``s <= n``), by Floyd's algorithm.

    Returns ``(rows, picks)``: flat, row-major (each row's picks together, in no particular order). Step t of
    Floyd's algorithm (t < s) draws ``x ~ U{0..j}`` with ``j = n - s + t`` and takes ``j`` instead when ``x`` was
    taken already: every s-subset is equally likely. Vectorized over rows; ``max(s)`` steps of O(rows·max(s)).
    """
    n, s = np.asarray(n, np.int64), np.asarray(s, np.int64)
    if (s > n).any() or (s < 0).any():
        raise ValueError("floyd_sample needs 0 <= s <= n")
    width = int(s.max()) if s.size else 0
    chosen = np.full((s.size, max(width, 1)), -1, np.int64)
    for t in range(width):
        active = np.flatnonzero(t < s)
        j = n[active] - s[active] + t
        x = np.floor(rng.random(active.size) * (j + 1)).astype(np.int64)
        taken = (chosen[active, :t] == x[:, None]).any(axis=1)
        chosen[active, t] = np.where(taken, j, x)
    rows = np.repeat(np.arange(s.size), s)
    return rows, chosen[:, :width][np.arange(width)[None, :] < s[:, None]] if width else np.empty(0, np.int64)


def aligned_chunks(
    chunks: Iterator[tuple[dict[str, np.ndarray], np.ndarray]], chunk_rows: int
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Re-cut time-sorted ``(columns, positions)`` chunks into chunks of ``chunk_rows`` rows, each extended to the end
    of its last second: rows of one timestamp always share a chunk, so the state only ever holds earlier rows."""
    buf_cols: dict[str, np.ndarray] | None = None
    buf_pos = np.empty(0, np.int64)
    for cols, positions in chunks:
        if buf_cols is None:
            buf_cols = {c: np.asarray(v) for c, v in cols.items()}
        else:
            buf_cols = {c: np.concatenate([buf_cols[c], np.asarray(v)]) for c, v in cols.items()}
        buf_pos = np.concatenate([buf_pos, positions])
        while buf_pos.size > chunk_rows:
            ts = buf_cols["ts"]
            cut = int(np.searchsorted(ts, ts[chunk_rows - 1], side="right"))
            if cut == ts.size:
                break  # the second may continue in the next input chunk
            yield {c: v[:cut] for c, v in buf_cols.items()}, buf_pos[:cut]
            buf_cols = {c: v[cut:] for c, v in buf_cols.items()}
            buf_pos = buf_pos[cut:]
    if buf_cols is not None and buf_pos.size:
        yield buf_cols, buf_pos


def featurize_day(
    state: HistoryState, chunks: Iterator[tuple[dict[str, np.ndarray], np.ndarray]], day: dt.date, day_index: int
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, dict[str, object]]]:
    """Featurize a day's time-sorted rows (any ``(columns, positions)`` chunking: they are re-cut by
    :func:`aligned_chunks`) and fold them into ``state``; yields ``(columns, positions, lists)`` per chunk. Evicts
    stale items at the end."""
    for chunk_index, (cols, positions) in enumerate(aligned_chunks(chunks, state.cfg.chunk_rows)):
        yield cols, positions, state.featurize(cols, positions, day_index, chunk_index)
    dropped = state.evict(day_start_ts(day) + SECONDS_PER_DAY)
    state.days.append(day.isoformat())
    if dropped:
        logger.info(
            "history state: dropped %d items without a positive event in %d days", dropped, state.cfg.evict_after_days
        )
