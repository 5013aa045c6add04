-- pg_common.lua: shared by inwindow.lua, synflood.lua and garbage.lua (tests/pktgen/README.md).
-- Written against the Lua API of pktgen-DPDK 23.03.x (app/lpktgenlib.c: the
-- pktgen.* and pktgen.range.* functions) and, for what that API does not
-- cover (TCP flags, sequence and acknowledgement numbers in range mode), the
-- CLI's range commands run from a small command file with pktgen.load().
-- Not run here: pktgen was not available where these were written.

local M = {}

-- pktgen's example scripts get printf from its test/Pktgen.lua; define it
-- here so that the scripts run from any directory.
printf = printf or function(...) io.write(string.format(...)) end

M.dir = os.getenv("CHIMNEY_PKTGEN_DIR") or "tests/pktgen"

M.port = os.getenv("PG_PORT") or "0"

-- values.lua, written by offload_known.py.
function M.values()
    local path = os.getenv("CHIMNEY_PKTGEN_VALUES") or (M.dir .. "/values.lua")
    local ok, v = pcall(dofile, path)
    if not ok or type(v) ~= "table" then
        error("cannot read " .. path .. " (run tests/pktgen/offload_known.py first): " .. tostring(v))
    end
    return v
end

-- Runs CLI command lines (pktgen's runtime commands) through a command file.
function M.cli(lines)
    local path = os.tmpname() .. ".pkt"
    local f = assert(io.open(path, "w"))
    for _, line in ipairs(lines) do
        f:write(line, "\n")
    end
    f:close()
    pktgen.load(path)
    os.remove(path)
end

-- Every range field fixed at one value (pktgen's range defaults step the
-- ports and the destination address by one).
function M.range_fixed_ip(port, field, value)
    pktgen.range[field](port, "start", value)
    pktgen.range[field](port, "min", value)
    pktgen.range[field](port, "max", value)
    pktgen.range[field](port, "inc", "0.0.0.0")
end

function M.range_fixed_num(port, field, value)
    pktgen.range[field](port, "start", value)
    pktgen.range[field](port, "min", value)
    pktgen.range[field](port, "max", value)
    pktgen.range[field](port, "inc", 0)
end

-- The single-packet TCP headers from chimney's peer to chimney (values.lua),
-- `size` bytes, ports given (nil: pktgen's own).
function M.single_tcp(port, v, size, sport, dport)
    pktgen.set_type(port, "ipv4")
    pktgen.set_proto(port, "tcp")
    pktgen.set_mac(port, "dst", v.chimney_mac)
    pktgen.set_mac(port, "src", v.peer_mac)
    pktgen.set_ipaddr(port, "dst", v.chimney_ip)
    pktgen.set_ipaddr(port, "src", v.peer_ip .. "/24")
    if sport then pktgen.set(port, "sport", sport) end
    if dport then pktgen.set(port, "dport", dport) end
    pktgen.set(port, "size", size)
end

-- Range mode, TCP, from chimney's peer MAC to chimney: the fields every
-- pattern fixes the same way.
function M.range_to_chimney(port, v, size)
    pktgen.range.ip_proto(port, "tcp")
    pktgen.range.dst_mac(port, "start", v.chimney_mac)
    pktgen.range.src_mac(port, "start", v.peer_mac)
    M.range_fixed_ip(port, "dst_ip", v.chimney_ip)
    M.range_fixed_num(port, "pkt_size", size)
end

-- Sends for `seconds` (0: until stopped from the console), printing what
-- pktgen sent and received once a second.
function M.run(port, seconds)
    pktgen.clr()
    pktgen.start(port)
    if seconds == 0 then
        printf("sending on port %s until 'stop %s'\n", port, port)
        return
    end
    local n = tonumber(port)
    for s = 1, seconds do
        pktgen.delay(1000)
        local st = pktgen.portStats(port, "port")[n]
        local rt = pktgen.portStats(port, "rate")[n]
        printf("%3ds: sent %d pkts (%d pkt/s, %d Mbit/s), received %d pkts\n",
               s, st.opackets, rt.pkts_tx, rt.mbits_tx, st.ipackets)
    end
    pktgen.stop(port)
    pktgen.delay(500)
    local st = pktgen.portStats(port, "port")[n]
    printf("total: sent %d pkts %d bytes, received %d pkts, tx errors %d\n",
           st.opackets, st.obytes, st.ipackets, st.oerrors)
end

function M.seconds()
    return tonumber(os.getenv("PG_SECONDS") or "10")
end

return M
