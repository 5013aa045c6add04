// A DPDK port as chimneyd uses it: one RX and one TX queue per worker (the
// slow path transmits through a worker), a mempool, and the offloads it has.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "dataplane/config.hpp"
#include "dataplane/counters.hpp"
#include "dataplane/rss.hpp"
#include "net/build.hpp"
#include "net/impair.hpp"

namespace chimney::dataplane {

struct Port {
  uint16_t id = 0;           // DPDK port id
  size_t index = 0;          // position in the configuration
  std::string device;        // the driver's name for it (net_tap0, 0000:01:00.0, ...)
  PortConfig config;
  rte_ether_addr mac{};
  net::TxChecksumCaps tx_caps;
  bool rx_checksum = false;  // the port verifies IPv4/TCP checksums on receive
  bool tso = false;          // the port segments TCP (RTE_ETH_TX_OFFLOAD_TCP_TSO)
  RssState rss;              // hardware RSS as programmed (rss.hpp)
  rte_mempool* pool = nullptr;
  bool started = false;
};

// Configures and starts the port named by `device`; throws std::runtime_error
// with a message fit for the log when the device is missing or refuses.
Port open_port(size_t index, const std::string& device, const PortConfig& pc, const Config& cfg,
               unsigned workers);
// Stops and closes the port (a TAP interface disappears here).
void close_port(Port& port);

// Packets staged for one TX queue, sent in bursts.
class TxQueue {
 public:
  static constexpr uint16_t kCapacity = 64;

  void bind(uint16_t port_id, uint16_t queue_id, Counters* counters) {
    port_id_ = port_id;
    queue_id_ = queue_id;
    counters_ = counters;
  }
  // Frames pass this stage on their way out (faults on purpose; none by default).
  void impair(net::Impairment* stage) { impair_ = stage; }
  void push(rte_mbuf* m) {
    pkts_[n_++] = m;
    if (n_ == kCapacity) flush();
  }
  // Sends what is staged (and what the impairment stage lets out now); what
  // the queue refuses is freed and counted (tx_full).
  void flush();

 private:
  std::array<rte_mbuf*, kCapacity> pkts_{};
  uint16_t n_ = 0;
  uint16_t port_id_ = 0;
  uint16_t queue_id_ = 0;
  Counters* counters_ = nullptr;
  net::Impairment* impair_ = nullptr;
};

}  // namespace chimney::dataplane
