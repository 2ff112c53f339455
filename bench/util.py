#!/usr/bin/env python3
"""Helpers for bench/run: parse tool output into key=value lines, and build the report.

  util.py freeport                                  -> a free TCP port on 127.0.0.1
  util.py wrk FILE                                  -> rps= p50_us= p99_us= mbps= errors= non2xx=
  util.py redis CSVFILE BYTES                       -> rps= p50_us= p99_us= mean_full_rtt_us= mbps=
  util.py report RESULTS_TSV VERSIONS CMD QUICK     -> the markdown report (BENCHMARKS.md)

RESULTS_TSV lines: ID <TAB> rep <TAB> workload <TAB> payload <TAB> "k=v k=v ..."; every figure in the
report is the median over the repetitions of its row.
"""
import re
import socket
import statistics
import sys
from collections import OrderedDict

UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
UNIT_B = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
MIB = 1024 * 1024


def to_us(tok):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", tok)
    return float(m.group(1)) * UNIT_US[m.group(2)]


def parse_wrk(path):
    txt = open(path).read()
    out = {}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", txt)
    out["rps"] = float(m.group(1)) if m else float("nan")
    for p, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{p}%\s+(\S+)", txt, re.M)
        out[key] = to_us(m.group(1)) if m else float("nan")
    m = re.search(r"Transfer/sec:\s+([0-9.]+)(B|KB|MB|GB|TB)", txt)
    out["mbps"] = float(m.group(1)) * UNIT_B[m.group(2)] / 1e6 if m else float("nan")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
    out["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", txt)
    out["non2xx"] = int(m.group(1)) if m else 0
    return out


def parse_redis(path, nbytes):
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    for line in open(path):
        f = [x.strip('"') for x in line.strip().split(",")]
        if f and f[0] in ("GET", "SET") and len(f) >= 8:
            rps = float(f[1])
            return {"rps": rps, "p50_us": float(f[4]) * 1e3, "p99_us": float(f[6]) * 1e3,
                    "mean_full_rtt_us": 1e6 / rps if rps else float("nan"), "mbps": rps * nbytes / 1e6}
    raise SystemExit(f"no GET line in {path}")


def kv(d):
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def load(path):
    rows = OrderedDict()
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        rid, rep, workload, payload, kvs = line.split("\t")
        r = rows.setdefault(rid, {"workload": workload, "payload": payload, "vals": {}})
        for tok in kvs.split():
            k, _, v = tok.partition("=")
            try:
                r["vals"].setdefault(k, []).append(float(v))
            except ValueError:
                pass
    return rows


def num(v, digits=None):
    if v is None:
        return "—"
    if v != v:
        return "n/a"
    if digits is not None:
        return f"{v:,.{digits}f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:,.1f}"
    return f"{v:,.2f}"


class Report:
    def __init__(self, rows):
        self.rows = rows
        self.summary = []

    def med(self, rid, key):
        r = self.rows.get(rid)
        if not r or key not in r["vals"]:
            return None
        v = [x for x in r["vals"][key] if x == x]
        return statistics.median(v) if v else float("nan")

    def rng(self, rid, key):
        r = self.rows.get(rid)
        if not r or key not in r["vals"] or len(r["vals"][key]) < 2:
            return ""
        v = r["vals"][key]
        return f"{num(min(v))}–{num(max(v))}"

    def n(self, rid):
        r = self.rows.get(rid)
        return max((len(v) for v in r["vals"].values()), default=0) if r else 0

    def add(self, workload, ours, anchor, ratio, target, met):
        self.summary.append((workload, ours, anchor, ratio, target, met))

    def compare(self, workload, a_id, a_key, b_id, b_key, unit, bound, higher_is_better, target_text, b_name,
                scale=1.0):
        """One summary row: ratio ours/anchor, met when it is within bound."""
        a, b = self.med(a_id, a_key), self.med(b_id, b_key)
        if a is None:
            return
        ours = f"{num(a * scale)} {unit}"
        if b is None or b != b or b == 0:
            self.add(workload, ours, f"{b_name}: not measured", "—", target_text, "—")
            return
        ratio = a / b
        if bound is None:
            met = "(info)"
        else:
            met = "**met**" if (ratio >= bound if higher_is_better else ratio <= bound) else "**missed**"
        self.add(workload, ours, f"{b_name} {num(b * scale)} {unit}", f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×",
                 target_text, met)

    def absolute(self, workload, a, unit, limit, target_text, extra=""):
        if a is None:
            return
        met = "—" if a != a else ("**met**" if a < limit else "**missed**")
        self.add(workload, f"{num(a)} {unit}{extra}", "—", "—", target_text, met)


