"""Suite-wide setup: quiet TensorFlow, Keras 2 (via ``import recfuse``), one thread for BLAS/faiss.

``make test`` runs the suite on two pytest-xdist workers, one test file per work unit
(``--dist loadfile``, so a file's module-scoped trained model is built once, on one worker).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Ray reads this once, when it is first imported, and a local session listens on every interface
# without it. Several tests import ray in the pytest process (the Ray engine's loopback test, the
# Ray Train test's importorskip); set it before any of them so the outcome does not depend on which
# test a worker happens to run first. (The test that checks the refusal without it builds its own env.)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import recfuse  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

# The files that take longest (seconds of one serial run on the 2-core machine, measured with
# --durations=0), handed out first under xdist so that no long file starts last and runs alone
# at the end. The rest keep their collection order. Re-measure when a file's cost changes a lot.
SCHEDULE_FIRST = (
    "test_training_distributed.py",  # ~180 s: real 2-worker TF and Ray Train runs, one shared fixture
    "test_training.py",  # ~100 s: one small model trained per early-stopping/LR/EMA case
    "test_tune.py",  # ~25 s: tiny optuna studies
    "test_cli_eval.py",  # ~20 s: the experiment command end to end
    "test_embeddings_job.py",  # ~15 s: a local Ray session
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (``--dist loadfile --no-loadscope-reorder``), the longest files come first."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return  # a plain serial run keeps pytest's order

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SCHEDULE_FIRST.index(name) if name in SCHEDULE_FIRST else len(SCHEDULE_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is unchanged
