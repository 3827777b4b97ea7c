"""MicroLens-50k reader and `recfuse convert microlens` on a made-up 3-user sample (tests/fixtures/microlens_tiny).

The sample has the original files' format only: users 1 (5 items), 2 (4 items, one of them, 99,
without a title) and 3 (15 items); items 10..31 with made-up titles (31 is never watched).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recfuse.cli.main import main
from recfuse.config import RecfuseConfig
from recfuse.data import microlens_convert
from recfuse.data.microlens import PAIRS_FILE, TITLES_FILE, load_microlens, parse_hashtags
from recfuse.data.microlens_convert import convert_microlens
from recfuse.data.splits import split_interactions
from recfuse.data.validate import load_dataset
from recfuse.errors import DataError, SchemaError
from recfuse.fsio import sha256_file

TINY = Path(__file__).parent / "fixtures" / "microlens_tiny"
USER3 = [str(i) for i in range(16, 31)]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A writable copy of the sample."""
    return Path(shutil.copytree(TINY, tmp_path / "src"))


def _sums(folder: Path) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in (PAIRS_FILE, TITLES_FILE)}


@pytest.mark.parametrize(
    ("title", "tags"),
    [
        ("Cat jumps # Funny Cats # pets", ["funny cats", "pets"]),
        ("run #Running #running # fitness   life", ["running", "fitness life"]),
        ("noodles # food # Food #", ["food"]),
        ("no tags at all", []),
        ("#travel # mountain views", ["travel", "mountain views"]),
    ],
)
def test_parse_hashtags(title: str, tags: list[str]) -> None:
    assert parse_hashtags(title) == tags


def test_loo_rows_by_hand() -> None:
    data = load_microlens(TINY, expected_sha256=_sums(TINY))
    got = data.interactions
    expected = pd.DataFrame(
        {
            "user_id": ["1"] * 5 + ["2"] * 3 + ["3"] * 15,
            "item_id": ["10", "11", "12", "13", "14", "15", "11", "16", *USER3],
            "timestamp": [0, 1, 2, 3, 4, 0, 1, 2, *range(15)],
            "split": [*["train"] * 3, "valid", "test", "train", "valid", "test", *["train"] * 13, "valid", "test"],
        }
    )
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert str(got["timestamp"].dtype) == "int64"
    assert data.dropped == {
        "no_title": 1, "repeat": 0, "over_max_items": 0, "user_without_items": 0, "user_without_kept_items": 0
    }  # fmt: skip
    assert data.counts == {
        "users": 3, "items": 22, "interactions": 23, "items_with_hashtags": 20, "distinct_hashtags": 21,
        "items_without_interactions": 1, "train": 17, "valid": 3, "test": 3, "train_only_users": 0,
    }  # fmt: skip
    assert data.checksum_mismatches == []


def test_items_keep_titles_and_parse_hashtags() -> None:
    items = load_microlens(TINY, expected_sha256=_sums(TINY)).items.set_index("item_id")
    assert items.loc["10", "title"] == "Cat jumps over the fence, twice # Funny Cats # pets"
    assert items.loc["10", "categories"] == ["funny cats", "pets"]
    assert items.loc["12", "categories"] == ["food"]
    assert items.loc["13", "categories"] == []
    assert list(items.index) == [str(i) for i in range(10, 32)]


def test_random_protocol_sizes_by_hand_and_seeded() -> None:
    a = load_microlens(TINY, protocol="random", seed=42, expected_sha256=_sums(TINY)).interactions
    # n = 5 -> max(1, round(0.5)) = 1 each; n = 3 -> 1 each; n = 15 -> round(1.5) = 2 each (half to even)
    sizes = a.groupby(["user_id", "split"]).size().to_dict()
    assert sizes == {
        ("1", "train"): 3, ("1", "valid"): 1, ("1", "test"): 1,
        ("2", "train"): 1, ("2", "valid"): 1, ("2", "test"): 1,
        ("3", "train"): 11, ("3", "valid"): 2, ("3", "test"): 2,
    }  # fmt: skip
    loo = load_microlens(TINY, expected_sha256=_sums(TINY)).interactions
    pd.testing.assert_frame_equal(a.drop(columns="split"), loo.drop(columns="split"))  # same rows and order
    again = load_microlens(TINY, protocol="random", seed=42, expected_sha256=_sums(TINY)).interactions
    pd.testing.assert_frame_equal(a, again)
    other = [load_microlens(TINY, protocol="random", seed=s, expected_sha256=_sums(TINY)).interactions for s in (1, 2)]
    assert any(not o["split"].equals(a["split"]) for o in other)


