"""Item images: a relative path under ``images_dir`` or encoded bytes -> float pixels.

A path must resolve inside ``images_dir`` (symlinks followed): ``../x.png`` and absolute paths are
refused unless external images are allowed (``data.allow_external_images``, passed as
``allow_external=True`` or carried by an :class:`ImageRoot` from :func:`image_root`), so a catalog
cannot make recfuse read files elsewhere on the machine. Messages never show memory addresses, so
the same bad file gives the same text on every run.

Example:
    >>> px = load_image("images/i00001.png", Path("data_samples"), 32, item_id="i00001")  # doctest: +SKIP
    >>> px.shape, px.dtype
    ((32, 32, 3), dtype('float32'))
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path, PosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from recfuse.errors import SchemaError
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)


class ImageRoot(PosixPath):
    """An image base directory that remembers whether paths may leave it (``data.allow_external_images``).

    It travels wherever the plain ``images_dir`` path does (``Dataset.images_dir`` through training),
    so :func:`load_image` applies the same rule as validation without every caller passing a flag.
    """

    allow_external: bool = False


def image_root(images_dir: str | Path, allow_external: bool = False) -> Path:
    """``images_dir`` as an :class:`ImageRoot` carrying ``allow_external``."""
    root = ImageRoot(images_dir)
    root.allow_external = allow_external
    return root


def _allowed(images_dir: str | Path, allow_external: bool | None) -> bool:
    if allow_external is not None:
        return allow_external
    return bool(getattr(images_dir, "allow_external", False))


def resolve_image_path(value: str, images_dir: str | Path, allow_external: bool | None = None) -> Path:
    """The file an image path names: relative ones under ``images_dir``.

    Args:
        value: the catalog's path string.
        images_dir: base directory (an :class:`ImageRoot` carries its own ``allow_external``).
        allow_external: absolute paths and paths resolving outside ``images_dir`` are allowed (None: the
            root's own setting, else False).

    Raises:
        SchemaError: the path leaves ``images_dir`` and external images are not allowed (the message shows
            the path as written; nothing outside is looked at).
    """
    p = Path(value)
    allowed = _allowed(images_dir, allow_external)
    if p.is_absolute():
        if allowed:
            return p
        raise SchemaError(_outside(value))
    full = Path(images_dir) / p
    if not allowed:
        root = Path(images_dir).resolve()
        if root not in full.resolve().parents:
            raise SchemaError(_outside(value))
    return full


def _outside(value: str) -> str:
    return (
        f"image path {value[:200]!r} leads outside the image directory; keep images under [data] images_dir "
        "(paths relative to it), or set [data] allow_external_images = true"
    )


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _error_text(err: BaseException) -> str:
    """``str(err)`` without object addresses (PIL names a BytesIO by its repr)."""
    return _ADDRESS.sub("", str(err))


def _describe(value: object, images_dir: str | Path) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} encoded bytes>"
    return str(Path(images_dir) / str(value))


def check_image(value: object, images_dir: str | Path, allow_external: bool | None = None) -> tuple[str, str] | None:
    """Return ``(reason, message)`` when the image cannot be used, ``None`` when it decodes.

    ``reason`` is ``image_outside`` (the path leaves ``images_dir``, see :func:`resolve_image_path`),
    ``image_missing`` (no such file) or ``image_unreadable`` (not a decodable image).
    A null value is not a problem (the item simply has no image).
    """
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, (bytes, bytearray)):
        src: io.BytesIO | Path = io.BytesIO(bytes(value))
    elif isinstance(value, str):
        if not value:
            return None
        try:
            src = resolve_image_path(value, images_dir, allow_external)
        except SchemaError as err:
            return "image_outside", str(err)
        if not src.is_file():
            return "image_missing", f"image file {str(src)!r} does not exist; fix the path or set [data] images_dir"
    else:
        return "image_unreadable", f"image value has type {type(value).__name__}; expected a path string or bytes"
    try:
        with Image.open(src) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return (
            "image_unreadable",
            f"image {_describe(value, images_dir)} does not decode as an image ({_error_text(err)})",
        )
    return None


def load_image(
    value: object, images_dir: str | Path, size: int, item_id: object = "?", allow_external: bool | None = None
) -> FloatArray:
    """Decode, convert to RGB, resize (bilinear) and scale one image.

    Args:
        value: relative/absolute path string or encoded PNG/JPEG bytes.
        images_dir: base directory of relative paths.
        size: output side ``S``.
        item_id: used in error messages.
        allow_external: paths may leave ``images_dir`` (None: an :class:`ImageRoot`'s own setting, else no).

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
        try:
            src = resolve_image_path(value, images_dir, allow_external)
        except SchemaError as err:
            raise SchemaError(f"item {item_id!r}: {err}") from None
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
            f"item {item_id!r}: image {_describe(value, images_dir)!r} does not decode as an image ({_error_text(err)})"
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
