"""Item images: a relative path under ``images_dir`` (or absolute) or encoded bytes -> float pixels.

Example:
    >>> px = load_image("images/i00001.png", Path("data_samples"), 32, item_id="i00001")  # doctest: +SKIP
    >>> px.shape, px.dtype
    ((32, 32, 3), dtype('float32'))
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from recfuse.errors import SchemaError
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)


def resolve_image_path(value: str, images_dir: str | Path) -> Path:
    """Absolute paths stay; relative ones are taken under ``images_dir``."""
    p = Path(value)
    return p if p.is_absolute() else Path(images_dir) / p


def _describe(value: object, images_dir: str | Path) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} encoded bytes>"
    return str(resolve_image_path(str(value), images_dir))


def check_image(value: object, images_dir: str | Path) -> tuple[str, str] | None:
    """Return ``(reason, message)`` when the image cannot be used, ``None`` when it decodes.

    ``reason`` is ``image_missing`` (no such file) or ``image_unreadable`` (not a decodable image).
    A null value is not a problem (the item simply has no image).
    """
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, (bytes, bytearray)):
        src: io.BytesIO | Path = io.BytesIO(bytes(value))
    elif isinstance(value, str):
        if not value:
            return None
        src = resolve_image_path(value, images_dir)
        if not src.is_file():
            return "image_missing", f"image file {str(src)!r} does not exist; fix the path or set [data] images_dir"
    else:
        return "image_unreadable", f"image value has type {type(value).__name__}; expected a path string or bytes"
    try:
        with Image.open(src) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return "image_unreadable", f"image {_describe(value, images_dir)} does not decode as an image ({err})"
    return None


def load_image(value: object, images_dir: str | Path, size: int, item_id: object = "?") -> FloatArray:
    """Decode, convert to RGB, resize (bilinear) and scale one image.

    Args:
        value: relative/absolute path string or encoded PNG/JPEG bytes.
        images_dir: base directory of relative paths.
        size: output side ``S``.
        item_id: used in error messages.

    Returns:
        ``[S, S, 3]`` float32 in ``[0, 1]``.

    Raises:
        SchemaError: null value, missing file or undecodable data (names the item and the path).
    """
    if value is None or (isinstance(value, float) and value != value) or value == "":
        raise SchemaError(f"item {item_id!r} has no image (null); check has_image before loading")
    if isinstance(value, (bytes, bytearray)):
        src: io.BytesIO | Path = io.BytesIO(bytes(value))
    elif isinstance(value, str):
        src = resolve_image_path(value, images_dir)
    else:
        raise SchemaError(f"item {item_id!r}: image must be a path string or bytes, got {type(value).__name__}")
    try:
        with Image.open(src) as im:
            rgb = im.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    except FileNotFoundError:
        raise SchemaError(
            f"item {item_id!r}: image file {_describe(value, images_dir)!r} does not exist; "
            "fix the path or set [data] images_dir"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise SchemaError(
            f"item {item_id!r}: image {_describe(value, images_dir)!r} does not decode as an image ({err})"
        ) from None
    return arr


def load_images(
    values: Sequence[object], images_dir: str | Path, size: int, item_ids: Sequence[object] | None = None
) -> tuple[FloatArray, FloatArray]:
    """Load many images; null values give zeros with mask 0.

    Returns:
        ``(pixels [n, S, S, 3] float32, mask [n] float32)``.
    """
    out = np.zeros((len(values), size, size, 3), dtype=np.float32)
    mask = np.zeros((len(values),), dtype=np.float32)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v) or v == "":
            continue
        out[i] = load_image(v, images_dir, size, item_ids[i] if item_ids is not None else i)
        mask[i] = 1.0
    return out, mask
