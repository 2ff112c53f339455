"""Build hooks: the gRPC stubs from the project's proto/, and the broker and
worker executables from its Cargo.toml.

Stubs: never committed, the proto never copied. Every build runs grpcio-tools
on ../../proto/argsbroker/v1/args.proto (relative to this file) and writes the
result into the package as ``argsbroker._pb``.

Executables: setuptools-rust's RustBin runs ``cargo build --release --locked
--bin broker --bin worker`` on ../../Cargo.toml and puts both into the wheel's
scripts, so pip installs them into the environment's bin/ beside ``python``.
Building from source therefore needs cargo; a built wheel needs nothing.

ARGSBROKER_PREBUILT_DIR=DIR (an absolute path) skips cargo and takes DIR/broker and DIR/worker as
they are (for the test suite, which already has target/debug/ from `cargo
test` and should not compile a release build for every run). A wheel built
that way carries whatever DIR held; do not publish it.

Build from a checkout of the argsbroker repository, e.g. ``pip install
./clients/python`` (pip builds local directories in place). Set
ARGSBROKER_PROTO_DIR to build the stubs from elsewhere.
"""
import os
import re
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools_rust import RustBin
from setuptools_rust import build_rust as _build_rust

HERE = Path(__file__).resolve().parent
PROTO_ROOT = Path(os.environ.get("ARGSBROKER_PROTO_DIR") or HERE / ".." / ".." / "proto").resolve()
PROTO = "argsbroker/v1/args.proto"
GENERATED_PACKAGE = Path("argsbroker") / "_pb"
# Relative to this file, as setuptools-rust wants it.
CARGO_TOML = "../../Cargo.toml"
EXECUTABLES = ("broker", "worker")
PREBUILT = "ARGSBROKER_PREBUILT_DIR"


def generate():
    """Runs protoc (from grpcio-tools) on the proto; returns {file name: text}."""
    proto = PROTO_ROOT / PROTO
    if not proto.is_file():
        raise SystemExit(
            f"argsbroker: the proto {proto} is missing. Build this package from a "
            "checkout of the argsbroker repository (pip install ./clients/python), or set "
            "ARGSBROKER_PROTO_DIR to the repository's proto/ directory."
        )
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as err:
        raise SystemExit(
            "argsbroker: building needs grpcio-tools (listed in pyproject.toml's "
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
            raise SystemExit(f"argsbroker: protoc failed on {proto} (exit status {status})")
        generated = Path(out) / Path(PROTO).parent
        files = {
            name: (generated / name).read_text(encoding="utf-8")
            for name in ("args_pb2.py", "args_pb2.pyi", "args_pb2_grpc.py")
        }
    # The gRPC stub imports the messages by their proto path (argsbroker.v1);
    # inside this package they sit next to it.
    absolute = "from argsbroker.v1 import args_pb2 as"
    if files["args_pb2_grpc.py"].count(absolute) != 1:
        raise SystemExit(f"argsbroker: unexpected import in generated args_pb2_grpc.py (no {absolute!r})")
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


class BuildRust(_build_rust):
    """setuptools-rust's build_rust, except that with $ARGSBROKER_PREBUILT_DIR
    it takes the executables from that directory instead of running cargo."""

    def build_extension(self, ext):
        prebuilt = os.environ.get(PREBUILT)
        if not prebuilt:
            return super().build_extension(ext)
        if not os.path.isabs(prebuilt):
            # pip builds in a directory of its choosing: a relative path would mislead.
            raise SystemExit(f"argsbroker: {PREBUILT} must be an absolute path, not {prebuilt!r}")
        built = []
        for name in EXECUTABLES:
            path = Path(prebuilt) / name
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise SystemExit(
                    f"argsbroker: {PREBUILT}={prebuilt} has no executable {name} "
                    f"(run `cargo build` first, or unset {PREBUILT} to build with cargo)"
                )
            print(f"argsbroker: {PREBUILT} is set: taking {path} instead of building it")
            # (installed name, file to copy): what install_extension() expects.
            built.append((name, str(path)))
        return built, None


setup(
    install_requires=runtime_requirements(GENERATED),
    rust_extensions=[
        RustBin(
            {name: name for name in EXECUTABLES},
            path=CARGO_TOML,
            args=[arg for name in EXECUTABLES for arg in ("--bin", name)],
            cargo_manifest_args=["--locked"],
        )
    ],
    cmdclass={"build_py": BuildPyWithStubs, "build_rust": BuildRust},
)
