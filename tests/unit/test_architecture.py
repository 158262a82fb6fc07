"""The three architecture rules of STYLE.md, checked on the source with ``ast`` (nothing is imported or run).

1. Exactly one module imports ``deepspeed``: framework/distributed/deepspeed_engine.py.
2. Exactly one module builds TorchRec sharding: framework/distributed/torchrec_sharding.py. "Building sharding"
   means naming one of :data:`SHARDING_BUILDERS` (planner, topology/constraints, plan types, sharders, DMP, the
   fused-in-backward optimizer and the combined optimizer) imported from ``torchrec``/``torch.distributed`` or
   reached as ``torchrec.<...>.<name>``, or importing anything from :data:`SHARDING_MODULES`. Sharded *types*
   elsewhere (``KeyedJaggedTensor``, ``EmbeddingCollection``, ``comm_ops``...) are fine.
3. Exactly one module reads or writes the torchrun environment: framework/distributed/env.py. Outside it no
   string literal equals one of :data:`~framework.distributed.env.TORCHRUN_VARS` and no keyword argument is named
   like one: that covers ``os.environ["RANK"]``, ``os.getenv("RANK")``, ``"RANK" in os.environ``, a dict built for
   a subprocess that sets ``MASTER_PORT`` (a child's torchrun environment is written through env.py too) and a
   tuple of names looped over. A name computed at run time cannot be seen; reviews catch that. Other variables
   (``OMP_NUM_THREADS``, ``DS_ACCELERATOR``, ``SCALEFIRST_*``) may be set anywhere.

Scanned: framework/, launch/, kernels/, benchmarks/ (tests may do anything). The checkers are tested on snippets
below, so a rule cannot pass by matching nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from framework.distributed.env import TORCHRUN_VARS

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("framework", "launch", "kernels", "benchmarks")

DEEPSPEED_MODULE = "framework/distributed/deepspeed_engine.py"
SHARDING_MODULE = "framework/distributed/torchrec_sharding.py"
ENV_MODULE = "framework/distributed/env.py"

SHARDING_BUILDERS = frozenset({
    # planner and its inputs (torchrec.distributed.planner)
    "EmbeddingShardingPlanner", "HeteroEmbeddingShardingPlanner", "Topology", "ParameterConstraints",
    # plans (torchrec.distributed.types, torchrec.distributed.sharding_plan)
    "ShardingPlan", "ParameterSharding", "EmbeddingModuleShardingPlan", "construct_module_sharding_plan",
    "get_default_sharders", "get_module_to_default_sharders", "ShardingEnv",
    # sharders (torchrec.distributed.embedding, embeddingbag, fused_embeddingbag)
    "EmbeddingCollectionSharder", "EmbeddingBagCollectionSharder", "FusedEmbeddingBagCollectionSharder",
    # DMP, the sparse optimizer fused into the backward, the combined sparse + dense optimizer
    "DistributedModelParallel", "apply_optimizer_in_backward", "_apply_optimizer_in_backward", "CombinedOptimizer",
})  # fmt: skip
"""Names from torchrec.distributed / torchrec.optim / torch.distributed.optim that build sharding."""
SHARDING_MODULES = ("torchrec.distributed.planner", "torchrec.distributed.sharding_plan",
                    "torchrec.distributed.model_parallel")  # fmt: skip
"""Modules whose every import is sharding construction."""


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            yield rel, ast.parse(path.read_text(), filename=rel)


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _imported_modules(tree: ast.Module) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import, ``importlib.import_module("x")`` and ``__import__("x")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and _dotted(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, []


def deepspeed_imports(tree: ast.Module) -> list[str]:
    return [
        f"line {line}: imports {module}"
        for line, module, _ in _imported_modules(tree)
        if module == "deepspeed" or module.startswith("deepspeed.")
    ]


def sharding_builders(tree: ast.Module) -> list[str]:
    found = []
    for line, module, names in _imported_modules(tree):
        if module.startswith(SHARDING_MODULES):
            found.append(f"line {line}: imports {module}")
        elif module.startswith(("torchrec", "torch.distributed")):
            found += [f"line {line}: imports {n} from {module}" for n in names if n in SHARDING_BUILDERS]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in SHARDING_BUILDERS:
            dotted = _dotted(node)
            if dotted and dotted.startswith(("torchrec.", "torch.distributed.")):
                found.append(f"line {node.lineno}: uses {dotted}")
    return found


def torchrun_env_uses(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in TORCHRUN_VARS:
            found.append(f"line {node.lineno}: string {node.value!r}")
        elif isinstance(node, ast.keyword) and node.arg in TORCHRUN_VARS:
            found.append(f"line {node.value.lineno}: keyword {node.arg}=")
    return found


RULES: list[tuple[str, Callable[[ast.Module], list[str]], str]] = [
    ("imports deepspeed", deepspeed_imports, DEEPSPEED_MODULE),
    ("builds TorchRec sharding", sharding_builders, SHARDING_MODULE),
    ("reads or writes a torchrun variable", torchrun_env_uses, ENV_MODULE),
]


@pytest.mark.parametrize(("what", "check", "owner"), RULES, ids=[r[2] for r in RULES])
def test_only_one_module(what: str, check: Callable[[ast.Module], list[str]], owner: str) -> None:
    offenders = {}
    owner_hits = []
    for rel, tree in _sources():
        hits = check(tree)
        if rel == owner:
            owner_hits = hits
        elif hits:
            offenders[rel] = hits
    assert not offenders, f"only {owner} {what}; also: {offenders}"
    assert owner_hits, f"{owner} no longer {what}: update the rule (and STYLE.md) or the checker"


@pytest.mark.parametrize(
    ("check", "source"),
    [
        (deepspeed_imports, "import deepspeed"),
        (deepspeed_imports, "from deepspeed.utils import safe_get_full_fp32_param"),
        (deepspeed_imports, "import importlib\nds = importlib.import_module('deepspeed')"),
        (sharding_builders, "from torchrec.distributed.model_parallel import DistributedModelParallel"),
        (sharding_builders, "from torchrec.distributed import DistributedModelParallel"),
        (sharding_builders, "from torchrec.distributed.planner import EmbeddingShardingPlanner"),
        (sharding_builders, "from torchrec.distributed.embedding import EmbeddingCollectionSharder"),
        (sharding_builders, "from torchrec.optim.keyed import CombinedOptimizer"),
        (sharding_builders, "import torchrec\nm = torchrec.distributed.DistributedModelParallel(module=m)"),
        (torchrun_env_uses, "import os\nrank = os.environ['RANK']"),
        (torchrun_env_uses, "import os\nrank = os.environ.get('LOCAL_RANK', '0')"),
        (torchrun_env_uses, "import os\nrank = os.getenv('WORLD_SIZE')"),
        (torchrun_env_uses, "import os\nok = 'MASTER_PORT' in os.environ"),
        (torchrun_env_uses, "import os\nos.environ.setdefault('MASTER_ADDR', '127.0.0.1')"),
        (torchrun_env_uses, "import subprocess\nsubprocess.run(['x'], env={'MASTER_PORT': '29500'})"),
        (torchrun_env_uses, "import os\nenv = dict(os.environ, GROUP_RANK='0')"),
    ],
)
def test_checkers_catch(check: Callable[[ast.Module], list[str]], source: str) -> None:
    assert check(ast.parse(source)), source


@pytest.mark.parametrize(
    ("check", "source"),
    [
        (deepspeed_imports, "import deepspeed_helpers  # another package"),
        (sharding_builders, "from torchrec.sparse.jagged_tensor import KeyedJaggedTensor"),
        (sharding_builders, "from torchrec.distributed import comm_ops"),
        (sharding_builders, "from framework.distributed.torchrec_sharding import shard_model"),
        (torchrun_env_uses, "import os\nenv = {**os.environ, 'OMP_NUM_THREADS': '1'}"),
        (torchrun_env_uses, "raise ValueError(f'RANK={rank} is outside WORLD_SIZE={world_size}')"),
    ],
)
def test_checkers_allow(check: Callable[[ast.Module], list[str]], source: str) -> None:
    assert not check(ast.parse(source)), source
