"""IVF index from embedding shards: equals the in-memory build, ids, every bad-input error, bundles.

Real FAISS over real Parquet shards in the ``recfuse embed`` layout (``part-NNNNN.parquet`` with
``item_id`` + ``vector`` fixed_size_list<float32>[d], and the job's ``manifest.json``); the slow
test publishes the output of a real ``recfuse embed`` run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bundle_factory import make_contents

from recfuse.bundle import load_bundle, write_bundle
from recfuse.bundle.from_shards import publish_from_shards
from recfuse.cli.main import main
from recfuse.config import IndexConfig
from recfuse.errors import ArtifactError, ConfigError, SchemaError
from recfuse.index import build_index, shard_scan
from recfuse.index.sharded import ShardProgress, build_index_from_shards, scan_shards
from recfuse.inference import Recommender
from recfuse.ranking import popularity_scale

N, D = 3000, 16
SIZES = (700, 1100, 400, 800)  # uneven shards
CFG = IndexConfig(factory="IVF32,Flat", train_sample=1000, recall_queries=100, nprobe=4, seed=5)


def clustered(n: int = N, d: int = D, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def embeddings_table(ids: list[str], vectors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    return pa.table(
        {"item_id": pa.array(ids, pa.string()), "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
    )


def write_shards(out: Path, ids: list[str], vectors: np.ndarray, sizes: tuple[int, ...] = SIZES) -> Path:
    """Shards and a manifest, as `recfuse embed` leaves a finished directory."""
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.cumsum((0, *sizes))
    assert bounds[-1] == len(ids)
    entries = []
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(embeddings_table(ids[lo:hi], vectors[lo:hi]), out / shard_name(s), row_group_size=300)
        entries.append({"name": shard_name(s), "rows": int(hi - lo)})
    manifest = {"format": 1, "rows": len(ids), "embedded": len(ids), "rejects": 0, "dim": vectors.shape[1]}
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": entries}))
    (out / "_SUCCESS").write_text("")
    return out


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray]:
    return [f"i{i}" for i in range(N)], clustered()


@pytest.fixture(scope="module")
def shards(data: tuple[list[str], np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("emb"), *data)


def serialized(index: object) -> bytes:
    return bytes(faiss.serialize_index(index))


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF16,SQ8"])
def test_shard_build_equals_the_in_memory_build(
    shards: Path, data: tuple[list[str], np.ndarray], factory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_scan, "BATCH_ROWS", 257)  # many batches, none aligned with a shard
    ids, x = data
    cfg = dataclasses.replace(CFG, factory=factory)
    seen: list[ShardProgress] = []
    built = build_index_from_shards(shards, cfg, progress=seen.append)
    memory = build_index(x, np.arange(N), cfg)
    assert serialized(built.index.faiss_index) == serialized(memory.faiss_index)  # same index, byte for byte
    assert built.index.recall == pytest.approx(memory.recall) and built.index.recall > 0.8
    assert built.factory == factory and built.train_rows == 1000 and built.item_ids.to_pylist() == ids
    queries = clustered(50, seed=9)
    np.testing.assert_array_equal(built.index.search(queries, 10).ids, memory.search(queries, 10).ids)
    # FAISS id i is row i of the shards in order: every vector finds itself under its own row
    rows = np.array([0, 699, 700, 1799, 1800, 2999])
    found = built.index.search(x[rows], 1).ids
    assert found[:, 0].tolist() == rows.tolist()
    assert {p.stage for p in seen} == {"scan", "sample", "train", "add"}
    assert seen[-1] == ShardProgress("add", N, N)
    assert set(built.seconds) == {"scan", "sample", "train", "add"}


def test_scale_files_and_auto_factory(shards: Path, data: tuple[list[str], np.ndarray]) -> None:
    ids, x = data
    scale = np.random.default_rng(1).uniform(0.5, 2.0, N).astype(np.float32)
    files = [shards / shard_name(i) for i in range(len(SIZES))]  # explicit files: no manifest needed
    built = build_index_from_shards(files, CFG, scale=scale)
    memory = build_index(x * scale[:, None], np.arange(N), CFG)
    assert serialized(built.index.faiss_index) == serialized(memory.faiss_index)
    auto = build_index_from_shards(shards, dataclasses.replace(CFG, factory="auto"))
    assert auto.factory == "IVF64,Flat"  # 4 * sqrt(3000) ~ 219, capped at 3000 / 39 rows per list -> 64
    with pytest.raises(SchemaError, match=r"`scale` must hold one positive finite factor per usable row \(3000\)"):
        build_index_from_shards(shards, CFG, scale=np.ones(5))


def test_bad_vectors_fail_or_are_skipped_and_listed(tmp_path: Path, data: tuple[list[str], np.ndarray]) -> None:
    ids, x = data
    bad = x.copy()
    bad[5, 3], bad[1500, 0] = np.nan, np.inf
    write_shards(tmp_path / "nan", ids, bad)
    with pytest.raises(
        SchemaError, match=r"part-00000.parquet' column `vector` has 1 unusable row.*item 'i5', NaN/inf"
    ):
        build_index_from_shards(tmp_path / "nan", CFG)
    built = build_index_from_shards(tmp_path / "nan", CFG, on_bad_vectors="skip")
    assert built.scan.rejects == [("i5", "NaN/inf in vector (part-00000.parquet)"),
                                  ("i1500", "NaN/inf in vector (part-00001.parquet)")]  # fmt: skip
    keep = np.setdiff1d(np.arange(N), [5, 1500])
    assert built.item_ids.to_pylist() == [ids[i] for i in keep] and built.index.ntotal == N - 2
    memory = build_index(x[keep], np.arange(len(keep)), CFG)
    assert serialized(built.index.faiss_index) == serialized(memory.faiss_index)
    found = built.index.search(x[[6, 1501, 2999]], 1).ids
    assert [built.item_ids[int(i)].as_py() for i in found[:, 0]] == ["i6", "i1501", "i2999"]
    with pytest.raises(ConfigError, match=r"`on_bad_vectors` must be one of \['fail', 'skip'\], got 'drop'"):
        scan_shards(tmp_path / "nan", on_bad_vectors="drop")


def test_null_vectors_and_null_ids(tmp_path: Path) -> None:
    vec = pa.array([[1.0, 0.0], None, [0.0, 1.0]], pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"item_id": ["a", "b", "c"], "vector": vec}), tmp_path / "p.parquet")
    with pytest.raises(SchemaError, match=r"p.parquet' column `vector` has 1 unusable row.*item 'b', null vector"):
        scan_shards([tmp_path / "p.parquet"])
    scan = scan_shards([tmp_path / "p.parquet"], on_bad_vectors="skip")
    assert scan.item_ids.to_pylist() == ["a", "c"] and scan.rejects == [("b", "null vector (p.parquet)")]
    assert shard_scan.read_shard_vectors(scan).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    pq.write_table(pa.table({"item_id": ["a", None], "vector": vec[:2]}), tmp_path / "q.parquet")
    with pytest.raises(SchemaError, match=r"q.parquet' column `item_id` has a null value at row 1 \(over all"):
        scan_shards([tmp_path / "q.parquet"])
    pq.write_table(pa.table({"item_id": ["z"], "vector": vec[1:2]}), tmp_path / "z.parquet")
    with pytest.raises(SchemaError, match=r"the shards \['z.parquet'\] hold no usable vectors"):
        build_index_from_shards([tmp_path / "z.parquet"], CFG, on_bad_vectors="skip")


def test_shards_that_do_not_fit_together(tmp_path: Path, data: tuple[list[str], np.ndarray]) -> None:
    ids, x = data
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(embeddings_table(ids[:10], x[:10]), a)
    pq.write_table(embeddings_table(ids[10:20], x[10:20, :8]), b)
    with pytest.raises(SchemaError, match=r"b.parquet' column `vector` has width 8, but '.*a.parquet' has 16"):
        scan_shards([a, b])
    pq.write_table(embeddings_table(["i3", "x1", "x2"], x[:3]), b)
    with pytest.raises(
        SchemaError, match=r"`item_id` must be unique across shards.*'i3' 2 times \(in a.parquet, b.parquet"
    ):
        scan_shards([a, b])
    pq.write_table(pa.table({"item_id": ["u"], "vec": [[1.0]]}), b)
    with pytest.raises(SchemaError, match=r"b.parquet' has no `vector` column \(columns: \['item_id', 'vec'\]\)"):
        scan_shards([a, b])
    pq.write_table(pa.table({"item_id": ["u"], "vector": pa.array([[1.0]], pa.list_(pa.float32()))}), b)
    with pytest.raises(SchemaError, match=r"column `vector` has type list<element: float>, expected fixed_size_list"):
        scan_shards([a, b])
    pq.write_table(pa.table({"item_id": [1.5], "vector": pa.array([[1.0]], pa.list_(pa.float32(), 1))}), b)
    with pytest.raises(SchemaError, match=r"column `item_id` has type double, expected string item ids"):
        scan_shards([b])


def test_source_errors(tmp_path: Path, shards: Path) -> None:
    with pytest.raises(SchemaError, match=r"has no manifest.json, so it is not a finished `recfuse embed` output"):
        scan_shards(tmp_path)
    with pytest.raises(
        SchemaError, match=r"no embedding shards in the given file list \(empty\); run `recfuse embed --out DIR` first"
    ):
        scan_shards([])
    with pytest.raises(SchemaError, match=r"embedding shard '.*nope.parquet' does not exist \(1 missing\)"):
        scan_shards([tmp_path / "nope.parquet"])
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SchemaError, match=r"embed manifest '.*manifest.json' is unreadable \(JSONDecodeError"):
        scan_shards(tmp_path)
    (tmp_path / "manifest.json").unlink()
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in shards.iterdir():
        if f.is_file():
            (changed / f.name).write_bytes(f.read_bytes())
    pq.write_table(pq.read_table(changed / shard_name(1)).slice(0, 10), changed / shard_name(1))
    with pytest.raises(SchemaError, match=r"part-00001.parquet' has 10 rows, the embed manifest .* says 1100"):
        scan_shards(changed)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("HNSW32", r"'HNSW32' is not an IVF index; building from shards takes IVF factories \(e.g. 'IVF1024,Flat'"),
        ("Flat", r"Flat and HNSW store every raw vector in the index anyway"),
        ("IVFx,Flat", r"'IVFx,Flat' is not a valid faiss factory string for dim 16"),
        ("IDMap2,IVF8,Flat", r"must not start with IDMap"),
        ("IVF4096,Flat", r"'IVF4096,Flat' cannot be trained on 1000 vectors"),
    ],
)
def test_factories_that_cannot_be_built_from_shards(shards: Path, factory: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_index_from_shards(shards, dataclasses.replace(CFG, factory=factory))


def test_bundle_from_shards_equals_an_export_of_the_same_items(tmp_path: Path) -> None:
    base = make_contents(n_items=1200, dim=16, seed=3, factory="IVF16,Flat")
    base.config = {**base.config, "model": {**base.config["model"], "popularity_prior": 0.5}}
    order = np.random.default_rng(0).permutation(1200)  # shards in another order than the base
    ids = [base.item_ids[i] for i in order]
    vectors = np.asarray(base.item_vectors)[order]
    emb = write_shards(tmp_path / "emb", ids, vectors, (500, 700))
    cfg = IndexConfig(factory="IVF16,Flat", recall_queries=50, nprobe=4)
    result = publish_from_shards(tmp_path / "bundles", emb, base, cfg, version="v1")
    b = load_bundle(result.path)
    assert (result.items, result.factory, b.item_ids, b.manifest["index_factory"]) == (
        1200,
        "IVF16,Flat",
        ids,
        "IVF16,Flat",
    )
    scale = popularity_scale([base.popularity.get(i, 0) for i in ids], 0.5)
    np.testing.assert_array_equal(b.item_scale, scale)
    assert b.items["title"].tolist() == [f"Item {i} (c{i % 8})" for i in order]
    # the same items published by write_bundle (index built in memory) give the same index file
    same = dataclasses.replace(
        base, item_ids=ids, item_vectors=vectors, item_scale=scale, items=b.items, item_vocab=None
    )
    ref = write_bundle(tmp_path / "ref", same, cfg, version="v1")
    assert (result.path / "index.faiss").read_bytes() == (ref / "index.faiss").read_bytes()
    rec = Recommender.from_bundle(result.path.parent)
    liked = {base.items["categories"][int(i[1:])][0] for i in base.user_history["u1"]}
    got = rec.recommend(user_id="u1", k=5).item_ids
    assert len(got) == 5 and all(base.items["categories"][int(i[1:])][0] in liked for i in got)


def test_bundle_from_shards_of_another_width(tmp_path: Path, data: tuple[list[str], np.ndarray]) -> None:
    emb = write_shards(tmp_path / "emb", *data)
    base = make_contents(n_items=50, dim=8, seed=1)
    with pytest.raises(ArtifactError, match=r"`vector` column has width 16 but the model's query tower outputs 8"):
        publish_from_shards(tmp_path / "b", emb, base, CFG)
    assert not (tmp_path / "b").exists()


def test_cli_errors_before_loading_a_model(tmp_path: Path, shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["index-shards", "--embeddings", str(shards), "--out", str(tmp_path / "b")]
    assert main([*argv, "--model", str(tmp_path / "nope")]) == 5
    assert "model directory" in capsys.readouterr().err
    assert main([*argv, "--model", str(tmp_path), "--sample", "0"]) == 2
    assert "--sample 0: " in capsys.readouterr().err
    (tmp_path / "partial").mkdir()
    argv[2] = str(tmp_path / "partial")
    assert main([*argv, "--model", str(tmp_path)]) == 4
    assert "has no manifest.json" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_publishes_a_trained_models_shards_and_serves_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorflow")
    from test_embeddings_cli import CONFIG

    from recfuse.data.synthetic import generate

    generate(tmp_path, n_items=150, n_users=60, seed=2)
    (tmp_path / "cfg.toml").write_text(CONFIG.format(root=tmp_path))
    model, emb, bundles = tmp_path / "model", tmp_path / "emb", tmp_path / "bundles"
    assert main(["train", "--config", str(tmp_path / "cfg.toml"), "--out", str(model), "--no-progress"]) == 0
    embed = ["embed", "--model", str(model), "--catalog", str(tmp_path / "items.parquet"), "--out", str(emb),
             "--batch-size", "32", "--batches-per-shard", "2"]  # fmt: skip
    assert main(embed) == 0
    capsys.readouterr()
    argv = ["index-shards", "--embeddings", str(emb), "--model", str(model), "--out", str(bundles),
            "--factory", "IVF4,Flat", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "150 items from shards; IVF4,Flat trained on 150 rows" in out and "served recall@10" in out
    b = load_bundle(bundles)
    table = pa.concat_tables([pq.read_table(p) for p in sorted(emb.glob("part-*.parquet"))])
    assert b.item_ids == table.column("item_id").to_pylist() and b.manifest["index_factory"] == "IVF4,Flat"
    np.testing.assert_array_equal(b.item_vectors, np.stack(table.column("vector").to_numpy(zero_copy_only=False)))
    assert b.manifest["has_model"] and not b.manifest["has_query_savedmodel"] and b.manifest["served_recall"]
    user = sorted(b.user_history["user_id"])[0]
    result = Recommender.from_bundle(bundles).recommend(user_id=user, k=5)
    assert len(result.item_ids) == 5 and result.fallback == "" and set(result.item_ids) <= set(b.item_ids)