def test_timestamps_keep_the_order_within_each_user() -> None:
    inter = load_microlens(TINY, expected_sha256=_sums(TINY)).interactions
    for user, rows in inter.groupby("user_id", sort=False):
        assert rows["timestamp"].tolist() == list(range(len(rows))), user
    # the contract's temporal split (leave-last-out by timestamp) finds the same parts as loo
    split = split_interactions(inter, "temporal", seed=0)
    by_part = {
        name: set(zip(df["user_id"], df["item_id"])) for name, df in (("valid", split.val), ("test", split.test))
    }
    for name in ("valid", "test"):
        assert by_part[name] == set(zip(*[inter.loc[inter["split"] == name, c] for c in ("user_id", "item_id")]))


def test_max_items_per_user_and_repeats(src: Path) -> None:
    (src / PAIRS_FILE).write_text("1\t10 11 12 13 14\n5\t10 11 10 12\n")
    data = load_microlens(src, max_items_per_user=4, expected_sha256=_sums(src))
    inter = data.interactions
    assert inter.loc[inter["user_id"] == "1", "item_id"].tolist() == ["11", "12", "13", "14"]
    # user 5 saw 10 again later: the latest position is kept
    assert inter.loc[inter["user_id"] == "5", "item_id"].tolist() == ["11", "10", "12"]
    assert data.dropped["over_max_items"] == 1 and data.dropped["repeat"] == 1


def test_pairs_line_without_items_is_a_counted_drop(src: Path, caplog: pytest.LogCaptureFixture) -> None:
    (src / PAIRS_FILE).write_text("1\t10 11 12\n7\t\n8\n9\t99 98\n")
    with caplog.at_level(logging.WARNING, logger="recfuse.data.microlens"):
        data = load_microlens(src, expected_sha256=_sums(src))
    assert data.dropped["user_without_items"] == 2 and data.dropped["user_without_kept_items"] == 1
    assert data.dropped["no_title"] == 2 and data.counts["users"] == 1
    assert "user '7' names no item" in caplog.text and "dropped 2 rows (no_title)" in caplog.text


@pytest.mark.parametrize(
    ("file", "text", "error", "match"),
    [
        (TITLES_FILE, "id,name\n10,x\n", SchemaError, r"header is \['id', 'name'\], expected \['item', 'title'\]"),
        (TITLES_FILE, "", SchemaError, r"header is None, expected"),
        (TITLES_FILE, "item,title\n10,a,b\n", SchemaError, r"line 2: expected 2 fields 'item,title'.*got 3 field"),
        (TITLES_FILE, "item,title\n10,a\n10,b\n", SchemaError, r"1 item id\(s\) appear more than once \(e.g. '10'\)"),
        (PAIRS_FILE, "1 10 11 12\n", SchemaError, r"line 1: expected 'user_id<TAB>item item …'"),
        (PAIRS_FILE, "1\t10\n1\t11\n", SchemaError, r"line 2: user '1' already has line 1"),
        (PAIRS_FILE, "1\t99\n", DataError, r"no interaction left .*'no_title': 1"),
    ],
)
def test_bad_input(src: Path, file: str, text: str, error: type[Exception], match: str) -> None:
    (src / file).write_text(text)
    with pytest.raises(error, match=match):
        load_microlens(src, expected_sha256=_sums(src))


def test_missing_file_and_bad_options(src: Path) -> None:
    (src / PAIRS_FILE).unlink()
    with pytest.raises(SchemaError, match=r"pairs file .* does not exist; pass --src the folder holding"):
        load_microlens(src)
    with pytest.raises(SchemaError, match=r"titles file .* does not exist"):
        load_microlens(src / "nowhere")
    with pytest.raises(ValueError, match=r"`protocol` must be one of \['loo', 'random'\], got 'time'"):
        load_microlens(TINY, protocol="time")
    with pytest.raises(ValueError, match=r"`max_items_per_user` must be >= 0 \(0: no cut\), got -1"):
        load_microlens(TINY, max_items_per_user=-1)


