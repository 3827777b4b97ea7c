"""write_bundle / load_bundle: layout, manifest, resolution, verification errors, publishing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle, make_contents, make_tower

from recfuse import __version__
from recfuse.bundle import FORMAT_VERSION, list_versions, load_bundle, write_bundle
from recfuse.bundle.manifest import file_entries
from recfuse.errors import ArtifactError


def _rehash(vdir: Path) -> None:
    """Recompute the manifest's checksums (simulates a buggy writer that produced consistent hashes)."""
    m = json.loads((vdir / "manifest.json").read_text())
    m["files"] = file_entries(vdir)
    (vdir / "manifest.json").write_text(json.dumps(m))


def _edit_manifest(vdir: Path, **changes: object) -> None:
    m = json.loads((vdir / "manifest.json").read_text())
    m.update(changes)
    (vdir / "manifest.json").write_text(json.dumps(m))


def test_layout_manifest_and_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    contents = make_contents(n_items=120, dim=8, seed=3)
    vdir = write_bundle(root, contents)
    assert vdir.parent == root / "attention"
    assert (root / "attention" / "CURRENT").read_text().strip() == vdir.name
    names = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()}
    assert names == {
        "manifest.json",
        "query_tower.npz",
        "query_tower.json",
        "embeddings.parquet",
        "index.faiss",
        "vocab_users.json",
        "vocab_items.json",
        "vocab_categories.json",
        "items.parquet",
        "popularity.parquet",
        "user_history.parquet",
        "config.json",
    }
    m = json.loads((vdir / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["recfuse_version"] == __version__
    assert (m["embedding_dim"], m["item_count"], m["metric"], m["variant"]) == (8, 120, "ip", "attention")
    assert m["index_factory"] and m["ann_recall"] == pytest.approx(1.0)
    assert m["model_version"] == "random-seed3" and m["version"] == vdir.name
    assert m["created_at"].endswith("Z") and m["training_config"]["model"]["dim"] == 8
    assert set(m["files"]) == names - {"manifest.json"}
    assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in m["files"].values())

    b = load_bundle(root)
    assert b.path == vdir and b.version == vdir.name and b.variant == "attention"
    np.testing.assert_array_equal(b.item_vectors, contents.item_vectors)
    assert b.item_ids == list(contents.item_ids) and b.index.ntotal == 120 and b.dim == 8
    assert b.items["categories"].iloc[0][0] == "c0" and b.items["title"].iloc[5] == "Item 5 (c5)"
    hist = dict(zip(b.user_history["user_id"], b.user_history["items"]))
    assert list(hist["u0"]) == contents.user_history["u0"]
    pop = dict(zip(b.popularity["item_id"], b.popularity["count"]))
    assert pop == dict(contents.popularity)
    assert list(b.popularity["count"]) == sorted(b.popularity["count"], reverse=True)
    for arr_name, arr in contents.query_tower.to_arrays().items():
        np.testing.assert_array_equal(b.query_tower.to_arrays()[arr_name], arr)
    assert b.user_vocab == contents.user_vocab and b.category_vocab == contents.category_vocab
    assert b.config == contents.config


def test_resolution_root_variant_and_version_dirs(tmp_path: Path) -> None:
    root = tmp_path / "b"
    v_att = make_bundle(root, n_items=60, dim=4, variant="attention")
    v_cat = make_bundle(root, n_items=50, dim=4, variant="concat", seed=1)
    assert load_bundle(root / "attention").path == v_att
    assert load_bundle(root, variant="concat").path == v_cat
    assert load_bundle(v_cat).path == v_cat
    with pytest.raises(ArtifactError, match=r"several variants \['attention', 'concat'\]; pass variant="):
        load_bundle(root)
    with pytest.raises(ArtifactError, match="no published variant 'gated'"):
        load_bundle(root, variant="gated")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="holds no published bundle"):
        load_bundle(tmp_path / "empty")


