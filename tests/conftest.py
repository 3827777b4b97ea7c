"""Suite-wide setup: quiet TensorFlow, Keras 2 (via ``import recfuse``), one thread for BLAS/faiss."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import recfuse  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
