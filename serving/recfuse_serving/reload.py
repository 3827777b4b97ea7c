"""Background hot reload: poll ``CURRENT`` files every N seconds, or reload now on a trigger (SIGHUP, RPC).

The watcher thread does the loading and verifying, so requests never wait for it; the swap itself is
one reference assignment in :class:`~recfuse_serving.registry.VariantRegistry`.

Example:
    >>> watcher = ReloadWatcher(registry, interval_s=5.0)   # doctest: +SKIP
    >>> watcher.start(); watcher.trigger(); watcher.stop()   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading

from recfuse_serving.registry import VariantRegistry

logger = logging.getLogger(__name__)


class ReloadWatcher:
    """Thread calling ``registry.reload()`` at start, every ``interval_s`` (0 = only when triggered)."""

    def __init__(self, registry: VariantRegistry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recfuse-reload", daemon=True)
        self.passes = 0

    def start(self) -> None:
        self._thread.start()

    def trigger(self) -> None:
        """Reload as soon as possible (safe from signal handlers: it only sets an event)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.registry.reload()
            except Exception:  # the watcher must survive anything (e.g. the bundles dir vanishing)
                logger.exception("reload pass over %s failed; will retry", self.registry.bundles_dir)
            self.passes += 1
            self._wake.wait(self.interval_s if self.interval_s > 0 else None)
            self._wake.clear()
