"""The one place that selects Keras 2 (tf-keras) for TensorFlow.

TensorFlow 2.21 defaults to Keras 3, under which ``tensorflow_recommenders`` cannot be imported.
``TF_USE_LEGACY_KERAS=1`` must be set before ``tf.keras`` is first resolved. ``recfuse/__init__.py``
imports this module, so every entry point (CLI, server, tests, notebooks doing ``import recfuse``)
gets the switch. This module never imports TensorFlow itself (the serving path stays TF-free);
:func:`recfuse._tfcheck.require_keras2`, called by :mod:`recfuse.layers`, fails fast naming the fix
when Keras 3 is active anyway.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
