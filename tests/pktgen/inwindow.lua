-- Pattern 1: line-rate in-window data segments at an offloaded connection.
--
-- offload_known.py offloaded the connection with known sequence numbers and
-- wrote values.lua; this script sends its TCP segment stream: pktgen's range
-- mode, every field fixed except the sequence number, which advances by the
-- payload per packet over the whole 32-bit space (min 0, max 2^32-1: it wraps
-- as TCP's does); the ACK stays at chimneyd's snd.nxt; flags ACK only; both
-- checksums computed by pktgen for every packet it builds.
--
--   pktgen ... -- -P -m "[1:2].0" -f tests/pktgen/inwindow.lua
--   env: CHIMNEY_PKTGEN_VALUES (values.lua), PG_PORT (0), PG_SECONDS (10; 0: run until 'stop 0'),
--        PG_RATE (percent of the link, 100)
-- Written for pktgen-DPDK 23.03.x; not run here (README.md).

local dir = os.getenv("CHIMNEY_PKTGEN_DIR") or "tests/pktgen"
package.path = package.path .. ";" .. dir .. "/?.lua"
local C = require "pg_common"

local v = C.values()
local p = C.port

pktgen.stop(p)
C.single_tcp(p, v, v.pkt_size, v.sport, v.dport)
pktgen.set(p, "rate", tonumber(os.getenv("PG_RATE") or "100"))
pktgen.set(p, "count", 0)

C.range_to_chimney(p, v, v.pkt_size)
C.range_fixed_ip(p, "src_ip", v.peer_ip)
C.range_fixed_num(p, "src_port", v.sport)
C.range_fixed_num(p, "dst_port", v.dport)

-- TCP fields: only the CLI sets them in range mode.
C.cli({
    string.format("range %s tcp flag clr all", p),
    string.format("range %s tcp flag set ack", p),
    string.format("range %s tcp seq start %d", p, v.seq_start),
    string.format("range %s tcp seq min 0", p),
    string.format("range %s tcp seq max 4294967295", p),
    string.format("range %s tcp seq inc %d", p, v.seq_inc),
    string.format("range %s tcp ack start %d", p, v.ack),
    string.format("range %s tcp ack min 0", p),
    string.format("range %s tcp ack max 4294967295", p),
    string.format("range %s tcp ack inc 0", p),
})

pktgen.set_range(p, "on")

printf("in-window stream: %s:%d -> %s:%d, seq from 0x%08x by %d (rcv.nxt 0x%08x), ack 0x%08x, %d-byte frames\n",
       v.peer_ip, v.sport, v.chimney_ip, v.dport, v.seq_start, v.seq_inc, v.rcv_nxt, v.ack, v.pkt_size)
printf("check the range page ('page range': tcp.seq/tcp.ack/tcp.flags) before trusting figures\n")

C.run(p, C.seconds())