def report(results, versions_path, cmd, quick):
    rows = load(results)
    R = Report(rows)
    kb = 1 / 1024  # kB -> MiB

    # ---- GetArgs
    R.compare("GetArgs 1 KiB, sequential, p50", "G.1k.seq", "p50_us", "F.1k.seq", "p50_us", "µs", 1.05, False,
              "≤ 1.05× bare tonic", "bare tonic")
    R.compare("GetArgs 1 KiB, sequential, 1/rate vs Redis GET 1/rate", "G.1k.seq", "rps", "R.get.1k.c1", "rps",
              "req/s", None, True, "aim: Redis GET", "Redis GET")
    R.compare("GetArgs 1 KiB, sequential, p50 vs raw UDS in C", "G.1k.seq", "p50_us", "C.1k", "p50_us", "µs", None,
              False, "(floor)", "raw UDS")
    R.compare("GetArgs 1 KiB, 64 in flight, 4 conns", "G.1k.c64x4", "rps", "F.1k.c64x4", "rps", "req/s", 0.95, True,
              "≥ 0.95× bare tonic", "bare tonic")
    R.compare("GetArgs 1 KiB, 64 in flight, 1 conn", "G.1k.c64x1", "rps", "F.1k.c64x1", "rps", "req/s", None, True,
              "(info)", "bare tonic")
    R.compare("GetArgs 1 KiB, 64 in flight, 4 conns vs Redis GET -c 64", "G.1k.c64x4", "rps", "R.get.1k.c64", "rps",
              "req/s", None, True, "(info)", "Redis GET")
    R.compare("GetArgs 64 KiB, sequential", "G.64k.seq", "rps", "F.64k.seq", "rps", "req/s", None, True, "(info)",
              "bare tonic")
    R.compare("GetArgs 1 MiB, sequential", "G.1m.seq", "rps", "F.1m.seq", "rps", "req/s", 0.9, True,
              "≥ 0.9× bare tonic", "bare tonic")
    R.compare("GetArgs 1 MiB, sequential vs Redis GET", "G.1m.seq", "rps", "R.get.1m.c1", "rps", "req/s", None, True,
              "(info)", "Redis GET")
    R.compare("GetArgs 1 MiB, 64 in flight, 4 conns", "G.1m.c64x4", "rps", "F.1m.c64x4", "rps", "req/s", None, True,
              "(info)", "bare tonic")
    R.compare("GetArgs 1 MiB via argsbroker::client (String) vs raw bytes", "G.1m.seq.typed", "rps", "G.1m.seq", "rps",
              "req/s", None, True, "(info)", "raw")
    # ---- HTTP
    R.compare("GET /args 1 KiB, 2 workers, wrk -t2 -c64", "H.1k", "rps", "N.1k", "rps", "req/s", 1.0, True,
              "≥ 1.0× nginx", "nginx")
    R.compare("GET /args 1 KiB, 2 workers vs FastAPI original (uvloop)", "H.1k", "rps", "U.fast.1k", "rps", "req/s", 7.0,
              True, "> 7× FastAPI", "FastAPI")
    R.compare("GET /args 1 MiB, 2 workers, wrk -t2 -c64", "H.1m", "rps", "N.1m", "rps", "req/s", 0.9, True,
              "≥ 0.9× nginx", "nginx")
    # ---- propagation (every figure from the moment the write is sent)
    R.compare("change → last of 8 workers, p99", "P.8.1k", "p99_us", "R.pub.c.8.1k", "p99_us", "µs", 1.0, False,
              "≤ 1.0× Redis PUBLISH → 8 C subs", "Redis")
    R.compare("change → last of 8 workers, p50", "P.8.1k", "p50_us", "R.pub.c.8.1k", "p50_us", "µs", None, False,
              "(info)", "Redis")
    R.compare("change → last of 64 workers, p99", "P.64.1k", "p99_us", "R.pub.c.64.1k", "p99_us", "µs", 1.0, False,
              "≤ 1.0× Redis PUBLISH → 64 C subs", "Redis → 64 C subs")
    R.compare("change → last of 256 workers, p99 vs Redis", "P.256.1k", "p99_us", "R.pub.c.256.1k", "p99_us", "µs",
              1.0, False, "≤ 1.0× Redis PUBLISH → 256 C subs", "Redis → 256 C subs")
    R.absolute("change → last of 256 workers, p99", R.med("P.256.1k", "p99_us"), "µs", 20000, "< 20 ms")
    for n in (8, 64, 256):
        R.compare(f"{n} workers: broker publish → last worker's report (broker clock, excl. the write), p99",
                  f"P.{n}.1k", "ack_p99_us", f"R.pub.c.{n}.1k", "p99_us", "µs", None, False, "(info)",
                  f"Redis → {n} C subs")
    R.compare("change → last of 8 workers, 1 MiB, p99", "P.8.1m", "p99_us", "R.pub.c.8.1m", "p99_us", "µs", None,
              False, "(info)", "Redis")
    for n in (8, 64, 256):
        R.compare(f"change → last of {n} workers, broker on tmpfs, p99", f"A.workers.{n}.1k", "p99_us",
                  f"R.pub.c.{n}.1k", "p99_us", "µs", 2.0, False, f"≤ 2.0× Redis PUBLISH → {n} C subs (issue 23)",
                  f"Redis → {n} C subs")
    for n in (8, 64, 256):
        R.compare(f"{n} workers, tmpfs: broker publish → last worker's report (broker clock), p99",
                  f"A.workers.{n}.1k", "ack_p99_us", f"R.pub.c.{n}.1k", "p99_us", "µs", 1.5, False,
                  "≤ 1.5× Redis (issue 23)", f"Redis → {n} C subs")
    for n in (8, 64, 256):
        R.compare(f"change → last of {n} followers, acks on vs off, p99", f"A.follow.{n}.1k", "p99_us",
                  f"A.watch.{n}.1k", "p99_us", "µs", 1.1, False, "≤ 1.1× no acks", "WatchArgs only")
        R.compare(f"change → last of {n} followers, acks on vs off, p50", f"A.follow.{n}.1k", "p50_us",
                  f"A.watch.{n}.1k", "p50_us", "µs", None, False, "(info)", "WatchArgs only")
    for n in (8, 64):
        w50, w99 = R.med(f"A.wait.{n}.1k", "p50_us"), R.med(f"A.wait.{n}.1k", "p99_us")
        if w50 is not None:
            R.add(f"broker patch --wait to {n} workers, p50 / p99",
                  f"p50 {num(w50)} µs, p99 {num(w99)} µs",
                  f"no --wait: p50 {num(R.med(f'A.nowait.{n}.1k', 'p50_us'))} µs, "
                  f"p99 {num(R.med(f'A.nowait.{n}.1k', 'p99_us'))} µs",
                  f"{w50 / R.med(f'A.nowait.{n}.1k', 'p50_us'):.2f}× (p50)", "(info)", "(info)")
    w50, w99 = R.med("P.8.1k", "write_p50_us"), R.med("P.8.1k", "write_p99_us")
    if w50 is not None:
        R.add("PatchArgs latency (incl. fsync), 1 KiB", f"p50 {num(w50)} µs, p99 {num(w99)} µs", "—", "—", "(info)", "(info)")
    # ---- the write path (issue 23: measured here, changed by the storage work)
    R.compare("PatchArgs 1 KiB p50, file, state on disk, vs one fdatasync of a 1 KiB append there",
              "W.patch.1k", "p50_us", "W.fdatasync.1k", "p50_us", "µs", None, False, "(info)", "fdatasync")
    wp, wg, wf = R.med("W.patch.1k", "p50_us"), R.med("W.get.1k", "p50_us"), R.med("W.fdatasync.1k", "p50_us")
    if wp is not None and wg is not None and wf is not None:
        R.add("PatchArgs p50 minus GetArgs p50 (same broker, state on disk), vs one fdatasync",
              f"{num(wp - wg)} µs (PatchArgs {num(wp)}, GetArgs {num(wg)})", f"fdatasync {num(wf)} µs",
              f"+{num(wp - wg - wf)} µs", "≤ fdatasync + 200 µs (issue 23)",
              "**met**" if wp - wg <= wf + 200 else "**missed**")
    cw = R.med("W.writers16.1k", "commits_per_s")
    if cw is not None:
        R.add("commits/s, 16 concurrent writers, PatchArgs, file, state on disk",
              f"{num(cw)} /s (p50 {num(R.med('W.writers16.1k', 'p50_us'))} µs)", "—", "—",
              "≥ 3× today's (issue 23)", "(info)")
    R.compare("etcd: PatchArgs through etcd p50 vs a bare etcd txn (same compare)", "E.prop.etcd.1k", "write_p50_us",
              "E.etcd.txn.1k", "write_p50_us", "µs", 1.2, False, "≤ 1.2× (issue 23)", "etcd txn")
    # ---- many hosts (etcd)
    ep, fp = R.med("E.prop.etcd.1k", "p99_us"), R.med("E.etcd.watch.1k", "p99_us")
    if ep is not None and fp is not None:
        n = int(R.med("E.prop.etcd.1k", "workers") or 0)
        R.add(f"etcd: change → last of {n} workers on 3 brokers, p99, over etcd's own watch",
              f"{num(ep)} µs (p50 {num(R.med('E.prop.etcd.1k', 'p50_us'))} µs)",
              f"etcd put → last of 3 watches {num(fp)} µs (p50 {num(R.med('E.etcd.watch.1k', 'p50_us'))} µs)",
              f"+{num(ep - fp)} µs", "< +1 ms p99 over etcd's watch",
              "**met**" if ep - fp < 1000 else "**missed**")
    R.compare("etcd: change → last worker, p99, vs file mode (same worker count)", "E.prop.etcd.1k", "p99_us",
              "E.prop.file.1k", "p99_us", "µs", None, False, "(info)", "file mode")
    R.compare("etcd: PatchArgs through etcd, p50", "E.prop.etcd.1k", "write_p50_us", "E.etcd.watch.1k", "write_p50_us",
              "µs", None, False, "(info)", "etcd put")
    R.compare("etcd: PatchArgs through etcd, p99", "E.prop.etcd.1k", "write_p99_us", "E.etcd.watch.1k", "write_p99_us",
              "µs", None, False, "(info)", "etcd put")
    R.compare("etcd: GetArgs 1 KiB, sequential, p50, etcd mode vs file mode", "E.get.etcd.1k", "p50_us", "E.get.file.1k",
              "p50_us", "µs", 1.05, False, "as fast as file mode (≤ 1.05×, noise)", "file mode")
    # ---- start and memory
    R.absolute("worker start → /readyz 200 (incl. fetch)", R.med("S.worker.1k", "cold_ms"), "ms", 15, "< 15 ms")
    R.compare("worker start vs bare tonic server start", "S.worker.1k", "cold_ms", "S.floor.1k", "cold_ms", "ms", None,
              False, "(info)", "bare tonic")
    R.compare("worker start vs uvicorn --workers 2 start", "S.worker.1k", "cold_ms", "U.fast.1k.start", "cold_ms", "ms",
              None, False, "(info)", "uvicorn")
    ws = [R.med("M.worker.1k", k) for k in ("rss_worker1_kb", "rss_worker2_kb")]
    ws = [w for w in ws if w is not None]
    if ws:
        R.absolute("worker RSS, 1 KiB, after load", max(ws) * kb, "MiB", 8, "< 8 MiB")
    for label in ("1k", "1m"):
        d = R.med(f"M.broker.{label}", "doc_bytes")
        for key, when in (("rss_broker_idle_kb", "idle"), ("rss_broker_kb", "after load")):
            b = R.med(f"M.broker.{label}", key)
            if b is not None and d is not None:
                limit = 8 + 3 * d / MIB
                R.absolute(f"broker RSS, {label.replace('k', ' KiB').replace('m', ' MiB')} document, {when}", b * kb,
                           "MiB", limit, f"< 8 MiB + 3× doc = {limit:.1f} MiB")
    # ---- scale
    for n in (100, 1000):
        rid = f"X.watch.{n}"
        if rid in rows:
            ok = R.med(rid, "missing") == 0 and R.med(rid, "complete") == R.med(rid, "changes")
            before, with_ = R.med(rid, "rss_broker_before_kb"), R.med(rid, "rss_broker_with_kb")
            per = (with_ - before) / n if before and with_ else float("nan")
            R.add(f"{n} watchers: change → last watcher; broker RSS per watcher",
                  f"p50 {num(R.med(rid, 'p50_us'))} µs, p99 {num(R.med(rid, 'p99_us'))} µs; {num(per)} kB/watcher",
                  "—", "—", "works, linear", "works" if ok else "**failed**")
    if "X.get.64m" in rows and "X.get.1m" in rows:
        g = R.med("X.get.64m", "p50_us") / R.med("X.get.1m", "p50_us")
        w = R.med("X.write.64m", "p50_us") / R.med("X.write.1m", "p50_us")
        m64, m1 = R.med("X.mem.64m", "rss_broker_kb"), R.med("X.mem.1m", "rss_broker_kb")
        c64 = R.med("X.worker.64m", "cold_ms")
        R.add("64 MiB document: GetArgs p50, PatchArgs p50, broker RSS, worker start",
              f"{num(R.med('X.get.64m', 'p50_us') / 1e3)} ms, {num(R.med('X.write.64m', 'p50_us') / 1e3)} ms, "
              f"{num(m64 * kb)} MiB, {num(c64)} ms",
              f"1 MiB: {num(R.med('X.get.1m', 'p50_us') / 1e3)} ms, {num(R.med('X.write.1m', 'p50_us') / 1e3)} ms, "
              f"{num(m1 * kb)} MiB", f"{g:.0f}× / {w:.0f}× (64× = linear)", "works, linear",
              "works" if R.med("X.worker.64m", "n") else "**failed**")
        cpu = R.med("X.get.64m", "server_cpu_us") / R.med("X.get.1m", "server_cpu_us")
        if "X.floor.64m" in rows and "X.floor.1m" in rows:
            fg = R.med("X.floor.64m", "p50_us") / R.med("X.floor.1m", "p50_us")
            fcpu = R.med("X.floor.64m", "server_cpu_us") / R.med("X.floor.1m", "server_cpu_us")
            R.add("64 MiB vs 1 MiB GetArgs: p50 and server CPU per request",
                  f"{g:.0f}×, CPU {cpu:.0f}× ({num(R.med('X.get.64m', 'server_cpu_us') / 1e3)} ms)",
                  f"bare tonic {fg:.0f}×, CPU {fcpu:.0f}× ({num(R.med('X.floor.64m', 'server_cpu_us') / 1e3)} ms)",
                  f"{g / fg:.2f}×", "linear (64×)", "(info)")

    out = []
    p = out.append
    p("# Benchmarks" + (" (quick smoke run: tiny counts, not figures to quote)" if quick == "1" else ""))
    p("")
    p("argsbroker beside its alternatives, every figure measured in **one run on this machine**, the load")
    p("generator sharing the CPUs with the servers. Each figure is the median of the repetitions shown in the")
    p("detail tables (n); ratios compare figures of the same run only. Targets are those of issue 6.")
    p("")
    p("```")
    p(open(versions_path).read().rstrip())
    p(f"command: {cmd}")
    p("```")
    p("")
    p("## Summary")
    p("")
    p("| workload | argsbroker | anchor (same run) | ratio | target | |")
    p("|---|---|---|---|---|---|")
    for w, ours, anchor, ratio, target, met in R.summary:
        p(f"| {w} | {ours} | {anchor} | {ratio} | {target} | {met} |")
    p("")
    p("## Detail: request/response")
    p("")
    p("| id | workload | payload | n | req/s | req/s min–max | p50 µs | p99 µs | p999 µs | notes |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for rid, r in rows.items():
        v = r["vals"]
        if "rps" not in v or rid.startswith(("M.", "S.")):
            continue
        notes = []
        for k in ("errors", "non2xx"):
            if k in v and any(v[k]):
                notes.append(f"{k}={int(max(v[k]))}")
        if "mean_full_rtt_us" in v:
            notes.append(f"1/rps {num(R.med(rid, 'mean_full_rtt_us'))} µs (p50/p99: time to first byte)")
        if "mbps" in v:
            notes.append(f"{num(R.med(rid, 'mbps'))} MB/s")
        p(f"| {rid} | {r['workload']} | {r['payload']} | {R.n(rid)} | {num(R.med(rid, 'rps'))} | {R.rng(rid, 'rps')} | "
          f"{num(R.med(rid, 'p50_us'))} | {num(R.med(rid, 'p99_us'))} | {num(R.med(rid, 'p999_us'))} | {'; '.join(notes)} |")
    p("")
    p("## Detail: propagation and writes")
    p("")
    p("Every figure is measured from the moment the write is sent: workers and `bench follower` processes, from just")
    p("before the client sends PatchArgs to the `args updated revision=N` log line of the last of them (the system clock")
    p("both carry, µs; a worker that skipped to a newer revision counts at that one); `any` counts every worker;")
    p("`from reply` starts at the PatchArgs reply instead (the figure of runs before issue 14; the broker publishes")
    p("before it replies, so it can be negative). Watch streams (`X.watch`) and etcd's watch (`E.etcd`): from the send")
    p("to the receipt, on the one monotonic clock of the client process. Redis: from just before the PUBLISH is sent")
    p("to the last subscriber having read the whole message. `write`: PatchArgs (or etcd put) send → reply.")
    p("")
    p("| id | workload | payload | n | last p50 µs | last p99 µs | from reply p50/p99 µs | any p50/p99 µs | write p50/p99 µs | notes |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for rid, r in rows.items():
        if not rid.startswith(("P.", "R.pub", "X.watch", "X.write", "A.", "E.prop", "E.etcd", "W.patch", "W.writers", "W.fdatasync")):
            continue
        v = r["vals"]
        notes = []
        for k in ("missing", "skipped", "short_publish"):
            if k in v and any(v[k]):
                notes.append(f"{k}={int(max(v[k]))}")
        if "ack_p50_us" in v and R.med(rid, "acked"):
            notes.append(f"broker publish → last report {num(R.med(rid, 'ack_p50_us'))} / {num(R.med(rid, 'ack_p99_us'))} µs "
                         f"({int(R.med(rid, 'acked'))} of {int(R.med(rid, 'changes'))} changes)")
        if "connect_ms" in v:
            notes.append(f"connect {num(R.med(rid, 'connect_ms'))} ms; broker RSS {num(R.med(rid, 'rss_broker_before_kb') * kb)} → "
                         f"{num(R.med(rid, 'rss_broker_with_kb') * kb)} MiB")
        fs = f"{num(R.med(rid, 'from_reply_p50_us'))} / {num(R.med(rid, 'from_reply_p99_us'))}" if "from_reply_p50_us" in v else ""
        an = f"{num(R.med(rid, 'any_p50_us'))} / {num(R.med(rid, 'any_p99_us'))}" if "any_p50_us" in v else ""
        wr = f"{num(R.med(rid, 'write_p50_us'))} / {num(R.med(rid, 'write_p99_us'))}" if "write_p50_us" in v else ""
        if "commits_per_s" in v:
            notes.append(f"{num(R.med(rid, 'commits_per_s'))} commits/s")
        if rid.startswith(("X.write", "A.wait", "A.nowait", "W.")):
            wr = f"{num(R.med(rid, 'p50_us'))} / {num(R.med(rid, 'p99_us'))}"
            p(f"| {rid} | {r['workload']} | {r['payload']} | {R.n(rid)} | | | | | {wr} | {'; '.join(notes)} |")
            continue
        p(f"| {rid} | {r['workload']} | {r['payload']} | {R.n(rid)} | {num(R.med(rid, 'p50_us'))} | {num(R.med(rid, 'p99_us'))} | "
          f"{fs} | {an} | {wr} | {'; '.join(notes)} |")
    p("")
    trows = [(rid, r) for rid, r in rows.items() if rid.startswith("T.")]
    if trows:
        p("## Detail: the stages of one change")
        p("")
        p("`bench stages`: N worker processes on a broker whose file and state are on tmpfs, both writing a trace line")
        p("at each stage (so a little slower than the rows above); every time is on the system clock all processes")
        p("share, p50 of the changes (p99 in brackets), in µs from the moment PatchArgs is sent. `received`: the broker")
        p("decoded the request; `published`: the first task woken by the new snapshot (the commit done); `handed`: the first and")
        p("last stream given the frame; `arrived`: the first and last worker that read it; `applied`: the last worker")
        p("that served it; `acked`: the broker read the last worker's report; `reply`: the writer got its reply.")
        p("")
        p("| id | n | received | published | handed first | handed last | arrived first | arrived last | applied last | acked last | reply |")
        p("|---|---|---|---|---|---|---|---|---|---|---|")
        names = ("received", "published", "handed_first", "handed_last", "arrived_first", "arrived_last",
                 "applied_last", "acked_last", "reply")
        for rid, r in trows:
            cells = " | ".join(f"{num(R.med(rid, k + '_p50_us'))} ({num(R.med(rid, k + '_p99_us'))})" for k in names)
            p(f"| {rid} | {R.n(rid)} | {cells} |")
        p("")
    p("## Detail: start and memory")
    p("")
    p("| id | what | payload | n | start ms (median) | min–max | RSS MiB (median) |")
    p("|---|---|---|---|---|---|---|")
    for rid, r in rows.items():
        v = r["vals"]
        if not ("cold_ms" in v or any(k.endswith("_kb") for k in v)) or rid.startswith(("X.watch",)):
            continue
        rss = ", ".join(f"{k[4:-3] if k.startswith('rss_') else k[:-3]} {num(R.med(rid, k) * kb)}"
                        for k in v if k.endswith("_kb"))
        cold = num(R.med(rid, "cold_ms")) if "cold_ms" in v else ""
        p(f"| {rid} | {r['workload']} | {r['payload']} | {R.n(rid)} | {cold} | {R.rng(rid, 'cold_ms')} | {rss} |")
    p("")
    lrows = [(rid, r) for rid, r in rows.items() if rid.startswith("L.")]
    if lrows:
        p("## Other load on the machine during the run")
        p("")
        p("CPU time used by processes this run did not start (busy time from /proc/stat minus the run's own")
        p("processes'), per section. Anything well above zero means the figures of that section were taken on a")
        p("busier machine than the anchors' — and anchors and argsbroker of one section shared it alike.")
        p("")
        p("| section | wall s | CPU busy s | other processes' CPU s | share of the machine |")
        p("|---|---|---|---|---|")
        for rid, r in lrows:
            p(f"| {rid[2:]} | {num(R.med(rid, 'wall_s'))} | {num(R.med(rid, 'busy_s'))} | {num(R.med(rid, 'other_cpu_s'))} | "
              f"{num(R.med(rid, 'other_pct'))} % |")
        p("")
    p("## How it is measured")
    p("")
    p("- `bench/run` builds release binaries into `target/bench` (`broker` and `worker`; `bench` and `floor-server` of the")
    p("  workspace member `bench/`, locked by the same Cargo.lock), generates the documents with `bench/gen_payload.py`")
    p("  (1 KiB and 1 MiB are byte for byte the reference anchors'; the broker serves exactly these bytes), and starts")
    p("  every server itself on 127.0.0.1 or a Unix socket in a temp dir.")
    p("- GetArgs: `bench seq|conc` (bench/client.rs). The broker (`G.*`) and the bare tonic server `floor-server`")
    p("  (bench/floor.rs, `F.*`, a handler returning prepared `Bytes`) run side by side; each workload is measured")
    p("  on one right after the other, the order flipped every repetition (A B, B A, A B), by the same client code,")
    p("  which decodes the document as bytes in both cases; `G.1m.seq.typed` uses the library's own client instead")
    p("  (`json` as a `String`).")
    p("- HTTP: `wrk -t2 -c64 --latency` against 2 `worker --reuse-port` processes on one port (`H.*`) and against")
    p("  nginx with 2 worker processes serving **the same body** (`{\"args\": …}`) as a static file (`N.*`), alternated.")
    p("  The FastAPI original (`U.*`) is `bench/fastapi_shm` under `uvicorn --workers 2`, a fresh server per run.")
    p("- Propagation: N workers (`RUST_LOG=argsbroker::client=debug`) log `args updated revision=N` with a µs")
    p("  timestamp when they apply a revision; `bench propagate` sends PatchArgs 10 ms apart and reads those logs.")
    p("  Redis: `bench/pubsub_bench.py` with the C subscribers of `bench/pubsub_sub.c`.")
    p("- Cold start: `bench coldstart` spawns the process and probes it every 0.1 ms (worker: `GET /readyz`;")
    p("  broker and bare tonic: a GetArgs call). RSS is VmRSS from /proc after the load.")
    p("- Scale: `bench watchers` opens N WatchArgs streams, one connection each, in one client process.")
    p("- Fleet (`A.*`): N `bench follower` processes on one broker, reporting each applied revision on a Follow stream")
    p("  (acks on, as every worker does) or only watching (WatchArgs), one set right after the other, the order flipped")
    p("  every repetition; `broker patch --wait` is PatchArgs with `wait_applied_ms` to N real workers.")
    p("- Many hosts (`E.*`): a 3-member etcd cluster on loopback (data on /dev/shm), 3 brokers with `--etcd-endpoints`,")
    p("  E_WORKERS workers each, PatchArgs sent to one of them; etcd's own floor is `bench etcd-watch` (etcd-client: a")
    p("  put, and one watch stream per member, timed on one clock); then the same number of workers on a file-mode broker.")
    p("- Stages (`T.*`): `bench stages` with the broker at `RUST_LOG=info,argsbroker::stages=trace` and the workers at")
    p("  `argsbroker::client=trace`: trace lines at each stage of a change, read back on the clock they all share.")
    p("- Write path (`W.*`): `bench/fdatasync_probe.c` (a 1 KiB append + fdatasync in the broker's state directory),")
    p("  `bench seq` and `bench write` on the same broker, and `bench writers` (16 connections sending PatchArgs back")
    p("  to back); `E.etcd.txn` is `bench etcd-txn` (a txn comparing mod_revision, then a put, as a commit does).")
    p("- Figures move 1.2–1.4× between runs on a shared 2-CPU VM; only ratios inside one run count.")
    print("\n".join(out))


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "freeport":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    elif cmd == "wrk":
        print(kv(parse_wrk(sys.argv[2])))
    elif cmd == "redis":
        print(kv(parse_redis(sys.argv[2], int(sys.argv[3]))))
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
