"""The variants being served: one Recommender per ``BUNDLES_DIR/<variant>``, A/B routing, atomic swaps.

Reads never lock: ``self._recs`` is an immutable snapshot (a new dict per swap, replaced by one
reference assignment), so a request that fetched the old Recommender finishes on it while new
requests see the new one. :meth:`VariantRegistry.reload` (one at a time) compares every variant's
``CURRENT`` with the loaded version, loads and verifies changed ones (checksums, dims — the
library's ``load_bundle``), and swaps in only those that pass; a broken version is logged, counted
(``recfuse_reloads_total{result="failed"}``) and remembered, so it is not retried until ``CURRENT``
changes again, and the old version keeps serving.

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

from recfuse.bundle.publish import list_variants, read_current
from recfuse.errors import InvalidRequestError
from recfuse.inference import Limits, Recommender
from recfuse.variants import VariantAssigner
from recfuse_serving.config import ABConfig
from recfuse_serving.metrics import ServingMetrics
from recfuse_serving.status import UnavailableError

logger = logging.getLogger(__name__)

MAX_VARIANT_LENGTH = 64


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
    ) -> None:
        self.bundles_dir = Path(bundles_dir)
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
            changed = False
            for variant in list_variants(self.bundles_dir):
                try:
                    version = read_current(self.bundles_dir / variant)
                except Exception as exc:  # a CURRENT being replaced or pointing nowhere: keep serving
                    result.rejected.append(f"{variant}:?: {exc}")
                    continue
                loaded = current.get(variant)
                if loaded is not None and loaded.version == version:
                    continue
                if self._rejected.get(variant) == version:
                    continue
                try:
                    rec = Recommender.from_bundle(
                        self.bundles_dir / variant / version,
                        limits=self.limits,
                        user_vectors_mb=self.user_vectors_mb,
                        hugepages=self.hugepages,
                    )
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
                    continue
                current[variant] = rec
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
                self._recs = current  # the one atomic swap
        if changed and self.on_change is not None:
            self.on_change()
        return result
