-- Pattern 3: garbage frames (bad checksums, truncated headers, bad options).
--
-- pktgen's own builders only make well-formed headers, so the frames come
-- from a pcap file written by garbage_pcap.py (one frame per drop reason of
-- lib/net/packet.cpp, addressed to chimneyd) that pktgen loaded at start-up
-- with `-s 0:tests/pktgen/garbage.pcap`; this script replays it in a loop.
-- With PG_RND=1 it instead sends the in-window stream of inwindow.lua's
-- settings with random bits written over the TCP checksum after pktgen
-- computed it (pktgen's rnd feature does not fix checksums up), so about
-- every packet is a tcp_bad_checksum drop.
--
--   pktgen ... -- -P -m "[1:2].0" -s 0:tests/pktgen/garbage.pcap -f tests/pktgen/garbage.lua
--   env: CHIMNEY_PKTGEN_VALUES, PG_PORT (0), PG_SECONDS (10), PG_RATE (100), PG_RND (0)
-- Written for pktgen-DPDK 23.03.x; not run here (README.md).

local dir = os.getenv("CHIMNEY_PKTGEN_DIR") or "tests/pktgen"
package.path = package.path .. ";" .. dir .. "/?.lua"
local C = require "pg_common"

local p = C.port
pktgen.stop(p)
pktgen.set(p, "rate", tonumber(os.getenv("PG_RATE") or "100"))
pktgen.set(p, "count", 0)

if os.getenv("PG_RND") == "1" then
    local v = C.values()
    pktgen.pcap(p, "off")
    pktgen.set_range(p, "off")
    C.single_tcp(p, v, 64, v.sport, v.dport)
    -- TCP checksum: Ethernet 14 + IPv4 20 + 16 = byte 50; the 32-bit field
    -- there covers the checksum and the urgent pointer: the first 16 bits random.
    pktgen.rnd(p, 0, 50, "XXXXXXXXXXXXXXXX................")
    C.cli({ string.format("enable %s random", p) })
    printf("random TCP checksums on single-mode packets to %s:%d\n", v.chimney_ip, v.dport)
else
    pktgen.pcap(p, "on")
    printf("replaying the pcap loaded with -s %s:<file> (garbage_pcap.py lists the frames)\n", p)
end

C.run(p, C.seconds())
