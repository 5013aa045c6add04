#include "dataplane/slowpath.hpp"

#include "dataplane/handshake.hpp"

#include <rte_arp.h>
#include <rte_cycles.h>
#include <rte_ip.h>
#include <rte_random.h>
#include <rte_tcp.h>

#include "net/packet.hpp"
#include "net/tcp_options.hpp"

#include "net/build.hpp"

namespace chimney::dataplane {

using net::DropReason;
using net::FrameKind;
using net::Ipv4Addr;

SlowPath::SlowPath(Dataplane& dp) : dp_(dp) {
  const uint64_t hz = rte_get_tsc_hz();
  for (size_t p = 0; p < dp_.ports.size(); ++p) {
    auto link = std::make_unique<Link>();
    link->sp = this;
    link->port = p;
    NeighbourTable::Params params;
    params.name = "neigh_p" + std::to_string(p);
    params.entries = dp_.cfg.neighbour_entries;
    params.reachable_ticks = hz * dp_.cfg.neighbour_reachable_s;
    params.retry_ticks = hz;  // RFC 1122 §2.3.2.1: at most one request a second
    params.socket_id = SOCKET_ID_ANY;
    link->table = std::make_unique<NeighbourTable>(params);
    links_.push_back(std::move(link));
  }
}


int SlowPath::port_for(Ipv4Addr ip) const {
  for (size_t p = 0; p < dp_.ports.size(); ++p)
    if (dp_.ports[p].config.address.contains(ip)) return static_cast<int>(p);
  for (size_t p = 0; p < dp_.ports.size(); ++p)
    if (dp_.ports[p].config.gateway) return static_cast<int>(p);
  return -1;
}

void SlowPath::send_tcp(size_t p, const net::TcpFrameSpec& spec, uint64_t now) {
  rte_mbuf* m = net::build_tcp_frame(dp_.ports[p].pool, spec);
  if (m == nullptr) {
    counters(p).drop(DropReason::no_mbuf);
    return;
  }
  send_ipv4(p, m, now);
}

unsigned SlowPath::poll(uint64_t now) {
  std::array<rte_mbuf*, 64> batch{};
  unsigned total = 0;
  for (rte_ring* ring : dp_.to_slowpath) {
    const unsigned n = rte_ring_sc_dequeue_burst(ring, reinterpret_cast<void**>(batch.data()),
                                                 batch.size(), nullptr);
    for (unsigned i = 0; i < n; ++i) handle(batch[i], now);
    total += n;
  }
  return total;
}

void SlowPath::tick(uint64_t now) {
  for (auto& link : links_) link->table->tick(now, *link);
  handshake_tick(now);
}

void SlowPath::handle(rte_mbuf* m, uint64_t now) {
  const size_t p = static_cast<size_t>(dp_.port_index[m->port]);
  // The worker classified the frame already and left the lengths in the mbuf.
  const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
  if (eth->ether_type == rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP)) {
    handle_arp(p, m, now);
    return;
  }
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  if (ip->next_proto_id == IPPROTO_ICMP) {
    net::icmp_echo_reply_in_place(m, net::next_ip_id(ip_id_));
    counters(p).icmp_echo_replies.add();
    send_ipv4(p, m, now);
    return;
  }
  if (handle_handshake(p, m, now)) return;
  // TCP for no connection: RFC 9293 §3.10.7.1 (a RST is never answered).
  if (!net::tcp_rst_for_unknown_in_place(m, net::next_ip_id(ip_id_))) {
    counters(p).drop(DropReason::tcp_rst_no_connection);
    rte_pktmbuf_free(m);
    return;
  }
  counters(p).rst_sent.add();
  send_ipv4(p, m, now);
}

