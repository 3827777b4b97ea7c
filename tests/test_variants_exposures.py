"""ExposureLogger: real Parquet files, rotation, never blocking, drops and write failures counted."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recfuse.errors import ConfigError
from recfuse.variants import Exposure, ExposureLogger, exposure_files, read_exposures


def _exp(i: int) -> Exposure:
    return Exposure(f"r{i}", f"u{i % 7}", "attention" if i % 2 else "concat", [f"i{i}", f"i{i + 1}"], [1.0, 0.5], ts=i)


def test_rows_round_trip_through_parquet(tmp_path: Path) -> None:
    with ExposureLogger(tmp_path, rotate_rows=1000) as log:
        for i in range(50):
            assert log.log(_exp(i))
    stats = log.stats()
    assert (stats.logged, stats.written, stats.dropped, stats.failed, stats.files) == (50, 50, 0, 0, 1)
    table = read_exposures(tmp_path).to_pandas()
    assert table["request_id"].tolist() == [f"r{i}" for i in range(50)]
    assert list(table.loc[3, "item_ids"]) == ["i3", "i4"]
    assert list(table.loc[3, "scores"]) == [1.0, 0.5]
    assert table.loc[3, "variant"] == "attention" and table.loc[3, "ts"] == 3.0
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_rotates_by_rows(tmp_path: Path) -> None:
    with ExposureLogger(tmp_path, rotate_rows=10) as log:
        for i in range(25):
            log.log(_exp(i))
    files = exposure_files(tmp_path)
    assert [pq.read_metadata(f).num_rows for f in files] == [10, 10, 5]
    assert log.stats().files == 3


def test_rotates_by_time_without_close(tmp_path: Path) -> None:
    log = ExposureLogger(tmp_path, rotate_rows=1000, rotate_seconds=0.2)
    try:
        log.log(_exp(1))
        deadline = time.monotonic() + 10
        while not exposure_files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(read_exposures(tmp_path)) == 1
    finally:
        log.close()


class _StuckDiskLogger(ExposureLogger):
    """A logger whose disk hangs until released (a slow NFS mount, say)."""

    entered = threading.Event()
    release = threading.Event()

    def _write(self, rows: list[Exposure]) -> None:
        self.entered.set()
        self.release.wait(30)
        super()._write(rows)


def test_full_queue_drops_count_and_warn_without_blocking(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = _StuckDiskLogger(tmp_path, rotate_rows=1, queue_size=3)
    log.log(_exp(0))
    assert log.entered.wait(10)  # the writer is stuck writing row 0
    with caplog.at_level(logging.WARNING, logger="recfuse.variants.exposures"):
        accepted = [log.log(_exp(i)) for i in range(1, 9)]  # returns at once although the disk hangs
    assert accepted == [True] * 3 + [False] * 5
    stats = log.stats()
    assert (stats.logged, stats.dropped, stats.queue_depth) == (4, 5, 3)
    assert "dropped 1 exposure row(s)" in caplog.text
    log.release.set()
    final = log.close()
    assert (final.written, final.dropped) == (4, 5)
    assert sorted(read_exposures(tmp_path).column("request_id").to_pylist()) == ["r0", "r1", "r2", "r3"]


def test_log_after_close_is_a_counted_drop(tmp_path: Path) -> None:
    log = ExposureLogger(tmp_path)
    log.close()
    assert log.log(_exp(1)) is False
    assert log.stats().dropped == 1


def test_write_failure_is_counted_and_the_writer_survives(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    log = ExposureLogger(out, rotate_rows=1000)
    shutil.rmtree(out)
    log.log(_exp(1))
    log.flush()
    assert log.stats().failed == 1
    out.mkdir()
    log.log(_exp(2))
    stats = log.close()
    assert (stats.failed, stats.written) == (1, 1)
    assert read_exposures(out).column("request_id").to_pylist() == ["r2"]


def test_bad_settings_and_missing_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`queue_size` must be > 0, got 0"):
        ExposureLogger(tmp_path, queue_size=0)
    with pytest.raises(ConfigError, match="`rotate_seconds` must be > 0"):
        ExposureLogger(tmp_path, rotate_seconds=-1)
    with pytest.raises(FileNotFoundError, match="exposure directory .* does not exist"):
        read_exposures(tmp_path / "nope")
