"""framework/logs.py in one process: what reaches the console and what only <run_dir>/log.txt."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest

from framework.logs import KNOWN_HARMLESS, LOG_FILE, RunLogging, adopt_library_loggers, prints_to_log


def emit_everything() -> None:
    logging.getLogger("framework.trainers.ranking").info("project info line")
    logging.getLogger("framework.distributed.torchrec_sharding").debug("project debug line")
    logging.getLogger("framework.data").warning("project warning line")
    logging.getLogger("torchrec.distributed.planner.stats").info("# planner statistics line")
    logging.getLogger().info("Successfully loaded: 'fbgemm_gpu_py.so'")  # fbgemm logs on the root logger
    logging.getLogger("torchrec.distributed.planner.types").warning("The topology was constructed directly, ...")
    logging.getLogger("some.library").warning("unknown third-party warning")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("`broadcast_buffers` is deprecated. Use `forward_sync_buffers`", FutureWarning, stacklevel=1)
        warnings.warn("an unknown FutureWarning", FutureWarning, stacklevel=1)


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], rank: int, verbose: bool) -> tuple[str, str]:
    with RunLogging(rank, verbose=verbose) as logs:
        path = logs.to_file(tmp_path / "run")
        emit_everything()
    assert path == tmp_path / "run" / LOG_FILE
    return capsys.readouterr().err, path.read_text()


EVERY_LINE = [
    "project info line", "project debug line", "project warning line", "# planner statistics line",
    "Successfully loaded", "The topology was constructed directly", "unknown third-party warning",
    "`broadcast_buffers` is deprecated", "an unknown FutureWarning",
]  # fmt: skip


def test_rank0_console_has_project_lines_and_unknown_warnings_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    console, file = run(tmp_path, capsys, rank=0, verbose=False)
    shown = ["project info line", "project warning line", "unknown third-party warning", "an unknown FutureWarning"]
    assert [line for line in EVERY_LINE if line in console] == shown
    assert all(line in file for line in EVERY_LINE)  # everything, DEBUG of the project included
    assert file.count("[rank0] ") == len(EVERY_LINE) and "[rank1]" not in file  # one prefixed record per line
    assert "[rank0] " in console and "framework.trainers.ranking: project info line" in console


def test_other_ranks_show_warnings_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    console, file = run(tmp_path, capsys, rank=1, verbose=False)
    assert [line for line in EVERY_LINE if line in console] == [
        "project warning line", "unknown third-party warning", "an unknown FutureWarning",
    ]  # fmt: skip
    assert all(line in file for line in EVERY_LINE)
    assert file.count("[rank1] ") == len(EVERY_LINE) and "[rank0]" not in file


def test_verbose_restores_third_party_info_and_known_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    console, _ = run(tmp_path, capsys, rank=0, verbose=True)
    assert [line for line in EVERY_LINE if line in console] == [line for line in EVERY_LINE if "debug" not in line]


def test_ranks_append_to_one_file_and_state_is_restored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    _, _ = run(tmp_path, capsys, rank=0, verbose=False)
    _, file = run(tmp_path, capsys, rank=1, verbose=False)  # a second rank (or a resumed run) appends
    assert file.count("project info line") == 2 and "[rank0] " in file and "[rank1] " in file
    assert root.handlers == handlers and root.level == level
    assert warnings.showwarning is not logging._showwarning  # type: ignore[attr-defined]  # captureWarnings(False)


def test_library_loggers_with_own_stream_handlers_are_routed_to_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = logging.getLogger("fake_deepspeed")  # like DeepSpeed: its own stdout handler, no propagation
    own = logging.StreamHandler(sys.stdout)
    lib.addHandler(own)
    lib.propagate = False
    lib.setLevel(logging.INFO)
    try:
        adopt_library_loggers()  # no-op outside a run
        assert lib.handlers == [own]
        with RunLogging(0) as logs:
            path = logs.to_file(tmp_path)
            adopt_library_loggers()
            lib.info("ds info line")
        captured = capsys.readouterr()
        assert "ds info line" not in captured.out + captured.err
        assert "fake_deepspeed: ds info line" in path.read_text()
    finally:
        lib.handlers.clear()


def test_library_prints_become_log_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with prints_to_log("lib.stdout"):
        print("outside a run: untouched")
    assert capsys.readouterr().out == "outside a run: untouched\n"
    with RunLogging(0) as logs:
        path = logs.to_file(tmp_path)
        with prints_to_log("lib.stdout"):
            print("op built successfully")
            print("no newline at the end", end="")
    assert capsys.readouterr().out == ""
    text = path.read_text()
    assert "INFO lib.stdout: op built successfully" in text and "lib.stdout: no newline at the end" in text


def test_every_known_warning_says_why() -> None:
    assert all(len(entry) == 3 and entry[2] for entry in KNOWN_HARMLESS)
