#!/usr/bin/env python3
"""Hostile SMTP clients for bench/hostile.sh (stdlib only, Python >= 3.11).

    hostile.py data-open     --port P --clients N --size BYTES [common options]
    hostile.py data-complete --port P --clients N --size BYTES [common options]
    hostile.py auth-flood    --port P --clients N [--user NAME] [common options]
    hostile.py rss PID

    common options: [--host 127.0.0.1] [--domain relay.test] [--timeout S] [--hold S]
                    [--pid PID] [--json FILE]

data-open: each client sends EHLO, MAIL FROM, RCPT TO:<userI@DOMAIN>, DATA and SIZE octets of
body in 64 KiB writes without the final dot; once every client has sent its body (or
failed) all are held open HOLD seconds more, then closed. data-complete: the same, each
message ended with CRLF.CRLF and its reply read. auth-flood: each client sends EHLO, STARTTLS
(no certificate verification), EHLO; once all are there (a barrier) each sends AUTH PLAIN
with a wrong password and reads the reply; meanwhile a probe opens a new connection every
200 ms and times connect-to-220 plus the EHLO reply.

Prints one summary line on standard output; --json FILE gets every number. --pid PID: the
server (its process tree), whose summed RSS is read at the hold point of the data cases.

rss: prints the summed "RSS_KB PSS_KB" of PID and its descendants now (the peak sampler is
bench/compare/rss_peak.py).

All waits are bounded: each step (connect, reply, write) by STEP_S seconds, a whole run by
--timeout; connection setup (up to DATA, or up to the second EHLO) runs at most SETUP_AT_ONCE
clients at a time so the listen queue does not overflow. The body is one 64 KiB buffer shared
by every client, written straight from it to the kernel (no per-connection copies).
"""
import argparse
import asyncio
import base64
import collections
import email.utils
import json
import os
import resource
import socket
import ssl
import statistics
import sys
import time

CHUNK = 64 * 1024
LINE = 64            # body lines: 62 octets of text and CRLF; CHUNK is a whole number of them
STEP_S = 120.0       # bound on one connect, reply or write
SETUP_AT_ONCE = 100  # clients setting up at a time
PROBE_EVERY_S = 0.2
PROBE_TIMEOUT_S = 30.0


# ------------------------------------------------------------------ process tree memory
# The same sums bench/compare.sh samples with (bench/compare/rss_peak.py, which hostile.sh
# also runs as the peak sampler).
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare"))
from rss_peak import tree_pss as tree_pss_kb  # noqa: E402
from rss_peak import tree_rss as tree_rss_kb  # noqa: E402


