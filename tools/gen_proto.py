"""Regenerate the committed gRPC/protobuf code from proto/ (``make proto``).

``python tools/gen_proto.py [OUT_DIR]`` writes into OUT_DIR (default: proto/), so the
drift test can generate into a temporary folder and compare.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = ["paramsched/api/v1/scheduler.proto"]


def generate(out_dir: Path) -> None:
    include = str(resources.files("grpc_tools") / "_proto")
    for proto in PROTOS:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {proto}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