void SlowPath::handle_arp(size_t p, rte_mbuf* m, uint64_t now) {
  const Port& port = dp_.ports[p];
  const auto* arp = rte_pktmbuf_mtod_offset(m, const rte_arp_hdr*, m->l2_len);
  const Ipv4Addr sender = Ipv4Addr::from_be(arp->arp_data.arp_sip);
  const Ipv4Addr target = Ipv4Addr::from_be(arp->arp_data.arp_tip);
  const bool for_us = target == port.config.address.addr;
  // RFC 826 "merge": update the sender when known, add it when the frame is
  // for us. An address-probe sender (0.0.0.0, RFC 5227) is not learnt; nor is
  // a sender off our prefix.
  if (sender.value != 0 && port.config.address.contains(sender))
    links_[p]->table->learn(sender, arp->arp_data.arp_sha, now, for_us, *links_[p]);
  if (!for_us) {
    counters(p).drop(DropReason::arp_not_for_us);
    rte_pktmbuf_free(m);
    return;
  }
  if (arp->arp_opcode != rte_cpu_to_be_16(RTE_ARP_OP_REQUEST)) {
    rte_pktmbuf_free(m);  // a reply to us: merged above
    return;
  }
  net::arp_reply_in_place(m, port.mac, port.config.address.addr);
  counters(p).arp_replies.add();
  transmit(p, m);
}

void SlowPath::send_ipv4(size_t p, rte_mbuf* m, uint64_t now) {
  const Port& port = dp_.ports[p];
  auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  net::finalize_tx_checksums(m, port.tx_caps);
  Ipv4Addr next_hop = Ipv4Addr::from_be(ip->dst_addr);
  if (!port.config.address.contains(next_hop)) {
    if (!port.config.gateway) {
      links_[p]->drop_unresolved(m);  // no route
      return;
    }
    next_hop = *port.config.gateway;
  }
  rte_ether_addr mac{};
  switch (links_[p]->table->resolve(next_hop, now, m, mac, *links_[p])) {
    case NeighbourTable::Resolve::ready:
      eth->dst_addr = mac;
      transmit(p, m);
      break;
    case NeighbourTable::Resolve::queued: break;
    case NeighbourTable::Resolve::refused: links_[p]->drop_unresolved(m); break;
  }
}

void SlowPath::transmit(size_t p, rte_mbuf* m) {
  auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
  eth->src_addr = dp_.ports[p].mac;
  m->port = dp_.ports[p].id;
  // A worker transmits for the slow path: a TCP segment (handshake, RST)
  // through the worker that owns its connection (rss.hpp), so that it
  // leaves in order with what that worker's engine sends and, on a TAP,
  // the kernel's queue choice for the flow follows its owner; the rest
  // (ARP, ICMP) through worker 0.
  unsigned worker = 0;
  if (dp_.placement.workers() > 1 && eth->ether_type == rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4)) {
    const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, sizeof(rte_ether_hdr));
    if (ip->next_proto_id == IPPROTO_TCP) {
      const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, sizeof(rte_ether_hdr) + rte_ipv4_hdr_len(ip));
      worker = dp_.placement.owner(rte_be_to_cpu_32(ip->src_addr), rte_be_to_cpu_32(ip->dst_addr),
                                   rte_be_to_cpu_16(th->src_port), rte_be_to_cpu_16(th->dst_port));
    }
  }
  if (rte_ring_sp_enqueue(dp_.from_slowpath[worker], m) != 0) {
    counters(p).drop(DropReason::tx_full);
    rte_pktmbuf_free(m);
  }
}

void SlowPath::Link::send_request(Ipv4Addr target) {
  const Port& port = sp->dp_.ports[this->port];
  rte_mbuf* m = net::build_arp_request(port.pool, port.mac, port.config.address.addr, target);
  if (m == nullptr) {
    sp->counters(this->port).drop(DropReason::no_mbuf);
    return;
  }
  sp->counters(this->port).arp_requests.add();
  sp->transmit(this->port, m);
}

void SlowPath::Link::transmit(rte_mbuf* m, const rte_ether_addr& dst) {
  rte_pktmbuf_mtod(m, rte_ether_hdr*)->dst_addr = dst;
  sp->transmit(this->port, m);
}

void SlowPath::Link::drop_unresolved(rte_mbuf* m) {
  sp->counters(this->port).drop(DropReason::neighbour_unresolved);
  rte_pktmbuf_free(m);
}

}  // namespace chimney::dataplane
