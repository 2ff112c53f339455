#!/usr/bin/env python3
"""Deterministically generate the JSON "args" documents every workload of bench/run uses.

usage: gen_payload.py OUTDIR [SIZE ...]   SIZE: 1k 64k 1m 64m (default: 1k 64k 1m)
Writes OUTDIR/args-SIZE.json of exactly that many bytes: compact JSON, ASCII, no trailing
newline, no randomness. 1k and 1m are byte for byte the documents of the reference anchors
(shared/bench/gen_payload.py; sha256 ca4938528eae8cc8... and c10a5b63f2b48713...): the 20 base
keys padded with a `description`, plus, from 64k up, `shards`, an object of small nested
objects (7,900 of them at 1 MiB, proportionally more or fewer at other sizes).
A document this generator writes is already in the broker's compact form, so the broker serves
exactly these bytes.
"""
import json
import sys
from pathlib import Path

SIZES = {"1k": 1024, "64k": 64 * 1024, "1m": 1 << 20, "64m": 64 << 20}


def base_doc():
    # 20 top-level keys: strings, ints, floats, bools, a list and a nested object.
    return {
        "service": "config-broker-demo",
        "version": 42,
        "env": "staging",
        "region": "eu-west-1",
        "replicas": 8,
        "timeout_ms": 2500,
        "retry_backoff": 1.5,
        "max_conns": 1024,
        "feature_flags": {"new_ui": True, "beta_search": False, "fast_path": True, "shadow_writes": False},
        "db": {"host": "db.internal", "port": 5432, "pool": {"min": 4, "max": 32, "idle_s": 300}},
        "cache_ttl_s": 60,
        "log_level": "info",
        "owners": ["team-a", "team-b", "team-c"],
        "sample_rate": 0.125,
        "enabled": True,
        "build": "2024.06.01-abcdef0",
        "limits": {"rps": 5000, "burst": 200, "per_user": 50},
        "endpoints": {"auth": "/v1/auth", "users": "/v1/users", "orders": "/v1/orders"},
        "tags": ["blue", "canary", "x86_64"],
        "description": "",
    }


def dump(doc):
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()


def pad_to(doc, key, target):
    doc[key] = ""
    n = len(dump(doc))
    if n > target:
        raise SystemExit(f"base doc already {n} bytes > {target}")
    filler = ("lorem ipsum dolor sit amet " * (target // 20 + 1))[: target - n]
    doc[key] = filler
    out = dump(doc)
    assert len(out) == target, (len(out), target)
    return out


def shards(count):
    return {
        f"shard-{i:05d}": {"id": i, "weight": (i * 37) % 101, "primary": f"node-{i % 64:02d}.internal",
                           "replicas": [f"node-{(i + k) % 64:02d}" for k in (1, 2)], "ratio": round((i % 97) / 97, 6),
                           "active": i % 3 != 0}
        for i in range(count)
    }


def make(target):
    doc = base_doc()
    if target >= 64 * 1024:
        # 7,900 shards at 1 MiB (as the anchors); 97% of the proportional count elsewhere, which
        # leaves room for the longer keys of shard 100000 and up.
        count = 7900 if target == 1 << 20 else int(7900 * target / (1 << 20) * 0.97)
        doc["shards"] = shards(count)
    return pad_to(doc, "description", target)


def main():
    outdir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    names = sys.argv[2:] or ["1k", "64k", "1m"]
    outdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        out = make(SIZES[name])
        json.loads(out)
        (outdir / f"args-{name}.json").write_bytes(out)
        print(f"{outdir}/args-{name}.json {len(out)} bytes")


if __name__ == "__main__":
    main()
