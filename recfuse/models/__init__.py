"""Towers and the two-tower model.

This package's ``__init__`` imports nothing heavy: :mod:`recfuse.models.query_numpy` is numpy-only
(the serving path), the TensorFlow modules are imported explicitly where needed.
"""
