"""The variants being served: one Recommender per ``BUNDLES_DIR/<variant>``, A/B routing, atomic swaps.

Reads never lock: ``self._recs`` is an immutable snapshot (a new dict per swap, replaced by one
reference assignment), so a request that fetched the old Recommender finishes on it while new
requests see the new one. :meth:`VariantRegistry.reload` (one at a time) compares every variant's
``CURRENT`` with the loaded version, loads and verifies changed ones (checksums, dims — the
library's ``load_bundle``), and swaps in only those that pass; a broken version is logged, counted
(``recfuse_reloads_total{result="failed"}``) and remembered, so it is not retried until ``CURRENT``
changes again, and the old version keeps serving.

A variant with nothing loaded yet (start-up) whose ``CURRENT`` is unreadable or names a version
that does not verify falls back to the newest version beside it that does (``fallback =
"newest"``, ERROR log + ``recfuse_reloads_total{result="fallback"}``); ``fallback = "none"`` leaves
it unloaded (the server then refuses to start). Each loaded variant also gets its response-size
bounds (:class:`Served`): served titles capped at ``max_title_chars`` and the largest ``k`` whose
response fits ``max_message_bytes``.

Example:
    >>> reg = VariantRegistry("bundles", Limits(), ABConfig())   # doctest: +SKIP
    >>> reg.reload().reloaded                                    # doctest: +SKIP
    ['attention:20261128T031500.000000Z-1a2b3c']
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recfuse.bundle.publish import list_variants, list_versions, read_current
from recfuse.errors import InvalidRequestError
from recfuse.inference import Limits, Recommender
from recfuse.variants import VariantAssigner
from recfuse_serving import sizes
from recfuse_serving.config import ABConfig
from recfuse_serving.metrics import ServingMetrics
from recfuse_serving.status import UnavailableError

logger = logging.getLogger(__name__)

MAX_VARIANT_LENGTH = 64


@dataclass(frozen=True)
class Served:
    """A loaded variant as the servicer uses it.

    Attributes:
        rec: the Recommender.
        title_of_row: titles by catalog row, each capped at ``max_title_chars``.
        title_of: item id -> capped title.
        item_bytes: upper bound of one returned item in a response (id + capped title + framing).
        header_bytes: upper bound of a response without items.
        fit_k: largest ``k`` whose response fits the server's max message size.
    """

    rec: Recommender
    title_of_row: tuple[str, ...]
    title_of: Callable[[str], str]
    item_bytes: int
    header_bytes: int
    fit_k: int


def serve_view(rec: Recommender, max_title_chars: int, max_message_bytes: int) -> Served:
    """Capped titles and size bounds of a freshly loaded Recommender (one pass over its items)."""
    titles = rec.title_of_row
    if any(len(t) > max_title_chars for t in titles):
        titles = tuple(t[:max_title_chars] for t in titles)
        full = rec.item_title

        def title_of(item_id: str) -> str:
            return full(item_id)[:max_title_chars]

    else:
        title_of = rec.item_title
    id_bytes = max((len(i.encode()) for i in rec.item_id_of_row), default=0)
    title_bytes = max((len(t.encode()) for t in titles), default=0)
    item_bytes = sizes.item_bound(id_bytes, title_bytes)
    header = sizes.header_bound(
        len(rec.variant.encode()), max(len(rec.version.encode()), len(rec.bundle.model_id.encode()))
    )
    fit_k = max(0, (max_message_bytes - header) // item_bytes)
    return Served(rec, titles, title_of, item_bytes, header, fit_k)


@dataclass
class ReloadResult:
    """What one reload pass did: ``variant:version`` swapped in, and rejected ones with the reason."""

    reloaded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


class VariantRegistry:
    """Loaded Recommenders by variant, routing by :class:`recfuse.variants.VariantAssigner`.

    Args:
        bundles_dir: bundles root holding ``<variant>/CURRENT``.
        limits: request limits given to every Recommender.
        ab: A/B routing config (salt, shares, default variant).
        metrics: where reloads and bundle versions are recorded.
        on_change: called (no args) after every swap (the server updates health there).
        user_vectors_mb: budget of each Recommender's precomputed known-user query vectors
            (:class:`recfuse.inference.Recommender`; 0: off).
        hugepages: back each loaded index with transparent huge pages (``Recommender(hugepages=...)``).
        fallback: ``newest`` (a variant with nothing loaded whose ``CURRENT`` does not load serves the
            newest version that does) or ``none``.
        max_title_chars: served titles are cut to this many characters.
        max_message_bytes: the server's max message size (bounds ``Served.fit_k``).
    """

    def __init__(
        self,
        bundles_dir: str | Path,
        limits: Limits,
        ab: ABConfig,
        metrics: ServingMetrics | None = None,
        on_change: Callable[[], None] | None = None,
        user_vectors_mb: float = 256.0,
        hugepages: bool = True,
        fallback: str = "newest",
        max_title_chars: int = 256,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.bundles_dir = Path(bundles_dir)
        self.fallback = fallback
        self.max_title_chars = max_title_chars
        self.max_message_bytes = max_message_bytes
        self._served: Mapping[str, Served] = {}
        self.user_vectors_mb = user_vectors_mb
        self.hugepages = hugepages
        self.limits = limits
        self.ab = ab
        self.metrics = metrics
        self.on_change = on_change
        self._assigner = VariantAssigner(ab.salt, ab.shares) if ab.shares else None
        self._recs: Mapping[str, Recommender] = {}
        self._rejected: dict[str, str] = {}  # variant -> version that failed (not retried)
        self._reload_lock = threading.Lock()

    # ---------------------------------------------------------------- request path (lock-free)
    @property
    def recommenders(self) -> Mapping[str, Recommender]:
        """The current snapshot: variant -> Recommender."""
        return self._recs

    @property
    def ready(self) -> bool:
        """True when every variant that gets traffic (all of ``ab.shares``, or at least one) is loaded."""
        recs = self._recs
        if self._assigner is not None:
            return all(v in recs for v, share in self.ab.shares.items() if share > 0)
        return bool(recs)

    def default_variant(self) -> str:
        """Variant for anonymous requests and SimilarItems without a variant."""
        if self.ab.default_variant:
            return self.ab.default_variant
        if self.ab.shares:
            return next(iter(self.ab.shares))
        recs = self._recs
        if not recs:
            raise UnavailableError(f"no bundle is loaded yet from {str(self.bundles_dir)!r}; retry shortly")
        return sorted(recs)[0]

    def route(self, user_id: str, override: str = "") -> str:
        """Variant of a request: ``override`` > sticky assignment of ``user_id`` > default variant.

        Raises:
            InvalidRequestError: ``override`` too long or not a served/configured variant.
        """
        if override:
            if len(override) > MAX_VARIANT_LENGTH:
                raise InvalidRequestError(
                    f"`variant` is {len(override)} characters long; at most {MAX_VARIANT_LENGTH} are allowed"
                )
            known = set(self._recs) | set(self.ab.shares)
            if override not in known:
                raise InvalidRequestError(f"`variant` {override!r} is not served here; choose one of {sorted(known)}")
            return override
        if self._assigner is not None and user_id:
            return self._assigner.assign(user_id)
        return self.default_variant()

    def get(self, variant: str) -> Recommender:
        """The Recommender serving ``variant``.

        Raises:
            UnavailableError: that variant has no loaded bundle (yet).
        """
        rec = self._recs.get(variant)
        if rec is None:
            raise UnavailableError(
                f"variant {variant!r} has no loaded bundle under {str(self.bundles_dir)!r} "
                f"(loaded: {sorted(self._recs)}); publish one or retry shortly"
            )
        return rec

    def served(self, variant: str) -> Served:
        """The :class:`Served` view of ``variant`` (same errors as :meth:`get`)."""
        view = self._served.get(variant)
        if view is None:
            self.get(variant)  # raises UnavailableError with the full message
            raise UnavailableError(f"variant {variant!r} is being swapped in; retry shortly")
        return view

    def share_of(self, variant: str) -> float:
        if self.ab.shares:
            return float(self.ab.shares.get(variant, 0.0))
        return 1.0 if self._recs and variant == self.default_variant() else 0.0

    # ---------------------------------------------------------------- reload (background)
    def reload(self) -> ReloadResult:
        """Load every variant whose ``CURRENT`` moved; swap in the verified ones atomically."""
        result = ReloadResult()
        with self._reload_lock:
            current = dict(self._recs)
            served = dict(self._served)
            changed = False
            for variant in list_variants(self.bundles_dir):
                loaded = current.get(variant)
                try:
                    version = read_current(self.bundles_dir / variant)
                except Exception as exc:  # a CURRENT being replaced or pointing nowhere: keep serving
                    result.rejected.append(f"{variant}:?: {exc}")
                    if loaded is None and self._rejected.get(variant) != "?":
                        self._rejected[variant] = "?"
                        rec = self._fall_back(variant, "?", exc, result)
                        if rec is not None:
                            current[variant], served[variant] = rec, self._view(rec)
                            changed = True
                    continue
                if loaded is not None and loaded.version == version:
                    continue
                if self._rejected.get(variant) == version:
                    continue
                try:
                    rec = self._load(variant, version)
                except Exception as exc:  # any failure to load/verify: reject, old version keeps serving
                    self._rejected[variant] = version
                    result.rejected.append(f"{variant}:{version}: {exc}")
                    logger.error(
                        "reload of %s/%s REJECTED, still serving %s: %s",
                        variant,
                        version,
                        loaded.version if loaded is not None else "nothing",
                        exc,
                    )
                    if self.metrics is not None:
                        self.metrics.reloads.labels(variant, "failed").inc()
                    if loaded is None:
                        rec = self._fall_back(variant, version, exc, result)
                        if rec is not None:
                            current[variant], served[variant] = rec, self._view(rec)
                            changed = True
                    continue
                current[variant], served[variant] = rec, self._view(rec)
                changed = True
                self._rejected.pop(variant, None)
                result.reloaded.append(f"{variant}:{version}")
                logger.info(
                    "variant %s now serves %s (was %s, %d items, index %s)",
                    variant,
                    version,
                    loaded.version if loaded is not None else "nothing",
                    rec.info().item_count,
                    rec.info().index_factory,
                )
                if self.metrics is not None:
                    self.metrics.reloads.labels(variant, "ok").inc()
                    self.metrics.set_bundle(variant, version)
            if changed:
                self._served = served  # views first: a request that finds a rec always finds its view
                self._recs = current  # the one atomic swap
        if changed and self.on_change is not None:
            self.on_change()
        return result

    def _load(self, variant: str, version: str) -> Recommender:
        return Recommender.from_bundle(
            self.bundles_dir / variant / version,
            limits=self.limits,
            user_vectors_mb=self.user_vectors_mb,
            hugepages=self.hugepages,
        )

    def _view(self, rec: Recommender) -> Served:
        view = serve_view(rec, self.max_title_chars, self.max_message_bytes)
        if view.fit_k < self.limits.max_k:
            logger.warning(
                "variant %s/%s: items take up to %d bytes in a response, so k above %d (max_k is %d) is answered "
                "INVALID_ARGUMENT to stay within max_message_bytes %d",
                rec.variant,
                rec.version,
                view.item_bytes,
                view.fit_k,
                self.limits.max_k,
                self.max_message_bytes,
            )
        return view

    def _fall_back(self, variant: str, bad: str, error: Exception, result: ReloadResult) -> Recommender | None:
        """Nothing of ``variant`` is loaded and ``CURRENT`` (naming ``bad``) does not load: the newest version
        that does, when ``fallback == "newest"``."""
        if self.fallback != "newest":
            return None
        for version in reversed(list_versions(self.bundles_dir / variant)):
            if version == bad:
                continue
            try:
                rec = self._load(variant, version)
            except Exception as exc:
                logger.error("fallback candidate %s/%s does not load either: %s", variant, version, exc)
                continue
            logger.error(
                "variant %s: CURRENT names %s, which does not load (%s); serving the newest version that verifies, "
                "%s, until CURRENT is fixed",
                variant,
                bad,
                error,
                version,
            )
            result.reloaded.append(f"{variant}:{version}")
            if self.metrics is not None:
                self.metrics.reloads.labels(variant, "fallback").inc()
                self.metrics.set_bundle(variant, version)
            return rec
        logger.error("variant %s: CURRENT names %s, which does not load, and no other version verifies", variant, bad)
        return None
