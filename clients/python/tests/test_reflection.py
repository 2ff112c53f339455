"""Server reflection is complete: a plain grpcio client with no generated code
of ours can discover the service and call it."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import BIG_INT


def test_reflection_alone_is_enough_to_call_get_args(broker):
    """A separate process that imports nothing of argsbroker builds
    GetArgs from reflection (grpcio-reflection + protobuf message_factory) and
    gets the exact document."""
    broker.start()
    expected = broker.document()
    script = Path(__file__).with_name("reflection_client.py")
    run = subprocess.run(
        [sys.executable, str(script), broker.socket],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["modules"] == []  # no argsbroker (or other generated code) was loaded
    assert "argsbroker.v1.ArgsBroker" in out["services"]
    assert "grpc.health.v1.Health" in out["services"]
    for name in ("GetArgs", "WatchArgs", "SetArgs", "PatchArgs"):
        assert name in out["methods"], out["methods"]
    assert out["methods"]["WatchArgs"]["server_streaming"] is True
    assert out["methods"]["GetArgs"] == {
        "input": "argsbroker.v1.GetArgsRequest",
        "output": "argsbroker.v1.Args",
        "server_streaming": False,
    }
    assert {"revision", "json", "sha256", "not_modified"} <= set(out["reply_fields"])
    assert out["revision"] == expected.revision
    assert out["json"] == expected.json
    assert out["sha256"] == expected.sha256
    assert f'"big":{BIG_INT}' in out["json"]


def test_reflection_client_reads_a_pointer(broker):
    """The reflection-built call passes request fields too: a pointer reads one value."""
    broker.start()
    script = Path(__file__).with_name("reflection_client.py")
    run = subprocess.run(
        [sys.executable, str(script), broker.socket, "/exact/big"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["json"] == BIG_INT
