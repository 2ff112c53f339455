"""Checks that every broker and worker command line in the Kubernetes manifests
parses: each container's (and each exec probe's) `broker ...` or `worker ...`
runs as the repository's own executable with `--help` appended, which clap
answers with exit 0 only after every flag and value before it was accepted
(an unknown flag or a bad value exits 2 with its error). Nothing is bound or
started.

    python tests/manifest_flags.py BIN_DIR MANIFEST...
"""
import subprocess
import sys

import yaml


def command_lines(document):
    """(where, argv) for every container and exec probe in a manifest's object."""
    spec = (document or {}).get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or spec
    for key in ("initContainers", "containers"):
        for container in pod.get(key) or []:
            name = f"{document['kind']}/{document['metadata']['name']} {container['name']}"
            argv = list(container.get("command") or []) + list(container.get("args") or [])
            if argv:
                yield name, argv
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                exec_ = (container.get(probe) or {}).get("exec")
                if exec_:
                    yield f"{name} {probe}", list(exec_["command"])


def main():
    bin_dir, manifests = sys.argv[1], sys.argv[2:]
    checked = failed = 0
    for path in manifests:
        with open(path, encoding="utf-8") as f:
            for document in yaml.safe_load_all(f):
                for where, argv in command_lines(document):
                    program = argv[0].removeprefix("argsbroker-")
                    if program not in ("broker", "worker"):
                        continue
                    run = subprocess.run(
                        [f"{bin_dir}/{program}", *argv[1:], "--help"],
                        capture_output=True, text=True, timeout=30,
                    )
                    checked += 1
                    if run.returncode != 0:
                        failed += 1
                        print(f"{path}: {where}: {' '.join(argv)}: {run.stderr.strip()}")
    print(f"{checked} command lines checked, {failed} refused")
    if checked == 0 or failed:
        sys.exit(1)


main()