# ------------------------------------------------------------------ SMTP helpers
class Refused(Exception):
    """The server answered a command with another code than expected."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def kind(exc):
    if isinstance(exc, Refused):
        return str(exc.code)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, EOFError):
        return "closed"
    return type(exc).__name__


def parse_line(line):
    if len(line) < 3 or not line[:3].isdigit():
        raise ValueError(f"bad reply line {line[:40]!r}")
    return int(line[:3]), line[3:4] == b"-"


class Plain:
    """An SMTP connection on a non-blocking socket, without transport buffers: writes go
    from the caller's buffer straight to the kernel."""

    def __init__(self, loop):
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.buf = b""

    async def connect(self, host, port):
        async with asyncio.timeout(STEP_S):
            await self.loop.sock_connect(self.sock, (host, port))

    async def reply(self, timeout=STEP_S):
        async with asyncio.timeout(timeout):
            while True:
                while b"\n" not in self.buf:
                    chunk = await self.loop.sock_recv(self.sock, 4096)
                    if not chunk:
                        raise EOFError
                    self.buf += chunk
                    if len(self.buf) > 65536:
                        raise ValueError("reply line too long")
                line, _, self.buf = self.buf.partition(b"\n")
                code, more = parse_line(line)
                if not more:
                    return code

    async def send(self, data):
        async with asyncio.timeout(STEP_S):
            await self.loop.sock_sendall(self.sock, data)

    async def command(self, line, expect):
        await self.send(line + b"\r\n")
        code = await self.reply()
        if code != expect:
            raise Refused(code)

    def peek(self):
        """What the server did while we were idle: None (nothing, still open), "closed" or
        the code it sent."""
        try:
            data = self.sock.recv(512, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            return type(e).__name__
        if not data:
            return "closed"
        try:
            return str(parse_line((self.buf + data).split(b"\n", 1)[0])[0])
        except ValueError:
            return "data"

    def close(self):
        self.sock.close()


async def stream_reply(reader, timeout=STEP_S):
    """One reply from an asyncio stream: (code, [text of each line])."""
    lines = []
    async with asyncio.timeout(timeout):
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise EOFError
            code, more = parse_line(line)
            lines.append(line[4:].strip().upper())
            if not more:
                return code, lines


async def stream_command(reader, writer, line, expect):
    writer.write(line + b"\r\n")
    code, lines = await stream_reply(reader)
    if code != expect:
        raise Refused(code)
    return lines


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
        except (ValueError, OSError) as e:
            sys.exit(f"hostile.py: cannot raise the open-files limit to {need} "
                     f"(now {soft}, hard {hard}): {e}")


def ms(seconds):
    return round(seconds * 1000, 1)


def counts(counter):
    return " ".join(f"{k}:{v}" for k, v in sorted(counter.items())) or "none"


# ------------------------------------------------------------------ data-open, data-complete
async def run_data(a, complete):
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = started + a.timeout
    body = memoryview((b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                       + b"\r\n") * (CHUNK // LINE))
    assert len(body) == CHUNK
    end_of_data = b".\r\n" if a.size % LINE == 0 else b"\r\n.\r\n"
    date = email.utils.formatdate().encode()
    setup = asyncio.Semaphore(SETUP_AT_ONCE)
    done = asyncio.Event()
    st = {"in_data": 0, "bodies_sent": 0, "bytes_sent": 0, "finished": 0}
    failed = collections.Counter()   # "stage:what" -> clients
    codes = collections.Counter()    # final reply codes (data-complete)
    conns = []
    sent_ok = []                     # connections whose body (and reply) went through
    stages = {}                      # client -> its stage, while it is not finished

    def finish(i):
        del stages[i]
        st["finished"] += 1
        if st["finished"] == a.clients:
            done.set()

    async def client(i):
        c = Plain(loop)
        conns.append(c)
        stage = stages[i] = "connect"
        try:
            async with setup:
                await c.connect(a.host, a.port)
                stage = stages[i] = "greeting"
                code = await c.reply()
                if code != 220:
                    raise Refused(code)
                stage = stages[i] = "ehlo"
                await c.command(b"EHLO client%d.bench.test" % i, 250)
                stage = stages[i] = "mail"
                await c.command(b"MAIL FROM:<sender%d@client.bench.test>" % i, 250)
                stage = stages[i] = "rcpt"
                await c.command(b"RCPT TO:<user%d@%s>" % (i, a.domain.encode()), 250)
                stage = stages[i] = "data"
                await c.command(b"DATA", 354)
            st["in_data"] += 1
            stage = stages[i] = "body"
            await c.send(b"From: <sender%d@client.bench.test>\r\nTo: <user%d@%s>\r\n"
                         b"Subject: hostile %d\r\nDate: %s\r\n"
                         b"Message-ID: <hostile.%d.%d@client.bench.test>\r\n\r\n"
                         % (i, i, a.domain.encode(), i, date, os.getpid(), i))
            left = a.size
            while left > 0:
                n = min(left, CHUNK)
                await c.send(body if n == CHUNK else body[:n])
                left -= n
                st["bytes_sent"] += n
            st["bodies_sent"] += 1
            if complete:
                stage = stages[i] = "end of data"
                await c.send(end_of_data)
                # The server may make completed messages take turns: up to the deadline.
                code = await c.reply(max(1.0, deadline - time.monotonic()))
                codes[code] += 1
                if code != 250:
                    return
            sent_ok.append(c)
        except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
            what = kind(e)
            if stage in ("body", "end of data") and not isinstance(e, (Refused, TimeoutError)):
                # The server may have answered (552, 421...) before closing: read it if so.
                try:
                    what = str(await c.reply(1.0))
                except Exception:  # noqa: BLE001
                    pass
            failed[f"{stage}:{what}"] += 1
        finally:
            finish(i)

    tasks = [asyncio.create_task(client(i)) for i in range(a.clients)]
    timed_out = False
    try:
        async with asyncio.timeout(a.timeout):
            await done.wait()
    except TimeoutError:
        timed_out = True
    t_all = time.monotonic() - started
    # Clients still at work when the run timed out, by stage.
    unfinished = collections.Counter(stages.values())
    hold_rss_kb = tree_rss_kb(a.pid) if a.pid else None
    # Hold everything open a little longer (the sampler reads every 100 ms), then look at
    # what the server did to the connections meanwhile.
    await asyncio.sleep(a.hold)
    during_hold = collections.Counter()
    for c in sent_ok:
        what = c.peek()
        if what is not None:
            during_hold[what] += 1
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        c.close()

    mib = st["bytes_sent"] / 2**20
    out = {
        "case": "data-complete" if complete else "data-open",
        "clients": a.clients, "size": a.size,
        "reached_data": st["in_data"], "bodies_sent": st["bodies_sent"],
        "body_mib_sent": round(mib, 1), "send_s": round(t_all, 1),
        "send_mib_per_s": round(mib / t_all, 1) if t_all > 0 else None,
        "failed": dict(failed), "unfinished": dict(unfinished), "server_during_hold": dict(during_hold),
        "held_open": len(sent_ok) - sum(during_hold.values()),
        "hold_rss_mib": round(hold_rss_kb / 1024, 1) if hold_rss_kb is not None else None,
        "timed_out": timed_out,
    }
    if complete:
        out["codes"] = {str(k): v for k, v in codes.items()}
    s = (f"{st['in_data']}/{a.clients} in DATA, {st['bodies_sent']} bodies sent "
         f"({mib:.0f} MiB in {t_all:.1f} s)")
    if complete:
        s += f"; end-of-data replies {counts(codes)}"
    s += f"; failed {counts(failed)}"
    s += f"; held open {out['held_open']}"
    if during_hold:
        s += f", server closed/answered during hold {counts(during_hold)}"
    if hold_rss_kb is not None:
        s += f"; RSS at hold {hold_rss_kb / 1024:.0f} MiB"
    if timed_out:
        s += f"; TIMED OUT after {a.timeout:.0f} s, unfinished {counts(unfinished)}"
    return out, s


# ------------------------------------------------------------------ auth-flood
async def probe_once(a, deadline):
    t0 = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(min(PROBE_TIMEOUT_S, max(2.0, deadline - t0))):
            reader, writer = await asyncio.open_connection(a.host, a.port)
            code, _ = await stream_reply(reader)
            if code != 220:
                raise Refused(code)
            await stream_command(reader, writer, b"EHLO probe.bench.test", 250)
            dt = time.monotonic() - t0
            writer.write(b"QUIT\r\n")
            return dt
    finally:
        if writer is not None:
            writer.close()


async def run_auth(a):
    started = time.monotonic()
    deadline = started + a.timeout
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    setup = asyncio.Semaphore(SETUP_AT_ONCE)
    arrived, go, replied = asyncio.Event(), asyncio.Event(), asyncio.Event()
    st = {"arrived": 0, "ready": 0, "replied": 0, "last_reply": None}
    setup_failed = collections.Counter()
    codes = collections.Counter()
    errors = collections.Counter()
    writers = []
    stages = {}                      # client -> its setup stage, until it arrives

    def arrive(i):
        del stages[i]
        st["arrived"] += 1
        if st["arrived"] == a.clients:
            arrived.set()

    def reply_done():
        st["replied"] += 1
        if st["replied"] == st["ready"]:
            replied.set()

    async def client(i):
        stage = stages[i] = "connect"
        try:
            async with setup:
                async with asyncio.timeout(STEP_S):
                    reader, writer = await asyncio.open_connection(a.host, a.port)
                writers.append(writer)
                stage = stages[i] = "greeting"
                code, _ = await stream_reply(reader)
                if code != 220:
                    raise Refused(code)
                stage = stages[i] = "ehlo"
                ext = await stream_command(reader, writer, b"EHLO flood%d.bench.test" % i, 250)
                if b"STARTTLS" not in ext:
                    raise Refused("no-STARTTLS")
                stage = stages[i] = "starttls"
                await stream_command(reader, writer, b"STARTTLS", 220)
                stage = stages[i] = "tls"
                async with asyncio.timeout(STEP_S):
                    await writer.start_tls(ctx)
                stage = stages[i] = "ehlo-tls"
                ext = await stream_command(reader, writer, b"EHLO flood%d.bench.test" % i, 250)
                if not any(line.startswith(b"AUTH") and b"PLAIN" in line for line in ext):
                    raise Refused("no-AUTH-PLAIN")
        except Exception as e:  # noqa: BLE001
            setup_failed[f"{stage}:{kind(e)}"] += 1
            arrive(i)
            return
        st["ready"] += 1
        arrive(i)
        await go.wait()
        try:
            creds = base64.b64encode(b"\0" + a.user.encode() + b"\0wrong-password-%d" % i)
            writer.write(b"AUTH PLAIN " + creds + b"\r\n")
            code, _ = await stream_reply(reader, max(1.0, deadline - time.monotonic()))
            codes[code] += 1
        except Exception as e:  # noqa: BLE001
            errors[kind(e)] += 1
        st["last_reply"] = time.monotonic()
        reply_done()

    async def probe_loop(stop, latencies, failures):
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                latencies.append(await probe_once(a, deadline))
            except Exception as e:  # noqa: BLE001
                failures[kind(e)] += 1
                latencies.append(time.monotonic() - t0)
            try:
                async with asyncio.timeout(max(0.0, t0 + PROBE_EVERY_S - time.monotonic())):
                    await stop.wait()
            except TimeoutError:
                pass

    tasks = [asyncio.create_task(client(i)) for i in range(a.clients)]
    timed_out = False
    try:
        async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
            await arrived.wait()
    except TimeoutError:
        timed_out = True
    setup_s = time.monotonic() - started
    for stage, n in collections.Counter(stages.values()).items():
        setup_failed[f"{stage}:unfinished"] += n

    # The listener at rest, with every flood connection open and idle.
    idle, idle_failures = [], collections.Counter()
    for _ in range(3):
        try:
            idle.append(await probe_once(a, deadline))
        except Exception as e:  # noqa: BLE001
            idle_failures[kind(e)] += 1

    stop = asyncio.Event()
    latencies, probe_failures = [], collections.Counter()
    prober = asyncio.create_task(probe_loop(stop, latencies, probe_failures))
    await asyncio.sleep(PROBE_EVERY_S)  # one probe before the flood
    t_go = time.monotonic()
    if st["ready"] == 0:
        replied.set()
    go.set()
    try:
        async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
            await replied.wait()
    except TimeoutError:
        timed_out = True
    flood_s = (st["last_reply"] or time.monotonic()) - t_go
    await asyncio.sleep(PROBE_EVERY_S)  # one probe after the last reply
    stop.set()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S + 1):
            await prober
    except TimeoutError:
        prober.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in writers:
        try:
            w.write(b"QUIT\r\n")
        except Exception:  # noqa: BLE001
            pass
        w.close()
    await asyncio.sleep(0.5)

    p_max = max(latencies) if latencies else None
    p50 = statistics.median(latencies) if latencies else None
    out = {
        "case": "auth-flood", "clients": a.clients, "ready": st["ready"],
        "setup_s": round(setup_s, 1), "setup_failed": dict(setup_failed),
        "codes": {str(k): v for k, v in codes.items()}, "errors": dict(errors),
        "replies_s": round(flood_s, 2),
        "idle_ehlo_ms": ms(statistics.median(idle)) if idle else None,
        "idle_probe_failures": dict(idle_failures),
        "ehlo_max_ms": ms(p_max) if p_max is not None else None,
        "ehlo_p50_ms": ms(p50) if p50 is not None else None,
        "probes": len(latencies), "probe_failures": dict(probe_failures),
        "timed_out": timed_out,
    }
    s = (f"{st['ready']}/{a.clients} ready (setup {setup_s:.1f} s"
         f"{', failed ' + counts(setup_failed) if setup_failed else ''}); "
         f"AUTH replies {counts(codes)}, errors {counts(errors)}, all in {flood_s:.2f} s; "
         f"EHLO idle {out['idle_ehlo_ms']} ms{' (failed ' + counts(idle_failures) + ')' if idle_failures else ''}, under flood max {out['ehlo_max_ms']} ms "
         f"(p50 {out['ehlo_p50_ms']} ms, {len(latencies)} probes, "
         f"failed {counts(probe_failures)})")
    if timed_out:
        s += f"; TIMED OUT after {a.timeout:.0f} s"
    return out, s


# ------------------------------------------------------------------ main
def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "rss":
        if len(sys.argv) != 3:
            sys.exit("usage: hostile.py rss PID")
        pid = int(sys.argv[2])
        print(tree_rss_kb(pid), tree_pss_kb(pid))
        return

    p = argparse.ArgumentParser(description="Hostile SMTP clients for bench/hostile.sh.")
    p.add_argument("case", choices=["data-open", "data-complete", "auth-flood"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--size", type=int, default=25 * 2**20, help="body octets (data cases)")
    p.add_argument("--domain", default="relay.test", help="recipient domain (data cases)")
    p.add_argument("--user", default="alice", help="AUTH user (auth-flood)")
    p.add_argument("--timeout", type=float, default=3600, help="bound on the whole run, s")
    p.add_argument("--hold", type=float, default=2.0,
                   help="seconds all connections stay open after the last body (data cases)")
    p.add_argument("--pid", type=int, help="server PID: RSS of its tree at the hold point")
    p.add_argument("--json", help="write every number to this file")
    a = p.parse_args()
    if a.clients < 1 or a.size < 1 or a.timeout <= 0:
        p.error("--clients, --size and --timeout must be positive")

    raise_nofile(a.clients + 256)
    if a.case == "auth-flood":
        out, summary = asyncio.run(run_auth(a))
    else:
        out, summary = asyncio.run(run_data(a, a.case == "data-complete"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)
            f.write("\n")
    print(summary, flush=True)
    sys.exit(2 if out.get("timed_out") else 0)


if __name__ == "__main__":
    main()
