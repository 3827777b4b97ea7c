"""The one place that selects Keras 2 (tf-keras) for TensorFlow.

TensorFlow 2.21 defaults to Keras 3, under which ``tensorflow_recommenders`` cannot be imported.
``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported. ``recfuse/__init__.py``
imports this module, so every entry point (CLI, server, tests, notebooks doing ``import recfuse``)
gets the switch; :func:`require_keras2` fails fast, naming the fix, when TensorFlow was imported
earlier without it.
"""

from __future__ import annotations

import os
import sys

from recfuse.errors import ConfigError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

_FIX = (
    "set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported (import recfuse before tensorflow), "
    "and install tf-keras matching tensorflow (pip install -e .)"
)


def require_keras2() -> None:
    """Import TensorFlow and check that ``tf.keras`` is Keras 2 (tf-keras).

    Raises:
        ConfigError: Keras 3 is active (TensorFlow was imported before recfuse with
            ``TF_USE_LEGACY_KERAS`` unset, or tf-keras is missing).
    """
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True") and "tensorflow" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    # tf.keras is a lazy loader; the class of a layer tells which Keras it resolves to.
    module = tf.keras.layers.Dense.__module__
    if not module.startswith("tf_keras."):
        raise ConfigError(
            f"recfuse needs Keras 2 (tf-keras) but tf.keras resolves to {module.split('.')[0]!r} "
            f"(TF_USE_LEGACY_KERAS={os.environ.get('TF_USE_LEGACY_KERAS')!r}); fix: {_FIX}"
        )
