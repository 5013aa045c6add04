#include "dataplane/slowpath.hpp"

#include <rte_arp.h>
#include <rte_cycles.h>
#include <rte_ip.h>
#include <rte_random.h>
#include <rte_tcp.h>

#include "net/packet.hpp"
#include "net/tcp_options.hpp"

#include "net/build.hpp"

namespace chimney::dataplane {

namespace {

uint64_t tuple_key(net::Ipv4Addr remote, uint16_t remote_port, uint16_t local_port) {
  return (uint64_t{remote.value} << 32) | (uint64_t{remote_port} << 16) | local_port;
}

// Our window scale: the smallest shift that carries the receive window, at
// least 7 so that the window can grow later (RFC 7323 §2.3, at most 14).
uint8_t our_wscale(uint32_t rcv_wnd) {
  uint8_t s = 7;
  while (s < 14 && (rcv_wnd >> s) > 65535) ++s;
  return s;
}

}  // namespace

struct SlowPath::Handshake {
  enum class Phase : uint8_t { syn_sent, offloading } phase = Phase::syn_sent;
  size_t port = 0;
  net::Ipv4Addr remote_ip;
  uint16_t remote_port = 0;
  uint16_t local_port = 0;
  uint32_t iss = 0;
  uint8_t tries = 0;
  uint64_t next_retry = 0;   // TSC
  uint64_t expires = 0;      // TSC, offloading: when the entry goes
  uint32_t ts_base = 0;
  CachedState cached;
  ConnectDone done;
};

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

SlowPath::~SlowPath() = default;

int SlowPath::port_for(Ipv4Addr ip) const {
  for (size_t p = 0; p < dp_.ports.size(); ++p)
    if (dp_.ports[p].config.address.contains(ip)) return static_cast<int>(p);
  for (size_t p = 0; p < dp_.ports.size(); ++p)
    if (dp_.ports[p].config.gateway) return static_cast<int>(p);
  return -1;
}

Status SlowPath::connect(const ConnectRequest& req, ConnectDone done) {
  if (req.port >= dp_.ports.size() || req.remote_ip.value == 0 || req.remote_port == 0) return Status::invalid_state;
  auto hs = std::make_unique<Handshake>();
  hs->port = req.port;
  hs->remote_ip = req.remote_ip;
  hs->remote_port = req.remote_port;
  hs->local_port = req.local_port;
  if (hs->local_port == 0) {
    // An ephemeral port (RFC 6335 range) not in a handshake to this peer.
    for (int i = 0; i < 16384; ++i) {
      const uint16_t candidate = next_ephemeral_;
      next_ephemeral_ = next_ephemeral_ == 65535 ? 49152 : static_cast<uint16_t>(next_ephemeral_ + 1);
      if (!handshakes_.count(tuple_key(req.remote_ip, req.remote_port, candidate))) {
        hs->local_port = candidate;
        break;
      }
    }
  }
  const uint64_t key = tuple_key(req.remote_ip, req.remote_port, hs->local_port);
  if (hs->local_port == 0 || handshakes_.count(key)) return Status::resources;
  hs->iss = static_cast<uint32_t>(rte_rand());  // RFC 9293 §3.4.1 (RFC 6528 would key a hash)
  hs->ts_base = static_cast<uint32_t>(rte_rand());
  hs->cached = req.cached;
  hs->done = std::move(done);
  Handshake& ref = *hs;
  handshakes_[key] = std::move(hs);
  send_syn(ref, rte_get_tsc_cycles());
  return Status::pending;
}

void SlowPath::send_tcp(size_t p, const net::TcpFrameSpec& spec, uint64_t now) {
  rte_mbuf* m = net::build_tcp_frame(dp_.ports[p].pool, spec);
  if (m == nullptr) {
    counters(p).drop(DropReason::no_mbuf);
    return;
  }
  send_ipv4(p, m, now);
}

void SlowPath::send_syn(Handshake& hs, uint64_t now) {
  const Port& port = dp_.ports[hs.port];
  net::TcpFrameSpec spec;
  spec.src_mac = port.mac;
  spec.src_ip = port.config.address.addr;
  spec.dst_ip = hs.remote_ip;
  spec.src_port = hs.local_port;
  spec.dst_port = hs.remote_port;
  spec.seq = hs.iss;
  spec.flags = RTE_TCP_SYN_FLAG;
  spec.window = static_cast<uint16_t>(hs.cached.initial_rcv_wnd > 65535 ? 65535 : hs.cached.initial_rcv_wnd);
  spec.ttl = hs.cached.ttl;
  spec.tos = hs.cached.tos;
  spec.ip_id = net::next_ip_id(ip_id_);
  spec.opts.has_mss = true;
  spec.opts.mss = static_cast<uint16_t>(port.config.mtu - 40);
  spec.opts.has_wscale = true;
  spec.opts.wscale = our_wscale(hs.cached.initial_rcv_wnd);
  spec.opts.sack_permitted = true;
  spec.opts.has_timestamp = true;
  spec.opts.ts_val = hs.ts_base + static_cast<uint32_t>(now * 1000 / rte_get_tsc_hz());
  send_tcp(hs.port, spec, now);
  // RFC 6298 (2.1): 1 s, doubled per retransmission (§5.5).
  hs.next_retry = now + (rte_get_tsc_hz() << hs.tries);
  ++hs.tries;
}

bool SlowPath::handle_handshake(size_t p, rte_mbuf* m, uint64_t now) {
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
  const Ipv4Addr remote = Ipv4Addr::from_be(ip->src_addr);
  auto it = handshakes_.find(tuple_key(remote, rte_be_to_cpu_16(th->src_port), rte_be_to_cpu_16(th->dst_port)));
  if (it == handshakes_.end() || it->second->port != p) return false;
  Handshake& hs = *it->second;
  const uint8_t flags = th->tcp_flags;
  if (hs.phase == Handshake::Phase::offloading) {
    rte_pktmbuf_free(m);  // the engine takes over in a moment; the peer retransmits
    return true;
  }
  const uint32_t ack = rte_be_to_cpu_32(th->recv_ack);
  // RFC 9293 §3.10.7.3 SYN-SENT: an ACK must acknowledge our SYN.
  if ((flags & RTE_TCP_ACK_FLAG) && ack != hs.iss + 1) {
    if (!(flags & RTE_TCP_RST_FLAG) && net::tcp_rst_for_unknown_in_place(m, net::next_ip_id(ip_id_))) {
      counters(p).rst_sent.add();
      send_ipv4(p, m, now);
    } else {
      rte_pktmbuf_free(m);
    }
    return true;
  }
  if (flags & RTE_TCP_RST_FLAG) {
    rte_pktmbuf_free(m);
    if (flags & RTE_TCP_ACK_FLAG) {  // connection refused
      ConnectDone done = std::move(hs.done);
      handshakes_.erase(it);
      done(Status::request_aborted, nullptr);
    }
    return true;
  }
  if (!(flags & RTE_TCP_SYN_FLAG) || !(flags & RTE_TCP_ACK_FLAG)) {
    rte_pktmbuf_free(m);  // a simultaneous open is not supported: the peer retries
    return true;
  }
  net::TcpOptions opts;
  net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), m->l4_len - sizeof(rte_tcp_hdr), opts);
  const Port& port = dp_.ports[p];
  const uint32_t irs = rte_be_to_cpu_32(th->sent_seq);
  const uint8_t rcv_wscale = our_wscale(hs.cached.initial_rcv_wnd);
  const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);

  OffloadState st;
  st.constant.local_ip = port.config.address.addr.value;
  st.constant.remote_ip = remote.value;
  st.constant.local_port = hs.local_port;
  st.constant.remote_port = hs.remote_port;
  st.constant.remote_mss = opts.has_mss ? opts.mss : 536;  // RFC 9293 §3.7.1 default
  st.constant.window_scaling = opts.has_wscale;
  st.constant.snd_wscale = opts.has_wscale ? (opts.wscale > 14 ? 14 : opts.wscale) : 0;  // RFC 7323 §2.3
  st.constant.rcv_wscale = opts.has_wscale ? rcv_wscale : 0;
  st.constant.timestamps = opts.has_timestamp;
  st.constant.sack = opts.sack_permitted;
  st.cached = hs.cached;
  if (!opts.has_wscale && st.cached.initial_rcv_wnd > 65535) st.cached.initial_rcv_wnd = 65535;
  DelegatedState& d = st.delegated;
  d.state = TcpState::established;
  d.snd_una = d.snd_nxt = d.snd_max = hs.iss + 1;
  d.snd_wnd = rte_be_to_cpu_16(th->rx_win);  // never scaled in a SYN (RFC 7323 §2.2)
  d.max_snd_wnd = d.snd_wnd;
  d.snd_wl1 = irs;
  d.snd_wl2 = hs.iss + 1;
  d.rcv_nxt = irs + 1;
  d.rcv_wnd = st.cached.initial_rcv_wnd;
  d.ts_recent = opts.ts_val;
  // The engine's timestamps go on from the ones of the handshake (RFC 7323 §5.4).
  d.ts_time = hs.ts_base + static_cast<uint32_t>(now * 1000 / rte_get_tsc_hz());
  std::copy(std::begin(port.mac.addr_bytes), std::end(port.mac.addr_bytes), st.path.local_mac.begin());
  std::copy(std::begin(eth->src_addr.addr_bytes), std::end(eth->src_addr.addr_bytes), st.path.next_hop_mac.begin());
  st.path.path_mtu = port.config.mtu;

  // The ACK completing the handshake (RFC 9293 §3.5), window as our SYN said.
  net::TcpFrameSpec spec;
  spec.src_mac = port.mac;
  spec.src_ip = port.config.address.addr;
  spec.dst_ip = remote;
  spec.src_port = hs.local_port;
  spec.dst_port = hs.remote_port;
  spec.seq = hs.iss + 1;
  spec.ack = irs + 1;
  spec.flags = RTE_TCP_ACK_FLAG;
  const uint32_t wnd = st.cached.initial_rcv_wnd >> st.constant.rcv_wscale;
  spec.window = static_cast<uint16_t>(wnd > 65535 ? 65535 : wnd);
  spec.ttl = hs.cached.ttl;
  spec.tos = hs.cached.tos;
  spec.ip_id = net::next_ip_id(ip_id_);
  if (opts.has_timestamp) {
    spec.opts.has_timestamp = true;
    spec.opts.ts_val = hs.ts_base + static_cast<uint32_t>(now * 1000 / rte_get_tsc_hz());
    spec.opts.ts_ecr = opts.ts_val;
  }
  rte_pktmbuf_free(m);
  send_tcp(p, spec, now);
  hs.phase = Handshake::Phase::offloading;
  hs.expires = now + rte_get_tsc_hz();
  ConnectDone done = std::move(hs.done);
  done(Status::success, &st);
  return true;
}

void SlowPath::handshake_tick(uint64_t now) {
  for (auto it = handshakes_.begin(); it != handshakes_.end();) {
    Handshake& hs = *it->second;
    if (hs.phase == Handshake::Phase::offloading) {
      it = now >= hs.expires ? handshakes_.erase(it) : std::next(it);
      continue;
    }
    if (now < hs.next_retry) {
      ++it;
      continue;
    }
    if (hs.tries > 3) {  // SYN and three retransmissions unanswered
      ConnectDone done = std::move(hs.done);
      it = handshakes_.erase(it);
      done(Status::failure, nullptr);
      continue;
    }
    send_syn(hs, now);
    ++it;
  }
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
  // Worker 0 transmits for the slow path (its TX queue on every port).
  if (rte_ring_sp_enqueue(dp_.from_slowpath[0], m) != 0) {
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
