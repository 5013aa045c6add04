-- Pattern 2: a SYN flood at a chimneyd listener (offload_known.py --listen PORT).
--
-- SYNs to chimneyd's listening port from sources spread over values.lua's
-- syn_src range (198.19.0.0/16 by default: inside 198.18.0.0/15, outside
-- chimneyd's /24, so with gateway=<pktgen's address> on chimneyd's port its
-- SYN-ACKs go to pktgen and need no ARP answer per source) and source ports
-- stepping by a prime over 1024-65535. pktgen builds every packet, so the
-- checksums are right; its rnd bit patterns would make the ports truly random
-- but are applied after the checksum (pktgen-random.c), which would turn the
-- flood into tcp_bad_checksum drops.
--
--   pktgen ... -- -P -m "[1:2].0" -f tests/pktgen/synflood.lua
--   env: CHIMNEY_PKTGEN_VALUES, PG_PORT (0), PG_SECONDS (10), PG_RATE (100)
-- Written for pktgen-DPDK 23.03.x; not run here (README.md).

local dir = os.getenv("CHIMNEY_PKTGEN_DIR") or "tests/pktgen"
package.path = package.path .. ";" .. dir .. "/?.lua"
local C = require "pg_common"

local v = C.values()
local p = C.port
if v.listen_port == 0 then
    error("values.lua has no listener: run offload_known.py with --listen PORT")
end

pktgen.stop(p)
C.single_tcp(p, v, 64)
-- pktgen answers ARP for the peer address (chimneyd's gateway) with input processing on.
pktgen.process(p, "on")
pktgen.set(p, "rate", tonumber(os.getenv("PG_RATE") or "100"))
pktgen.set(p, "count", 0)

C.range_to_chimney(p, v, 64)
C.range_fixed_num(p, "dst_port", v.listen_port)

pktgen.range.src_ip(p, "start", v.syn_src_min)
pktgen.range.src_ip(p, "min", v.syn_src_min)
pktgen.range.src_ip(p, "max", v.syn_src_max)
pktgen.range.src_ip(p, "inc", "0.0.0.1")
pktgen.range.src_port(p, "start", 1024)
pktgen.range.src_port(p, "min", 1024)
pktgen.range.src_port(p, "max", 65535)
pktgen.range.src_port(p, "inc", 7919)

-- A SYN alone; the ISN steps so that no two SYNs of a 4-tuple look alike.
C.cli({
    string.format("range %s tcp flag clr all", p),
    string.format("range %s tcp flag set syn", p),
    string.format("range %s tcp seq start 1000", p),
    string.format("range %s tcp seq min 0", p),
    string.format("range %s tcp seq max 4294967295", p),
    string.format("range %s tcp seq inc 104729", p),
    string.format("range %s tcp ack start 0", p),
    string.format("range %s tcp ack min 0", p),
    string.format("range %s tcp ack max 0", p),
    string.format("range %s tcp ack inc 0", p),
})

pktgen.set_range(p, "on")
printf("SYN flood: %s-%s ports 1024-65535 -> %s:%d, 64-byte frames\n",
       v.syn_src_min, v.syn_src_max, v.chimney_ip, v.listen_port)
C.run(p, C.seconds())
