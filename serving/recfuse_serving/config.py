"""Server configuration (``server.toml``): frozen dataclasses, validated on construction, CLI flags win.

Sections: top-level network/limits keys, ``[ab]`` (variant routing), ``[exposures]``, ``[tls]``, ``[auth]``.
Read by the library's config loader (:mod:`recfuse.config.parse`), so it fails as the training
config does: an unknown key is named with a did-you-mean hint (a typo never silently becomes a
default), a value of the wrong type is named with its type, and the message names the file.

Example ``server.toml``::

    host = "127.0.0.1"
    port = 50051
    metrics_port = 9095
    max_k = 200
    max_concurrency = 32

    [ab]
    salt = "exp-2026-11"
    shares = { attention = 0.9, concat = 0.1 }
    default_variant = "attention"

    [exposures]
    directory = "runs/exposures"

    [auth]
    tokens = ["s3cret-read"]
    admin_tokens = ["s3cret-admin"]   # may also call the RecommenderAdmin service (Reload)

Example:
    >>> ServerConfig.from_dict({"max_k": 50, "ab": {"shares": {"a": 1.0}}}).ab.shares
    {'a': 1.0}
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfuse.config.parse import build_section, load_toml
from recfuse.errors import ConfigError
from recfuse.variants import validate_shares
from recfuse_serving import sizes

FALLBACKS = ("newest", "none")


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ABConfig:
    """Online A/B routing.

    Attributes:
        salt: experiment salt for :func:`recfuse.variants.assign_variant` (new salt = new experiment).
        shares: variant -> traffic share; empty means "all traffic to ``default_variant``" (or the only
            variant loaded).
        default_variant: variant for anonymous requests, SimilarItems without a variant, and when ``shares``
            is empty; "" = the first of ``shares`` or the first variant loaded (alphabetical).
    """

    salt: str = "recfuse"
    shares: Mapping[str, float] = field(default_factory=dict)
    default_variant: str = ""

    def __post_init__(self) -> None:
        if self.shares:
            object.__setattr__(self, "shares", validate_shares(self.shares))
            if self.default_variant and self.default_variant not in self.shares:
                raise ConfigError(
                    f"`ab.default_variant` {self.default_variant!r} is not in `ab.shares` {list(self.shares)}; "
                    "add it to the shares or pick one of them"
                )


@dataclass(frozen=True)
class ExposureConfig:
    """Exposure logging (one row per served Recommend). ``directory`` "" disables it.

    Attributes:
        directory: folder of the exposure Parquet files; "" (the default) logs no exposures.
        rotate_rows: start a new file after this many rows.
        rotate_seconds: write buffered rows at least this often (seconds).
        queue_size: bound of the in-memory queue; rows beyond it are dropped and counted.
    """

    directory: str = ""
    rotate_rows: int = 10_000
    rotate_seconds: float = 60.0
    queue_size: int = 10_000

    def __post_init__(self) -> None:
        # checked when the config loads, not only when the logger starts
        for name in ("rotate_rows", "rotate_seconds", "queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"`exposures.{name}` must be > 0, got {value!r}")


@dataclass(frozen=True)
class TLSConfig:
    """Server TLS: PEM files. Both empty = plaintext (fine on 127.0.0.1, not beyond).

    Attributes:
        cert_file: the server's PEM certificate chain; set together with ``key_file``.
        key_file: the PEM private key of ``cert_file``.
    """

    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                f"`tls.cert_file` and `tls.key_file` must be set together, got cert={self.cert_file!r} "
                f"key={self.key_file!r}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True)
class AuthConfig:
    """Bearer-token auth. No tokens = auth off. Health and reflection stay open (load balancers and
    ``grpcurl list`` probe without credentials; they reveal no data).

    Attributes:
        tokens: bearer tokens accepted for the read methods (Recommend, RecommendBatch, SimilarItems, Info).
        admin_tokens: bearer tokens that may also call the ``RecommenderAdmin`` service (``Reload``). Without
            any, it is accepted only from connections on the server's own host (127.0.0.1 / ::1), and only
            with one of ``tokens`` when those are set.
        allow_insecure: accept tokens over plaintext on a non-loopback address (they cross the network in
            the clear). Off: such a config refuses to start; configure ``[tls]`` instead.
    """

    tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        for name in ("tokens", "admin_tokens"):
            values = getattr(self, name)
            if isinstance(values, str):
                raise ConfigError(f"`auth.{name}` must be a list of strings, got the single string {values!r}")
            values = tuple(values)
            for i, t in enumerate(values):
                if not isinstance(t, str) or len(t) < 8:
                    raise ConfigError(f"`auth.{name}[{i}]` must be a string of at least 8 characters, got {t!r}")
            object.__setattr__(self, name, values)
        if not isinstance(self.allow_insecure, bool):
            raise ConfigError(f"`auth.allow_insecure` must be true or false, got {self.allow_insecure!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.admin_tokens)


_POSITIVE_INT = (
    "max_k",
    "default_k",
    "max_history",
    "max_id_length",
    "max_exclusions",
    "max_categories",
    "max_batch",
    "max_concurrency",
    "max_message_bytes",
    "max_title_chars",
    "workers",
    "batch_max_size",
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``recfuse-serve`` needs besides the bundles directory.

    Attributes:
        host: bind address (127.0.0.1 by default: expose deliberately).
        port: gRPC port (0 = pick a free one).
        metrics_port: Prometheus port on 127.0.0.1 (0 = pick one, -1 = no metrics endpoint).
        max_k / default_k: bounds of ``k`` (``k=0`` in a request means ``default_k``).
        max_history, max_id_length, max_exclusions, max_categories, max_batch: request size limits.
        max_concurrency: RPCs handled at once; more wait up to ``queue_timeout_s`` then get RESOURCE_EXHAUSTED.
        queue_timeout_s: how long an RPC may wait for a slot.
        rate_limit_qps: global token-bucket rate (0 = off); over it -> RESOURCE_EXHAUSTED.
        peer_rate_limit_qps: the same per client connection (0 = off).
        max_message_bytes: gRPC send/receive message size cap. Responses are bounded before any work
            (``recfuse_serving.sizes``): a request whose answer could exceed it is INVALID_ARGUMENT, and
            a config whose ``max_k`` worst case cannot fit refuses to start.
        max_title_chars: served titles are cut to this many characters (bounds every response).
        fallback: at start-up, a variant whose ``CURRENT`` does not load serves the newest version
            that verifies (``newest``, ERROR log + ``recfuse_reloads_total{result="fallback"}``), or
            the server refuses to start (``none``).
        reload_interval_s: poll ``CURRENT`` files this often (0 = only on SIGHUP / the admin Reload RPC).
        grace_s: how long in-flight calls may drain on SIGTERM.
        shutdown_delay_s: on SIGTERM, keep answering this long after health goes NOT_SERVING (load
            balancers notice; calls already on the wire are not cancelled), then stop accepting.
        workers: server processes sharing the port via SO_REUSEPORT (``recfuse-serve --workers``).
        batching: concurrent Recommend calls that arrive while a batch runs are answered together by
            one query-tower forward and one index search (``recfuse_serving.batcher``); an idle
            server runs each call at once, so a lone call waits for nothing. Off by default: with
            an HNSW index on a 2-core machine it did not raise throughput (faiss releases the GIL,
            so unbatched searches already run on both cores, and a batch searches its queries one
            after another on one); it is for forwards/searches that gain from batching.
        batch_max_size: most Recommend calls in one such batch (also capped by ``max_batch``).
        user_vectors_mb: per process and variant, the query vectors of known users are computed at
            bundle load when they fit in this many MiB (users x dim x 4 bytes; 256 MiB holds 1M users
            at 64-d), so a Recommend by user id with no history skips the query forward; 0 = off.
        hugepages: back each loaded index's large arrays with 2 MiB transparent huge pages (Linux;
            fewer TLB misses in graph searches: -15% search CPU at 1M HNSW items); a no-op where the
            kernel does not allow it.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = -1
    max_k: int = 1000
    default_k: int = 10
    max_history: int = 1000
    max_id_length: int = 256
    max_exclusions: int = 1000
    max_categories: int = 100
    max_batch: int = 256
    max_concurrency: int = 64
    queue_timeout_s: float = 0.05
    rate_limit_qps: float = 0.0
    peer_rate_limit_qps: float = 0.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_title_chars: int = 256
    fallback: str = "newest"
    reload_interval_s: float = 5.0
    grace_s: float = 10.0
    shutdown_delay_s: float = 0.5
    workers: int = 1
    batching: bool = False
    batch_max_size: int = 32
    user_vectors_mb: float = 256.0
    hugepages: bool = True
    ab: ABConfig = field(default_factory=ABConfig)
    exposures: ExposureConfig = field(default_factory=ExposureConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be a positive integer, got {value!r}")
        for name in ("batching", "hugepages"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"`{name}` must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.user_vectors_mb, bool) or not isinstance(self.user_vectors_mb, (int, float)):
            raise ConfigError(f"`user_vectors_mb` must be a number of MiB (0 = off), got {self.user_vectors_mb!r}")
        if self.default_k > self.max_k:
            raise ConfigError(f"`default_k` ({self.default_k}) must be <= `max_k` ({self.max_k})")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"`port` must be in [0, 65535], got {self.port!r}")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"`metrics_port` must be in [-1, 65535] (-1 = off), got {self.metrics_port!r}")
        for name in (
            "queue_timeout_s",
            "rate_limit_qps",
            "peer_rate_limit_qps",
            "reload_interval_s",
            "grace_s",
            "shutdown_delay_s",
            "user_vectors_mb",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, got {getattr(self, name)!r}")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"`fallback` must be one of {list(FALLBACKS)}, got {self.fallback!r}")
        if self.auth.enabled and not self.tls.enabled and not is_loopback_host(self.host):
            if not self.auth.allow_insecure:
                raise ConfigError(
                    f"bearer tokens are configured but `host` {self.host!r} is not a loopback address and TLS is "
                    "off, so tokens would cross the network in plaintext; set [tls] cert_file/key_file, bind "
                    "127.0.0.1, or set auth.allow_insecure = true to accept the risk"
                )
        sizes.check_config(self.max_k, self.max_id_length, self.max_title_chars, self.max_message_bytes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerConfig:
        """Build from parsed TOML with the library's loader (:func:`recfuse.config.parse.build_section`).

        Raises:
            ConfigError: an unknown key (named, with a did-you-mean hint), a value of the wrong type or
                an invalid value.
        """
        return build_section(cls, data, "")

    @classmethod
    def from_toml(cls, path: str | Path) -> ServerConfig:
        """Read ``server.toml``.

        Raises:
            ConfigError: missing/unreadable file, invalid TOML, unknown keys or invalid values (the
                message starts with the file's path).
        """
        return load_toml(path, cls.from_dict, "server config", "pass --config PATH to a server.toml")

    def with_overrides(self, **overrides: Any) -> ServerConfig:
        """A copy with the non-``None`` overrides applied (CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
