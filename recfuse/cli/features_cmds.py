"""`recfuse` features commands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    del sub


_ = argparse
