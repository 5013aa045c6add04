#include <rte_cycles.h>
#include <rte_ether.h>
#include <rte_ip.h>

#include "dataplane/dataplane.hpp"

namespace chimney::dataplane {

using net::DropReason;
using net::FrameKind;

CounterTotals Dataplane::port_totals(size_t port) const {
  CounterTotals t;
  for (size_t s = 0; s < slots(); ++s) t.add(counters[s * ports.size() + port]);
  return t;
}

CounterTotals Dataplane::slot_totals(size_t slot) const {
  CounterTotals t;
  for (size_t p = 0; p < ports.size(); ++p) t.add(counters[slot * ports.size() + p]);
  return t;
}

net::Classified accept_frame(const Port& port, rte_mbuf* m) {
  net::Classified c = net::classify_frame(m);
  if (c.kind == FrameKind::drop) return c;
  const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
  const bool to_us = rte_is_same_ether_addr(&eth->dst_addr, &port.mac);
  if (c.kind == FrameKind::arp) {
    if (!to_us && !rte_is_broadcast_ether_addr(&eth->dst_addr))
      return {FrameKind::drop, DropReason::eth_not_for_us};
    return c;
  }
  if (!to_us) return {FrameKind::drop, DropReason::eth_not_for_us};
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  if (rte_be_to_cpu_32(ip->dst_addr) != port.config.address.addr.value)
    return {FrameKind::drop, DropReason::ip_not_for_us};
  return c;
}

void IdleBackoff::update(unsigned work) {
  if (work != 0) {
    idle_ = 0;
    return;
  }
  if (sleep_us_ == 0) return;
  if (++idle_ >= kSpinsBeforeSleep) rte_delay_us_sleep(sleep_us_);
}

int worker_main(void* arg) {
  auto& ctx = *static_cast<WorkerContext*>(arg);
  Dataplane& dp = *ctx.dp;
  const uint16_t queue = static_cast<uint16_t>(ctx.slot - 1);
  const uint16_t burst = dp.cfg.burst;
  rte_ring* ring = dp.to_slowpath[queue];
  rte_ring* from_slow = dp.from_slowpath[queue];

  std::vector<TxQueue> tx(dp.ports.size());
  for (size_t p = 0; p < dp.ports.size(); ++p) tx[p].bind(dp.ports[p].id, queue, &dp.at(ctx.slot, p));

  std::array<rte_mbuf*, 256> rx{};
  std::array<rte_mbuf*, 256> slow{};
  IdleBackoff idle(dp.cfg.idle_sleep_us);

  while (!dp.stop.load(std::memory_order_relaxed)) {
    unsigned work = 0;
    for (size_t p = 0; p < dp.ports.size(); ++p) {
      const Port& port = dp.ports[p];
      Counters& c = dp.at(ctx.slot, p);
      const uint16_t n = rte_eth_rx_burst(port.id, queue, rx.data(), burst);
      if (n == 0) continue;
      work += n;
      uint64_t bytes = 0;
      unsigned n_slow = 0;
      for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = rx[i];
        bytes += rte_pktmbuf_pkt_len(m);
        const net::Classified k = accept_frame(port, m);
        if (k.kind == FrameKind::drop) {
          c.drop(k.reason);
          rte_pktmbuf_free(m);
          continue;
        }
        // ARP and ICMP belong to the slow path. A TCP segment matches no
        // offloaded connection yet (the engine's 4-tuple lookup goes here),
        // so the slow path answers it as for a closed port.
        slow[n_slow++] = m;
      }
      c.rx_packets.add(n);
      c.rx_bytes.add(bytes);
      if (n_slow != 0) {
        const unsigned queued = rte_ring_sp_enqueue_burst(ring, reinterpret_cast<void**>(slow.data()),
                                                          n_slow, nullptr);
        c.to_slowpath.add(queued);
        for (unsigned i = queued; i < n_slow; ++i) {
          c.drop(DropReason::slowpath_ring_full);
          rte_pktmbuf_free(slow[i]);
        }
      }
      tx[p].flush();
    }
    // Frames the slow path built go out on this worker's TX queues.
    const unsigned n_out = rte_ring_sc_dequeue_burst(from_slow, reinterpret_cast<void**>(slow.data()),
                                                     burst, nullptr);
    for (unsigned i = 0; i < n_out; ++i) tx[dp.port_index[slow[i]->port]].push(slow[i]);
    if (n_out != 0) {
      for (auto& q : tx) q.flush();
      work += n_out;
    }
    idle.update(work);
  }
  for (auto& q : tx) q.flush();
  return 0;
}

}  // namespace chimney::dataplane
