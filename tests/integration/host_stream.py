#!/usr/bin/env python3
"""A host process for the failure tests: connects through chimneyd's control
socket to a Linux listener and streams the test stream to it for ever, with
8 sends of 1 MiB in flight. Prints 'streaming' once data flows, so the test
can kill it (SIGKILL) in the middle of a transfer.

  host_stream.py CONTROL_SOCKET PEER_IP PORT
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, HERE)

from chimney.client import Target  # noqa: E402
import peer  # noqa: E402

MiB = 1 << 20


def main():
    sock, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with Target(sock) as t:
        conn = t.connect(ip, port, initial_rcv_wnd=4 * MiB)
        pending, sent, told = [], 0, False
        while True:
            while len(pending) < 8:
                pending.append(conn.send(peer.stream(MiB, sent)))
                sent += MiB
            pending.pop(0).wait(60)
            if not told:
                print("streaming", flush=True)
                told = True


if __name__ == "__main__":
    main()
