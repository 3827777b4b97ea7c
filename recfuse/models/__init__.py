"""Towers and the two-tower model (TensorFlow).

This package's ``__init__`` imports nothing heavy: the TensorFlow modules are imported explicitly
where needed. The numpy forward of the query tower, which serving runs, is :mod:`recfuse.forward`.
"""
