"""Drop TensorFlow's known import-time noise from stderr, pass everything else through.

Importing TensorFlow prints C++ log lines (absl pre-init logging) straight to file descriptor 2,
twice, whatever ``TF_CPP_MIN_LOG_LEVEL`` says: "All log messages before absl::InitializeLog()…",
"oneDNN custom operations are on…", "Could not find cuda drivers…", "This TensorFlow binary is
optimized…" / "To enable the following instructions…". Python's ``sys.stderr`` cannot catch them, so
:func:`filtered_stderr` points fd 2 at a temporary file for the duration of a block, then writes back
every captured line that is not one of those: a real error printed during the import still reaches
the user. TensorFlow's behaviour (oneDNN included) is unchanged; only what reaches the terminal is.

:func:`install` arranges for the first ``import tensorflow`` of the process, wherever it happens
(``recfuse.layers``, ``recfuse.training``, ``tensorflow_recommenders``…), to run inside
:func:`filtered_stderr`. Entry points call it (``recfuse`` does, unless ``RECFUSE_TF_LOGS=1``);
the library never does, so notebooks and tests see TensorFlow's output as it is.

Example:
    >>> install()                 # doctest: +SKIP
    >>> import tensorflow         # doctest: +SKIP  (no oneDNN / absl / cuda lines on stderr)
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType

#: Lines TensorFlow prints on import that carry no information for a recfuse user.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|^To enable the following instructions: "
)


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str] = NOISE) -> Iterator[None]:
    """Capture file descriptor 2 during the block; afterwards write back the lines not matching ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().splitlines(keepends=True)
            kept = [ln for ln in lines if not noise.search(ln.decode(errors="replace"))]
            if kept:
                os.write(2, b"".join(kept))


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader's ``exec_module`` inside :func:`filtered_stderr`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its real loader (reload, get_source); only this first execution is filtered
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        module.__loader__ = self.inner
        with filtered_stderr():
            self.inner.exec_module(module)


class _FirstImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first import of ``tensorflow``, then removes itself."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Filter the known noise of the process's first ``import tensorflow`` (no-op once it is imported)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _FirstImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _FirstImportFinder())


def uninstall() -> None:
    """Undo :func:`install` (before TensorFlow is imported; afterwards there is nothing to undo)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _FirstImportFinder)]
