"""Every Python snippet in README.md (the repository's) and
clients/python/README.md runs, as written, against a real broker.

Each ```python block follows a marker line the reader does not see:

    <!-- snippet: NAME -->              run by test_snippet_NAME (dashes as _)
    <!-- snippet: NAME after OTHER -->  the same, OTHER's code first (a block
                                        that continues an earlier one)
    <!-- snippet: file PATH -->         the block is the file PATH (from the
                                        repository root), verbatim; FILES_RUN
                                        names the test module that runs it
    ...; a note for the reader of the markdown source  (after "; ", ignored)

A block without a marker, a marker without a block, a name no test runs, or a
test for a name no README has, fails test_every_python_block_is_run. What a
snippet changes to run here is only where it listens: `host='0.0.0.0',
port=9880` becomes a loopback socket the test hands over already bound
(uvicorn's fd=N), so no port is guessed; each server is polled until it
answers and stopped by its pid (its process group)."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import httpx
import pytest

import argsbroker
from conftest import BROKER_BIN, EXAMPLES, REPO, Broker, Proc, eventually, log_tail, loopback_socket, port_of

READMES = [REPO / "README.md", REPO / "clients" / "python" / "README.md"]

#: The files README blocks reproduce, and the test module that runs each.
FILES_RUN = {"clients/python/examples/test.py": "test_article.py"}

MARKER = re.compile(r"<!-- snippet: (?:file (?P<file>\S+)|(?P<name>[a-z0-9-]+)(?: after (?P<after>[a-z0-9-]+))?)(?:; [^>]*)? -->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>\S*)\s*$")


@dataclass
class Snippet:
    readme: Path
    line: int  # of the opening fence, 1-based
    code: str
    name: Optional[str]
    after: Optional[str]
    file: Optional[str]

    def where(self) -> str:
        return f"{self.readme.relative_to(REPO)}:{self.line}"


def extract(readme: Path) -> List[Snippet]:
    """The README's ```python blocks with their markers. Any fence whose
    language looks like Python but is not spelled `python` is an error, as is
    an indented one (it would hide from a reader's copy and paste)."""
    lines = readme.read_text(encoding="utf-8").split("\n")
    found: List[Snippet] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        info = fence.group("info")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{readme.name}:{i + 1}: a fence that never closes"
        if info.lower().startswith("py"):
            where = f"{readme.relative_to(REPO)}:{i + 1}"
            assert info == "python", f"{where}: spell the language `python`, not `{info}`"
            assert fence.group("indent") == "", f"{where}: an indented python block"
            marker = MARKER.fullmatch(lines[i - 1].strip()) if i > 0 else None
            assert marker, f"{where}: a python block without a `<!-- snippet: ... -->` line above it"
            found.append(Snippet(readme, i + 1, "\n".join(lines[i + 1:end]) + "\n",
                                 marker.group("name"), marker.group("after"), marker.group("file")))
        i = end + 1
    return found


def all_snippets() -> List[Snippet]:
    return [s for readme in READMES for s in extract(readme)]


def snippet(name: str) -> str:
    """The named block's code, after the code of the block it continues."""
    by_name = {s.name: s for s in all_snippets() if s.name}
    found = by_name[name]
    return (snippet(found.after) + "\n" if found.after else "") + found.code


def test_every_python_block_is_run():
    snippets = all_snippets()
    assert len(snippets) >= 8, [s.where() for s in snippets]
    names = [s.name for s in snippets if s.name]
    assert len(names) == len(set(names)), f"two blocks with one name: {names}"
    tests = {n[len("test_snippet_"):].replace("_", "-") for n in globals() if n.startswith("test_snippet_")}
    assert set(names) == tests, f"blocks no test runs: {set(names) - tests}; tests with no block: {tests - set(names)}"
    for s in snippets:
        if s.after:
            assert s.after in names, f"{s.where()}: after {s.after!r}, which no block is"
        if s.file:
            assert s.file in FILES_RUN, f"{s.where()}: no test runs {s.file}"
            assert s.code == (REPO / s.file).read_text(encoding="utf-8"), f"{s.where()} differs from {s.file}"
            runner = Path(__file__).with_name(FILES_RUN[s.file])
            assert Path(s.file).name in runner.read_text(), f"{runner.name} does not run {s.file}"
    # Both READMEs open with the program itself.
    for readme in READMES:
        assert extract(readme)[0].file == "clients/python/examples/test.py", readme


# -- running them ----------------------------------------------------------


def on_fd(code: str, fd: int) -> str:
    """The snippet listening on the inherited socket ``fd`` instead of 0.0.0.0:9880."""
    old = "host='0.0.0.0', port=9880"
    assert code.count(old) == 1, f"the snippet no longer has {old!r}"
    return code.replace(old, f"fd={fd}")


class App:
    """``argv`` (a Python program, or `-m uvicorn MODULE:app --fd N`) in its
    own process group, serving on a loopback socket it inherits."""

    def __init__(self, tmp: Path, socket_path: Optional[str], argv_for_fd, log: str, **env: str) -> None:
        listener = loopback_socket()
        self.url = f"http://127.0.0.1:{port_of(listener)}"
        env = {**{k: v for k, v in os.environ.items() if k != "ARGSBROKER_SOCKET"}, "PYTHONUNBUFFERED": "1", **env}
        if socket_path:
            env["ARGSBROKER_SOCKET"] = socket_path
        try:
            self.proc = Proc([sys.executable, *argv_for_fd(listener.fileno())], tmp / log, cwd=tmp, env=env,
                             pass_fds=(listener.fileno(),))
        finally:
            listener.close()

    def get(self, path: str) -> Optional[httpx.Response]:
        self.proc.check_alive()
        try:
            return httpx.get(self.url + path, timeout=5, headers={"Connection": "close"})
        except httpx.TransportError:
            return None

    def answer(self, path: str, want: Tuple[int, str]) -> None:
        """Polls ``path`` until it answers exactly ``want`` (status, body)."""
        seen: List[Tuple[int, str]] = []

        def probe():
            r = self.get(path)
            if r is None:
                return None
            seen.append((r.status_code, r.text))
            return True if (r.status_code, r.text) == want else None

        try:
            eventually(f"{path} to answer {want}", probe)
        except AssertionError:
            raise AssertionError(f"{path} answered {seen[-3:]}, not {want}:\n{log_tail(self.proc.log)}")

    def stop(self) -> Optional[int]:
        return self.proc.stop(group=True)


@pytest.fixture
def apps():
    started: List[App] = []

    def start(*args, **kw) -> App:
        app = App(*args, **kw)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def uvicorn_module(module: str, workers: int = 1):
    return lambda fd: ["-m", "uvicorn", f"{module}:app", "--fd", str(fd), "--workers", str(workers),
                       "--log-level", "warning"]


def followers(socket_path: str) -> Dict[str, Tuple[int, int, str]]:
    """`broker status --json`: {name: (applied, rejected, rejected_reason)}."""
    run = subprocess.run([str(BROKER_BIN), "status", "--socket", socket_path, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return {f["name"]: (f["applied_revision"], f["rejected_revision"], f["rejected_reason"])
            for f in json.loads(run.stdout)["followers"]}


def test_snippet_hello_app(tmp_path, apps):
    """README's app for a standalone broker: GET /hello names the model."""
    broker = Broker(tmp_path).start()
    try:
        (tmp_path / "hello.py").write_text(snippet("hello-app"))
        app = apps(tmp_path, broker.socket, uvicorn_module("hello", workers=2), "hello.log")
        app.answer("/hello", (200, '{"model":"sentiment-zh"}'))
    finally:
        broker.stop()


TYPED_ARGS = '{"model_path": "/models/a", "batch_size": 64}'


def test_snippet_typed_app(tmp_path, apps):
    """The pydantic model's field, typed; a change follows; a change that does
    not fit the model is refused and the worker keeps the last one."""
    broker = Broker(tmp_path, TYPED_ARGS).start()
    try:
        (tmp_path / "typed.py").write_text(snippet("typed-app"))
        app = apps(tmp_path, broker.socket, uvicorn_module("typed"), "typed.log")
        app.answer("/predict", (200, '{"batch":64}'))
        assert broker.patch({"batch_size": 128}) == 2
        app.answer("/predict", (200, '{"batch":128}'))
        assert broker.patch({"batch_size": "many"}) == 3
        refused = eventually("the worker to refuse revision 3", lambda: (
            lambda mine: mine if mine[:2] == (2, 3) else None)(followers(broker.socket)["uvicorn"]))
        assert refused[2].startswith("1 validation error for Settings\nbatch_size\n  Input should be a valid integer"), refused
        assert app.get("/predict").text == '{"batch":128}'
    finally:
        broker.stop()


def test_snippet_validate(tmp_path, apps):
    """The validate callable (after the typed app's code): a worker named "api"
    refuses a batch_size over 256 (the broker lists why) and keeps serving
    the previous revision; a worker that starts on such args does not start."""
    broker = Broker(tmp_path, '{"model_path": "/models/a", "batch_size": 32}').start()
    try:
        (tmp_path / "validated.py").write_text(snippet("validate"))
        app = apps(tmp_path, broker.socket, uvicorn_module("validated"), "validated.log")
        # validate's app is a new FastAPI() without routes: any answer means it serves.
        app.answer("/predict", (404, '{"detail":"Not Found"}'))
        assert followers(broker.socket) == {"api": (1, 0, "")}
        assert broker.patch({"batch_size": 300}) == 2
        eventually("the api worker to refuse revision 2", lambda: True if followers(broker.socket) == {
            "api": (1, 2, "batch_size over 256")} else None)

        late = apps(tmp_path, broker.socket, uvicorn_module("validated"), "late.log")
        status = late.proc.popen.wait(timeout=30)
        text = late.proc.log.read_text()
        assert status != 0, text
        assert "argsbroker.ArgsRejected: validate rejected the broker's args at revision 2: batch_size over 256\n" in text, text
        assert "Application startup failed. Exiting." in text, text
        app.proc.check_alive()
    finally:
        broker.stop()


def test_snippet_change_args(tmp_path, apps):
    """The parent's thread patches, then replaces the args while uvicorn runs
    test.py's app with 5 workers: every worker serves the replacement, and
    Ctrl-C (SIGINT) ends the program with status 0 and no broker left."""
    shutil.copy(EXAMPLES / "test.py", tmp_path / "test.py")
    (tmp_path / "tmp").mkdir()

    def program(fd: int) -> List[str]:
        (tmp_path / "main.py").write_text(on_fd(snippet("change-args"), fd))
        return ["main.py"]

    app = apps(tmp_path, None, program, "main.log", TMPDIR=str(tmp_path / "tmp"))
    final = '{"args":{"arg1":"whole new document"}}'
    app.answer("/args", (200, final))
    for _ in range(40):  # new connections, so that every worker answers some
        r = app.get("/args")
        assert r is not None and (r.status_code, r.text) == (200, final)
    os.kill(app.proc.pid, signal.SIGINT)
    assert app.proc.popen.wait(timeout=30) == 0, log_tail(app.proc.log)
    assert list((tmp_path / "tmp").iterdir()) == []  # serve()'s directory, broker socket included, is gone


def endpoint_module(body: str) -> str:
    """An app whose GET /tour runs ``body`` as an async endpoint's body with the
    Request in ``request``, answering the repr of every expression statement's
    value, in order (what a REPL would echo)."""
    tree = ast.parse(body)
    lines = []
    for statement in tree.body:
        if isinstance(statement, ast.Expr):
            lines.append(f"_echo.append(repr({ast.unparse(statement.value)}))")
        else:
            lines.append(ast.unparse(statement))
    return textwrap.dedent("""\
        from fastapi import FastAPI, Request
        from argsbroker.fastapi import args_lifespan

        app = FastAPI(lifespan=args_lifespan())

        @app.get("/tour")
        async def tour(request: Request):
            _echo = []
        {body}
            return _echo
        """).format(body=textwrap.indent("\n".join(lines), "    "))


def test_snippet_live_tour(tmp_path, apps):
    """Each line of the LiveArgs tour, run in a real endpoint of a worker that
    follows a broker at revision 7, gives what the README says."""
    broker = Broker(tmp_path, '{"model": {"path": "/models/a"}}').start()
    try:
        for step in range(2, 8):
            assert broker.patch({"step": step}) == step
        (tmp_path / "tour.py").write_text(endpoint_module(snippet("live-tour")))
        app = apps(tmp_path, broker.socket, uvicorn_module("tour"), "tour.log")
        app.answer("/tour", (200, json.dumps([
            "({'model': {'path': '/models/a'}, 'step': 7}, None, 7)",  # value, typed (no model), revision
            "'/models/a'", "'/models/a'", "'/models/a'",                # get, get(min_revision=7), get_async
            "True", "True",                                            # wait_for_async(7), wait_for(7)
        ], separators=(",", ":"))))
    finally:
        broker.stop()


def test_snippet_without_fastapi(tmp_path):
    """The client and follower without FastAPI, as a script: it reads, patches,
    sets with expected_revision=7 (the broker is at 6 before the patch) and
    closes its follower; the broker ends at revision 8 with the set document."""
    broker = Broker(tmp_path).start()
    try:
        for step in range(2, 7):
            assert broker.patch({"step": step}) == step
        (tmp_path / "plain.py").write_text(snippet("without-fastapi"))
        # PYTHONFAULTHANDLER: should it hang, SIGABRT makes it print every thread's stack.
        script = subprocess.Popen([sys.executable, "plain.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "ARGSBROKER_SOCKET": broker.socket, "PYTHONFAULTHANDLER": "1"})
        try:
            out, err = script.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            script.send_signal(signal.SIGABRT)
            out, err = script.communicate(timeout=30)
            raise AssertionError(f"the snippet hung for 60 s; its threads:\n{err}")
        assert (script.returncode, out, err) == (0, "", "")
        after = broker.document()
        assert (after.revision, after.json) == (8, '{"arg1":"x"}')
    finally:
        broker.stop()


def echoing(code: str) -> str:
    """``code`` with every expression statement that is not a call (a tuple,
    an attribute) printing its repr, as a REPL would echo it."""

    class Echo(ast.NodeTransformer):
        def visit_Expr(self, node: ast.Expr) -> ast.stmt:
            if isinstance(node.value, ast.Call):
                return node
            return ast.Expr(ast.Call(ast.Name("print", ast.Load()), [ast.Call(ast.Name("repr", ast.Load()), [node.value], [])], []))

    return ast.unparse(ast.fix_missing_locations(Echo().visit(ast.parse(code))))


def test_snippet_canary(tmp_path):
    """The canary walkthrough, as a script: two of four named followers get
    the candidate while the others and plain reads keep revision 1; promote;
    a baked canary aborted; each echoed line is what its comment says."""
    (tmp_path / "canary.py").write_text(echoing(snippet("canary")))
    script = subprocess.run([sys.executable, "canary.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    # The broker's warning, through the argsbroker.broker logger (Python's
    # last-resort handler prints it, logging being unconfigured here).
    assert (script.returncode, script.stderr) == (0, "aborted canary 3: p99 latency up\n"), script
    assert script.stdout == "(2, 1, {'model': 'a'})\n(4, {'model': 'b'})\n"
