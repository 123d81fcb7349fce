#!/usr/bin/env python3
"""Turns bench/compare.sh's raw runs into bench/RESULTS.md (Markdown on standard output).

    report.py --meta META.tsv --runs RUNS.tsv [--placeholder]

The raw files of the last run are kept as bench/.last-meta.tsv and bench/.last-runs.tsv, so
the report can be made again from them.
"""
import argparse
import csv
import json
import statistics
import sys

SERVERS = ["postrider", "postrider-3p", "postrider-3p-warm", "postfix", "haraka",
           "postrider-verify", "postfix-verify", "postrider-rspamd", "postrider-milter",
           "postfix-rspamd", "haraka-rspamd"]
LABEL = {
    "postrider": "Postrider, no plugins",
    "postrider-3p": "Postrider, 3 plugins",
    "postrider-3p-warm": "Postrider, 3 plugins, warm instances",
    "postfix": "Postfix",
    "haraka": "Haraka, 1 JS plugin",
    "postrider-verify": "Postrider, verified TLS",
    "postfix-verify": "Postfix, verified TLS",
    "postrider-rspamd": "Postrider, rspamd plugin",
    "postrider-milter": "Postrider, rspamd milter",
    "postfix-rspamd": "Postfix, rspamd milter",
    "haraka-rspamd": "Haraka, rspamd plugin",
}


def baseline(server):
    """The Postfix a server is compared with: the one set up the same way (-verify, -rspamd)."""
    if server in ("postrider-milter", "haraka-rspamd"):
        return "postfix-rspamd"
    for suffix in ("-verify", "-rspamd"):
        if server.endswith(suffix):
            return "postfix" + suffix
    return "postfix"


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def load_runs(path):
    runs = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            try:
                row["lg"] = json.loads(row.get("loadgen_json") or "{}")
            except json.JSONDecodeError:
                row["lg"] = {}
            n = num(row["messages"])
            t0, t1, t2 = num(row["t_start"]), num(row["t_accepted"]), num(row["t_drained"])
            ok = not row["error"]
            row["ok"] = ok
            row["e2e"] = n / (t2 - t0) if ok and t0 and t2 and t2 > t0 else None
            row["accept"] = n / (t1 - t0) if ok and t0 and t1 and t1 > t0 else None
            row["p50"] = num(row["lg"].get("p50_ms")) if ok else None
            row["p99"] = num(row["lg"].get("p99_ms")) if ok else None
            row["rss_mb"] = num(row["rss_kb"]) / 1024 if num(row["rss_kb"]) else None
            row["pss_mb"] = num(row.get("pss_kb")) / 1024 if num(row.get("pss_kb")) else None
            hs, resumed = num(row.get("tls_handshakes")), num(row.get("tls_resumed"))
            # Both passes: 2 x messages.
            row["hs_per_msg"] = hs / (2 * n) if ok and hs is not None and n else None
            row["resumed_pct"] = 100 * resumed / hs if ok and hs and resumed is not None else None
            cpu = num(row.get("rspamd_cpu_s"))
            # rspamd CPU seconds per 1000 messages relayed (both passes).
            row["rspamd_cpu_1k"] = 1000 * cpu / (2 * n) if ok and cpu is not None and n else None
            runs.append(row)
    return runs


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    return "—" if x is None else f"{x:,.{digits}f}"


