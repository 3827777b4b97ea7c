"""The Ray session the embed job and Ray Train share: imported lazily, started on loopback.

Ray is the optional ``recfuse[ray]`` extra. Ray maps ``_node_ip_address="127.0.0.1"`` to the host's
routable address and binds its servers to every interface unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before ``ray`` is first imported: :func:`import_ray`
sets it (unless the caller chose a value), and :func:`start_local` refuses to start a session when
``ray`` was imported earlier without it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from recfuse.errors import ConfigError


def import_ray(*modules: str, flag: str = "--engine ray", fallback: str = "the default `--engine local`") -> Any:
    """``ray`` with ``modules`` (e.g. ``"ray.data"``) imported, or :class:`ConfigError` naming the extra."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read once, at ray's import
    try:
        ray = importlib.import_module("ray")
        for name in modules:
            importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"`{flag}` needs Ray, which is not installed; run `pip install 'recfuse[ray]'` or use {fallback}"
        ) from None
    return ray


def start_local(ray: Any, num_cpus: int, log_to_driver: bool = False) -> None:
    """``ray.init`` a local session on 127.0.0.1 (refused when it would listen on every interface)."""
    ip = ray.util.get_node_ip_address()  # before init: the address a new local node would use
    if ip not in ("127.0.0.1", "::1"):
        raise ConfigError(
            f"a local Ray session would bind to {ip!r} (every interface), not 127.0.0.1: `ray` was imported "
            "before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; set it before importing ray, or call "
            "ray.init(...) yourself first"
        )
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=log_to_driver)