def test_second_version_moves_current_and_old_stays_loadable(tmp_path: Path) -> None:
    root = tmp_path / "b"
    v1 = make_bundle(root, n_items=40, dim=4, seed=1)
    v2 = make_bundle(root, n_items=40, dim=4, seed=2)
    assert v1.name < v2.name  # sortable version names
    assert list_versions(root / "attention") == [v1.name, v2.name]
    assert load_bundle(root).model_id == "random-seed2"
    assert load_bundle(v1).model_id == "random-seed1"
    with pytest.raises(ArtifactError, match="already exists"):
        make_bundle(root, n_items=40, dim=4, version=v2.name)
    v3 = make_bundle(root, n_items=40, dim=4, seed=3, keep_versions=2)
    assert list_versions(root / "attention") == [v2.name, v3.name] and not v1.exists()
    with pytest.raises(ArtifactError, match="`keep_versions` must be >= 1, got 0"):
        make_bundle(root, n_items=40, dim=4, seed=4, keep_versions=0)


def test_stale_temp_dirs_ignored_by_readers_and_cleaned_by_next_writer(tmp_path: Path) -> None:
    root = tmp_path / "b"
    v1 = make_bundle(root, n_items=40, dim=4)
    stale = root / "attention" / ".tmp-20990101T000000.000000Z-abcdef-123456"
    stale.mkdir()
    (stale / "embeddings.parquet").write_bytes(b"half written")
    assert load_bundle(root).path == v1
    assert root / "attention" / stale.name not in [root / "attention" / v for v in list_versions(root / "attention")]
    with pytest.raises(ArtifactError, match="unpublished temporary bundle directory"):
        (stale / "manifest.json").write_text("{}")
        load_bundle(stale)
    make_bundle(root, n_items=40, dim=4, seed=5)
    assert not stale.exists()


def test_tampered_file_fails_checksum_and_verify_false_skips_it(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path, n_items=40, dim=4)
    vocab = vdir / "vocab_categories.json"
    text = vocab.read_text()
    vocab.write_text(text.replace('"c0"', '"cX"'))  # same size, other bytes
    with pytest.raises(
        ArtifactError, match=r"vocab_categories\.json' has sha256 .* manifest says .*modified or corrupted"
    ):
        load_bundle(vdir)
    assert "cX" in load_bundle(vdir, verify=False).category_vocab.ids
    vocab.write_text(text + " ")
    with pytest.raises(ArtifactError, match=r"vocab_categories\.json' has size \d+, manifest says \d+"):
        load_bundle(vdir, verify=False)


