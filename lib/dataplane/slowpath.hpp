// The slow path on the main lcore: ARP (RFC 826) with a neighbour table per
// port, ICMP echo (RFC 792), and the RST for segments of no connection
// (RFC 9293 §3.10.7.1). It transmits through a worker (the from_slowpath
// ring), which owns the port's TX queues.
#pragma once

#include <memory>
#include <vector>

#include "dataplane/dataplane.hpp"
#include "dataplane/neighbour.hpp"

namespace chimney::dataplane {

class SlowPath {
 public:
  explicit SlowPath(Dataplane& dp);

  // Handles what the workers queued; returns the number of frames taken.
  unsigned poll(uint64_t now);
  // Neighbour retries and ageing; call a few times a second.
  void tick(uint64_t now);

  // Sends an IPv4 frame (Ethernet header present, source MAC set) to its next
  // hop on `port`, resolving the link address first (RFC 1122 §2.3.2.2:
  // queued while the answer is awaited, dropped and counted if none comes).
  void send_ipv4(size_t port, rte_mbuf* m, uint64_t now);

  const NeighbourTable& neighbours(size_t port) const { return *links_[port]->table; }

 private:
  struct Link : NeighbourTable::Sink {
    SlowPath* sp = nullptr;
    size_t port = 0;
    std::unique_ptr<NeighbourTable> table;
    void send_request(net::Ipv4Addr target) override;
    void transmit(rte_mbuf* m, const rte_ether_addr& dst) override;
    void drop_unresolved(rte_mbuf* m) override;
  };

  void handle(rte_mbuf* m, uint64_t now);
  void handle_arp(size_t port, rte_mbuf* m, uint64_t now);
  void transmit(size_t port, rte_mbuf* m);
  Counters& counters(size_t port) { return dp_.at(0, port); }

  Dataplane& dp_;
  std::vector<std::unique_ptr<Link>> links_;
  uint16_t ip_id_ = 0;
};

}  // namespace chimney::dataplane
