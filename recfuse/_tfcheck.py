"""Fail fast, naming the fix, when ``tf.keras`` is Keras 3 (TFRS needs Keras 2 / tf-keras)."""

from __future__ import annotations

import os

from recfuse.errors import ConfigError

_FIX = (
    "set TF_USE_LEGACY_KERAS=1 before TensorFlow's tf.keras is first used (import recfuse before touching "
    "tf.keras), and install tf-keras matching tensorflow (pip install -e .)"
)


def require_keras2() -> None:
    """Import TensorFlow and check that ``tf.keras`` resolves to Keras 2 (tf-keras).

    Raises:
        ConfigError: Keras 3 is active (``tf.keras`` was resolved before recfuse set
            ``TF_USE_LEGACY_KERAS``, or tf-keras is missing).
    """
    import tensorflow as tf

    # tf.keras is a lazy loader; the module of a layer class tells which Keras it resolved to.
    module = tf.keras.layers.Dense.__module__
    if not module.startswith("tf_keras."):
        raise ConfigError(
            f"recfuse needs Keras 2 (tf-keras) but tf.keras resolves to {module.split('.')[0]!r} "
            f"(TF_USE_LEGACY_KERAS={os.environ.get('TF_USE_LEGACY_KERAS')!r}); fix: {_FIX}"
        )
