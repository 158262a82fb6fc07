"""MovieLens loading, Interactions validation and train/test splits."""

from pathlib import Path

import numpy as np
import pytest

from framework.data.errors import DataFormatError
from framework.data.ranking.interactions import Interactions, split_indices
from framework.data.ranking.movielens import load_movielens

# ---------------------------------------------------------------- real ml-100k


@pytest.fixture(scope="module")
def ml100k(ml100k_dir: Path) -> Interactions:
    return load_movielens(ml100k_dir)


def test_ml100k_counts(ml100k: Interactions) -> None:
    assert ml100k.num_examples == 100_000
    assert np.unique(ml100k.user_raw).size == 943
    assert np.unique(ml100k.item_raw).size == 1682
    assert ml100k.task_names == ("like",)
    assert ml100k.labels.shape == (100_000, 1)
    assert ml100k.labels.dtype == np.float32
    assert set(np.unique(ml100k.labels).tolist()) == {0.0, 1.0}
    assert 0.54 < ml100k.labels.mean() < 0.56  # ratings >= 4 are ~55% of ml-100k
    assert np.all(np.diff(ml100k.timestamp) >= 0)
    assert "u.data" in ml100k.source


def test_ml100k_file_path_and_explicit_format_agree(ml100k_dir: Path, ml100k: Interactions) -> None:
    direct = load_movielens(ml100k_dir / "u.data", fmt="ml-100k")
    for name in ("user_raw", "item_raw", "timestamp", "labels"):
        np.testing.assert_array_equal(getattr(direct, name), getattr(ml100k, name))


def test_ml100k_threshold(ml100k_dir: Path) -> None:
    strict = load_movielens(ml100k_dir, positive_threshold=5.0)
    assert 0.2 < strict.labels.mean() < 0.22  # only 5-star ratings


def test_ml100k_splits(ml100k: Interactions) -> None:
    train, test = split_indices(ml100k, "chronological", 0.2)
    assert train.dtype == test.dtype == np.int64
    assert abs(test.size - 20_000) < 50  # ties at the cut may move a few events to test
    assert np.intersect1d(train, test).size == 0
    assert train.size + test.size == ml100k.num_examples
    assert ml100k.timestamp[train].max() < ml100k.timestamp[test].min()

    train_r, test_r = split_indices(ml100k, "random", 0.2, seed=3)
    assert test_r.size == 20_000 and train_r.size == 80_000
    assert np.all(np.diff(train_r) > 0) and np.all(np.diff(test_r) > 0)
    np.testing.assert_array_equal(test_r, split_indices(ml100k, "random", 0.2, seed=3)[1])
    assert not np.array_equal(test_r, split_indices(ml100k, "random", 0.2, seed=4)[1])


# ---------------------------------------------------------------- synthetic files


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_ratings_csv_directory_and_file(tmp_path: Path) -> None:
    _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,3.5,300\n2,10,4.0,100\n1,20,5.0,200\n3,30,0.5,100\n",
    )
    inter = load_movielens(tmp_path)
    np.testing.assert_array_equal(inter.timestamp, [100, 100, 200, 300])
    # Stable sort: the two events at t=100 keep their file order.
    np.testing.assert_array_equal(inter.user_raw, [2, 3, 1, 1])
    np.testing.assert_array_equal(inter.item_raw, [10, 30, 20, 10])
    np.testing.assert_array_equal(inter.labels[:, 0], [1.0, 0.0, 1.0, 0.0])
    again = load_movielens(tmp_path / "ratings.csv")
    np.testing.assert_array_equal(again.labels, inter.labels)


def test_blank_trailing_lines_are_ignored(tmp_path: Path) -> None:
    file = _write(tmp_path / "u.data", "1\t2\t4\t10\n3\t4\t1\t20\n\n")
    assert load_movielens(file).num_examples == 2


