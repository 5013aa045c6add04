#!/usr/bin/env python3
"""Host side of the pktgen benchmarks (tests/pktgen/README.md).

Offloads one connection to chimneyd with fixed, known sequence numbers,
addresses, MACs and ports, so that pktgen (which never reads what chimneyd
sends) can blast in-window data segments at it; then posts receives without
pause so the data is consumed and the window stays open. Optionally keeps a
listener open for the SYN flood.

It prints the values the Lua scripts need and writes them to a Lua file
(--lua-out, default tests/pktgen/values.lua) that inwindow.lua, synflood.lua
and garbage.lua read with dofile().

    sudo PYTHONPATH=clients/python python3 tests/pktgen/offload_known.py \\
        --socket /run/chimney/chimney.sock --file-prefix chimney-pg \\
        --listen 7000

Addresses must lie in 198.18.0.0/15 (RFC 2544 benchmarking space). Standard
library and chimney.client only. Stop it with Ctrl-C: the connection is
terminated (uploaded) and the listener released.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))

from chimney.client import ChimneyError, Target  # noqa: E402

TEST_NETWORK = ipaddress.ip_network("198.18.0.0/15")
MAX_RCV_WINDOW = 16 << 20   # chimneyd's workers accept at most 16 MiB (worker.cpp)
RCV_WSCALE = 9              # 16 MiB >> 9 = 32768 fits the 16-bit window field
ETH_IP_TCP = 14 + 20 + 20   # headers of every segment pktgen sends (no options)
CRC = 4                     # pktgen's sizes count the Ethernet CRC


def test_address(what: str, value: str) -> str:
    a = ipaddress.ip_address(value)
    if a.version != 4 or a not in TEST_NETWORK:
        raise SystemExit(f"{what} {value} is not inside {TEST_NETWORK}")
    return str(a)


def telemetry_port(file_prefix: str, index: int) -> dict:
    from chimney.testing import telemetry_query, telemetry_socket_path
    value = telemetry_query(telemetry_socket_path(file_prefix), f"/chimney/port,{index}")
    if not isinstance(value, dict):
        raise SystemExit(f"telemetry /chimney/port,{index} of file prefix {file_prefix}: {value!r}")
    return value


def lua_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", default="/run/chimney/chimney.sock", help="chimneyd's --control-socket")
    ap.add_argument("--file-prefix", help="chimneyd's EAL --file-prefix: its MAC and address are read "
                                          "from telemetry (/chimney/port,N)")
    ap.add_argument("--port-index", type=int, default=0, help="chimneyd's port (telemetry index)")
    ap.add_argument("--local-ip", help="chimneyd's address (default: from telemetry)")
    ap.add_argument("--local-mac", help="chimneyd's MAC (default: from telemetry)")
    ap.add_argument("--remote-ip", default="198.18.0.1", help="pktgen's address")
    ap.add_argument("--remote-mac", default="02:00:00:00:00:01", help="pktgen's MAC (its memif mac= devarg)")
    ap.add_argument("--local-port", type=int, default=5001, help="chimneyd's side of the connection")
    ap.add_argument("--remote-port", type=int, default=40000, help="pktgen's side of the connection")
    ap.add_argument("--rcv-nxt", type=lambda s: int(s, 0), default=0xF0000000,
                    help="first sequence number chimneyd expects from pktgen (default 0xF0000000: "
                         "wraps past 2^32 after 256 MiB)")
    ap.add_argument("--snd-nxt", type=lambda s: int(s, 0), default=0x01000000,
                    help="chimneyd's next sequence number: the constant ACK pktgen sends")
    ap.add_argument("--payload", type=int, default=1460, help="TCP payload bytes per segment (6-1460)")
    ap.add_argument("--rcv-window", type=int, default=MAX_RCV_WINDOW, help="chimneyd's receive window")
    ap.add_argument("--receive-size", type=int, default=8 << 20, help="bytes per posted receive")
    ap.add_argument("--receives", type=int, default=8, help="receives kept posted")
    ap.add_argument("--listen", type=int, default=0, metavar="PORT",
                    help="also LISTEN on PORT (SYN flood target); 0: no listener")
    ap.add_argument("--backlog", type=int, default=128, help="listener backlog (half-open before SYN cookies)")
    ap.add_argument("--syn-src", default="198.19.0.0/16",
                    help="SYN flood sources (inside 198.18.0.0/15; outside chimneyd's prefix so that its "
                         "SYN-ACKs go to the gateway, pktgen)")
    ap.add_argument("--lua-out", default=os.path.join(HERE, "values.lua"), help="values for the Lua scripts")
    ap.add_argument("--no-offload", action="store_true", help="only the listener (synflood.lua, garbage.lua)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    args = ap.parse_args()

    if not 6 <= args.payload <= 1460:
        raise SystemExit("--payload must be from 6 to 1460 (pktgen frames of 64 to 1518 bytes)")
    if args.rcv_window > MAX_RCV_WINDOW or args.rcv_window < 65536:
        raise SystemExit(f"--rcv-window must be from 65536 to {MAX_RCV_WINDOW}")

    local_ip, local_mac = args.local_ip, args.local_mac
    if args.file_prefix and (local_ip is None or local_mac is None):
        port = telemetry_port(args.file_prefix, args.port_index)
        local_ip = local_ip or str(port["address"]).split("/")[0]
        local_mac = local_mac or port["mac"]
    if local_ip is None or local_mac is None:
        raise SystemExit("give --file-prefix, or --local-ip and --local-mac")
    local_ip = test_address("--local-ip", local_ip)
    remote_ip = test_address("--remote-ip", args.remote_ip)
    syn_src = ipaddress.ip_network(args.syn_src)
    if not syn_src.subnet_of(TEST_NETWORK):
        raise SystemExit(f"--syn-src {syn_src} is not inside {TEST_NETWORK}")

    rcv_nxt = args.rcv_nxt & 0xFFFFFFFF
    snd_nxt = args.snd_nxt & 0xFFFFFFFF
    values = collections.OrderedDict(
        chimney_mac=local_mac, chimney_ip=local_ip,
        peer_mac=args.remote_mac, peer_ip=remote_ip,
        # pktgen's side is the source of every frame it sends.
        sport=args.remote_port, dport=args.local_port,
        payload=args.payload, pkt_size=args.payload + ETH_IP_TCP + CRC,
        rcv_nxt=rcv_nxt,
        # One segment before rcv_nxt: whether pktgen's range sends its start
        # value first or start+inc, the segment at rcv_nxt comes no later than
        # second (a wholly old first segment is only ACKed and dropped).
        seq_start=(rcv_nxt - args.payload) & 0xFFFFFFFF, seq_inc=args.payload,
        ack=snd_nxt, rcv_window=args.rcv_window,
        listen_port=args.listen, backlog=args.backlog,
        syn_src_min=str(syn_src.network_address + 1), syn_src_max=str(syn_src.broadcast_address - 1),
    )

    with open(args.lua_out, "w") as f:
        f.write("-- written by tests/pktgen/offload_known.py; read by the pktgen Lua scripts\n")
        f.write("return {\n")
        for k, v in values.items():
            f.write(f"  {k} = {lua_value(v)},\n")
        f.write("}\n")
    for k, v in values.items():
        print(f"{k}={v:#010x}" if k in ("rcv_nxt", "seq_start", "ack") else f"{k}={v}")
    print(f"lua values: {args.lua_out}", flush=True)

    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    region = max(256 << 20, args.receive_size * (args.receives + 1))
    with Target(args.socket, region_size=region) as t:
        if args.listen:
            t.listen(args.listen, args.backlog)
            print(f"listening on {local_ip}:{args.listen} backlog {args.backlog}", flush=True)
        conn = None
        if not args.no_offload:
            state = {
                "constant": {"local_ip": local_ip, "remote_ip": remote_ip,
                             "local_port": args.local_port, "remote_port": args.remote_port,
                             "remote_mss": 1460, "window_scaling": True, "snd_wscale": 0,
                             "rcv_wscale": RCV_WSCALE, "timestamps": False, "sack": False},
                "cached": {"initial_rcv_wnd": args.rcv_window},
                "delegated": {"state": "ESTABLISHED", "rcv_nxt": rcv_nxt, "rcv_wnd": args.rcv_window,
                              "snd_una": snd_nxt, "snd_nxt": snd_nxt, "snd_max": snd_nxt,
                              "snd_wnd": 8192, "max_snd_wnd": 8192,
                              "snd_wl1": rcv_nxt, "snd_wl2": snd_nxt, "cwnd": 10 * 1460},
                "path": {"local_mac": local_mac, "next_hop_mac": args.remote_mac, "path_mtu": 1500},
            }
            conn = t.offload(state)
            print(f"offloaded {conn}", flush=True)

        posted = collections.deque()
        if conn is not None:
            for _ in range(args.receives):
                posted.append(conn.post_receive(args.receive_size, push=False))
        total = 0
        last_total, last_time = 0, time.monotonic()
        deadline = time.monotonic() + args.seconds if args.seconds else None
        try:
            while not stop and (deadline is None or time.monotonic() < deadline):
                # Listener: take accepted connections (only a real handshake gets here;
                # a SYN flood never completes one) and drop them abortively.
                if args.listen:
                    try:
                        c = t.accept(timeout=0)
                        c.disconnect(graceful=False)
                    except TimeoutError:
                        pass
                if posted:
                    try:
                        done = posted[0].wait(0.2)
                    except TimeoutError:
                        done = None
                    if done is not None:
                        posted.popleft()
                        if not done.ok:
                            print(f"receive completed {done.status}; stopping", flush=True)
                            break
                        total += done.bytes_transferred
                        posted.append(conn.post_receive(args.receive_size, push=False))
                else:
                    time.sleep(0.2)
                now = time.monotonic()
                if now - last_time >= 1.0:
                    rate = (total - last_total) * 8 / (now - last_time) / 1e9
                    print(f"received {total} bytes ({rate:.3f} Gbit/s of completed receives)", flush=True)
                    last_total, last_time = total, now
        finally:
            if conn is not None:
                try:
                    st = conn.terminate(timeout=10)
                    print(f"terminated: rcv_nxt={st['rcv_nxt']:#010x} "
                          f"({(st['rcv_nxt'] - rcv_nxt) & 0xFFFFFFFF} bytes past the start mod 2^32), "
                          f"{len(st['receive_data'])} bytes buffered", flush=True)
                except (ChimneyError, TimeoutError) as e:
                    print(f"terminate: {e}", flush=True)
            if args.listen:
                try:
                    t.release_listen(args.listen)
                except (ChimneyError, TimeoutError) as e:
                    print(f"release_listen: {e}", flush=True)
            try:
                print("stats:", t.stats(), flush=True)
            except (ChimneyError, TimeoutError):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
