"""recfuse.bundle: versioned, verified export bundles (numpy/pandas/faiss; TensorFlow only in ``export``).

``write_bundle`` publishes a :class:`BundleContents` atomically under ``ROOT/<variant>/<version>``
and moves ``ROOT/<variant>/CURRENT``; ``load_bundle`` finds, verifies and loads one. The TF-using
modules :mod:`recfuse.bundle.export` and :mod:`recfuse.bundle.incremental` are not imported here, so
the serving path stays TensorFlow-free.

Example:
    >>> from recfuse.bundle import load_bundle
    >>> b = load_bundle("bundles", variant="attention")   # doctest: +SKIP
"""

from recfuse.bundle.contents import BundleContents
from recfuse.bundle.loader import LoadedBundle, load_bundle, resolve_version_dir
from recfuse.bundle.manifest import FORMAT_VERSION
from recfuse.bundle.publish import list_variants, list_versions
from recfuse.bundle.writer import write_bundle

__all__ = [
    "FORMAT_VERSION",
    "BundleContents",
    "LoadedBundle",
    "list_variants",
    "list_versions",
    "load_bundle",
    "resolve_version_dir",
    "write_bundle",
]