@pytest.mark.parametrize(
    ("body", "bad_line"),
    [
        ("1\t2\t4\t10\n1\t3\t4\n", 2),  # too few fields
        ("1\t2\t4\t10\n1\t3\t4\t5\t6\n", 2),  # too many fields
        ("1\t2\t4\t10\n5\t6\t4\t11\n1\tabc\t4\t12\n", 3),  # non-numeric
        ("1\t2\t4\t10\n1\t3\t6\t11\n", 2),  # rating above 5
        ("1\t2\t0\t10\n", 1),  # rating below 0.5
        ("1\t2\t4\t10\n1.5\t3\t4\t11\n", 2),  # non-integer user id
        ("1\t2\t4\t10\n\n1\t3\tnan\t11\n", 3),  # NaN rating after a blank line
    ],
)
def test_ml100k_malformed_rows_name_file_and_line(tmp_path: Path, body: str, bad_line: int) -> None:
    file = _write(tmp_path / "u.data", body)
    with pytest.raises(DataFormatError) as info:
        load_movielens(tmp_path)
    assert str(file) in str(info.value)
    assert f"line {bad_line}:" in str(info.value)


@pytest.mark.parametrize(
    ("body", "bad_line"),
    [
        ("userId,movieId,rating,timestamp\n1,2,4.0,10\n1,3\n", 3),
        ("userId,movieId,rating,timestamp\n1,2,4.0,10\n1,3,x,11\n", 3),
        ("userId,movieId,rating,timestamp\n1,2,5.5,10\n", 2),
        ("user,movie,rating,timestamp\n1,2,4.0,10\n", 1),  # wrong header
        ("1,2,4.0,10\n", 1),  # header missing
    ],
)
def test_csv_malformed_rows_name_file_and_line(tmp_path: Path, body: str, bad_line: int) -> None:
    file = _write(tmp_path / "ratings.csv", body)
    with pytest.raises(DataFormatError) as info:
        load_movielens(file)
    assert str(file) in str(info.value)
    assert f"line {bad_line}:" in str(info.value)


def test_empty_file_is_a_format_error(tmp_path: Path) -> None:
    file = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataFormatError, match="no rating rows"):
        load_movielens(file)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="u.data"):
        load_movielens(tmp_path)  # empty directory: says what it looked for
    with pytest.raises(FileNotFoundError, match="ratings.csv"):
        load_movielens(tmp_path, fmt="ratings-csv")
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_movielens(missing)
    with pytest.raises(ValueError, match="fmt"):
        load_movielens(tmp_path, fmt="ml-1m")  # type: ignore[arg-type]


# ---------------------------------------------------------------- Interactions + splits


def test_interactions_validation() -> None:
    with pytest.raises(DataFormatError, match="differ in length"):
        Interactions.create([1, 2], [1], [1, 2], [1.0, 0.0])
    with pytest.raises(DataFormatError, match="non-decreasing"):
        Interactions(
            user_raw=np.array([1, 2]),
            item_raw=np.array([1, 2]),
            timestamp=np.array([5, 4]),
            labels=np.zeros((2, 1), np.float32),
            task_names=("like",),
        )
    with pytest.raises(DataFormatError, match="task_names"):
        Interactions.create([1], [1], [1], [[1.0, 0.0]], task_names=("a",))
    with pytest.raises(DataFormatError, match="history_task"):
        Interactions.create([1], [1], [1], [1.0], history_task=1)
    inter = Interactions.create([1, 2], [3, 4], [2, 1], [[1.0, 0.0], [0.0, 1.0]], ("a", "b"), history_task=1)
    assert inter.num_examples == 2 and inter.num_tasks == 2
    np.testing.assert_array_equal(inter.positive_mask(), [True, False])


def test_chronological_split_keeps_ties_together() -> None:
    # 10 events; the 80% cut falls inside the group of three at t=7, which moves to test as a whole.
    ts = [1, 2, 3, 4, 5, 6, 7, 7, 7, 9]
    inter = Interactions.create(np.arange(10), np.arange(10), ts, np.zeros(10))
    train, test = split_indices(inter, "chronological", 0.2)
    np.testing.assert_array_equal(train, np.arange(6))
    np.testing.assert_array_equal(test, np.arange(6, 10))


def test_split_argument_validation() -> None:
    inter = Interactions.create([1], [1], [1], [1.0])
    with pytest.raises(ValueError, match="mode"):
        split_indices(inter, "by_user")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_fraction"):
        split_indices(inter, "random", 1.0)
    train, test = split_indices(inter, "random", 0.0)
    assert train.tolist() == [0] and test.size == 0