def size_label(size):
    size = int(size)
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--placeholder", action="store_true")
    a = ap.parse_args()
    meta = {}
    with open(a.meta) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta[k] = v
    runs = load_runs(a.runs)

    cells = []
    for r in runs:
        key = (int(r["sessions"]), int(r["size"]), r["mode"])
        if key not in cells:
            cells.append(key)
    cells.sort(key=lambda c: (c[1], c[0], c[2] != "new"))
    servers = [s for s in SERVERS if any(r["server"] == s for r in runs)]

    agg = {}
    for cell in cells:
        for s in servers:
            rs = [r for r in runs if (int(r["sessions"]), int(r["size"]), r["mode"]) == cell and r["server"] == s]
            if not rs:
                continue
            agg[cell, s] = {
                "e2e": median(r["e2e"] for r in rs),
                "accept": median(r["accept"] for r in rs),
                "p50": median(r["p50"] for r in rs),
                "p99": median(r["p99"] for r in rs),
                "rss": max((r["rss_mb"] for r in rs if r["rss_mb"] is not None), default=None),
                "pss": max((r["pss_mb"] for r in rs if r["pss_mb"] is not None), default=None),
                "ok": sum(r["ok"] for r in rs),
                "n": len(rs),
                "rustc": sum(1 for r in rs if (num(r["rustc"]) or 0) > 0),
                "hs": median(r["hs_per_msg"] for r in rs),
                "resumed": median(r["resumed_pct"] for r in rs),
                "rspamd_cpu_1k": median(r["rspamd_cpu_1k"] for r in rs),
            }

    out = []
    w = out.append
    w("# Benchmarks: Postrider, Postfix and Haraka on one machine")
    w("")
    if a.placeholder:
        w("> **PLACEHOLDER from a `--quick` validation run, not measurements.** It shows that every")
        w("> cell of `bench/compare.sh` runs and what the report looks like: 200 messages per pass")
        w("> (a fraction of a second for the faster servers), one run, on a development machine")
        w("> shared with other work. None of these numbers says anything about performance; the")
        w("> full run (`bench/compare.sh`, on a quiet machine) replaces this file.")
        w("")
    busy = sum(1 for r in runs if (num(r["rustc"]) or 0) > 0)
    w(f"Made by `{meta.get('command', 'bench/compare.sh').strip()}` on {meta.get('date', '?')}, "
      f"{meta.get('duration', '?')}. Runs during which a compiler (`rustc`) was running: "
      f"**{busy} of {len(runs)}**" + (" — these numbers are not to be trusted." if busy else "."))
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for key, label in [("nproc", "cores (nproc)"), ("cpu", "CPU"), ("ram", "RAM"), ("kernel", "kernel"),
                       ("os", "OS"), ("disk", "disk (spool and queue)"), ("postrider", "Postrider"),
                       ("postfix", "Postfix"), ("haraka", "Haraka"), ("dnsmasq", "DNS for the DNSBL"),
                       ("messages", "messages per pass"), ("runs", "runs per server and cell"),
                       ("logs", "logging")]:
        if key in meta:
            w(f"| {label} | {meta[key]} |")
    w("")
    w("## Results")
    w("")
    w("msgs/s: end to end, from smtp-source's first connection until the relay's queue is empty "
      "again, median of the runs; × Postfix: that median over Postfix's. accept msgs/s: until "
      "smtp-source had its last 250. p50/p99: per-message latency from postrider-loadgen under "
      "the same load, median of the runs. Peak RSS: the highest of the runs (Postrider: VmHWM; "
      "Postfix and Haraka: summed RSS of all their processes, sampled every 100 ms). Peak PSS: "
      "the same for the summed proportional set size (each shared page divided among the "
      "processes that map it), sampled every second: what a multi-process server really "
      "occupies. ok: runs without error of all runs. The verified-TLS servers are compared "
      "with Postfix doing verified TLS; TLS hs/msg: TLS handshakes at the sink per message "
      "relayed, and the share of them that resumed a session (median of the runs).")
    w("")
    w("| sessions | size | connection | server | msgs/s | × Postfix | accept msgs/s | p50 ms | p99 ms | peak RSS MB | peak PSS MB | TLS hs/msg | resumed | ok |")
    w("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cell in cells:
        sessions, size, mode = cell
        for s in servers:
            g = agg.get((cell, s))
            if not g:
                continue
            pf = agg.get((cell, baseline(s)), {}).get("e2e")
            ratio = f"{g['e2e'] / pf:.2f}" if g["e2e"] and pf else "—"
            resumed = "—" if g["resumed"] is None else f"{g['resumed']:.0f}%"
            w(f"| {sessions} | {size_label(size)} | {'new per message' if mode == 'new' else 'reused'} "
              f"| {LABEL[s]} | {fmt(g['e2e'])} | {ratio} | {fmt(g['accept'])} | {fmt(g['p50'], 1)} "
              f"| {fmt(g['p99'], 1)} | {fmt(g['rss'])} | {fmt(g['pss'])} | {fmt(g['hs'], 3)} | {resumed} "
              f"| {g['ok']}/{g['n']} |")
    w("")
    w("## Goals")
    w("")
    if a.placeholder:
        w("Not evaluated: this is a placeholder from a `--quick` validation run.")
    else:
        if any(s in servers for s in ("postrider", "postrider-3p", "postrider-3p-warm")):
            w("Issue 10 (plugins, memory):")
            w("")
            w("1. Postrider with 3 plugins ≥ 3× Postfix msgs/s at 20 sessions and 4 KiB:")
            for s in ("postrider-3p", "postrider-3p-warm"):
                for mode in ("new", "reuse"):
                    conn = "new connection per message" if mode == "new" else "reused connections"
                    p3 = agg.get(((20, 4096, mode), s), {}).get("e2e")
                    pf = agg.get(((20, 4096, mode), "postfix"), {}).get("e2e")
                    if p3 and pf:
                        verdict = "**met**" if p3 >= 3 * pf else "**not met**"
                        w(f"   - {LABEL[s]}, {conn}: {p3:,.0f} vs {pf:,.0f} msgs/s = {p3 / pf:.2f}× — {verdict}")
                    else:
                        w(f"   - {LABEL[s]}, {conn}: not measured")
            w("2. ≤ 100 MB RSS at 100 sessions (the highest VmHWM of any 100-session run):")
            for s in ("postrider", "postrider-3p", "postrider-3p-warm"):
                peaks = [r["rss_mb"] for r in runs if r["server"] == s and int(r["sessions"]) == 100 and r["rss_mb"]]
                if peaks:
                    verdict = "**met**" if max(peaks) <= 100 else "**not met**"
                    w(f"   - {LABEL[s]}: {max(peaks):.0f} MB — {verdict}")
                else:
                    w(f"   - {LABEL[s]}: not measured")
            w("")
            w("What limits the plugin variants, from profiles of the hot path, and what was changed "
              "because of them: [PROFILE.md](PROFILE.md).")
            w("")
        if "postrider-verify" in servers:
            w("Issue 18 (authenticated outbound TLS): verified-TLS relay throughput ≥ 2× "
              "Postfix's at 20 sessions and 4 KiB:")
            w("")
        for mode in ("new", "reuse") if "postrider-verify" in servers else ():
            conn = "new connection per message" if mode == "new" else "reused connections"
            pv = agg.get(((20, 4096, mode), "postrider-verify"), {}).get("e2e")
            fv = agg.get(((20, 4096, mode), "postfix-verify"), {}).get("e2e")
            if pv and fv:
                verdict = "**met**" if pv >= 2 * fv else "**not met**"
                w(f"- {conn}: {pv:,.0f} vs {fv:,.0f} msgs/s = {pv / fv:.2f}× — {verdict}")
            else:
                w(f"- {conn}: not measured")
        if "postrider-rspamd" in servers:
            w("")
            w("Issue 19 (spam filtering): Postrider's rspamd plugin ≥ 1.5× Postfix with rspamd as a "
              "milter, at 20 sessions and 4 KiB (rspamd's CPU seconds per 1000 messages in brackets):")
            w("")
            for mode in ("new", "reuse"):
                conn = "new connection per message" if mode == "new" else "reused connections"
                a = agg.get(((20, 4096, mode), "postrider-rspamd"), {})
                b = agg.get(((20, 4096, mode), "postfix-rspamd"), {})
                if a.get("e2e") and b.get("e2e"):
                    verdict = "**met**" if a["e2e"] >= 1.5 * b["e2e"] else "**not met**"
                    w(f"- {conn}: {a['e2e']:,.0f} ({fmt(a['rspamd_cpu_1k'], 1)} s) vs "
                      f"{b['e2e']:,.0f} ({fmt(b['rspamd_cpu_1k'], 1)} s) msgs/s = "
                      f"{a['e2e'] / b['e2e']:.2f}× — {verdict}")
                else:
                    w(f"- {conn}: not measured")
                others = [s for s in ("postrider-milter", "haraka-rspamd") if s in servers]
                for s in others:
                    o = agg.get(((20, 4096, mode), s), {})
                    if o.get("e2e") and b.get("e2e"):
                        w(f"  - {LABEL[s]}: {o['e2e']:,.0f} ({fmt(o['rspamd_cpu_1k'], 1)} s) "
                          f"msgs/s = {o['e2e'] / b['e2e']:.2f}× Postfix")
    w("")
    w("## How it was measured")
    w("")
    w("- One machine, loopback only. Every server relays to the same Postfix `smtp-sink` "
      "(discards what it receives, counts it: each pass checks that the sink got every message).")
    w("- Load: Postfix's `smtp-source` with `-s SESSIONS -m MESSAGES -l SIZE`, plus `-d` for "
      "reused connections (\"don't disconnect after sending a message\"), one recipient per "
      "message, no pipelining. Then `postrider-loadgen` (crates/postrider-loadgen: the same "
      "SMTP dialogue, single-threaded like smtp-source) with the same load for the latencies: "
      "a message's latency runs from its TCP connect (new connection per message; greeting and "
      "EHLO included) or its MAIL FROM (reused connection) until the reply to the final dot.")
    w("- Order: servers alternate run by run (A B C D, A B C D, ...), each run on a freshly "
      "started server with an empty queue: an untimed warm-up (smtp-source, the same load, "
      "2 messages per session, at least 200), then the two passes; the queue is empty before "
      "each pass starts. Peak memory covers the whole run.")
    w("- **Postrider** (`target/release/postrider`): relay_networks 127.0.0.0/8, a static route "
      "to the sink, 20 deliveries at once (as Postfix's destination concurrency). Its spool is "
      "synced (group commit: one syncfs per batch) before `250`. *3 plugins*: dnsbl at connect "
      "(the client is looked up in `bl.bench.test`, served by a local dnsmasq that answers "
      "NXDOMAIN), rcpt-allowlist at RCPT (only user@remote.test), header-stamp at DATA "
      "(adds a header from the message), each in a fresh instance per session or transaction "
      "(the default). *Warm instances*: the same with `reuse = 100` on each plugin, so an "
      "instance serves up to 100 transactions, its `init` run again before each "
      "(plugins/README.md says what that trades away).")
    w("- **Postfix** (Debian's package) as a relay: `relayhost = [127.0.0.1]:SINK`, "
      "mynetworks 127.0.0.0/8, `default_destination_concurrency_limit = 20`, "
      "`default_process_limit = 200`, logging to a maillog_file, no policy checks. It fsyncs "
      "the queue file before `250`.")
    w("- **Haraka** (npm) with `nodes=cpus` (one worker process per core), a JS rcpt allowlist "
      "plugin (bench/compare/rcpt_allowlist.js) and `queue/smtp_forward` to the sink. "
      "**Haraka has no queue of its own**: smtp_forward opens a connection to the sink for "
      "each message and answers `250` only after the sink accepted it, so nothing is stored "
      "on its disk and its \"end to end\" is its acceptance; a real next hop that is slow or "
      "down makes its clients wait or retry, where Postrider and Postfix queue.")
    w("- **Verified TLS** (`postrider-verify`, `postfix-verify`; only with `--only`): both relay "
      "to `postrider-sink` (crates/postrider-loadgen), a discarding receiver with STARTTLS and "
      "PIPELINING, an ECDSA P-256 certificate for sink.bench.test and 127.0.0.1 from a CA made "
      "at its start, TLS 1.3 session tickets and a session cache. Postrider: route "
      "`tls = \"verify\"` with that CA as `ca_file`. Postfix: `smtp_tls_security_level = verify`, "
      "`smtp_tls_CAfile`, `smtp_tls_verify_cert_match = sink.bench.test`, a TLS session cache "
      "(emptied before each run) and `smtp_tls_connection_reuse = yes` through tlsproxy, so "
      "that both keep connections to the next hop open.")
    w("- **Spam filtering** (`postrider-rspamd`, `postrider-milter`, `postfix-rspamd`, "
      "`haraka-rspamd`; only with `--only`): one Debian rspamd started for the run (its "
      "shipped rules, DNS to a closed port so that network checks fail at once, no Redis: no "
      "greylisting or Bayes), all relaying to smtp-sink. Postrider: the rspamd plugin (HTTP "
      "`/checkv2` of the normal worker, `allow_http` grant), or a `[[milter]]` entry to "
      "rspamd's proxy in milter mode, which scans through the same normal worker. Postfix: "
      "`smtpd_milters` to that proxy (`milter_protocol = 6`, `milter_default_action = "
      "tempfail`). Haraka: haraka-plugin-rspamd (HTTP `/checkv2` of the normal worker, spam "
      "rejected, its headers added) and `queue/smtp_forward`, one worker per core. rspamd CPU: "
      "user + system seconds of all its processes during both passes, per 1000 messages.")
    w("- Logging: Postrider and Haraka at their default level (info) to a file, Postfix to its "
      "maillog_file, unless `logging` above says quiet (`--quiet-logs`: warnings only).")
    w("- RSS: summed RSS counts pages shared between processes (libraries, Postfix's common "
      "text) once per process, so it overstates Postfix's and Haraka's real use; Postrider is "
      "one process.")
    w("- Postrider's group commit uses syncfs, which also flushes whatever else is being "
      "written to that filesystem: another job writing to the same disk (a build) slows it "
      "more than it slows Postfix's per-file fsync.")
    w("")
    w("<details><summary>Every run</summary>")
    w("")
    w("| server | sessions | size | connection | run | msgs | msgs/s e2e | accept msgs/s | loadgen msgs/s | p50 ms | p99 ms | RSS MB | PSS MB | TLS hs/msg | rspamd CPU s/1k | rustc | load | error |")
    w("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        w(f"| {r['server']} | {r['sessions']} | {r['size']} | {r['mode']} | {r['rep']} | {r['messages']} "
          f"| {fmt(r['e2e'])} | {fmt(r['accept'])} | {fmt(num(r['lg'].get('msgs_per_s')))} "
          f"| {fmt(num(r['lg'].get('p50_ms')), 1)} | {fmt(num(r['lg'].get('p99_ms')), 1)} "
          f"| {fmt(r['rss_mb'])} | {fmt(r['pss_mb'])} | {fmt(r['hs_per_msg'], 3)} "
          f"| {fmt(r['rspamd_cpu_1k'], 1)} | {r['rustc']} | {r['load1']} | {r['error'].replace('|', '/')} |")
    w("")
    w("</details>")
    w("")
    w("The verified-TLS runs (issue 18) are made apart, into their own file: `sudo "
      "bench/compare.sh --only postrider-verify,postfix-verify --sessions 20 --sizes 4096 "
      "--out bench/RESULTS-tls.md` ([RESULTS-tls.md](RESULTS-tls.md)).")
    w("")
    w("Run it again: `sudo bench/compare.sh` (about 40 minutes on the 2-core machine, half of "
      "it Haraka, plus the release build; `--help` for the options). `bench/compare.sh --quick` "
      "checks that everything works in about a minute and a half after the build.")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
