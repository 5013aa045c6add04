#include "dataplane/stats.hpp"

#include <cstdlib>
#include <mutex>
#include <string>

#include <rte_ethdev.h>
#include <rte_telemetry.h>
#include <spdlog/spdlog.h>

#include "net/addr.hpp"

namespace chimney::dataplane {

namespace {

std::mutex g_mutex;           // telemetry thread vs. start-up and shutdown
Dataplane* g_dp = nullptr;

struct PortView {
  const Port* port;
  CounterTotals totals;
  rte_eth_stats dev{};
};

PortView port_view(const Dataplane& dp, size_t p) {
  PortView v{&dp.ports[p], dp.port_totals(p), {}};
  rte_eth_stats_get(dp.ports[p].id, &v.dev);
  return v;
}

unsigned slot_lcore(const Dataplane& dp, size_t slot) {
  return slot == 0 ? rte_get_main_lcore() : dp.worker_lcores[slot - 1];
}

void add_totals(rte_tel_data* d, const CounterTotals& t) {
  rte_tel_data_add_dict_u64(d, "rx_packets", t.rx_packets);
  rte_tel_data_add_dict_u64(d, "rx_bytes", t.rx_bytes);
  rte_tel_data_add_dict_u64(d, "tx_packets", t.tx_packets);
  rte_tel_data_add_dict_u64(d, "tx_bytes", t.tx_bytes);
  rte_tel_data_add_dict_u64(d, "to_slowpath", t.to_slowpath);
  rte_tel_data_add_dict_u64(d, "steered_out", t.steered_out);
  rte_tel_data_add_dict_u64(d, "steered_in", t.steered_in);
  rte_tel_data_add_dict_u64(d, "arp_replies", t.arp_replies);
  rte_tel_data_add_dict_u64(d, "arp_requests", t.arp_requests);
  rte_tel_data_add_dict_u64(d, "icmp_echo_replies", t.icmp_echo_replies);
  rte_tel_data_add_dict_u64(d, "rst_sent", t.rst_sent);
  rte_tel_data_add_dict_u64(d, "handshake_parked", t.handshake_parked);
  rte_tel_data_add_dict_u64(d, "handshake_parked_delivered", t.handshake_parked_delivered);
  rte_tel_data_add_dict_u64(d, "handshake_parked_dropped", t.handshake_parked_dropped);
  rte_tel_data* drops = rte_tel_data_alloc();
  rte_tel_data_start_dict(drops);
  for (size_t r = 0; r < net::kDropReasonCount; ++r)
    rte_tel_data_add_dict_u64(drops, net::to_string(static_cast<net::DropReason>(r)), t.drops[r]);
  rte_tel_data_add_dict_container(d, "drops", drops, 0);
  for (auto [name, imp] : {std::pair{"impair_rx", &t.impair_rx}, std::pair{"impair_tx", &t.impair_tx}}) {
    if (imp->frames == 0) continue;  // no stage, or nothing through it yet
    rte_tel_data* i = rte_tel_data_alloc();
    rte_tel_data_start_dict(i);
    rte_tel_data_add_dict_u64(i, "frames", imp->frames);
    rte_tel_data_add_dict_u64(i, "lost", imp->lost);
    rte_tel_data_add_dict_u64(i, "corrupted", imp->corrupted);
    rte_tel_data_add_dict_u64(i, "duplicated", imp->duplicated);
    rte_tel_data_add_dict_u64(i, "reordered", imp->reordered);
    rte_tel_data_add_dict_u64(i, "overflow", imp->overflow);
    rte_tel_data_add_dict_container(d, name, i, 0);
  }
}

// Parses a non-negative index parameter; -1 when absent or malformed.
long parse_index(const char* params) {
  if (params == nullptr || *params == '\0') return -1;
  char* end = nullptr;
  long v = std::strtol(params, &end, 10);
  return (*end == '\0' && v >= 0) ? v : -1;
}

int cmd_ports(const char*, const char*, rte_tel_data* d) {
  std::lock_guard lock(g_mutex);
  if (g_dp == nullptr) return -EAGAIN;
  rte_tel_data_start_array(d, RTE_TEL_INT_VAL);
  for (size_t p = 0; p < g_dp->ports.size(); ++p) rte_tel_data_add_array_int(d, static_cast<int>(p));
  return 0;
}

int cmd_port(const char*, const char* params, rte_tel_data* d) {
  std::lock_guard lock(g_mutex);
  if (g_dp == nullptr) return -EAGAIN;
  long p = parse_index(params);
  if (p < 0 || static_cast<size_t>(p) >= g_dp->ports.size()) return -EINVAL;
  PortView v = port_view(*g_dp, static_cast<size_t>(p));
  rte_tel_data_start_dict(d);
  rte_tel_data_add_dict_string(d, "name", v.port->device.c_str());
  rte_tel_data_add_dict_string(d, "kind", to_string(v.port->config.kind));
  rte_tel_data_add_dict_string(d, "mac", net::mac_str(v.port->mac).c_str());
  rte_tel_data_add_dict_string(d, "address", v.port->config.address.str().c_str());
  rte_tel_data_add_dict_int(d, "mtu", v.port->config.mtu);
  rte_tel_data_add_dict_int(d, "dpdk_port_id", v.port->id);
  add_totals(d, v.totals);
  rte_tel_data_add_dict_u64(d, "rx_missed", v.dev.imissed);
  rte_tel_data_add_dict_u64(d, "rx_errors", v.dev.ierrors);
  rte_tel_data_add_dict_u64(d, "rx_nombuf", v.dev.rx_nombuf);
  rte_tel_data_add_dict_u64(d, "tx_errors", v.dev.oerrors);
  return 0;
}

int cmd_engine(const char*, const char* params, rte_tel_data* d) {
  std::lock_guard lock(g_mutex);
  if (g_dp == nullptr) return -EAGAIN;
  long p = parse_index(params);
  if (p < 0 || static_cast<size_t>(p) >= g_dp->ports.size()) return -EINVAL;
  rte_tel_data_start_dict(d);
  for (size_t i = 0; i < tcp::EngineStats::kCount; ++i) {
    uint64_t sum = 0;
    for (size_t s = 1; s < g_dp->slots(); ++s) sum += g_dp->at(s, static_cast<size_t>(p)).engine[i].get();
    rte_tel_data_add_dict_u64(d, tcp::EngineStats::kNames[i], sum);
  }
  return 0;
}

int cmd_lcores(const char*, const char*, rte_tel_data* d) {
  std::lock_guard lock(g_mutex);
  if (g_dp == nullptr) return -EAGAIN;
  rte_tel_data_start_array(d, RTE_TEL_INT_VAL);
  for (size_t s = 0; s < g_dp->slots(); ++s)
    rte_tel_data_add_array_int(d, static_cast<int>(slot_lcore(*g_dp, s)));
  return 0;
}

int cmd_lcore(const char*, const char* params, rte_tel_data* d) {
  std::lock_guard lock(g_mutex);
  if (g_dp == nullptr) return -EAGAIN;
  long lcore = parse_index(params);
  for (size_t s = 0; s < g_dp->slots(); ++s) {
    if (static_cast<long>(slot_lcore(*g_dp, s)) != lcore) continue;
    rte_tel_data_start_dict(d);
    rte_tel_data_add_dict_string(d, "role", s == 0 ? "main (slow path)" : "worker");
    add_totals(d, g_dp->slot_totals(s));
    if (s != 0) {  // this worker's engines (all ports): which connections it owns
      rte_tel_data_add_dict_int(d, "worker", static_cast<int>(s - 1));
      rte_tel_data* e = rte_tel_data_alloc();
      rte_tel_data_start_dict(e);
      for (size_t i = 0; i < tcp::EngineStats::kCount; ++i) {
        uint64_t sum = 0;
        for (size_t p = 0; p < g_dp->ports.size(); ++p) sum += g_dp->at(s, p).engine[i].get();
        rte_tel_data_add_dict_u64(e, tcp::EngineStats::kNames[i], sum);
      }
      rte_tel_data_add_dict_container(d, "engine", e, 0);
    }
    return 0;
  }
  return -EINVAL;
}

int cmd_drops(const char*, const char*, rte_tel_data* d) {
  std::lock_guard lock(g_mutex);
  if (g_dp == nullptr) return -EAGAIN;
  CounterTotals all;
  for (size_t s = 0; s < g_dp->slots(); ++s) {
    CounterTotals t = g_dp->slot_totals(s);
    for (size_t r = 0; r < net::kDropReasonCount; ++r) all.drops[r] += t.drops[r];
  }
  rte_tel_data_start_dict(d);
  for (size_t r = 0; r < net::kDropReasonCount; ++r)
    rte_tel_data_add_dict_u64(d, net::to_string(static_cast<net::DropReason>(r)), all.drops[r]);
  return 0;
}

std::string drops_line(const CounterTotals& t) {
  std::string s;
  for (size_t r = 0; r < net::kDropReasonCount; ++r) {
    if (t.drops[r] == 0) continue;
    s += ' ';
    s += net::to_string(static_cast<net::DropReason>(r));
    s += '=' + std::to_string(t.drops[r]);
  }
  return s.empty() ? " none" : s;
}

}  // namespace

void register_telemetry() {
  rte_telemetry_register_cmd("/chimney/ports", cmd_ports, "Lists port indexes. Takes no parameters");
  rte_telemetry_register_cmd("/chimney/port", cmd_port,
                             "Counters of one port. Parameters: int port index");
  rte_telemetry_register_cmd("/chimney/engine", cmd_engine,
                             "The TCP engines' counters of a port, summed over workers. Parameter: port index");
  rte_telemetry_register_cmd("/chimney/lcores", cmd_lcores,
                             "Lists the lcores (main first). Takes no parameters");
  rte_telemetry_register_cmd("/chimney/lcore", cmd_lcore,
                             "Counters of one lcore (a worker's with its engines' counters). Parameters: int lcore id");
  rte_telemetry_register_cmd("/chimney/drops", cmd_drops,
                             "Dropped frames by reason, all lcores. Takes no parameters");
}

void attach_telemetry(Dataplane* dp) {
  std::lock_guard lock(g_mutex);
  g_dp = dp;
}

void detach_telemetry() {
  std::lock_guard lock(g_mutex);
  g_dp = nullptr;
}

void log_counters(const Dataplane& dp) {
  for (size_t p = 0; p < dp.ports.size(); ++p) {
    PortView v = port_view(dp, p);
    spdlog::info("port {} {} {}: rx {} pkts {} bytes, tx {} pkts {} bytes, to slow path {}, "
                 "arp replies {} requests {}, echo replies {}, rst {}, handshake parked {} delivered {} dropped {}; "
                 "device missed {} errors {} "
                 "nombuf {} tx errors {}; drops:{}",
                 p, v.port->device, v.port->config.address.str(), v.totals.rx_packets,
                 v.totals.rx_bytes, v.totals.tx_packets, v.totals.tx_bytes, v.totals.to_slowpath,
                 v.totals.arp_replies, v.totals.arp_requests, v.totals.icmp_echo_replies,
                 v.totals.rst_sent, v.totals.handshake_parked, v.totals.handshake_parked_delivered,
                 v.totals.handshake_parked_dropped, v.dev.imissed, v.dev.ierrors, v.dev.rx_nombuf, v.dev.oerrors,
                 drops_line(v.totals));
  }
  for (size_t s = 0; s < dp.slots(); ++s) {
    CounterTotals t = dp.slot_totals(s);
    spdlog::info("lcore {} ({}): rx {} pkts {} bytes, tx {} pkts {} bytes, to slow path {}, steered out {} "
                 "in {}; drops:{}",
                 slot_lcore(dp, s), s == 0 ? "main" : "worker", t.rx_packets, t.rx_bytes,
                 t.tx_packets, t.tx_bytes, t.to_slowpath, t.steered_out, t.steered_in, drops_line(t));
  }
}

}  // namespace chimney::dataplane
