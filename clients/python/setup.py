"""Build hooks: the gRPC stubs from the project's proto/, and the broker and
worker executables from its Cargo.toml.

Stubs: never committed, the proto never copied. Every build runs grpcio-tools
on ../../proto/argsbroker/v1/args.proto (relative to this file) and writes the
result into the package as ``argsbroker._pb``.

Executables: setuptools-rust's RustBin runs ``cargo build --release --locked
--bin broker --bin worker`` on ../../Cargo.toml and puts both into the wheel's
scripts, so pip installs them into the environment's bin/ beside ``python``.
Building from source therefore needs cargo; a built wheel needs nothing.

protoc for cargo: the broker's etcd client (the default cargo feature
``etcd``) compiles etcd's protos in its build script, which runs ``$PROTOC``,
else ``protoc`` from PATH. Users need not have one: unless PROTOC is already
set, every cargo build here runs with PROTOC pointing at a small shim, written
into a temporary directory removed after the build, that runs ``python -m
grpc_tools.protoc`` (the protoc that grpcio-tools, already needed for the
stubs, bundles) with grpcio-tools' well-known protos on its include path. It
is used always, not only when no protoc is found, so that every build compiles
the protos the same way and the path users take is the one every build tests.

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
import shlex
import sys
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


def grpc_tools_protos():
    """grpcio-tools' directory of well-known protos (google/protobuf/*.proto)."""
    try:
        import grpc_tools.protoc
    except ImportError as err:
        raise SystemExit(
            "argsbroker: building needs grpcio-tools (listed in pyproject.toml's "
            f"build-system requires; install it when building with --no-build-isolation): {err}"
        )
    return Path(grpc_tools.__file__).parent / "_proto"


def generate():
    """Runs protoc (from grpcio-tools) on the proto; returns {file name: text}."""
    proto = PROTO_ROOT / PROTO
    if not proto.is_file():
        raise SystemExit(
            f"argsbroker: the proto {proto} is missing. Build this package from a "
            "checkout of the argsbroker repository (pip install ./clients/python), or set "
            "ARGSBROKER_PROTO_DIR to the repository's proto/ directory."
        )
    well_known = grpc_tools_protos()
    from grpc_tools import protoc
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


def write_protoc_shim(directory):
    """Writes DIRECTORY/protoc, which runs grpcio-tools' protoc with this Python
    (the one running the build, which has grpcio-tools) and the arguments it
    is given; returns its path. grpcio-tools' well-known protos come last on
    the include path, where prost-build puts $PROTOC_INCLUDE, so that the
    build script's own directories are searched first."""
    if not sys.executable:
        raise SystemExit("argsbroker: cannot tell which Python runs this build (sys.executable is empty)")
    shim = Path(directory) / "protoc"
    shim.write_text(
        "#!/bin/sh\n"
        "# Written by argsbroker's setup.py for one cargo build: grpcio-tools' protoc.\n"
        f'exec {shlex.quote(sys.executable)} -m grpc_tools.protoc "$@" '
        f"{shlex.quote(f'-I{grpc_tools_protos()}')}\n",
        encoding="utf-8",
    )
    shim.chmod(0o755)
    return shim


class BuildRust(_build_rust):
    """setuptools-rust's build_rust, except that with $ARGSBROKER_PREBUILT_DIR
    it takes the executables from that directory instead of running cargo, and
    that cargo runs with $PROTOC set to grpcio-tools' protoc unless it is set."""

    def build_extension(self, ext):
        prebuilt = os.environ.get(PREBUILT)
        if not prebuilt:
            if os.environ.get("PROTOC"):
                print(f"argsbroker: PROTOC is set: cargo uses {os.environ['PROTOC']}")
                return super().build_extension(ext)
            # setuptools-rust hands cargo a copy of os.environ taken when it runs.
            with tempfile.TemporaryDirectory(prefix="argsbroker-protoc-") as shim_dir:
                os.environ["PROTOC"] = str(write_protoc_shim(shim_dir))
                try:
                    return super().build_extension(ext)
                finally:
                    # Unset again (an empty PROTOC names no protoc and is treated as unset).
                    del os.environ["PROTOC"]
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
