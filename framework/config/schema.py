"""Typed config sections. YAML holds values; these dataclasses validate them.

Every ``__post_init__`` raises ``ValueError`` naming the field; the loader adds the section path and file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scalefirst_kernels import ops

from framework.active.dao import DAOConfig
from framework.active.mmcsal import MMCSALConfig
from framework.active.train import FitConfig
from framework.data.logs.clustering import ClusteringConfig
from framework.data.logs.history import HistoryConfig
from framework.models.clip.model import CLIPConfig
from framework.models.lvlm.lora import LoRAConfig
from framework.models.lvlm.model import LVLMConfig

Formulation = Literal["icr", "ucr", "hybrid"]
ShardingType = Literal["auto", "table_wise", "column_wise", "row_wise", "data_parallel"]
ResumeMode = Literal["auto", "never", "force"]


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
    split: Literal["chronological", "random", "user"] = "chronological"
    """Protocol, each leakage-free (no test label in a train example's features): chronological (last 20% of
    time is test), random (seeded 4:1 split of events; train lists use train events only) or user (every event
    of 20% of the users is test, as in DIN and the UCR authors' code; train lists exclude test users)."""
    test_fraction: float = 0.2
    """Fraction of examples (of users, for split=user) held out for test."""
    split_seed: int = 0
    """Seed of the random/user split (the training seed does not move the split)."""
    holdout: Literal["test", "validation"] = "test"
    """Evaluate on the test split, or (for tuning) drop the test events and evaluate on a validation split
    carved out of train by the same protocol."""
    validation_fraction: float = 0.1
    """Fraction of the train events (users) held out as validation when holdout=validation."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Generator settings, used when source=synthetic."""

    def __post_init__(self) -> None:
        if self.source == "movielens" and not self.path:
            raise ValueError("path is required when source=movielens")
        _positive(self, "max_item_hist", "max_user_hist", "num_time_buckets")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.split_seed < 0:
            raise ValueError(f"split_seed must be >= 0, got {self.split_seed}")


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
    attention_backend: ops.Backend = "auto"
    """Kernel of the attention pooling (``scalefirst_kernels.ops.jagged_attention_pooling``): reference (PyTorch),
    triton (fused kernel; CUDA, or CPU under TRITON_INTERPRET=1) or auto (triton on CUDA, reference on CPU;
    logged once)."""
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
        try:
            ops.check_backend("jagged_attention_pooling", self.attention_backend)
        except ops.BackendUnavailableError as e:
            raise ValueError(f"attention_backend={self.attention_backend!r}: {e}") from e
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
    global_batch_size: int = 512
    """Examples per optimizer step over all ranks (each rank takes global_batch_size / world_size, so it must
    divide by the world size). The data order, and so a run, is the same at any world size."""
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
    eval_every_epochs: int | None = None
    """Also evaluate on the holdout (test or validation split) after every this many epochs, into
    metrics.json ``epoch_evals`` (the final evaluation is always its last entry); null = only at the end."""
    run_dir: str = "runs/ranking"
    """Run directory: resolved config, checkpoints, metrics JSON, TensorBoard events."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many steps (and at the end); null = only at the end."""
    keep_checkpoints: int = 2
    """Committed checkpoints kept in run_dir/checkpoints (oldest removed first)."""
    resume: ResumeMode = "auto"
    """auto: resume from the newest committed checkpoint in run_dir if there is one, refusing one whose config
    differs in anything but the keys that may change on resume (steps/epochs, logging, paths, sharding);
    never: start from scratch; force: resume whatever differs (the differences are logged)."""
    log_every: int = 20
    """Steps between TensorBoard scalar writes."""
    prefetch_batches: int = 2
    """Training batches built ahead in a background thread (0 = build them on the training thread)."""
    progress: bool = True
    """Show a progress bar (rank 0) with examples/s."""
    tensorboard: bool = True
    """Write TensorBoard scalars to run_dir/tb."""

    def __post_init__(self) -> None:
        _positive(self, "global_batch_size", "eval_batch_size", "epochs", "max_steps", "eval_max_examples")
        _positive(self, "checkpoint_every", "keep_checkpoints", "log_every", "eval_every_epochs")
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


# ---------------------------------------------------------------------------------------------- clip family


@dataclass(kw_only=True, slots=True)
class ClipDataConfig:
    train_shards: str
    """Training shards: a directory (every *.tar in it), a brace pattern (``shards/{00000..00099}.tar``) or a
    text file listing one shard path per line (relative paths are relative to that file)."""
    val_shards: str | None = None
    """Held-out shards (same forms) for the end-of-run retrieval/alignment metrics; null = none."""
    samples_per_epoch: int | None = None
    """Nominal samples in one epoch (global). Null = count the shards' members once at start-up."""
    resampled: bool = False
    """Draw shards with replacement (seeded, per rank and worker) instead of deterministic shuffled passes."""
    shuffle_buffer: int = 1000
    """Samples in each worker's shuffle buffer (0 = no sample shuffling)."""
    workers: int = 2
    """DataLoader worker processes per rank (0 = load on the training process)."""
    tokenizer: Literal["byte", "clip_bpe"] = "byte"
    """Caption tokenizer: UTF-8 bytes (no vocabulary file) or CLIP's BPE (open_clip's ids, cleaning included)."""
    vocab_path: str | None = None
    """CLIP BPE merges file (bpe_simple_vocab_16e6.txt.gz) for tokenizer=clip_bpe; null = the copy shipped with
    open-clip-torch (installed by launch/setup.sh)."""
    max_bad_samples: int | None = 100
    """Bad samples (undecodable image, missing/empty caption) tolerated per rank before the run fails;
    null = unlimited (still counted and logged)."""
    max_bad_fraction: float = 0.01
    """The run also fails when more than this fraction of a rank's samples so far were bad (checked after 1000)."""

    def __post_init__(self) -> None:
        _positive(self, "samples_per_epoch")
        if self.shuffle_buffer < 0 or self.workers < 0:
            raise ValueError(f"shuffle_buffer and workers must be >= 0, got {self.shuffle_buffer}, {self.workers}")
        if self.tokenizer == "clip_bpe" and not self.vocab_path:
            from framework.data.clip.bpe import resolve_vocab_path

            resolve_vocab_path(None)  # raises (naming data.vocab_path) when open-clip-torch is missing too
        if self.max_bad_samples is not None and self.max_bad_samples < 0:
            raise ValueError(f"max_bad_samples must be >= 0 or null, got {self.max_bad_samples}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


@dataclass(kw_only=True, slots=True)
class ClipLossConfig:
    kind: Literal["clip", "rankclip"] = "rankclip"
    """clip: InfoNCE only (eq. 4.2); rankclip: + Plackett-Luce ranking consistency."""
    lambda_in: float = 1.0 / 16
    """In-modal weight (rankclip; 0 gives RankCLIP_C)."""
    lambda_cross: float = 1.0 / 16
    """Cross-modal weight (rankclip; 0 gives RankCLIP_I)."""
    decay: Literal["log", "none"] = "log"
    """Rank weights mu_k = 1/log(k+1) (thesis) or none (plain ListMLE)."""
    symmetric_in_modal: bool = False
    """Also rank v v^T by t t^T and average both directions."""
    scale_by_temperature: bool = False
    """Ego scores multiplied by the logit scale (authors' code) instead of raw cosines (thesis)."""
    tie_break: Literal["stable", "random"] = "stable"
    """Order of tied reference scores."""
    per_position: bool = False
    """Plackett-Luce terms as a mean over ranked positions (divided by the global batch) instead of the thesis'
    sum; with the sum and lambda=1/16 the ranking terms outweigh InfoNCE ~5x at batch 128 (see README)."""
    lambda_ramp_steps: int = 0
    """Ramp lambda_in and lambda_cross linearly from 0 to their values over this many optimizer steps (the
    authors' code ramps its rank weight over epochs); 0 = full weights from the first step."""
    local_loss: bool = False
    """Each rank's loss uses only its own rows against the gathered columns (open_clip local-loss); the
    Plackett-Luce terms then rank its rows only. Default: the full global-batch loss on every rank."""
    kernel_backend: ops.Backend = "auto"
    """Kernel of the Plackett-Luce terms (``scalefirst_kernels.ops.plackett_luce_loss``): reference, triton or
    auto (triton on CUDA, reference on CPU; logged once)."""

    def __post_init__(self) -> None:
        if self.lambda_in < 0 or self.lambda_cross < 0:
            raise ValueError(f"lambda_in/lambda_cross must be >= 0, got {self.lambda_in}, {self.lambda_cross}")
        try:
            ops.check_backend("plackett_luce_loss", self.kernel_backend)
        except ops.BackendUnavailableError as e:
            raise ValueError(f"kernel_backend={self.kernel_backend!r}: {e}") from e
        if self.lambda_ramp_steps < 0:
            raise ValueError(f"lambda_ramp_steps must be >= 0, got {self.lambda_ramp_steps}")


@dataclass(kw_only=True, slots=True)
class EngineConfig:
    backend: Literal["deepspeed", "ddp"] = "deepspeed"
    """deepspeed: ZeRO through DeepSpeed; ddp: torch DistributedDataParallel (the comparison baseline)."""
    zero_stage: int = 2
    """ZeRO stage 0-3 (deepspeed only): 1 shards optimizer state, 2 + gradients, 3 + parameters."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision (bf16/fp16 keep fp32 master weights; fp16 uses dynamic loss scaling)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (global batch = batch_size * world_size * grad_accum_steps)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this; null = no clipping."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available (nccl), else cpu (gloo, DS_ACCELERATOR=cpu)."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.backend == "ddp" and self.zero_stage:
            raise ValueError(f"zero_stage={self.zero_stage} needs backend=deepspeed (ddp has no ZeRO)")
        _positive(self, "grad_accum_steps", "grad_clip")


@dataclass(kw_only=True, slots=True)
class ClipOptimConfig:
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.1
    """Decoupled weight decay on weights with >= 2 dims; gains, biases and the logit scale are not decayed."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW epsilon."""
    warmup_steps: int = 10_000
    """Linear warm-up steps (optimizer steps)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """LR after warm-up: cosine decay to 0 at train.max_steps, or constant."""

    def __post_init__(self) -> None:
        _positive(self, "lr", "eps")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"weight_decay and warmup_steps must be >= 0, got {self.weight_decay}, {self.warmup_steps}"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")


@dataclass(kw_only=True, slots=True)
class ClipTrainConfig:
    batch_size: int = 64
    """Samples per rank per micro-batch."""
    max_steps: int
    """Optimizer steps to train (streaming data has no natural end)."""
    seed: int = 0
    """Seed of parameter init, shard order, shuffle buffers and augmentation."""
    run_dir: str = "runs/clip"
    """Run directory: resolved config, checkpoints, metrics JSON, TensorBoard events, final fp32 model."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many optimizer steps (and at the end); null = only at the end."""
    keep_checkpoints: int = 2
    """Committed checkpoints kept (oldest removed first)."""
    resume: ResumeMode = "auto"
    """auto: resume from the newest committed checkpoint in run_dir (any world size) if there is one, refusing
    one whose config differs in anything but the keys that may change on resume (max_steps, logging, paths,
    engine backend/stage); never: start from scratch; force: resume whatever differs (logged)."""
    log_every: int = 10
    """Optimizer steps between scalar logs."""
    progress: bool = True
    """Progress bar on rank 0 with samples/s."""
    tensorboard: bool = True
    """Write TensorBoard scalars to run_dir/tb."""

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every")


@dataclass(kw_only=True, slots=True)
class ClipJobConfig:
    family: Literal["clip"] = "clip"
    """Trainer family (selects this schema and the CLIP/RankCLIP trainer)."""
    data: ClipDataConfig
    model: CLIPConfig = field(default_factory=CLIPConfig)
    loss: ClipLossConfig = field(default_factory=ClipLossConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)
    train: ClipTrainConfig

    def __post_init__(self) -> None:
        need = TOKENIZER_VOCAB[self.data.tokenizer]
        if self.model.vocab_size < need:
            raise ValueError(
                f"model.vocab_size={self.model.vocab_size} is smaller than the {self.data.tokenizer} tokenizer's "
                f"vocabulary ({need}); set model.vocab_size={need}"
            )


TOKENIZER_VOCAB = {"byte": 259, "clip_bpe": 49408}
"""Vocabulary size of each data.tokenizer (the text tower's embedding table must cover it)."""


# --------------------------------------------------------------------------------------------- daily family


@dataclass(kw_only=True, slots=True)
class GenerateConfig:
    """The synthetic production world written when ``logs.root`` holds no day (framework/data/logs/generator.py)."""

    days: int = 0
    """Days to generate when the log root is empty; 0 = never generate (a missing root is an error)."""
    num_users: int = 20_000
    events_per_day: int = 200_000
    new_items_per_day: int = 2_000
    start_day: str = "2026-01-01"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.days < 0:
            raise ValueError(f"days must be >= 0, got {self.days}")
        _positive(self, "num_users", "events_per_day", "new_items_per_day")


@dataclass(kw_only=True, slots=True)
class LogsConfig:
    root: str = "runs/daily/logs"
    """Log root: day=YYYY-MM-DD/part-NNNNN.parquet (a local path or a pyarrow.fs URI)."""
    labels: list[str] = field(default_factory=lambda: ["skip", "click", "like", "share", "follow", "complete"])
    """Engagement label columns, one task each (framework/data/logs/schema.py)."""
    negative: str = "skip"
    """The negative label among ``labels``."""
    format: Literal["parquet", "webdataset"] = "parquet"
    """part-NNNNN.parquet, or part-NNNNN.tar written by `scalefirst convert-logs --to webdataset`."""
    max_bad_records: int = 0
    """Bad rows/row groups/files tolerated per day before the day fails (0: fail on the first, naming it)."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        if self.negative not in self.labels:
            raise ValueError(f"negative {self.negative!r} is not one of labels {self.labels}")
        if self.max_bad_records < 0:
            raise ValueError(f"max_bad_records must be >= 0, got {self.max_bad_records}")


@dataclass(kw_only=True, slots=True)
class DailyTrainConfig:
    run_dir: str = "runs/daily/job"
    """The job directory: days/<D>/ (committed checkpoints, state, vocabularies, metrics), history.jsonl, LOCK."""
    global_batch_size: int = 1024
    """Rows per optimizer step over all ranks (the day's last batch is shorter; ranks pad to an equal size)."""
    eval_examples: int = 10_000
    """Evaluate each day's model on the first this many rows of the next day (the seed's protocol)."""
    eval_windows: int = 6
    """Also evaluate on this many equal time windows of the next day (a frozen model's decay, fig. 3.6)."""
    window_examples: int = 2_000
    """Rows per window (its first ones)."""
    eval_batch_size: int = 2048
    prefetch_batches: int = 2
    """Training batches read and built ahead in a background thread (0: on the training thread)."""
    checkpoint_every: int | None = None
    """Save a mid-day checkpoint every this many steps (a killed run resumes there); null = only at day end."""
    num_time_buckets: int = 32
    locality: bool = False
    """Locality batching (seed §3.5.3): rows of one owner (ICR: user, UCR: item) in a rank's batch share the owner's
    first list, looked up and projected once (framework/data/logs/batches.py); evaluation always uses exact lists."""
    seed: int = 0
    resume: ResumeMode = "auto"
    """A later day must use the job's config (job_dir/config.yaml) up to the keys that may change; force: log them."""
    log_every: int = 20
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _positive(self, "global_batch_size", "eval_examples", "eval_windows", "window_examples", "eval_batch_size")
        _positive(self, "checkpoint_every", "num_time_buckets", "log_every")
        if self.prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {self.prefetch_batches}")


@dataclass(kw_only=True, slots=True)
class DayPlanConfig:
    date: str | None = None
    """The day to train (YYYY-MM-DD); null = the latest day in the logs."""
    catch_up: bool = False
    """Also train every earlier day that is not committed yet, in order."""


@dataclass(kw_only=True, slots=True)
class DailyJobConfig:
    family: Literal["daily"] = "daily"
    logs: LogsConfig = field(default_factory=LogsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    """Lists per channel (framework/data/logs/history.py: N, M, reservoir R, segments, eviction)."""
    clustering: ClusteringConfig | None = None
    """UC-Clustering (framework/data/logs/clustering.py): users are replaced by Louvain cluster ids, in the targets
    and in the items' user lists, updated after every day; null = user ids (UC-Sampling only)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """``model.hash_size`` per table: null = ``grow`` (exact vocabulary, the table grows every day), n = ``hash``
    (n rows for ever); configs/daily/base.yaml grows both."""
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: DailyTrainConfig = field(default_factory=DailyTrainConfig)
    job: DayPlanConfig = field(default_factory=DayPlanConfig)


@dataclass(kw_only=True, slots=True)
class ActiveDataConfig:
    pool: Literal["digits", "shapes", "digits_multimodal"] = "digits"
    """framework/active/data.py: real digits (1,797), rendered shapes (>= 10k), digits + a weak second modality."""
    seed: int = 0
    """Fixes the test split (and the shapes renders, the second modality) for every AL seed."""
    num_pool: int = 12_000
    """shapes only: pool size."""
    num_test: int = 2_000
    """shapes only: test set size."""
    image_size: int = 16
    """shapes only: render size in pixels."""


@dataclass(kw_only=True, slots=True)
class ActiveLoopConfig:
    initial: int = 10
    """Labels before the first round (the same for every strategy of a seed)."""
    per_round: int = 10
    """Labels acquired per round (the budget k)."""
    rounds: int = 8
    """Acquisition rounds; accuracy is recorded rounds + 1 times (after each retraining)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    strategies: list[str] = field(default_factory=lambda: ["random", "entropy", "dao"])
    """Any of framework.active.loop.STRATEGIES."""
    model: Literal["cnn", "mlp", "late_fusion"] = "cnn"
    """The task model f."""
    surrogate: Literal["cnn", "mlp", "late_fusion"] = "mlp"
    """DAO's surrogate pi, retrained each round (a different architecture from f)."""
    width: int = 16
    bald_samples: int = 20
    """MC-dropout samples for BALD."""
    bmmal_shards: int = 1
    """BMMAL on large pools: k-means++ in this many random shards, k/S labels from each."""
    warm_start: bool = False
    """Continue from the previous round's weights instead of retraining from scratch (the thesis retrains)."""
    initial_strategy: Literal["random", "mmcsal"] = "random"
    """How the first ``initial`` labels are picked: at random, or by MMCSAL's cold start (two-modality pools;
    ``mmcsal`` holds its constants)."""
    run_dir: str = "runs/active"

    def __post_init__(self) -> None:
        from framework.active.loop import STRATEGIES

        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"strategies: unknown {unknown}; choose from {', '.join(STRATEGIES)}")
        if self.initial < 1 or self.per_round < 1 or self.rounds < 0:
            raise ValueError("initial and per_round must be >= 1 and rounds >= 0")
        if "bmmal" in self.strategies and self.model != "late_fusion":
            raise ValueError(f"strategies: bmmal needs model: late_fusion (a two-modality pool), got {self.model!r}")


@dataclass(kw_only=True, slots=True)
class ActiveJobConfig:
    family: Literal["active"] = "active"
    data: ActiveDataConfig = field(default_factory=ActiveDataConfig)
    loop: ActiveLoopConfig = field(default_factory=ActiveLoopConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    """Training of f and pi each round (framework/active/train.py)."""
    dao: DAOConfig = field(default_factory=DAOConfig)
    """DAO's constants (framework/active/dao.py), those the thesis does not give included."""
    mmcsal: MMCSALConfig = field(default_factory=MMCSALConfig)
    """MMCSAL's cold start (framework/active/mmcsal.py), used with ``loop.initial_strategy: mmcsal``."""

    def __post_init__(self) -> None:
        if self.loop.initial_strategy == "mmcsal" and self.data.pool != "digits_multimodal":
            raise ValueError(f"loop.initial_strategy: mmcsal needs a two-modality pool (data.pool: "
                             f"digits_multimodal), got data.pool: {self.data.pool}")  # fmt: skip


# --------------------------------------------------------------------------------------------- lvlm family

LVLM_PARTS = ("vision", "projector", "language")


@dataclass(kw_only=True, slots=True)
class LVLMDataConfig:
    scenes: str
    """Scene-world directory written by ``scalefirst make-scenes`` (train/ and eval/ shards, pope/)."""
    max_length: int = 192
    """Longest tokenized conversation (image tokens included); a longer one is an error naming its sample."""
    turns: Literal["auto", "description", "all", "shuffled"] = "auto"
    """Conversation turns trained on: description = the first exchange (image -> detailed description, LLaVA's
    pretrain data), all = the whole conversation as written (description first), shuffled = its exchanges in a
    per-sample order with the image in the first question (as LLaVA-Instruct conversations, and so that POPE's
    single-turn questions are in distribution); auto = description for train.stage pretrain, shuffled for
    instruct."""
    train_limit: int | None = None
    """Use only the first this many training scenes (null = all)."""
    eval_limit: int = 200
    """Held-out scenes of the end-of-run CHAIR / POPE evaluation (0 = no evaluation)."""
    filter_with: str | None = None
    """Data filter: run_dir of a fine-tuned LVLM (its final/merged model) that scores every training sample by
    sum_t d(y_t); with drop_top / drop_bottom the extremes are dropped before training. Null = no filter."""
    drop_top: float = 0.0
    """Fraction of the highest-scoring samples dropped by the filter."""
    drop_bottom: float = 0.0
    """Fraction of the lowest-scoring samples dropped by the filter."""

    def __post_init__(self) -> None:
        _positive(self, "max_length", "train_limit")
        if self.eval_limit < 0:
            raise ValueError(f"eval_limit must be >= 0, got {self.eval_limit}")
        if not (0 <= self.drop_top <= 1 and 0 <= self.drop_bottom <= 1 and self.drop_top + self.drop_bottom < 1):
            raise ValueError(f"drop_top/drop_bottom must be in [0, 1] with a sum < 1, got {self.drop_top}, "
                             f"{self.drop_bottom}")  # fmt: skip
        if (self.drop_top or self.drop_bottom) and not self.filter_with:
            raise ValueError("drop_top/drop_bottom need data.filter_with (the run_dir of the scoring model)")


@dataclass(kw_only=True, slots=True)
class LVLMLossConfig:
    kind: Literal["mle", "reweighted"] = "mle"
    """mle: mean cross-entropy of the response tokens; reweighted: visual-dependence token weights (eq. 5.5)."""
    tau: float = 0.5
    """Softmax temperature of the weights (0 = every weight 1, i.e. MLE)."""
    variant: Literal["neg", "pos"] = "neg"
    """w_neg = max(-d, 0) emphasizes image-negative tokens (seed default); w_pos = max(d, 0)."""
    start_fraction: float = 0.5
    """Re-weighting starts at this fraction of train.max_steps (MLE before)."""
    noise_step: int = 900
    """VCD diffusion step t of the noised image (0..999)."""
    threshold: float = 0.25
    """|d| at which a token counts as image-positive / image-negative (logged class shares)."""

    def __post_init__(self) -> None:
        if self.tau < 0 or not 0 <= self.start_fraction <= 1 or not 0 <= self.noise_step < 1000:
            raise ValueError(f"need tau >= 0, start_fraction in [0, 1], noise_step in [0, 999]; got {self.tau}, "
                             f"{self.start_fraction}, {self.noise_step}")  # fmt: skip


@dataclass(kw_only=True, slots=True)
class LVLMOptimConfig(ClipOptimConfig):
    projector_lr: float | None = None
    """Peak LR of the projector (LLaVA trains it at its own rate); null = optim.lr."""
    group_lrs: dict[str, float] = field(default_factory=dict)
    """Other per-parameter peak LRs: parameter-name substring -> LR (first match wins; e.g. ``vision_tower: 2e-3``
    for a tower trained from scratch)."""

    def __post_init__(self) -> None:
        ClipOptimConfig.__post_init__(self)
        _positive(self, "projector_lr")
        bad = {k: v for k, v in self.group_lrs.items() if v < 0}
        if bad:
            raise ValueError(f"group_lrs must be >= 0, got {bad}")


@dataclass(kw_only=True, slots=True)
class LVLMTrainConfig(ClipTrainConfig):
    stage: Literal["pretrain", "instruct"] = "instruct"
    """pretrain: image -> detailed description, the parts in ``trainable`` fully trained (LLaVA's projector
    pre-training); instruct: full conversations, LoRA on the language model + the projector."""
    trainable: list[str] = field(default_factory=lambda: ["projector"])
    """Parts trained in the pretrain stage (vision, projector, language). LLaVA trains only the projector on top of
    pretrained towers; towers built from scratch (no model hub here) must be trained too."""
    init_from: str | None = None
    """run_dir of a finished LVLM run whose final model is the starting point (e.g. the pretrain stage); null =
    random init from train.seed."""

    def __post_init__(self) -> None:
        ClipTrainConfig.__post_init__(self)
        bad = [p for p in self.trainable if p not in LVLM_PARTS]
        if bad or not self.trainable:
            raise ValueError(f"trainable must name some of {list(LVLM_PARTS)}, got {self.trainable}")


@dataclass(kw_only=True, slots=True)
class LVLMJobConfig:
    family: Literal["lvlm"] = "lvlm"
    """Trainer family (selects this schema and the LVLM trainer)."""
    data: LVLMDataConfig
    model: LVLMConfig = field(default_factory=LVLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA of the instruct stage (ignored by pretrain)."""
    loss: LVLMLossConfig = field(default_factory=LVLMLossConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    optim: LVLMOptimConfig = field(default_factory=LVLMOptimConfig)
    train: LVLMTrainConfig

    def __post_init__(self) -> None:
        if self.loss.kind == "reweighted" and self.train.stage != "instruct":
            raise ValueError("loss.kind: reweighted applies to train.stage: instruct")


JOB_SCHEMAS: dict[str, type] = {
    "ranking": RankingJobConfig, "clip": ClipJobConfig, "daily": DailyJobConfig, "active": ActiveJobConfig,
    "lvlm": LVLMJobConfig,
}  # fmt: skip
"""family name → job config schema. New trainer families register here."""
