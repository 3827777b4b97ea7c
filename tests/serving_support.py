"""Helpers shared by the serving tests: a started server over real factory bundles, TLS material."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
from bundle_factory import make_bundle
from recfuse_api.v1 import recommender_pb2_grpc as pb_grpc
from recfuse_serving.config import ServerConfig
from recfuse_serving.server import RecfuseServer, create_server

N_ITEMS = 300
DIM = 16


def make_root(root: Path, variants: tuple[str, ...] = ("attention",), seed: int = 0) -> Path:
    """A bundles root with one small real bundle per variant."""
    for i, v in enumerate(variants):
        make_bundle(root, n_items=N_ITEMS, dim=DIM, variant=v, seed=seed + i)
    return root


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@contextlib.contextmanager
def running(root: Path, ready: bool = True, **overrides: object) -> Iterator[tuple[RecfuseServer, grpc.Channel]]:
    """A started server on 127.0.0.1:0 and an insecure channel to it; stopped afterwards."""
    cfg = ServerConfig(port=0, **overrides)  # type: ignore[arg-type]
    server, port = create_server(cfg, root)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        if ready:
            assert server.wait_ready(30), "server did not load its bundles"
        yield server, channel
    finally:
        channel.close()
        server.stop(0.5)


def stub(channel: grpc.Channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(channel)


def admin_stub(channel: grpc.Channel) -> pb_grpc.RecommenderAdminStub:
    return pb_grpc.RecommenderAdminStub(channel)


def self_signed(tmp: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A self-signed server certificate for ``host`` and 127.0.0.1 (cert, key PEM paths)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "server.crt", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
