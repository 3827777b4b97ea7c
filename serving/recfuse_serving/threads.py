"""BLAS thread pools of this process, read and set through the loaded OpenBLAS libraries themselves.

``OPENBLAS_NUM_THREADS`` is read once, when OpenBLAS loads — and numpy (and faiss, which ships its
own OpenBLAS) load while ``recfuse_serving.server`` is imported, before ``main`` runs — so the server
sets the pools directly (what threadpoolctl does): every OpenBLAS mapped into the process is found in
``/proc/self/maps`` and called through ``openblas_set_num_threads`` (numpy's ``scipy_openblas`` build
has prefixed, 64-bit-suffixed names). The environment variables are set too, for child processes.
A server request runs one small matrix product per call; a BLAS pool per library per worker only
adds wake-ups and cache traffic while the gRPC threads already use the cores.

Example:
    >>> limit_blas_threads(1)                    # doctest: +SKIP
    {'libscipy_openblas64_-32a4b2a6.so': 1, 'libopenblaso-r0-d77a1985.3.15.so': 1}
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_SYMBOLS = (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"), ("openblas_", ""))


def _openblas_libraries() -> list[str]:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: nothing to find this way
        return []
    return sorted(set(re.findall(r"(/\S*openblas\S*\.so[.\d]*)\s*$", maps, flags=re.MULTILINE)))


def _pools() -> Iterator[tuple[str, Any, Any]]:
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in _SYMBOLS:
            get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
            if get is not None and put is not None:
                yield Path(path).name, get, put
                break


def blas_threads() -> dict[str, int]:
    """Threads of each OpenBLAS loaded in this process, by library file name."""
    return {name: int(get()) for name, get, _ in _pools()}


def limit_blas_threads(n: int = 1) -> dict[str, int]:
    """Set every loaded OpenBLAS to ``n`` threads (and the env vars, for children); returns what it reads back."""
    if n < 1:
        raise ValueError(f"`n` must be >= 1 thread, got {n!r}")
    for var in ENV_VARS:
        os.environ[var] = str(n)
    for _name, _get, put in _pools():
        put(ctypes.c_int(n))
    return blas_threads()
