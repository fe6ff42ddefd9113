"""Generate riskmesh/v1 (Python messages, gRPC stubs and .pyi type stubs) from proto/.

`python -m services.tools.protogen` regenerates in place; `--check` regenerates into a
temporary directory and exits 1 when the committed code differs (stale).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = ROOT / "riskmesh" / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "riskmesh" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc with the Python, gRPC and mypy-protobuf plugins into out_dir/riskmesh/v1."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    plugin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p.relative_to(PROTO_DIR)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_dir / "riskmesh" / "v1"
    (package / "__init__.py").write_text('"""Generated from proto/riskmesh/v1 by `make proto`. Do not edit."""\n')


def stale_files(generated: Path, committed: Path) -> list[str]:
    """Names that differ between a fresh generation and the committed package."""
    new = {p.name for p in generated.iterdir() if p.is_file()}
    old = {p.name for p in committed.iterdir() if p.is_file()} if committed.exists() else set()
    differing = sorted(new ^ old)
    for name in sorted(new & old):
        if not filecmp.cmp(generated / name, committed / name, shallow=False):
            differing.append(name)
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when riskmesh/v1 is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "riskmesh" / "v1"
        differing = stale_files(fresh, PACKAGE_DIR)
        if args.check:
            if differing:
                print("generated code is stale, run `make proto`: " + ", ".join(differing), file=sys.stderr)
                return 1
            print("generated code is fresh")
            return 0
        if PACKAGE_DIR.exists():
            shutil.rmtree(PACKAGE_DIR)
        shutil.copytree(fresh, PACKAGE_DIR)
        print(f"generated {len(list(PACKAGE_DIR.iterdir()))} files into {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
