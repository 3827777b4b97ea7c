"""``make demo``: the main job end to end on ``data_samples/``.

validate → train → export (query tower, embeddings, FAISS index, manifest) → local recommend →
start ``recfuse-serve`` on 127.0.0.1 → real Recommend / RecommendBatch / SimilarItems calls
through :class:`recfuse_serving.client.RecfuseClient` → SIGTERM → clean exit.

The TensorFlow steps run as the real ``recfuse`` CLI in child processes (this module, like the rest of
``recfuse_serving``, stays TensorFlow-free); the server runs as the real ``recfuse-serve`` process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from recfuse_serving.client import Query, RecfuseClient, Recommendations

SAMPLE_CONFIG = "data_samples/recfuse.toml"


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


def _bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def _show(title: str, recs: Recommendations, items: pd.DataFrame) -> None:
    fallback = f", fallback={recs.fallback}" if recs.fallback else ""
    print(
        f"{title}  [variant={recs.variant} bundle={recs.bundle_version}{fallback} "
        f"query {recs.query_ms:.2f} ms, search {recs.search_ms:.2f} ms, total {recs.total_ms:.2f} ms]"
    )
    for rank, it in enumerate(recs.items, 1):
        row = items.loc[it.item_id] if it.item_id in items.index else None
        latent = f"style {row.latent_style} topic {row.latent_topic}" if row is not None else ""
        print(f"  {rank:2d}. {it.item_id:>8}  {it.score:+.3f}  {latent:<18} {(it.title or '')[:60]}")


def _latent(items: pd.DataFrame, ids: list[str]) -> str:
    return ", ".join(f"{i}(s{items.loc[i].latent_style}/t{items.loc[i].latent_topic})" for i in ids if i in items.index)


def _wait_port(port_file: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"recfuse-serve exited early with code {proc.returncode}")
        if port_file.exists():
            return int(port_file.read_text().strip())
        time.sleep(0.1)
    raise SystemExit(f"recfuse-serve did not report a port within {timeout:.0f} s")


def _wait_loaded(client: RecfuseClient, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> Any:
    """The server's Info once it lists a loaded bundle (the port opens before the first load ends)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"recfuse-serve exited early with code {proc.returncode}")
        try:
            return client.wait_ready(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
        except TimeoutError as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"recfuse-serve loaded no bundle within {timeout:.0f} s ({exc})") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo", help="where the model, bundles and logs go")
    parser.add_argument("--config", default=SAMPLE_CONFIG)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    recfuse = _bin("recfuse")
    model_dir, bundles = work / "model", work / "bundles"

    _banner("1. validate the sample (data contract, coverage, split sizes)")
    _run([recfuse, "validate", "--config", args.config, "--split", "random"])
    _banner("2. train the attention-fused two-tower model")
    _run([recfuse, "train", "--config", args.config, "--out", str(model_dir), "--epochs", str(args.epochs)])
    _banner("3. export: query tower + item embeddings + FAISS index + manifest, published atomically")
    _run([recfuse, "export", "--model", str(model_dir), "--out", str(bundles)])
    _run([recfuse, "bundle-info", "--bundle", str(bundles)])

    items = pd.read_parquet("data_samples/items.parquet").astype({"item_id": str}).set_index("item_id")
    interactions = pd.read_parquet("data_samples/interactions.parquet").astype({"user_id": str, "item_id": str})
    user = interactions.user_id.value_counts().index[0]
    _banner("4. local recommendations, no server (recfuse recommend)")
    _run([recfuse, "recommend", "--bundle", str(bundles), "--user", user, "--k", "5", "--exclude-seen"])

    _banner("5. start recfuse-serve on 127.0.0.1 and call it")
    port_file = work / "port"
    server = subprocess.Popen(
        [
            _bin("recfuse-serve"),
            "--bundles",
            str(bundles),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--metrics-port",
            "-1",
            "--log-level",
            "WARNING",
        ],
    )
    try:
        port = _wait_port(port_file, server)
        with RecfuseClient(f"127.0.0.1:{port}", timeout=10.0) as client:
            info = _wait_loaded(client, server)
            print(f"server on 127.0.0.1:{port}, default variant {info.default_variant or '(the only one loaded)'}")
            for v in info.variants:
                print(
                    f"  variant {v.variant}: bundle {v.bundle_version} (model {v.model_id}), "
                    f"{v.item_count} items x {v.dim}-d, "
                    f"index {v.index_type}{' ' + v.search_params if v.search_params else ''}, served recall@10 "
                    f"{v.served_recall:.3f}, share {v.traffic_share:.0%}"
                )
            recent = interactions[interactions.user_id == user].sort_values("timestamp", ascending=False)
            print(f"\nuser {user} recently liked: {_latent(items, recent.item_id.head(6).tolist())}")
            _show(
                f"Recommend(user={user}, k=8, exclude_seen)",
                client.recommend(user_id=user, k=8, exclude_seen=True),
                items,
            )

            new_items = items.index[items.is_new].tolist()
            cold = new_items[0]
            print(
                f"\ncold-start: item {cold} (style {items.loc[cold].latent_style}, topic "
                f"{items.loc[cold].latent_topic}) never appears in any interaction"
            )
            _show(f"SimilarItems({cold}, k=6)", client.similar_items(cold, k=6), items)
            _show(f"Recommend(anonymous, history=[{cold}], k=6)", client.recommend(history=[cold], k=6), items)
            _show(
                "Recommend(unknown user, no history) -> popularity fallback",
                client.recommend(user_id="nobody-knows-me", k=5),
                items,
            )

            users = interactions.user_id.drop_duplicates().head(3).tolist()
            batch = client.recommend_batch([Query(user_id=u, k=3, exclude_seen=True) for u in users])
            print("\nRecommendBatch:")
            for u, recs in zip(users, batch):
                print(f"  user {u}: {recs.item_ids} (variant {recs.variant})")
    finally:
        _banner("6. SIGTERM: health NOT_SERVING, drain, exit")
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        print(f"recfuse-serve exited with code {code}")
    if code != 0:
        return 1
    print("\ndemo finished: train → export → index → gRPC serve → Recommend → clean shutdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
