"""Benchmarks refuse to write into benchmarks/results/ from a dirty checkout (framework.trainers.common)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from framework.trainers.common import DirtyTreeError, check_results_path, dirty_files, git_commit

REPO = Path(__file__).resolve().parents[2]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "old.json").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_clean_checkout_may_write_results(repo: Path) -> None:
    check_results_path(repo / "benchmarks" / "results" / "new.json", repo)
    assert dirty_files(repo) == [] and git_commit(repo) and not git_commit(repo).endswith("-dirty")


def test_dirty_checkout_is_refused_naming_the_changed_file(repo: Path) -> None:
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(DirtyTreeError, match=r"refusing to write .*new\.json.*code\.py"):
        check_results_path(repo / "benchmarks" / "results" / "new.json", repo)
    assert git_commit(repo).endswith("-dirty")
    check_results_path(repo / "elsewhere.json", repo)  # any other --out is allowed


def test_rewritten_results_do_not_make_the_tree_dirty(repo: Path) -> None:
    # A series of benchmarks from one commit rewrites benchmarks/results/ file by file.
    (repo / "benchmarks" / "results" / "old.json").write_text('{"new": 1}\n')
    (repo / "untracked.py").write_text("")  # untracked files are not the commit's code either way (git describe)
    check_results_path(repo / "benchmarks" / "results" / "new.json", repo)
    assert not git_commit(repo).endswith("-dirty")


def test_outside_git_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DirtyTreeError, match="not a git checkout"):
        check_results_path(tmp_path / "benchmarks" / "results" / "x.json", tmp_path)


BENCHMARKS = sorted(
    str(p.relative_to(REPO / "benchmarks"))
    for p in (REPO / "benchmarks").rglob("*.py")
    if "write_result" in p.read_text() or p.parent == REPO / "benchmarks"
)
"""Every script that writes results (benchmarks/*.py and the kernel scripts under benchmarks/kernels/)."""


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_checks_before_running_and_writes_through_the_guard(script: str) -> None:
    calls = {
        node.func.id
        for node in ast.walk(ast.parse((REPO / "benchmarks" / script).read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert calls & {"check_results_path", "check_results_or_exit"}, "no results-path check before running"
    assert "write_result" in calls and "write_json_atomic" not in calls


def test_check_results_or_exit_ends_through_the_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    import framework.trainers.common as common

    parser = argparse.ArgumentParser(prog="bench")
    common.check_results_or_exit(parser, tmp_path / "x.json")  # outside benchmarks/results/: allowed, returns

    def dirty(out, repo=common.REPO):
        raise DirtyTreeError(f"refusing to write {out}: dirty")

    monkeypatch.setattr(common, "check_results_path", dirty)
    with pytest.raises(SystemExit) as info:
        common.check_results_or_exit(parser, tmp_path / "a.json", tmp_path / "b.json")
    assert info.value.code == 2
    assert "bench: error: refusing to write" in capsys.readouterr().err
