"""Generate the Python stubs in gen/ballast from proto/ballast (run by `make proto`).

The output is committed; CI regenerates it and fails on any difference, so the stubs always
match the contracts. grpcio-tools is pinned in pyproject.toml for byte-identical output.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "gen"
PACKAGE = "ballast"


def main() -> int:
    sources = sorted(path.relative_to(PROTO_DIR).as_posix() for path in (PROTO_DIR / PACKAGE).rglob("*.proto"))
    if not sources:
        print(f"no .proto files under {PROTO_DIR / PACKAGE}", file=sys.stderr)
        return 1
    shutil.rmtree(OUT_DIR / PACKAGE, ignore_errors=True)
    OUT_DIR.mkdir(exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto shipped with grpcio-tools
    arguments = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        *sources,
    ]
    if protoc.main(arguments) != 0:
        print("protoc failed; see the messages above", file=sys.stderr)
        return 1
    for directory in [OUT_DIR / PACKAGE, *(p for p in (OUT_DIR / PACKAGE).rglob("*") if p.is_dir())]:
        (directory / "__init__.py").write_text("")
    (OUT_DIR / PACKAGE / "py.typed").write_text("")
    print(f"generated stubs for {len(sources)} files in {OUT_DIR / PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
