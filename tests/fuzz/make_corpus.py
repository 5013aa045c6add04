#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_protocol (tests/fuzz/corpus/protocol/): the
hand-written golden vectors of tests/unit/control/golden.hex, one message of
each type the vectors lack, built with the Python codec (clients/python), and a
stream of several messages back to back. Run once; the files are committed.

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from chimney import protocol as p  # noqa: E402

OUT = ROOT / "tests" / "fuzz" / "corpus" / "protocol"


def golden():
    blocks, name = {}, None
    for line in (ROOT / "tests" / "unit" / "control" / "golden.hex").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            name = m.group(1)
            blocks[name] = bytearray()
        else:
            blocks[name] += bytes.fromhex(line)
    return {k: bytes(v) for k, v in blocks.items()}


def extra():
    M, T = p.Message, p.MsgType
    s = p.OffloadState()
    s.delegated.state = p.TcpState.CLOSE_WAIT
    return {
        "unregister_memory": M(T.UNREGISTER_MEMORY, 3, p.UnregisterMemory(1)),
        "listen": M(T.LISTEN, 5, p.Listen(8080, 16, p.CachedState())),
        "terminate": M(T.TERMINATE, 10, p.Terminate(7)),
        "release_listen": M(T.RELEASE_LISTEN, 12, p.ReleaseListen(8080)),
        "registered": M(T.REGISTERED, 2, p.Registered(1)),
        "send_complete": M(T.SEND_COMPLETE, 42, p.Completion(7, 0, 1460)),
        "disconnect_complete": M(T.DISCONNECT_COMPLETE, 7, p.Completion(7, 0xC023000C, 0)),
        "stats_reply": M(T.STATS_REPLY, 11, p.StatsReply('{"sessions": 1, "connections": 2}')),
        "offload_empty": M(T.OFFLOAD, 6, p.Offload(s, b"")),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = golden()
    for name, m in extra().items():
        seeds[name] = p.encode(m)
    seeds["stream"] = seeds["hello"] + seeds["send"] + seeds["event"] + seeds["stats"]
    for name, b in sorted(seeds.items()):
        if name != "stream":
            p.decode(b)  # every single-message seed is valid
        (OUT / name).write_bytes(b)
    print(f"{len(seeds)} seeds in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
