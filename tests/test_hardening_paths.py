"""Paths from untrusted input stay confined: bundle manifests, CURRENT pointers, catalog image paths;
text fields are bounded by validate; image errors are the same text on every run."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from bundle_factory import make_bundle
from PIL import Image

from recfuse.bundle.loader import load_bundle
from recfuse.bundle.publish import read_current
from recfuse.config import DataConfig, ModalityConfig
from recfuse.data.images import check_image, image_root, load_image
from recfuse.data.validate import load_dataset, validate_catalog
from recfuse.errors import ArtifactError, ConfigError, SchemaError

SECRET = "secret-outside-the-bundle.txt"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    version = make_bundle(tmp_path / "bundles", n_items=40, dim=8)
    (tmp_path / SECRET).write_text("x" * 1234)
    return version


def _set_entry(version: Path, rel: str) -> None:
    path = version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][rel] = {"sha256": "0" * 64, "size": 1234}
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "rel",
    [
        "../../" + SECRET,
        "../../../../../../../../etc/passwd",
        "/etc/passwd",
        "model/../../x",
        "./config.json",
        "a//b",
        "a\\..\\b",
        "nul\x00byte",
    ],
)
def test_manifest_entries_must_stay_inside_the_version(bundle: Path, rel: str) -> None:
    _set_entry(bundle, rel)
    with pytest.raises(ArtifactError, match=r"manifest.json: file entry .* not a plain relative path") as e:
        load_bundle(bundle)
    text = str(e.value)
    assert str(bundle.parent.parent.parent) not in text  # no absolute path of anything
    assert "1234" not in text and "exist" not in text  # nothing about the file outside


def test_manifest_entry_symlinked_out_of_the_bundle_is_rejected(bundle: Path) -> None:
    os.symlink(bundle.parent.parent.parent / SECRET, bundle / "link.txt")
    _set_entry(bundle, "link.txt")
    with pytest.raises(ArtifactError, match=r"file entry 'link.txt' leads outside the bundle version") as e:
        load_bundle(bundle)
    assert SECRET not in str(e.value)


def test_manifest_errors_name_only_bundle_relative_paths(bundle: Path) -> None:
    (bundle / "vocab_items.json").write_text("[]")
    with pytest.raises(ArtifactError, match=r"bundle '[^/']+': file 'vocab_items.json' has size") as e:
        load_bundle(bundle)
    assert str(bundle) not in str(e.value)


@pytest.mark.parametrize("pointer", ["../..", "..", "/etc", "../attention/x", ".tmp-x", "a/b", "", "x" * 5000])
def test_current_must_name_a_direct_child(bundle: Path, pointer: str) -> None:
    variant_dir = bundle.parent
    (variant_dir / "CURRENT").write_text(pointer + "\n")
    with pytest.raises(ArtifactError, match=r"attention/CURRENT names .*not a version directory") as e:
        read_current(variant_dir)
    assert str(variant_dir) not in str(e.value)
    with pytest.raises(ArtifactError):
        load_bundle(variant_dir)


def test_current_naming_a_symlinked_version_is_rejected(bundle: Path, tmp_path: Path) -> None:
    variant_dir = bundle.parent
    os.symlink(bundle, variant_dir / "elsewhere")
    (variant_dir / "CURRENT").write_text("elsewhere\n")
    with pytest.raises(ArtifactError, match=r"names version 'elsewhere', which is not a directory .*symlinks"):
        read_current(variant_dir)
    (variant_dir / "CURRENT").write_text(bundle.name + "\n")
    assert read_current(variant_dir) == bundle.name


# ----------------------------------------------------------------------------------- images
def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_paths_must_stay_in_the_image_directory(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.png").write_bytes(_png())
    (tmp_path / "outside.png").write_bytes(_png())
    root = tmp_path / "img"
    assert check_image("ok.png", root) is None
    for value in ("../outside.png", str(tmp_path / "outside.png"), "../../../../etc/passwd"):
        reason, message = check_image(value, root)  # type: ignore[misc]
        assert reason == "image_outside" and "allow_external_images = true" in message
        with pytest.raises(SchemaError, match=r"item 'i1': image path .* leads outside the image directory"):
            load_image(value, root, 4, item_id="i1")
    assert check_image("../outside.png", root, allow_external=True) is None
    assert load_image(str(tmp_path / "outside.png"), image_root(root, True), 4).shape == (4, 4, 3)
    os.symlink(tmp_path / "outside.png", root / "link.png")
    assert check_image("link.png", root)[0] == "image_outside"  # type: ignore[index]


def test_load_dataset_applies_allow_external_images(tmp_path: Path) -> None:
    (tmp_path / "outside.png").write_bytes(_png())
    data = tmp_path / "data"
    data.mkdir()
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"], "image": [str(tmp_path / "outside.png"), None]})
    items.to_parquet(data / "items.parquet")
    pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": [1, 2]}).to_parquet(data / "i.parquet")
    mods = [ModalityConfig(name="image", kind="image", columns=("image",))]
    cfg = DataConfig(items=str(data / "items.parquet"), interactions=str(data / "i.parquet"))
    with pytest.raises(SchemaError, match=r"image_outside: 1"):
        load_dataset(cfg, mods)
    ds = load_dataset(DataConfig(**{**cfg.__dict__, "allow_external_images": True}), mods)
    assert len(ds.items) == 2 and getattr(ds.images_dir, "allow_external", False) is True


def test_image_decode_errors_are_the_same_text_every_time(tmp_path: Path) -> None:
    first = check_image(b"not an image at all", tmp_path)
    assert first == check_image(b"not an image at all", tmp_path)
    assert first is not None and " at 0x" not in first[1] and "<19 encoded bytes>" in first[1]
    with pytest.raises(SchemaError) as e:
        load_image(b"garbage", tmp_path, 4, item_id="i1")
    assert " at 0x" not in str(e.value)


# ----------------------------------------------------------------------------------- text bounds
def _catalog(title: str, description: str = "d") -> pd.DataFrame:
    return pd.DataFrame({"item_id": ["a", "b"], "title": [title, "short"], "description": [description, "d"]})


def test_long_titles_are_truncated_with_a_count(tmp_path: Path) -> None:
    cut: dict[str, int] = {}
    kept, report, _ = validate_catalog(
        _catalog("T" * 10_000_000, "D" * 30_000), [], tmp_path, max_title_chars=1000, truncated=cut
    )
    assert kept["title"].tolist() == ["T" * 1000, "short"] and len(kept["description"][0]) == 20_000
    assert cut == {"title": 1, "description": 1} and report.rejected == 0


def test_long_titles_can_be_rejected_instead(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"text_too_long: 1.*title has 10000000 characters, over the limit of 1000"):
        validate_catalog(_catalog("T" * 10_000_000), [], tmp_path, long_text="reject")
    kept, report, rejected = validate_catalog(
        _catalog("T" * 2000), [], tmp_path, long_text="reject", on_bad_rows="quarantine", quarantine_dir=tmp_path
    )
    assert kept["item_id"].tolist() == ["b"] and report.reasons == {"text_too_long": 1} and rejected == {"a"}


def test_text_bound_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"`data.long_text`"):
        DataConfig(long_text="drop")
    with pytest.raises(ConfigError, match=r"`data.max_title_chars` must be in \[1, inf\], got 0"):
        DataConfig(max_title_chars=0)
