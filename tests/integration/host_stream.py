#!/usr/bin/env python3
"""A host process for the failure tests: connects through chimneyd's control
socket to a Linux listener and streams the test stream to it, with 8 sends
of 1 MiB in flight. Prints 'streaming' once data flows, so the test can kill
it (SIGKILL) in the middle of a transfer.

  host_stream.py CONTROL_SOCKET PEER_IP PORT
      streams for ever.

  host_stream.py CONTROL_SOCKET PEER_IP PORT --region-fd FD PHASE1_BYTES
      a host whose successor can take its session over (Target.attach): its
      region is the memfd FD (which the test keeps), and it keeps 4 receives of
      64 KiB posted. It streams PHASE1_BYTES (every send SUCCESS with all its
      bytes) and prints {"phase1": bytes}; after a line on stdin (the test has
      stopped the peer reading) it posts 8 MiB more and, once no send
      completed for 1 s, prints {"state": Target.resume_state(), "posted":
      bytes of the stream posted} and waits to be killed.
"""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, HERE)

from chimney.client import Target  # noqa: E402
import peer  # noqa: E402

MiB = 1 << 20


def stream_to(conn, sent, until=None, quiet=None, on_first=None):
    """Keeps 8 sends of the test stream in flight from offset `sent` until
    offset `until` (None: for ever) and returns the offset posted. `quiet`: also
    returns once no send completed for that many seconds (what is in flight
    stays outstanding). Every completion must be SUCCESS with all its bytes."""
    pending = []
    while True:
        while len(pending) < 8 and (until is None or sent < until):
            n = MiB if until is None else min(MiB, until - sent)
            pending.append((conn.send(peer.stream(n, sent)), n))
            sent += n
        if not pending:
            return sent
        try:
            c = pending[0][0].wait(60 if quiet is None else quiet)
        except TimeoutError:
            if quiet is None:
                raise
            return sent
        req, n = pending.pop(0)
        if c.status != "NDIS_STATUS_SUCCESS" or c.bytes_transferred != n:
            raise SystemExit(f"host_stream: {req} completed {c}, expected SUCCESS with {n} bytes")
        if on_first is not None:
            on_first()
            on_first = None


def say(line):
    print(line if isinstance(line, str) else json.dumps(line), flush=True)


def main():
    args = sys.argv[1:]
    region_fd = None
    if "--region-fd" in args:
        i = args.index("--region-fd")
        region_fd = int(args[i + 1])
        del args[i:i + 2]
    sock, ip, port = args[0], args[1], int(args[2])
    with Target(sock, region_fd=region_fd) as t:
        conn = t.connect(ip, port, initial_rcv_wnd=4 * MiB)
        if region_fd is None:
            stream_to(conn, 0, on_first=lambda: say("streaming"))
            return
        receives = [conn.post_receive(64 << 10) for _ in range(4)]  # the peer sends nothing yet
        sent = stream_to(conn, 0, until=int(args[3]), on_first=lambda: say("streaming"))
        say({"phase1": sent})
        sys.stdin.readline()
        sent = stream_to(conn, sent, until=sent + 8 * MiB, quiet=1.0)
        if any(r.done() for r in receives):
            raise SystemExit(f"host_stream: a receive completed before the peer sent anything: {receives}")
        say({"state": t.resume_state(), "posted": sent})
        while True:
            time.sleep(60)


if __name__ == "__main__":
    main()
