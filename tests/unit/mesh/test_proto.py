"""The wire API: generated code matches proto/, and buf lint is clean."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_generated_code_is_fresh():
    result = subprocess.run(
        [sys.executable, "-m", "services.tools.protogen", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_buf_lint_is_clean():
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stale_check_detects_an_edit(tmp_path):
    from services.tools import protogen

    protogen.generate(tmp_path)
    fresh = tmp_path / "riskmesh" / "v1"
    assert protogen.stale_files(fresh, ROOT / "riskmesh" / "v1") == []
    (fresh / "common_pb2.py").write_text("# edited\n")
    assert protogen.stale_files(fresh, ROOT / "riskmesh" / "v1") == ["common_pb2.py"]
