"""Batch top-k (recfuse.inference.batch and `recfuse recommend --users`) on a real factory bundle."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from bundle_factory import make_bundle

from recfuse.cli.main import main
from recfuse.errors import InvalidRequestError, SchemaError
from recfuse.inference import Recommender, known_users, read_user_ids, recommend_all
from recfuse.inference import batch as batch_mod


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "bundles", n_items=200, dim=8, seed=5, n_users=30)


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recommender:
    return Recommender.from_bundle(bundle)


def _expected(rec: Recommender, users: list[str], k: int, exclude_seen: bool = True) -> pd.DataFrame:
    rows = []
    for u in users:
        r = rec.recommend(user_id=u, k=k, exclude_seen=exclude_seen)
        rows += [(u, it.item_id, i + 1, it.score) for i, it in enumerate(r.items)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"])


def test_rows_equal_per_user_recommend(rec: Recommender, tmp_path: Path) -> None:
    users = known_users(rec)
    assert users == [f"u{j}" for j in range(30)]
    out = tmp_path / "recs.parquet"
    done: list[int] = []
    result = recommend_all(rec, users, k=7, out_path=out, batch_size=8, progress=done.append)
    got = pd.read_parquet(out)
    assert list(got.columns) == ["user_id", "item_id", "rank", "score"]
    pd.testing.assert_frame_equal(got, _expected(rec, users, 7), check_dtype=False, rtol=1e-6)
    assert got.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 8))).all()
    assert pq.ParquetFile(out).metadata.num_row_groups == 4  # one per batch of 8 users
    assert (result.users, result.rows, result.unknown_users, result.fallback_users) == (30, 210, 0, 0)
    assert done == [8, 8, 8, 6] and result.users_per_second > 0
    # seen items excluded, as serving does with exclude_seen
    history = rec.bundle.user_history.set_index("user_id")["items"]
    assert all(not set(g["item_id"]) & set(history[u]) for u, g in got.groupby("user_id"))


def test_users_file_with_unknown_and_repeated_ids(rec: Recommender, tmp_path: Path) -> None:
    ids = tmp_path / "users.txt"
    ids.write_text("u3\n\nghost\nu3\n  u4  \n")
    users = read_user_ids(ids)
    assert users == ["u3", "ghost", "u3", "u4"]
    result = recommend_all(rec, users, k=5, out_path=tmp_path / "r.parquet", exclude_seen=False)
    assert (result.users, result.unknown_users, result.fallback_users, result.duplicate_users) == (3, 1, 1, 1)
    got = pd.read_parquet(tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(got, _expected(rec, ["u3", "ghost", "u4"], 5, False), check_dtype=False)
    pd.DataFrame({"user_id": ["u1", "u2"], "x": [1, 2]}).to_csv(tmp_path / "u.csv", index=False)
    pd.DataFrame({"user_id": ["u9"]}).to_parquet(tmp_path / "u.parquet")
    assert read_user_ids(tmp_path / "u.csv") == ["u1", "u2"]
    assert read_user_ids(tmp_path / "u.parquet") == ["u9"]


def test_bad_arguments(rec: Recommender, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    with pytest.raises(InvalidRequestError, match=r"`batch_size` must be in \[1, 1000\], got 0"):
        recommend_all(rec, ["u1"], k=5, out_path=out, batch_size=0)
    with pytest.raises(InvalidRequestError, match=r"`user_ids` is empty"):
        recommend_all(rec, [], k=5, out_path=out)
    with pytest.raises(InvalidRequestError, match=r"`k` must be in \[1, 1000\], got 0"):
        recommend_all(rec, ["u1"], k=0, out_path=out)
    with pytest.raises(SchemaError, match=r"users file .* does not exist"):
        read_user_ids(tmp_path / "none.txt")
    pd.DataFrame({"user": ["u1"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SchemaError, match=r"has no 'user_id' column; found columns \['user'\]"):
        read_user_ids(tmp_path / "bad.csv")
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "bad.csv"]


def test_output_is_atomic(rec: Recommender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "recs.parquet"
    recommend_all(rec, ["u1"], k=3, out_path=out)
    before = out.read_bytes()
    calls = {"n": 0}
    real = Recommender.recommend_batch

    def crash_second_batch(self: Recommender, queries: list[object]) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-run")
        return real(self, queries)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_mod.Recommender, "recommend_batch", crash_second_batch)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        recommend_all(rec, ["u1", "u2", "u3"], k=3, out_path=out, batch_size=2)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["recs.parquet"]


def test_cli_users_all_and_file(
    bundle: Path, rec: Recommender, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "all.parquet"
    assert main(["recommend", "--bundle", str(bundle), "--users", "all", "--k", "4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 120 rows for 30 users" in captured.out and "users/s); unknown users 0" in captured.out
    assert "recommend" in captured.err  # the progress bar
    pd.testing.assert_frame_equal(pd.read_parquet(out), _expected(rec, known_users(rec), 4), check_dtype=False)
    ids = tmp_path / "ids.csv"
    pd.DataFrame({"user_id": ["u2", "nobody"]}).to_csv(ids, index=False)
    args = ["recommend", "--bundle", str(bundle.parent), "--users", str(ids), "--out", str(out), "--keep-seen"]
    assert main([*args, "--k", "3", "--category", "c1"]) == 0
    assert "unknown users 1, popularity fallback 1" in capsys.readouterr().out
    got = pd.read_parquet(out)
    assert len(got) == 6 and set(got["item_id"]) <= {f"i{i}" for i in range(1, 200, 8)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--users", "all"], r"batch mode needs both `--users all\|FILE` and `--out recs.parquet`"),
        (["--out", "x.parquet"], r"batch mode needs both"),
        (["--users", "all", "--out", "x.parquet", "--user", "u1"], r"`--users` cannot be combined with `--user`"),
        (["--users", "all", "--out", "x.parquet", "--exclude-seen"], r"cannot be combined .*--exclude-seen"),
        (["--users", "all", "--out", "x.parquet", "--batch-size", "5000"], r"`batch_size` must be in \[1, 1000\]"),
        (["--user", "u1", "--keep-seen"], r"`--keep-seen` applies to batch mode only"),
    ],
)
def test_cli_bad_arguments(bundle: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--bundle", str(bundle), *extra]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_cli_missing_users_file(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["recommend", "--bundle", str(bundle), "--users", str(tmp_path / "no.txt"), "--out", "x.parquet"])
    assert rc == 4 and "users file" in capsys.readouterr().err
