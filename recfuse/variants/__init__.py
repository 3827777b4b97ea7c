"""Online A/B: deterministic assignment of users to variants, exposure logging (shared by service and analysis).

Bottom layer: imports only :mod:`recfuse.errors`, numpy and pyarrow, so the TF-free service can use it.
"""

from recfuse.variants.assignment import (
    NUM_BUCKETS,
    VariantAssigner,
    assign_variant,
    parse_shares,
    user_bucket,
    validate_shares,
)
from recfuse.variants.exposures import Exposure, ExposureLogger, ExposureStats, exposure_files, read_exposures

__all__ = [
    "NUM_BUCKETS",
    "Exposure",
    "ExposureLogger",
    "ExposureStats",
    "VariantAssigner",
    "assign_variant",
    "exposure_files",
    "parse_shares",
    "read_exposures",
    "user_bucket",
    "validate_shares",
]
