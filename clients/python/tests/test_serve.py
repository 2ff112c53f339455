"""argsbroker.serve(): a broker owned by this process, started from the
`broker` executable that pip installed into this environment's bin/."""
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

import argsbroker
from conftest import BIG_INT, eventually


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_installed_broker_and_worker_are_on_path():
    """pip put `argsbroker-broker` and `argsbroker-worker` (names no other
    package takes) and the design's `broker` and `worker` into this
    environment's bin/, and serve() uses argsbroker-broker."""
    scripts = sysconfig.get_path("scripts")
    assert argsbroker.broker_executable() == os.path.join(scripts, "argsbroker-broker")
    for name in ("broker", "worker"):
        for installed in (f"argsbroker-{name}", name):
            run = subprocess.run([os.path.join(scripts, installed), "--version"], capture_output=True, text=True, timeout=30)
            assert (run.returncode, run.stdout, run.stderr) == (0, f"{name} 0.1.0\n", ""), (installed, run)


def test_version_is_the_package_version():
    """argsbroker.__version__ is what pip installed (and what Cargo.toml says)."""
    from importlib.metadata import version

    from conftest import REPO

    assert argsbroker.__version__ == version("argsbroker") == "0.1.0"
    assert f'\nversion = "{argsbroker.__version__}"\n' in (REPO / "Cargo.toml").read_text()


def test_serve_owns_a_broker_for_the_block(monkeypatch):
    """serve(dict) starts a broker in a private 0700 directory, exports
    ARGSBROKER_SOCKET, changes args live through the handle, and on exit stops
    the broker, removes the directory and restores the variable."""
    monkeypatch.setenv("ARGSBROKER_SOCKET", "/before/serve.sock")
    with argsbroker.serve({"arg1": "arg1", "exact": {"big": int(BIG_INT), "pi": Decimal("3.14159265358979323846")}}) as handle:
        directory = handle.directory
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert handle.socket == os.path.join(directory, "broker.sock")
        assert os.environ["ARGSBROKER_SOCKET"] == handle.socket
        first = handle.snapshot()
        assert first.revision == 1
        assert first.json == f'{{"arg1":"arg1","exact":{{"big":{BIG_INT},"pi":3.14159265358979323846}}}}'
        with argsbroker.follow() as live:  # found through ARGSBROKER_SOCKET
            written = handle.patch({"arg1": "patched", "exact": None})
            assert written.revision == 2 and written.json == '{"arg1":"patched"}'
            assert live.wait_for(2, timeout=5) and live.value == {"arg1": "patched"}
            replaced = handle.set({"other": True}, expected_revision=2)
            assert replaced.revision == 3 and handle.get() == {"other": True}
            with pytest.raises(argsbroker.RevisionConflict):
                handle.set({"other": False}, expected_revision=2)
        pid = handle.pid
    assert gone(pid)
    assert not os.path.exists(directory)
    assert os.environ["ARGSBROKER_SOCKET"] == "/before/serve.sock"


def test_serve_takes_json_text_and_paths(tmp_path):
    """JSON text is served exactly; a path is served as the broker's args file."""
    with argsbroker.serve('{"n": 1.50, "big": %s}' % BIG_INT) as handle:
        assert handle.snapshot().json == '{"n":1.50,"big":%s}' % BIG_INT
    path = tmp_path / "args.json"
    path.write_text('{"from": "file"}\n')
    with argsbroker.serve(path) as handle:
        assert handle.get() == {"from": "file"}
        handle.patch({"written": 1})
        assert json.loads(path.read_text()) == {"from": "file", "written": 1}


def test_a_state_dir_keeps_revisions_and_lineage_across_runs(tmp_path):
    """With state_dir, a second run on the same args continues the first run's
    lineage and revision instead of starting a new one."""
    state = tmp_path / "state"
    with argsbroker.serve({"a": 1}, state_dir=state) as handle:
        handle.patch({"a": 2})
        first = handle.snapshot()
    with argsbroker.serve({"a": 2}, state_dir=state) as handle:
        again = handle.snapshot()
    assert (again.revision, again.lineage, again.sha256) == (first.revision, first.lineage, first.sha256)


def test_a_broker_that_cannot_start_is_an_error_with_its_message():
    """Args the broker refuses raise BrokerFailed quoting the broker's own error,
    and leave nothing behind."""
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("argsbroker-*"))
    with pytest.raises(argsbroker.BrokerFailed, match=r"^the broker exited with status 1 before serving on /.*: .*"
                       r"broker: error: .*duplicate key \"a\""):
        argsbroker.serve('{"a": 1, "a": 2}')
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("argsbroker-*")) == before


class Settings(BaseModel):
    workers: int
    name: str


