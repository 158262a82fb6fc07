"""Typed config sections. YAML holds values; these dataclasses validate them.

Every ``__post_init__`` raises ``ValueError`` naming the field; the loader adds the section path and file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Formulation = Literal["icr", "ucr", "hybrid"]
ShardingType = Literal["auto", "table_wise", "column_wise", "row_wise", "data_parallel"]


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(kw_only=True, slots=True)
class SyntheticConfig:
    num_users: int = 2000
    """Distinct users in the generated world."""
    num_items: int = 1000
    """Distinct items in the generated world."""
    num_events: int = 60_000
    """Interactions (examples) to generate."""
    tasks: list[str] = field(default_factory=lambda: ["like"])
    """Task names; one label column and one head per task. The first task's positives form the histories."""
    days: int = 1
    """Days the events are spread over (relative-time encoding sees real gaps)."""
    seed: int = 0
    """Generator seed (independent of the training seed)."""

    def __post_init__(self) -> None:
        _positive(self, "num_users", "num_items", "num_events", "days")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {self.tasks}")


@dataclass(kw_only=True, slots=True)
class DataConfig:
    source: Literal["movielens", "synthetic"] = "synthetic"
    """Where examples come from: a MovieLens ratings file/dir (``path``) or the built-in generator."""
    path: str | None = None
    """MovieLens directory (ml-100k ``u.data``; ml-20m/25m ``ratings.csv``) or file. Required for movielens."""
    format: Literal["auto", "ml-100k", "ratings-csv"] = "auto"
    """MovieLens file format; auto detects from the file name."""
    positive_threshold: float = 4.0
    """Rating at or above which an example is positive (seed protocol: 4)."""
    max_item_hist: int = 512
    """N: most recent positively-engaged items of the user (item-centric channel)."""
    max_user_hist: int = 512
    """M: users who engaged the item positively, reservoir-sampled per interaction (user-centric channel)."""
    num_time_buckets: int = 32
    """Log2-minute buckets of (example time - history event time) for the relative-time encoding."""
    split: Literal["chronological", "random"] = "chronological"
    """4:1 split: chronological (last 20% of time is test) or random (seeded)."""
    test_fraction: float = 0.2
    """Fraction of examples held out for test."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Generator settings, used when source=synthetic."""

    def __post_init__(self) -> None:
        if self.source == "movielens" and not self.path:
            raise ValueError("path is required when source=movielens")
        _positive(self, "max_item_hist", "max_user_hist", "num_time_buckets")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    formulation: Formulation = "ucr"
    """icr: item embeddings, user = its item list; ucr: user embeddings, item = its user list; hybrid: both."""
    embedding_dim: int = 64
    """Embedding dimension of every table (seed default 192)."""
    pooling: Literal["attention", "sum", "mean"] = "attention"
    """Aggregation of a history list: targeted multi-head attentive pooling, or parameter-free sum/mean."""
    num_heads: int = 2
    """Attention heads (embedding_dim must be divisible by it)."""
    time_encoding: bool = True
    """Add a learned relative-time (log-minute bucket) embedding to every history element."""
    hash_size: dict[str, int | None] = field(default_factory=lambda: {"item": 100_000, "user": 100_000})
    """Rows per table after parameter hashing (keys: item, user); null = exact vocabulary, no hashing."""
    cross_layers: int = 2
    """DCN-v2 cross layers over [target embeddings, pooled vectors, dense features]."""
    cross_low_rank: int | None = None
    """Low-rank DCN-v2 (rank r) instead of full-rank cross matrices; null = full rank."""
    head_hidden: list[int] = field(default_factory=lambda: [128, 64])
    """Hidden sizes of each task's MLP head."""

    def __post_init__(self) -> None:
        _positive(self, "embedding_dim", "num_heads", "cross_low_rank")
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim={self.embedding_dim} is not divisible by num_heads={self.num_heads}")
        if self.cross_layers < 0:
            raise ValueError(f"cross_layers must be >= 0, got {self.cross_layers}")
        unknown = set(self.hash_size) - {"item", "user"}
        if unknown:
            raise ValueError(f"hash_size has unknown tables {sorted(unknown)}; tables are item, user")
        for table, size in self.hash_size.items():
            if size is not None and size <= 0:
                raise ValueError(f"hash_size.{table} must be > 0 or null, got {size}")
        if any(h <= 0 for h in self.head_hidden):
            raise ValueError(f"head_hidden sizes must be > 0, got {self.head_hidden}")


@dataclass(kw_only=True, slots=True)
class ShardingConfig:
    sharding_type: ShardingType = "auto"
    """Embedding sharding for every table: auto (planner's choice), table_wise, column_wise, data_parallel
    (CPU and GPU) or row_wise (GPU/nccl only)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available (backend nccl), else cpu (backend gloo)."""


@dataclass(kw_only=True, slots=True)
class OptimConfig:
    sparse: Literal["sgd", "adagrad", "rowwise_adagrad", "adam"] = "adagrad"
    """Optimizer fused into the embedding backward (FBGEMM TBE)."""
    sparse_lr: float = 0.05
    """Learning rate of the sparse (embedding) optimizer."""
    dense: Literal["sgd", "adam", "adamw", "adagrad"] = "adam"
    """Optimizer of the dense parameters (pooling, cross net, heads)."""
    dense_lr: float = 1e-3
    """Learning rate of the dense optimizer."""
    weight_decay: float = 0.0
    """Dense weight decay."""

    def __post_init__(self) -> None:
        _positive(self, "sparse_lr", "dense_lr")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    batch_size: int = 256
    """Examples per rank per step (global batch = batch_size * world_size)."""
    eval_batch_size: int = 1024
    """Examples per rank per evaluation step."""
    epochs: int = 1
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (across epochs); null = run all epochs."""
    seed: int = 0
    """Seed of parameter init, shuffling and UC reservoir draws."""
    eval_max_examples: int | None = None
    """Evaluate on the first K test examples in time order only; null = all."""
    run_dir: str = "runs/ranking"
    """Run directory: resolved config, checkpoints, metrics JSON, TensorBoard events."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many steps (and at the end); null = only at the end."""
    keep_checkpoints: int = 2
    """Committed checkpoints kept in run_dir/checkpoints (oldest removed first)."""
    resume: bool = True
    """Resume from the newest committed checkpoint in run_dir if there is one."""
    log_every: int = 20
    """Steps between TensorBoard scalar writes."""
    prefetch_batches: int = 2
    """Training batches built ahead in a background thread (0 = build them on the training thread)."""
    progress: bool = True
    """Show a progress bar (rank 0) with examples/s."""
    tensorboard: bool = True
    """Write TensorBoard scalars to run_dir/tb."""

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "eval_batch_size", "epochs", "max_steps", "eval_max_examples")
        _positive(self, "checkpoint_every", "keep_checkpoints", "log_every")
        if self.prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {self.prefetch_batches}")


@dataclass(kw_only=True, slots=True)
class RankingJobConfig:
    family: Literal["ranking"] = "ranking"
    """Trainer family (selects this schema and the ranking trainer)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


JOB_SCHEMAS: dict[str, type] = {"ranking": RankingJobConfig}
"""family name → job config schema. New trainer families register here."""
