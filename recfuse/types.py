"""Type aliases shared across the library (array shapes are documented at each use)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]

#: Progress callback of long library calls: ``(stage, done, total)``; ``total`` 0 reports that a
#: stage starts, otherwise ``done`` of ``total`` units are finished. The CLI prints them on stderr.
ProgressFn = Callable[[str, int, int], None]
