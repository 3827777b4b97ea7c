"""Modality branches, alignment and fusion layers (tf-keras). Importing this package checks Keras 2."""

from recfuse._tfcheck import require_keras2

require_keras2()
