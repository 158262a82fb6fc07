"""``scalefirst train``/``demo`` validate the config and the data paths before torchrun: one line, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

import launch.cli
import launch.preflight
from launch.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "ranking" / "demo.yaml")
MOVIELENS = str(REPO / "configs" / "ranking" / "movielens.yaml")
CLIP = str(REPO / "configs" / "clip" / "demo.yaml")


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Records torchrun launches instead of starting any."""
    calls: list[tuple] = []

    def fake_run_torchrun(*args: object, **kwargs: object) -> int:
        calls.append((args, kwargs))
        return 0

    monkeypatch.setattr(launch.cli, "run_torchrun", fake_run_torchrun)
    return calls


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ConfigError: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train", "--config", DEMO, "model.embeding_dim=8"], ["unknown key 'model.embeding_dim'", "<command line>"]),
        (
            ["train", "--config", DEMO, "train.global_batch_size=abc"],
            ["train.global_batch_size: expected int", "<command line>"],
        ),
        (["train", "--config", DEMO, "model.attention_backend=cuda"], ["model.attention_backend: expected one of"]),
        (["train", "--config", "no/such.yaml"], ["config file not found: "]),
        (["demo", "--run-dir", "unused", "model.num_heads=3"], ["not divisible by num_heads=3"]),
    ],
)
def test_bad_key_or_value_is_one_line_and_exit_2(
    argv: list[str], fragments: list[str], launches: list[tuple], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys)
    for fragment in fragments:
        assert fragment in line
    assert launches == []


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["train", "--config", DEMO, "model.attention_backend=triton"], "model.attention_backend"),
        (["train", "--config", CLIP, "loss.kernel_backend=triton"], "loss.kernel_backend"),
    ],
)
def test_triton_backend_without_a_gpu_is_refused_before_launch(
    argv: list[str],
    key: str,
    launches: list[tuple],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPU machine, no interpreter: every rank would fail on its first step, so preflight refuses, naming the key.
    (The test session sets TRITON_INTERPRET=1 for the parity tests; a training run would not.)"""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device can run the Triton kernels")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ConfigError: {key}: 'triton' needs a CUDA device") and "<command line>" in line
    assert launches == []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    launch.preflight._kernel_backend("triton")  # the interpreter (parity checks) is allowed explicitly


def test_missing_movielens_path(tmp_path: Path, launches: list[tuple], capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "ml-100k"
    assert main(["train", "--config", MOVIELENS, f"data.path={missing}"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ConfigError: data.path: MovieLens path {missing} does not exist")
    assert line.endswith("(from <command line>)")
    assert launches == []


def test_missing_default_movielens_path_names_the_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launches: list[tuple], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the YAML's relative data.path resolves against the working directory
    assert main(["train", "--config", MOVIELENS]) == 2
    assert f"(from {MOVIELENS})" in one_error_line(capsys)


def test_missing_clip_shards(tmp_path: Path, launches: list[tuple], capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "shards"
    empty.mkdir()
    argv = ["train", "--config", CLIP, f"data.train_shards={empty}", f"data.val_shards={tmp_path / 'nope'}"]
    assert main(argv) == 2
    assert f"data.train_shards: shard directory {empty} has no *.tar files" in one_error_line(capsys)
    (empty / "000000.tar").write_bytes(b"")
    assert main(argv) == 2
    assert "data.val_shards: shard spec" in one_error_line(capsys)
    assert launches == []


def test_valid_config_launches(tmp_path: Path, launches: list[tuple], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--nproc", "2", "--config", DEMO, "train.max_steps=3"]) == 0
    assert len(launches) == 1
    assert launches[0][0][:3] == (2, DEMO, ["train.max_steps=3"])
    assert capsys.readouterr().err == ""


def test_clip_bpe_vocabulary_default_and_missing(
    tmp_path: Path, launches: list[tuple], capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "000000.tar").write_bytes(b"")
    base = ["train", "--config", CLIP, f"data.train_shards={shards}", "data.val_shards=null", "data.tokenizer=clip_bpe",
            "model.vocab_size=49408"]  # fmt: skip
    assert main(base) == 0  # no vocab_path: the file open-clip-torch ships (installed by launch/setup.sh)
    assert main([*base, f"data.vocab_path={tmp_path / 'nope.txt.gz'}"]) == 2
    assert "data.vocab_path: file not found: " in one_error_line(capsys)
    assert len(launches) == 1
