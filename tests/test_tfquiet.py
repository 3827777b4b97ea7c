"""TensorFlow's import banner is dropped from stderr; any other stderr output of the import passes through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recfuse._tfquiet import filtered_stderr

NOISE_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796565240.266311   15178 port.cc:153] oneDNN custom operations are on. You may see ...\n"
    "I0000 00:00:1796565240.266603   15178 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU...\n"
    "I0000 00:00:1796565259.098480   15435 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the flags.\n"
)
BANNER_MARKERS = ("absl::InitializeLog", "oneDNN custom operations", "Could not find cuda drivers", "cpu_feature_guard")


def test_filtered_stderr_drops_the_noise_and_keeps_other_lines(capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_stderr():
        os.write(2, NOISE_LINES.encode())
        os.write(2, b"E0000 real_error.cc:1] something actually broke\n")
        os.write(2, b'  File "x.py", line 1, in <module>\n')
    err = capfd.readouterr().err
    assert err == 'E0000 real_error.cc:1] something actually broke\n  File "x.py", line 1, in <module>\n'


def test_filtered_stderr_restores_fd2_when_the_block_raises(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ImportError, match="boom"), filtered_stderr():
        os.write(2, b"kept line\n")
        raise ImportError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept line\nafter\n"


# A stand-in `tensorflow` package first on the path: its import writes the banner and one real line to fd 2.
FAKE_TF = f"""
import os
os.write(2, {NOISE_LINES.encode()!r})
os.write(2, b"F0000 op_kernel.cc:9] a real failure during import\\n")
os.write(2, {NOISE_LINES.encode()!r})
"""


def test_install_filters_the_first_tensorflow_import_and_passes_other_lines(tmp_path: Path) -> None:
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TF)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from recfuse import _tfquiet\n"
        "_tfquiet.install()\n"
        "import tensorflow\n"
        "assert tensorflow.__loader__.__class__.__name__ == 'SourceFileLoader', tensorflow.__loader__\n"
        "assert not any(type(f).__name__ == '_FirstImportFinder' for f in sys.meta_path)\n"
        "print('imported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "imported\n"
    assert proc.stderr == "F0000 op_kernel.cc:9] a real failure during import\n"


def _recfuse(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("RECFUSE_TF_LOGS", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run(
        [sys.executable, "-m", "recfuse", *args], capture_output=True, text=True, timeout=120, env={**full_env, **env}
    )


def test_a_cli_command_importing_tensorflow_prints_no_banner(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    # export imports TensorFlow (the trained model) before it finds the model directory missing: exit 5
    args = ["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "bundles")]
    proc = _recfuse(args)
    assert proc.returncode == 5, proc.stderr
    assert "error: cannot read" in proc.stderr
    assert not [m for m in BANNER_MARKERS if m in proc.stderr], proc.stderr
    shown = _recfuse(args, RECFUSE_TF_LOGS="1")  # the switch that shows TensorFlow's own output again
    assert shown.returncode == 5 and "oneDNN custom operations" in shown.stderr
