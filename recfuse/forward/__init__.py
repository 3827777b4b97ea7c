"""TensorFlow-free numpy forwards of the trained towers: what inference runs per request.

:mod:`recfuse.forward.query` holds the query (user) tower's weights and its numpy forward
(:class:`~recfuse.forward.query.NumpyQueryTower`, and :class:`~recfuse.forward.query.QueryEncoder`
for the request path); :mod:`recfuse.forward.sequence` the causal self-attention history encoder it
may use. They need numpy only, so the serving process never loads TensorFlow.

This package sits below :mod:`recfuse.models` (whose TensorFlow towers export their weights in
these layouts and are tested equal to these forwards), :mod:`recfuse.bundle` (which stores and loads
them) and :mod:`recfuse.inference` (which runs them); it imports only :mod:`recfuse.errors` and
:mod:`recfuse.types`.
"""
