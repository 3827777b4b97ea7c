"""recfuse: multimodal two-tower recommendation (TFRS training, FAISS index, gRPC serving).

Importing ``recfuse`` never imports TensorFlow; it only sets the Keras 2 switch (see
:mod:`recfuse._keras`) so that whichever module imports TensorFlow first gets tf-keras.
"""

from recfuse import _keras as _keras  # noqa: F401  (side effect: TF_USE_LEGACY_KERAS before any TF import)

__version__ = "0.1.0"

__all__ = ["__version__"]
