"""Build hook: generate the gRPC stubs from the project's own proto/ while building.

The stubs are never committed and the proto is never copied: every build runs
grpcio-tools on ../../proto/argsbroker/v1/args.proto (relative to this file)
and writes the result into the package as ``argsbroker_client._pb``.

Build from a checkout of the argsbroker repository, e.g. ``pip install
./examples/python`` (pip builds local directories in place). Set
ARGSBROKER_PROTO_DIR to build from elsewhere.
"""
import os
import re
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_ROOT = Path(os.environ.get("ARGSBROKER_PROTO_DIR") or HERE / ".." / ".." / "proto").resolve()
PROTO = "argsbroker/v1/args.proto"
GENERATED_PACKAGE = Path("argsbroker_client") / "_pb"


def generate():
    """Runs protoc (from grpcio-tools) on the proto; returns {file name: text}."""
    proto = PROTO_ROOT / PROTO
    if not proto.is_file():
        raise SystemExit(
            f"argsbroker-client: the proto {proto} is missing. Build this package from a "
            "checkout of the argsbroker repository (pip install ./examples/python), or set "
            "ARGSBROKER_PROTO_DIR to the repository's proto/ directory."
        )
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as err:
        raise SystemExit(
            "argsbroker-client: building needs grpcio-tools (listed in pyproject.toml's "
            f"build-system requires; install it when building with --no-build-isolation): {err}"
        )
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(proto),
            ]
        )
        if status != 0:
            raise SystemExit(f"argsbroker-client: protoc failed on {proto} (exit status {status})")
        generated = Path(out) / Path(PROTO).parent
        files = {
            name: (generated / name).read_text(encoding="utf-8")
            for name in ("args_pb2.py", "args_pb2.pyi", "args_pb2_grpc.py")
        }
    # The gRPC stub imports the messages by their proto path (argsbroker.v1);
    # inside this package they sit next to it.
    absolute = "from argsbroker.v1 import args_pb2 as"
    if files["args_pb2_grpc.py"].count(absolute) != 1:
        raise SystemExit(f"argsbroker-client: unexpected import in generated args_pb2_grpc.py (no {absolute!r})")
    files["args_pb2_grpc.py"] = files["args_pb2_grpc.py"].replace(absolute, "from . import args_pb2 as")
    files["__init__.py"] = (
        f'"""Generated while building, by grpcio-tools, from proto/{PROTO}. Do not edit."""\n'
    )
    return files


def runtime_requirements(files):
    """grpcio and protobuf at least as new as the generator: generated code checks both."""
    grpc_floor = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", files["args_pb2_grpc.py"])
    protobuf_floor = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+)",
        files["args_pb2.py"],
    )
    grpcio = f"grpcio>={grpc_floor.group(1)}" if grpc_floor else "grpcio"
    if protobuf_floor:
        major, minor, patch = (int(part) for part in protobuf_floor.groups())
        protobuf = f"protobuf>={major}.{minor}.{patch},<{major + 1}"
    else:
        protobuf = "protobuf"
    return [grpcio, protobuf]


GENERATED = generate()


class BuildPyWithStubs(build_py):
    """build_py that also writes the generated stubs into the built package."""

    def run(self):
        super().run()
        targets = [Path(self.build_lib) / GENERATED_PACKAGE]
        if getattr(self, "editable_mode", False):
            # An editable install imports from src/, so the stubs go there (gitignored).
            targets.append(HERE / "src" / GENERATED_PACKAGE)
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            for name, text in GENERATED.items():
                (target / name).write_text(text, encoding="utf-8")


setup(
    install_requires=runtime_requirements(GENERATED),
    cmdclass={"build_py": BuildPyWithStubs},
)
