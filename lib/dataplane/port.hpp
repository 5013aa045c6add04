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

// Packets staged for one TX queue, sent in bursts. What the queue refuses
// (its ring is full: the peer or the device is behind) stays staged and goes
// again on the next flush, so a burst larger than the ring is not lost and
// retransmitted. Dropped (counted tx_full): a frame pushed while a whole
// staging area is refused, and what the queue took nothing of for kRefusedForUs (a
// link that is down: frames must not hold the host's send memory forever,
// DESIGN.md buffers).
class TxQueue {
 public:
  static constexpr uint16_t kCapacity = 256;
  static constexpr uint64_t kRefusedForUs = 1000;

  TxQueue() = default;
  TxQueue(TxQueue&& o) noexcept { *this = std::move(o); }
  TxQueue& operator=(TxQueue&& o) noexcept;
  TxQueue(const TxQueue&) = delete;
  TxQueue& operator=(const TxQueue&) = delete;
  ~TxQueue() { discard(); }

  void bind(uint16_t port_id, uint16_t queue_id, Counters* counters) {
    port_id_ = port_id;
    queue_id_ = queue_id;
    counters_ = counters;
  }
  // Frames pass this stage on their way out (faults on purpose; none by default).
  void impair(net::Impairment* stage) { impair_ = stage; }
  void push(rte_mbuf* m) {
    if (n_ == kCapacity) {
      flush();
      if (n_ == kCapacity) return drop(m);  // the queue took nothing of a full staging area
    }
    pkts_[n_++] = m;
  }
  // Sends what is staged (and what the impairment stage lets out now);
  // returns the number of frames the queue refused, which stay staged.
  uint16_t flush();
  // Frees what is staged (counted tx_full): the queue is going away.
  void discard();

 private:
  void drop(rte_mbuf* m);

  std::array<rte_mbuf*, kCapacity> pkts_{};
  uint16_t n_ = 0;
  uint16_t refused_ = 0;  // pkts_[0, refused_): refused once, already past the impairment stage
  uint64_t refused_since_ = 0;  // TSC of the first refusal, or of the last flush since that sent some
  uint16_t port_id_ = 0;
  uint16_t queue_id_ = 0;
  Counters* counters_ = nullptr;
  net::Impairment* impair_ = nullptr;
};

}  // namespace chimney::dataplane