def test_a_schema_checks_the_args_and_every_change_before_it_is_published():
    """serve(model=...) refuses args that do not fit before starting anything,
    and a patch or set whose result does not fit changes nothing."""
    with pytest.raises(argsbroker.ArgsRejected, match="the args do not fit Settings: 1 validation error for Settings"):
        argsbroker.serve({"workers": "many", "name": "x"}, model=Settings)
    with argsbroker.serve({"workers": 2, "name": "x"}, model=Settings) as handle:
        with pytest.raises(argsbroker.ArgsRejected, match="workers\n  Input should be a valid integer"):
            handle.patch({"workers": "many"})
        with pytest.raises(argsbroker.ArgsRejected, match="name\n  Field required"):
            handle.set({"workers": 3})
        assert handle.snapshot().revision == 1
        assert handle.patch({"workers": 3}).json == '{"workers":3,"name":"x"}'


def test_the_broker_dies_with_its_owner_even_by_sigkill(tmp_path):
    """A process that called serve() and is killed with SIGKILL takes its broker
    with it within 2 s (broker --exit-with-parent), and the broker removes its socket."""
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, argsbroker
            handle = argsbroker.serve({"a": 1})
            print(handle.pid, handle.socket, flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    socket_path = ""
    try:
        pid, socket_path = owner.stdout.readline().split()
        pid = int(pid)
        assert not gone(pid) and os.path.exists(socket_path)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        killed = time.monotonic()
        eventually("the broker to exit", lambda: True if gone(pid) else None, patience=2.0)
        assert time.monotonic() - killed < 2.0
        eventually("the broker to remove its socket", lambda: True if not os.path.exists(socket_path) else None, 2.0)
    finally:
        owner.kill()
        owner.wait()
        # Only the broker goes with its owner; the owner's private directory stays.
        if socket_path:
            shutil.rmtree(os.path.dirname(socket_path), ignore_errors=True)


def run_program(cwd: Path, argv, **env):
    """Runs a program to its end (30 s at most): (exit status, stdout, stderr)."""
    environment = {k: v for k, v in os.environ.items() if k != "ARGSBROKER_SOCKET"}
    environment.update(env, TMPDIR=str(cwd / "tmp"))
    (cwd / "tmp").mkdir(exist_ok=True)
    run = subprocess.run([sys.executable, *argv], cwd=cwd, env=environment,
                         capture_output=True, text=True, timeout=30)
    return run.returncode, run.stdout, run.stderr


def test_a_program_whose_broker_cannot_start_exits_1_with_one_line(broker, tmp_path):
    """The documented program (examples/test.py, as it is), run as a script and
    with `python -m`, when its broker cannot start: exit status 1, and stderr
    is one line saying why, no traceback; serve() leaves no directory behind."""
    from conftest import EXAMPLES

    shutil.copy(EXAMPLES / "test.py", tmp_path / "test.py")
    missing = str(tmp_path / "no-such-broker")
    line = f"argsbroker: cannot run the broker {missing}: No such file or directory\n"
    for argv in (["test.py"], ["-m", "test"]):
        assert run_program(tmp_path, argv, ARGSBROKER_BROKER_BIN=missing) == (1, "", line), argv
    assert list((tmp_path / "tmp").iterdir()) == []

    # The real broker refusing to start: another broker serves the socket.
    broker.start()
    (tmp_path / "taken.py").write_text(textwrap.dedent(f"""
        import argsbroker

        if __name__ == '__main__':
            with argsbroker.serve({{'arg1': 'arg1'}}, socket={broker.socket!r}):
                print("served")
    """))
    line = (f"argsbroker: the broker exited with status 1 before serving on {broker.socket}: "
            f"broker: error: another broker is serving {broker.socket}\n")
    assert run_program(tmp_path, ["taken.py"]) == (1, "", line)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_caught_broker_failure_changes_nothing_else():
    """BrokerFailed is an ordinary exception: caught, the program goes on; a
    later, unrelated uncaught exception still prints its traceback; and with
    logging configured, the failed start is logged once (the broker's own
    lines only at DEBUG, since the exception quotes them)."""
    code = textwrap.dedent("""
        import logging, sys
        import argsbroker

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
        try:
            argsbroker.serve('{"a": 1, "a": 2}')
        except argsbroker.BrokerFailed as err:
            print("caught:", err)
        raise KeyError("unrelated")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert re.fullmatch(r'caught: the broker exited with status 1 before serving on /\S+/broker\.sock: '
                        r'broker: error: .*duplicate key "a".*\n', run.stdout), run.stdout
    assert run.stderr.startswith("Traceback (most recent call last):\n")
    assert run.stderr.endswith("KeyError: 'unrelated'\n")