def test_checksums_warn_or_fail_with_strict(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recfuse.data.microlens"):
        data = load_microlens(TINY)  # the made-up sample is not the original
    assert data.checksum_mismatches == [PAIRS_FILE, TITLES_FILE]
    assert data.sha256 == _sums(TINY) and "(not the original file?)" in caplog.text
    with pytest.raises(DataError, match=r"has sha256 [0-9a-f]{64}, expected 46be22f4.*drop --strict"):
        load_microlens(TINY, strict=True)
    assert load_microlens(TINY, strict=True, expected_sha256=_sums(TINY)).checksum_mismatches == []


def test_convert_writes_the_contract_and_a_ready_config(tmp_path: Path) -> None:
    out = tmp_path / "datasets" / "microlens"
    result = convert_microlens(TINY, out, protocol="random", seed=3)
    assert result.out == out and sorted(p.name for p in out.iterdir()) == [
        "conversion.json", "interactions.parquet", "items.parquet", "recfuse.toml"
    ]  # fmt: skip
    record = json.loads((out / "conversion.json").read_text())
    assert record["protocol"] == "random" and record["seed"] == 3 and record["counts"]["valid"] == 4
    assert record["source_sha256"] == _sums(TINY) and record["dropped"]["no_title"] == 1
    cfg = RecfuseConfig.from_toml(out / "recfuse.toml")
    assert cfg.data.split == "column" and Path(cfg.data.items).is_absolute()
    assert [(m.name, m.kind, m.columns) for m in cfg.modalities] == [
        ("text", "text", ("title",)), ("categories", "categorical", ("categories",))
    ]  # fmt: skip
    assert cfg.modalities[0].min_item_count == 2
    ds = load_dataset(cfg.data, cfg.modalities)
    assert (ds.report.items.rejected, ds.report.interactions.rejected) == (0, 0)
    assert ds.interactions["split"].value_counts().to_dict() == {"train": 15, "valid": 4, "test": 4}
    assert ds.items.set_index("item_id").loc["11", "categories"] == ["running", "fitness life"]
    assert [p.name for p in out.parent.iterdir()] == ["microlens"]  # no temp folder left


def test_convert_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ml"
    convert_microlens(TINY, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = microlens_convert.pq.write_table

    def crash(table: object, where: Path, **kw: object) -> None:
        if Path(where).name == "interactions.parquet":
            raise OSError("disk full")
        real(table, where, **kw)

    monkeypatch.setattr(microlens_convert.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        convert_microlens(TINY, out, protocol="random")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old dataset, whole
    assert [p.name for p in tmp_path.iterdir()] == ["ml"]
    monkeypatch.undo()
    convert_microlens(TINY, out, protocol="random")  # an existing folder is replaced
    assert json.loads((out / "conversion.json").read_text())["protocol"] == "random"
    assert [p.name for p in tmp_path.iterdir()] == ["ml"]


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ml"
    assert main(["convert", "microlens", "--src", str(TINY), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "3 users, 22 items (20 with hashtags" in captured.out
    assert "train 17, valid 3, test 3" in captured.out and "dropped: 1 no_title" in captured.out
    assert f"warning: {PAIRS_FILE} differs from the original" in captured.err
    args = ["convert", "microlens", "--src", str(TINY), "--out", str(out), "--protocol", "random", "--json"]
    assert main([*args, "--seed", "7", "--max-items-per-user", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["counts"]["interactions"] == 11 and record["dropped"]["over_max_items"] == 12
    assert main(["convert", "microlens", "--src", str(TINY), "--out", str(out), "--strict"]) == 4
    assert "error: " in capsys.readouterr().err
    assert main(["convert", "microlens", "--src", str(TINY), "--out", str(out), "--max-items-per-user", "-2"]) == 2
    assert "`--max-items-per-user` must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "movielens", "--src", str(TINY), "--out", str(out)])
