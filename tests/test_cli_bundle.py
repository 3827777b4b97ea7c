"""`recfuse recommend` / `recfuse bundle-info` through the real entry point (recfuse.cli.main.main)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_factory import make_bundle

from recfuse.cli.main import main
from recfuse.inference import Recommender


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "bundles", n_items=200, dim=8, seed=4)


def test_recommend_json_matches_the_library(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = bundle.parent.parent
    rc = main(["recommend", "--bundle", str(root), "--user", "u2", "--k", "5", "--exclude-seen", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    expected = Recommender.from_bundle(root).recommend(user_id="u2", k=5, exclude_seen=True)
    assert [r["item_id"] for r in out["items"]] == expected.item_ids
    assert out["fallback"] == "" and out["bundle_version"] == bundle.name and out["variant"] == "attention"
    assert out["items"][0]["title"].startswith("Item ") and out["items"][0]["rank"] == 1


def test_recommend_table_with_history_category_and_fallback(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["recommend", "--bundle", str(bundle.parent), "--history", "i3,ghost,i11", "--category", "c3", "--k", "4"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "fallback: none (model)" in out and "skipped 1 unknown history item id(s)" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("1 ", "2 ", "3 ", "4 "))]
    assert len(lines) == 4 and all("(c3)" in ln for ln in lines)
    assert main(["recommend", "--bundle", str(bundle), "--k", "3"]) == 0
    assert "fallback: popular" in capsys.readouterr().out


def test_similar_to_and_bundle_info(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--bundle", str(bundle), "--similar-to", "i7", "--k", "3", "--json"]) == 0
    ids = [r["item_id"] for r in json.loads(capsys.readouterr().out)["items"]]
    assert len(ids) == 3 and "i7" not in ids
    assert main(["bundle-info", "--bundle", str(bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["item_count"], info["dim"], info["version"]) == (200, 8, bundle.name)
    assert main(["bundle-info", "--bundle", str(bundle)]) == 0
    assert "sha256 of every file" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--k", "0"], 2, r"`k` must be in \[1, 1000\], got 0"),
        (["--similar-to", "nope"], 6, r"`item_id` 'nope' is not in bundle"),
        (["--similar-to", "i1", "--user", "u1"], 2, r"`--similar-to` cannot be combined with `--user`/`--history`"),
    ],
)
def test_errors_map_to_exit_codes(
    bundle: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    assert main(["recommend", "--bundle", str(bundle), *args]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(message, err)


def test_broken_bundle_is_an_artifact_error(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--bundle", str(tmp_path / "missing")]) == 5
    assert "does not exist" in capsys.readouterr().err


def test_recommend_does_not_import_tensorflow(bundle: Path) -> None:
    code = (
        "import sys; from recfuse.cli.main import main; "
        f"rc = main(['recommend', '--bundle', {str(bundle)!r}, '--user', 'u1', '--json']); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["fallback"] == ""