def test_wrong_format_version_and_format(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path, n_items=40, dim=4)
    _edit_manifest(vdir, format_version=99)
    with pytest.raises(
        ArtifactError, match=r"manifest\.json'.*format_version is 99, this recfuse reads format_version 1"
    ):
        load_bundle(vdir)
    _edit_manifest(vdir, format_version=FORMAT_VERSION, format="something.else")
    with pytest.raises(ArtifactError, match=r"format is 'something\.else', expected 'recfuse\.bundle'"):
        load_bundle(vdir)
    (vdir / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json' is unreadable"):
        load_bundle(vdir)


def test_missing_file_and_missing_manifest_key(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path, n_items=40, dim=4)
    os.remove(vdir / "popularity.parquet")
    with pytest.raises(ArtifactError, match=r"popularity\.parquet' is missing \(listed in manifest\.json\)"):
        load_bundle(vdir)
    m = json.loads((vdir / "manifest.json").read_text())
    del m["files"]["popularity.parquet"]
    (vdir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"manifest lists no 'popularity\.parquet'"):
        load_bundle(vdir)
    del m["embedding_dim"]
    (vdir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"missing key\(s\) \['embedding_dim'\]"):
        load_bundle(vdir)


def test_dim_mismatches_name_the_file(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path / "a", n_items=40, dim=4)
    make_tower(8, None).save(vdir / "query_tower")
    _rehash(vdir)
    with pytest.raises(
        ArtifactError, match=r"query_tower\.npz'.*query tower dims \(out 8, history in 8\).*embedding_dim 4"
    ):
        load_bundle(vdir)

    vdir = make_bundle(tmp_path / "b", n_items=40, dim=4)
    other = make_bundle(tmp_path / "c", n_items=30, dim=4)
    (vdir / "index.faiss").write_bytes((other / "index.faiss").read_bytes())
    _rehash(vdir)
    with pytest.raises(
        ArtifactError, match=r"index\.faiss'.*holds 30 vectors of dim 4, manifest says 40 items of dim 4"
    ):
        load_bundle(vdir)

    vdir = make_bundle(tmp_path / "d", n_items=40, dim=4)
    _edit_manifest(vdir, embedding_dim=5)
    with pytest.raises(
        ArtifactError, match=r"query tower dims \(out 4, history in 4\) do not match the manifest embedding_dim 5"
    ):
        load_bundle(vdir)

    vdir = make_bundle(tmp_path / "e", n_items=40, dim=4)
    _edit_manifest(vdir, metric="l2")
    with pytest.raises(ArtifactError, match=r"metric 'l2' differs from index_config\.metric 'ip'"):
        load_bundle(vdir)

    # a ranking factor that is not a positive number cannot rank anything
    import pyarrow as pa
    import pyarrow.parquet as pq

    vdir = make_bundle(tmp_path / "f", n_items=40, dim=4)
    table = pq.read_table(vdir / "embeddings.parquet")
    scale = pa.array(np.r_[np.ones(39), -1.0].astype(np.float32))
    pq.write_table(table.set_column(table.schema.get_field_index("rank_scale"), "rank_scale", scale),
                   vdir / "embeddings.parquet")  # fmt: skip
    _rehash(vdir)
    with pytest.raises(ArtifactError, match=r"embeddings\.parquet'.*column 'rank_scale' holds a non-positive"):
        load_bundle(vdir)


def test_invalid_contents_rejected_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "b"

    def bad(match: str, **changes: object) -> None:
        c = make_contents(n_items=30, dim=4)
        for k, v in changes.items():
            setattr(c, k, v)
        with pytest.raises(ArtifactError, match=match):
            write_bundle(root, c)
        assert not (root / str(c.variant)).exists() or not list((root / str(c.variant)).glob("*/manifest.json"))

    c0 = make_contents(n_items=30, dim=4)
    nan = c0.item_vectors.copy()
    nan[7, 1] = np.nan
    bad(r"`item_vectors` row 7 \(item 'i7'\) has NaN/inf values", item_vectors=nan)
    bad(r"`item_vectors` has 29 rows but `item_ids` has 30 ids", item_vectors=c0.item_vectors[:29])
    bad(
        r"`item_vectors` must be a non-empty \[num_items, dim\] array, got shape \(120,\)",
        item_vectors=c0.item_vectors.ravel(),
    )
    bad(r"`item_ids` must be unique, got duplicate 'i0'", item_ids=["i0"] + list(c0.item_ids[1:-1]) + ["i0"])
    bad(
        r"query tower output dim 8 / history input dim 8 must equal the item embedding dim 4",
        query_tower=make_tower(8, 24),
    )
    bad(
        r"user_embedding has 7 rows but the user vocabulary needs 24 \(num_oov=4 \+ 20 users\)",
        query_tower=make_tower(4, 7),
    )
    bad(r"`variant` must be 1-128 characters.*got '\.\./x'", variant="../x")
    bad(r"`model_id` must be a non-empty string", model_id="")
    bad(r"`item_scale` must hold one positive finite factor per item \(30\), got shape \(29,\)",
        item_scale=np.ones(29, np.float32))  # fmt: skip
    bad(r"`item_scale` must hold one positive finite factor per item \(30\), got shape \(30,\) with min 0\.0",
        item_scale=np.r_[np.ones(29), 0.0].astype(np.float32))  # fmt: skip
    items = c0.items.copy()
    items.loc[0, "item_id"] = "ghost"
    bad(r"`items` has 1 item id\(s\) with no vector, e.g. \['ghost'\]", items=items)
    bad(r"`items` must have columns item_id, title\[, categories\]; missing \['title'\]", items=c0.items[["item_id"]])
    bad(r"`model_dir` '.*nope' is not a directory", model_dir=tmp_path / "nope")
    with pytest.raises(ArtifactError, match=r"`version` must be 1-128 characters.*got 'a/b'"):
        write_bundle(root, make_contents(n_items=30, dim=4), version="a/b")


def test_items_without_metadata_get_empty_title(tmp_path: Path) -> None:
    c = make_contents(n_items=30, dim=4)
    c.items = c.items.iloc[:10].drop(columns=["categories"])
    b = load_bundle(write_bundle(tmp_path, c))
    assert b.items["title"].iloc[20] == "" and list(b.items["categories"].iloc[20]) == []
    assert b.items["title"].iloc[3] == "Item 3 (c3)"


def test_no_pickle_anywhere(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path, n_items=30, dim=4)
    with np.load(vdir / "query_tower.npz", allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    for f in vdir.rglob("*"):
        if f.is_file():
            assert f.suffix in {".json", ".parquet", ".npz", ".faiss"}, f
            assert not f.read_bytes()[:2] == b"\x80\x04", f
