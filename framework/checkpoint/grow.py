"""Warm start into larger embedding tables: load a checkpoint whose tables have fewer rows than the model's.

TorchRec has no resize for sharded tables (torchrec issue #2735). Between two days of a ``grow``-mode job the id
vocabulary only appends, so a table's old rows keep their index: the new model is built with the new row counts
(fresh rows initialized as usual), sharded, and then :func:`load_grown` fills every tensor from the checkpoint,
where a tensor saved with fewer rows along dim 0 (a table, or its optimizer state such as Adagrad's sums) gets its
first rows loaded and keeps its fresh values beyond them. Any sharding plan and world size on either side: each rank
loads the **whole** old tensor through DCP (resharding) and copies the rows its own shards cover, so for a moment a
rank holds one full old table in host memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from framework.checkpoint.dcp import require_committed


def _flatten(tree: dict[str, Any], prefix: str = "", parents: dict | None = None) -> dict[str, Any]:
    """Nested dicts -> ``a.b.c`` keys, as DCP names the entries it saves; ``parents[name] = (dict, key)`` records
    where each leaf lives, to put back what DCP loads as a new object (non-tensor values). Lists stay leaves (DCP
    flattens them itself, in place)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + ".", parents))  # type: ignore[arg-type]
        else:
            out[name] = value
            if parents is not None:
                parents[name] = (tree, key)
    return out


def _shape(value: Any) -> tuple[int, ...] | None:
    if hasattr(value, "local_shards"):
        return tuple(value.metadata().size)
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return None


def load_grown(path: str | Path, state: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Fill ``state`` (nested dicts of tensors / ShardedTensors, as for ``Checkpointer.load``) in place.

    Returns ``{key: (saved rows, new rows)}`` for the tensors that grew.

    Raises:
        FileNotFoundError: ``path`` is not a committed checkpoint.
        ValueError: a tensor shrank, or changed in a dimension other than the first (naming the key).
    """
    path = require_committed(path)
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    parents: dict[str, tuple[dict, str]] = {}
    flat = _flatten(state, parents=parents)
    grown: dict[str, torch.Tensor] = {}
    for key, value in flat.items():
        shape, md = _shape(value), saved.get(key)
        if shape is None or not isinstance(md, TensorStorageMetadata) or tuple(md.size) == shape:
            continue
        old = tuple(md.size)
        if len(old) != len(shape) or old[1:] != shape[1:] or old[0] > shape[0]:
            raise ValueError(f"{path}: {key} was saved as {list(old)}, cannot grow into {list(shape)}")
        grown[key] = torch.empty(old, dtype=md.properties.dtype)
    loading = {k: grown.get(k, v) for k, v in flat.items()}
    dcp.load(loading, checkpoint_id=str(path))
    for key, value in loading.items():
        if key in grown:
            _copy_rows(grown[key], flat[key])
        elif value is not flat[key]:  # a non-tensor value DCP loaded as a new object
            container, name = parents[key]
            container[name] = value
    return {k: (int(v.shape[0]), int(_shape(flat[k])[0])) for k, v in grown.items()}  # type: ignore[index]


@torch.no_grad()
def _copy_rows(old: torch.Tensor, target: Any) -> None:
    """Copy ``old`` (full, fewer rows) into the rows of ``target`` it covers: its local shards, or itself."""
    n = old.shape[0]
    if not hasattr(target, "local_shards"):
        target[:n].copy_(old)
        return
    for shard in target.local_shards():
        r0, *rest = shard.metadata.shard_offsets
        rows = min(n - r0, shard.tensor.shape[0])
        if rows <= 0:
            continue
        region = (slice(r0, r0 + rows), *(slice(o, o + s) for o, s in zip(rest, shard.tensor.shape[1:], strict=True)))
        shard.tensor[:rows].copy_(old[region])
