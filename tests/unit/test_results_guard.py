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


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_every_benchmark_checks_before_running_and_writes_through_the_guard(script: str) -> None:
    calls = {
        node.func.id
        for node in ast.walk(ast.parse((REPO / "benchmarks" / script).read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert {"check_results_path", "write_result"} <= calls and "write_json_atomic" not in calls
