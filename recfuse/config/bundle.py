"""``[bundle]``: how a trained model is published."""

from __future__ import annotations

import re
from dataclasses import dataclass

from recfuse.errors import ConfigError

#: a variant names a directory under the bundles root and an A/B arm: a safe path component
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class BundleConfig:
    """How a trained model is published: the name it is served under.

    Attributes:
        variant: the name this model is published and served under: ``recfuse export`` writes
            ``BUNDLES/<variant>/<version>``, the server routes A/B traffic by it, and experiments
            set it to each variant's name. One variant per model line you serve side by side (e.g.
            ``"control"`` and ``"text-only"``); a new export of the same variant becomes its next
            version. 1-128 letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit.
    """

    variant: str = "default"

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not VARIANT_NAME.match(self.variant):
            raise ConfigError(
                f"`bundle.variant` must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or "
                f"digit (it names a directory), got {self.variant!r}; e.g. variant = \"control\""
            )
