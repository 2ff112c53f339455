"""Build hooks: the gRPC stubs from the project's proto/, the broker and
worker executables from its Cargo.toml, and an sdist that carries both.

Where the Rust sources are: in a checkout, the repository two levels up
(../../Cargo.toml, ../../proto); in an sdist, its rust/ directory, which
``sdist`` here fills with the crate's Cargo.toml, Cargo.lock, build.rs,
proto/, src/, broker/, worker/, third_party/ (the etcd client) and the
workspace member bench/'s manifest and sources, so that an unpacked sdist builds on its own.

Stubs: never committed. Every build runs grpcio-tools on
proto/argsbroker/v1/args.proto and writes the result into the package as
``argsbroker._pb``. The generator is pinned old on purpose (pyproject.toml):
its code runs on protobuf 4.25.1 and grpcio 1.62 up to today's releases, so
the package's dependency floors are what the code needs, not the newest.

Executables: setuptools-rust's RustBin runs ``cargo build --release --locked
--bin broker --bin worker`` and installs them as ``argsbroker-broker`` and
``argsbroker-worker`` (names no other package takes); ``broker`` and
``worker`` (the design's names) are small sh scripts (scripts/) that exec
those. Building from source needs cargo; a built wheel needs nothing. The
wheel is tagged py3-none-<platform> (no Python extension inside);
``auditwheel repair`` turns <platform> into the manylinux tag of the oldest
glibc the executables need (clients/python/check-install does).

No protoc for cargo: the crate compiles its proto and etcd's with protox
(pure Rust; the etcd client is kept in third_party/etcd-client for that), so
cargo needs nothing but Rust, here as everywhere.

ARGSBROKER_PREBUILT_DIR=DIR (an absolute path) skips cargo and takes DIR/broker and DIR/worker as
they are (for the test suite, which already has target/debug/ from `cargo
test` and should not compile a release build for every run). A wheel built
that way carries whatever DIR held; do not publish it.

Build from a checkout of the argsbroker repository (``pip install
./clients/python``; pip builds local directories in place) or from the sdist.
Set ARGSBROKER_PROTO_DIR to build the stubs from elsewhere.
"""
import os
import sys
import tempfile
from pathlib import Path

import shutil

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools_rust import RustBin
from setuptools_rust import build_rust as _build_rust

HERE = Path(__file__).resolve().parent
#: The Rust sources inside an sdist (see SdistWithRust).
SDIST_RUST = "rust"
IN_SDIST = (HERE / SDIST_RUST / "Cargo.toml").is_file()
RUST_ROOT = HERE / SDIST_RUST if IN_SDIST else (HERE / ".." / "..").resolve()
PROTO_ROOT = Path(os.environ.get("ARGSBROKER_PROTO_DIR") or RUST_ROOT / "proto").resolve()
PROTO = "argsbroker/v1/args.proto"
GENERATED_PACKAGE = Path("argsbroker") / "_pb"
# Relative to this file, as setuptools-rust wants it.
CARGO_TOML = f"{SDIST_RUST}/Cargo.toml" if IN_SDIST else "../../Cargo.toml"
#: cargo's binary name -> the name installed (bin/). scripts/broker and
#: scripts/worker exec these.
EXECUTABLES = {"broker": "argsbroker-broker", "worker": "argsbroker-worker"}
PREBUILT = "ARGSBROKER_PREBUILT_DIR"
#: What an sdist carries of the repository (relative to its root) for cargo:
#: the crate, and the workspace member bench/ (cargo loads every member's
#: manifest, and Cargo.lock covers it).
RUST_SOURCES = (
    "Cargo.toml", "Cargo.lock", "build.rs", "LICENSE-MIT", "LICENSE-APACHE",
    "proto", "src", "broker", "worker", "third_party",
    "bench/Cargo.toml", "bench/build.rs", "bench/client.rs", "bench/floor.rs", "bench/proto",
)


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
            f"argsbroker: the proto {proto} is missing. Build this package from its sdist or "
            "from a checkout of the argsbroker repository (pip install ./clients/python), or "
            "set ARGSBROKER_PROTO_DIR to the repository's proto/ directory."
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
        for name, installed in EXECUTABLES.items():
            path = Path(prebuilt) / name
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise SystemExit(
                    f"argsbroker: {PREBUILT}={prebuilt} has no executable {name} "
                    f"(run `cargo build` first, or unset {PREBUILT} to build with cargo)"
                )
            print(f"argsbroker: {PREBUILT} is set: taking {path} instead of building it")
            # (installed name, file to copy): what install_extension() expects.
            built.append((installed, str(path)))
        return built, None


class SdistWithRust(sdist):
    """An sdist that builds on its own: the Rust sources it needs go into
    its rust/ directory (the repository's layout, so Cargo.lock applies)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        if IN_SDIST:
            return  # an sdist of an sdist: rust/ came in with the package's files
        for relative in RUST_SOURCES:
            source, target = RUST_ROOT / relative, Path(base_dir) / SDIST_RUST / relative
            if not source.exists():
                raise SystemExit(f"argsbroker: {source} is missing; make the sdist from a checkout")
            target.parent.mkdir(parents=True, exist_ok=True)
            # Fresh modification times (shutil.copy, not copy2): cargo tells
            # what changed by them, and a kept CARGO_TARGET_DIR must not take
            # an edited proto for the one it built from.
            if source.is_dir():
                shutil.copytree(
                    source,
                    target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    copy_function=shutil.copy,
                )
            else:
                shutil.copy(source, target)


class WheelForAnyPython(bdist_wheel):
    """py3-none-<platform>: the wheel holds Python code and executables, no
    extension module, so one wheel serves every Python 3 on that platform."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    scripts=["scripts/broker", "scripts/worker"],
    rust_extensions=[
        RustBin(
            dict(EXECUTABLES),
            path=CARGO_TOML,
            args=[arg for name in EXECUTABLES for arg in ("--bin", name)],
            cargo_manifest_args=["--locked"],
        )
    ],
    cmdclass={
        "build_py": BuildPyWithStubs,
        "build_rust": BuildRust,
        "sdist": SdistWithRust,
        "bdist_wheel": WheelForAnyPython,
    },
)
