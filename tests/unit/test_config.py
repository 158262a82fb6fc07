"""Config loading: error messages (key + source), base chains, overrides, validation, round trip, every shipped YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from framework.config import ConfigError, RankingJobConfig, load_job_config, save_config, to_dict
from framework.config.loader import from_dict
from framework.config.schema import ModelConfig

REPO = Path(__file__).resolve().parents[2]
CLI = "<command line>"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.resolve()


def load_error(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_job_config(path, overrides)
    return str(info.value)


# ---------------------------------------------------------------- errors name the key and the source


def test_unknown_key_names_dotted_key_and_file(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "model:\n  embeding_dim: 8\n")
    msg = load_error(run)
    assert "model.embeding_dim" in msg
    assert str(run) in msg


def test_unknown_nested_key_names_full_path_and_base_file_it_came_from(tmp_path: Path) -> None:
    base = write(tmp_path / "bases" / "base.yaml", "data:\n  synthetic:\n    num_userz: 5\n")
    run = write(tmp_path / "run.yaml", "base: bases/base.yaml\nmodel: {embedding_dim: 16}\n")
    msg = load_error(run)
    assert "data.synthetic.num_userz" in msg
    assert str(base) in msg
    assert str(run) not in msg  # the run file did not write that key


def test_unknown_key_from_override_names_command_line(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "model: {embedding_dim: 16}\n")
    msg = load_error(run, ["train.batchsize=3"])
    assert "train.batchsize" in msg and CLI in msg
    assert str(run) not in msg


def test_wrong_type_in_file_names_key_and_file(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "model:\n  embedding_dim: abc\n")
    msg = load_error(run)
    assert "model.embedding_dim" in msg and "int" in msg and "'abc'" in msg
    assert str(run) in msg


def test_wrong_type_in_base_names_base_file(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "train:\n  epochs: many\n")
    run = write(tmp_path / "run.yaml", "base: base.yaml\ntrain: {global_batch_size: 4}\n")
    msg = load_error(run)
    assert "train.epochs" in msg and str(base) in msg and str(run) not in msg


def test_wrong_type_in_override_names_key_and_command_line(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "model:\n  embedding_dim: 16\n")
    msg = load_error(run, ["model.embedding_dim=abc"])
    assert "model.embedding_dim" in msg and CLI in msg
    assert str(run) not in msg


def test_wrong_list_element_type_in_override_names_command_line(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "model: {embedding_dim: 16}\n")
    msg = load_error(run, ["model.head_hidden=[32, 2.5]"])
    assert "model.head_hidden[1]" in msg
    assert CLI in msg and str(run) not in msg


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "run.yaml"
    msg = load_error(missing)
    assert str(missing.resolve()) in msg and "not found" in msg


def test_missing_base_file_names_base_path(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "base: ../elsewhere/base.yaml\n")
    msg = load_error(run)
    assert str((tmp_path.parent / "elsewhere" / "base.yaml").resolve()) in msg


@pytest.mark.parametrize("self_cycle", [False, True])
def test_cyclic_base_chain_is_an_error(tmp_path: Path, self_cycle: bool) -> None:
    if self_cycle:
        a = write(tmp_path / "a.yaml", "base: a.yaml\n")
        files = [a]
    else:
        a = write(tmp_path / "a.yaml", "base: sub/b.yaml\n")
        b = write(tmp_path / "sub" / "b.yaml", "base: [../c.yaml]\n")
        c = write(tmp_path / "c.yaml", "base: a.yaml\n")
        files = [a, b, c]
    msg = load_error(a)
    assert "cyclic" in msg
    for f in files:
        assert str(f) in msg


def test_diamond_base_chain_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "common.yaml", "model: {embedding_dim: 16}\n")
    write(tmp_path / "left.yaml", "base: common.yaml\nmodel: {num_heads: 4}\n")
    write(tmp_path / "right.yaml", "base: common.yaml\ntrain: {epochs: 3}\n")
    run = write(tmp_path / "run.yaml", "base: [left.yaml, right.yaml]\n")
    cfg = load_job_config(run)
    assert (cfg.model.embedding_dim, cfg.model.num_heads, cfg.train.epochs) == (16, 4, 3)


@pytest.mark.parametrize("text", ["model: [unclosed\n", "model:\n  embedding_dim: 8\n   bad_indent: 1\n", "a: b: c\n"])
def test_invalid_yaml_names_file(tmp_path: Path, text: str) -> None:
    run = write(tmp_path / "run.yaml", text)
    msg = load_error(run)
    assert "invalid YAML" in msg and str(run) in msg


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "- 1\n- 2\n")
    msg = load_error(run)
    assert str(run) in msg and "mapping" in msg


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.embedding_dim", "key=value"),
        ("=5", "empty key"),
        ("model..embedding_dim=5", "empty key"),
        ("model.=5", "empty key"),
        ("model.embedding_dim=[1,", "cannot parse"),
        ("model.embedding_dim.x=1", "'model.embedding_dim' is not a section"),
        ("model=3", "mapping"),
    ],
)
def test_bad_override_syntax(tmp_path: Path, override: str, fragment: str) -> None:
    run = write(tmp_path / "run.yaml", "model: {embedding_dim: 16}\n")
    msg = load_error(run, [override])
    assert fragment in msg
    assert CLI in msg


# ---------------------------------------------------------------- __post_init__ validation


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.embedding_dim=10", "model.num_heads=4"], "model.embedding_dim"),
        (["data.source=movielens"], "data.path"),
        (["data.synthetic.num_users=0"], "data.synthetic.num_users"),
        (["data.test_fraction=1.0"], "data.test_fraction"),
        (["model.hash_size.item=0"], "model.hash_size.item"),
        (["model.hash_size.items=3"], "model.hash_size"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay"),
        (["train.max_steps=0"], "train.max_steps"),
        (["model.cross_layers=-1"], "model.cross_layers"),
    ],
)
def test_post_init_validation_names_field(tmp_path: Path, overrides: list[str], key: str) -> None:
    run = write(tmp_path / "run.yaml", "family: ranking\n")
    msg = load_error(run, overrides)
    assert key in msg
    assert CLI in msg


def test_post_init_validation_in_file_names_file(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "data:\n  source: movielens\n")
    msg = load_error(run)
    assert "data.path" in msg and str(run) in msg


def test_movielens_with_path_is_valid(tmp_path: Path) -> None:
    cfg = load_job_config(write(tmp_path / "run.yaml", "data: {source: movielens, path: /data/ml-100k}\n"))
    assert (cfg.data.source, cfg.data.path) == ("movielens", "/data/ml-100k")


# ---------------------------------------------------------------- precedence and partial dicts


def test_base_then_run_then_override_precedence(tmp_path: Path) -> None:
    write(
        tmp_path / "base" / "root.yaml",
        "model: {embedding_dim: 16, num_heads: 4, cross_layers: 3}\ntrain: {epochs: 5}\n",
    )
    write(tmp_path / "base" / "mid.yaml", "base: root.yaml\nmodel: {embedding_dim: 24, num_heads: 2}\n")
    run = write(tmp_path / "run.yaml", "base: base/mid.yaml\nmodel: {embedding_dim: 32}\n")

    cfg = load_job_config(run)
    assert cfg.model.embedding_dim == 32  # run beats its bases
    assert cfg.model.num_heads == 2  # nearer base beats farther base
    assert cfg.model.cross_layers == 3  # only in the root base
    assert cfg.train.epochs == 5
    assert cfg.train.global_batch_size == 512  # schema default

    cfg = load_job_config(run, ["model.embedding_dim=48", "train.global_batch_size=7", "model.embedding_dim=64"])
    assert cfg.model.embedding_dim == 64  # command line beats the files; later overrides win
    assert cfg.train.global_batch_size == 7
    assert cfg.model.num_heads == 2


def test_later_base_in_list_wins(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "model: {embedding_dim: 16}\n")
    write(tmp_path / "b.yaml", "model: {embedding_dim: 32}\n")
    assert load_job_config(write(tmp_path / "run.yaml", "base: [a.yaml, b.yaml]\n")).model.embedding_dim == 32
    assert load_job_config(write(tmp_path / "run2.yaml", "base: [b.yaml, a.yaml]\n")).model.embedding_dim == 16


def test_partial_dict_override_keeps_other_keys(tmp_path: Path) -> None:
    default_user = ModelConfig().hash_size["user"]
    plain = write(tmp_path / "plain.yaml", "family: ranking\n")
    assert load_job_config(plain, ["model.hash_size.item=null"]).model.hash_size == {"item": None, "user": default_user}

    with_sizes = write(tmp_path / "sizes.yaml", "model:\n  hash_size: {item: 5, user: 7}\n")
    assert load_job_config(with_sizes, ["model.hash_size.item=null"]).model.hash_size == {"item": None, "user": 7}
    assert load_job_config(with_sizes, ["model.hash_size.user=9"]).model.hash_size == {"item": 5, "user": 9}

    partial_in_yaml = write(tmp_path / "partial.yaml", "model:\n  hash_size: {user: 9}\n")
    assert load_job_config(partial_in_yaml).model.hash_size == {"item": ModelConfig().hash_size["item"], "user": 9}

    # A partial dict in a run file merges with its base's dict.
    write(tmp_path / "base.yaml", "model:\n  hash_size: {item: 5, user: 7}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel:\n  hash_size: {item: 3}\n")
    assert load_job_config(child).model.hash_size == {"item": 3, "user": 7}


# ---------------------------------------------------------------- scalar strictness


@pytest.mark.parametrize(
    "override",
    [
        "train.global_batch_size=1.5",
        "train.global_batch_size=true",
        "train.global_batch_size='4'",
        "train.global_batch_size=null",
        "optim.dense_lr=true",
        "optim.dense_lr=fast",
        "model.time_encoding=1",
        "model.time_encoding='true'",
        "model.pooling=max",
        "model.head_hidden=64",
        "model.head_hidden=[64, 2.5]",
    ],
)
def test_scalar_type_strictness_rejects(tmp_path: Path, override: str) -> None:
    run = write(tmp_path / "run.yaml", "family: ranking\n")
    key = override.split("=")[0]
    msg = load_error(run, [override])
    assert key in msg


def test_scalar_type_strictness_accepts(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "family: ranking\n")
    cfg = load_job_config(
        run,
        [
            "optim.dense_lr=1",
            "optim.sparse_lr=0.5",
            "model.time_encoding=false",
            "train.max_steps=null",
            "model.cross_low_rank=4",
            "model.head_hidden=[8]",
        ],
    )
    assert cfg.optim.dense_lr == 1.0 and type(cfg.optim.dense_lr) is float
    assert cfg.optim.sparse_lr == 0.5
    assert cfg.model.time_encoding is False
    assert cfg.train.max_steps is None
    assert cfg.model.cross_low_rank == 4 and type(cfg.model.cross_low_rank) is int
    assert cfg.model.head_hidden == [8]


def test_exponent_float_override_accepted(tmp_path: Path) -> None:
    run = write(tmp_path / "run.yaml", "family: ranking\n")
    assert load_job_config(run, ["optim.dense_lr=1e-3"]).optim.dense_lr == pytest.approx(1e-3)


# ---------------------------------------------------------------- round trip


def test_save_then_reload_round_trip(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "family: ranking\nmodel: {embedding_dim: 16, hash_size: {item: 5, user: 7}}\n")
    run = write(tmp_path / "run.yaml", "base: base.yaml\ndata: {synthetic: {tasks: [like, click], num_users: 9}}\n")
    cfg = load_job_config(
        run,
        [
            "model.hash_size.item=null",
            "train.max_steps=12",
            "optim.dense_lr=1",
            "model.cross_low_rank=2",
            "data.positive_threshold=3",
        ],
    )
    out = tmp_path / "resolved" / "config.yaml"
    save_config(cfg, out)
    assert not out.with_suffix(".yaml.tmp").exists()
    reloaded = load_job_config(out)
    assert isinstance(reloaded, RankingJobConfig)
    assert reloaded == cfg
    assert to_dict(reloaded) == to_dict(cfg)
    assert from_dict(RankingJobConfig, to_dict(cfg)) == cfg
    # The file is plain YAML data: every section and the non-default values are there.
    raw = yaml.safe_load(out.read_text())
    assert raw["family"] == "ranking"
    assert raw["model"]["hash_size"] == {"item": None, "user": 7}
    assert raw["data"]["synthetic"]["tasks"] == ["like", "click"]
    assert set(raw) == {f.name for f in dataclasses.fields(RankingJobConfig)}


def test_round_trip_detects_a_difference(tmp_path: Path) -> None:
    """Guards the round-trip test: equality really compares values."""
    a = load_job_config(write(tmp_path / "a.yaml", "family: ranking\n"))
    b = load_job_config(write(tmp_path / "b.yaml", "family: ranking\n"), ["model.hash_size.user=3"])
    assert a != b


# ---------------------------------------------------------------- every shipped config


def _shipped_configs() -> list[Path]:
    return sorted({*REPO.glob("configs/**/*.yaml"), *REPO.glob("configs/**/*.yml")})


def test_configs_directory_has_yaml_files() -> None:
    assert _shipped_configs(), f"no YAML found under {REPO / 'configs'}"


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path: Path, tmp_path: Path) -> None:
    cfg = load_job_config(path)
    assert dataclasses.is_dataclass(cfg)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_job_config(tmp_path / "resolved.yaml") == cfg
