// The slow path's TCP handshakes: active open for hosts without a stack
// (CONNECT), passive open for listeners (LISTEN) with a bounded backlog and
// SYN cookies beyond it (RFC 4987). A completed handshake becomes an
// OffloadState handed to the engine like any host's (DESIGN.md: one code path
// for every offload).
#include <new>

#include <rte_cycles.h>
#include <rte_hash_crc.h>
#include <rte_ip.h>
#include <rte_random.h>
#include <rte_tcp.h>

#include "dataplane/handshake.hpp"
#include "dataplane/offload_ops.hpp"
#include "tcp/engine.hpp"
#include "net/packet.hpp"
#include "net/tcp_options.hpp"

namespace chimney::dataplane {

using net::Ipv4Addr;

namespace {

uint64_t tuple_key(Ipv4Addr remote, uint16_t remote_port, uint16_t local_port) {
  return (uint64_t{remote.value} << 32) | (uint64_t{remote_port} << 16) | local_port;
}

// Our window scale: the smallest shift that carries the receive window, at
// least 7 so that it can grow later (RFC 7323 §2.3, at most 14).
uint8_t our_wscale(uint32_t rcv_wnd) {
  uint8_t s = 7;
  while (s < 14 && (rcv_wnd >> s) > 65535) ++s;
  return s;
}

// SYN cookies (RFC 4987 §3.6): MSS values a cookie can name in 3 bits.
constexpr uint16_t kCookieMss[8] = {216, 536, 1024, 1220, 1360, 1440, 1460, 8960};
constexpr uint32_t kCookiePeriodS = 64;  // the counter t ticks every 64 s

// RFC 6528: F(localip, localport, remoteip, remoteport, secretkey). The
// same keyed hash (CRC, as the cookies: no crypto dependency) also offsets
// our timestamp clock per 4-tuple (RFC 7323 §5.4).
uint32_t tuple_secret_hash(uint32_t local_ip, uint32_t remote_ip, uint16_t local_port, uint16_t remote_port,
                           uint32_t purpose) {
  static const uint64_t secret = rte_rand();
  // Word by word: rte_hash_crc over a uint32_t array reads it as uint64_t,
  // which g++ -O3 reports as a read of uninitialised memory (-Werror).
  uint32_t h = static_cast<uint32_t>(secret >> (purpose * 32));
  for (const uint32_t w : {local_ip, remote_ip, (uint32_t{local_port} << 16) | remote_port, purpose})
    h = rte_hash_crc_4byte(w, h);
  return h;
}

// The segment's text length (the worker left l3_len and l4_len in the mbuf).
uint32_t tcp_payload_len(const rte_mbuf* m) {
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  return uint32_t{rte_be_to_cpu_16(ip->total_length)} - m->l3_len - m->l4_len;
}

uint8_t cookie_mss_index(uint16_t mss) {
  uint8_t i = 0;
  while (i + 1 < 8 && kCookieMss[i + 1] <= mss) ++i;
  return i;
}

}  // namespace

SlowPath::~SlowPath() = default;

net::TcpFrameSpec SlowPath::frame_for(const Handshake& hs) {
  // What every segment of a handshake shares (the MAC is the neighbour's,
  // filled in by send_ipv4).
  const Port& port = dp_.ports[hs.port];
  net::TcpFrameSpec spec;
  spec.src_mac = port.mac;
  spec.src_ip = port.config.address.addr;
  spec.dst_ip = hs.remote_ip;
  spec.src_port = hs.local_port;
  spec.dst_port = hs.remote_port;
  spec.ttl = hs.cached.ttl;
  spec.tos = hs.cached.tos;
  spec.ip_id = net::next_ip_id(ip_id_);
  return spec;
}

uint32_t SlowPath::ts_clock(const Handshake& hs, uint64_t now) const {
  return hs.ts_base + static_cast<uint32_t>(now * 1000 / rte_get_tsc_hz());
}

void SlowPath::choose_iss(Handshake& hs, uint64_t now) const {
  // RFC 6528: ISN = M + F(4-tuple, secret), M a 4 µs clock, and a
  // timestamp clock that runs on from one incarnation of a 4-tuple to the
  // next: a new connection's SYN is then newer than the old one's (RFC 9293
  // §3.4.1), which a peer still in TIME_WAIT checks before taking it (RFC
  // 6191); random values were refused half the time.
  const uint32_t local = dp_.ports[hs.port].config.address.addr.value;
  hs.iss = static_cast<uint32_t>(now / (rte_get_tsc_hz() / 250000 + 1)) +
           tuple_secret_hash(local, hs.remote_ip.value, hs.local_port, hs.remote_port, 0);
  hs.ts_base = tuple_secret_hash(local, hs.remote_ip.value, hs.local_port, hs.remote_port, 1);
}

Status SlowPath::connect(const ConnectRequest& req, ConnectDone done) {
  if (req.port >= dp_.ports.size() || req.remote_ip.value == 0 || req.remote_port == 0) return Status::invalid_state;
  auto hs = std::make_unique<Handshake>();
  hs->port = req.port;
  hs->remote_ip = req.remote_ip;
  hs->remote_port = req.remote_port;
  hs->local_port = req.local_port;
  if (hs->local_port == 0) {
    // An ephemeral port (RFC 6335) in no handshake with this peer and no
    // listener's; with a worker asked for, one whose 4-tuple that worker
    // owns (rss.hpp: 1 in `workers` ports is), else the first free one.
    const unsigned workers = dp_.placement.workers();
    const bool placed = req.worker >= 0 && workers > 1;
    const uint32_t local = dp_.ports[req.port].config.address.addr.value;
    uint16_t first_free = 0;
    for (unsigned i = 0; i < 16384 && (first_free == 0 || i < 64 * workers); ++i) {
      const uint16_t candidate = next_ephemeral_;
      next_ephemeral_ = next_ephemeral_ == 65535 ? 49152 : static_cast<uint16_t>(next_ephemeral_ + 1);
      if (handshakes_.count(tuple_key(req.remote_ip, req.remote_port, candidate)) || listeners_.count(candidate))
        continue;
      if (!placed || dp_.placement.owner(local, req.remote_ip.value, candidate, req.remote_port) ==
                         static_cast<unsigned>(req.worker)) {
        hs->local_port = candidate;
        break;
      }
      if (first_free == 0) first_free = candidate;
    }
    if (hs->local_port == 0) hs->local_port = first_free;
  }
  const uint64_t key = tuple_key(req.remote_ip, req.remote_port, hs->local_port);
  // An entry of an earlier handshake of this 4-tuple that the engine has
  // taken over only passes late segments on for a second; opening the 4-tuple
  // again (after a close: RFC 9293 §3.10.7.4, RFC 6191) replaces it.
  auto earlier = handshakes_.find(key);
  if (earlier != handshakes_.end() && earlier->second->phase == Handshake::Phase::offloading) handshakes_.erase(earlier);
  if (hs->local_port == 0 || handshakes_.count(key)) return Status::resources;
  const uint64_t now = rte_get_tsc_cycles();
  choose_iss(*hs, now);
  hs->cached = req.cached;
  hs->done = std::move(done);
  Handshake& ref = *hs;
  handshakes_[key] = std::move(hs);
  send_syn(ref, now);
  return Status::pending;
}

Status SlowPath::listen(uint16_t local_port, uint16_t backlog, const CachedState& cached, AcceptFn accept) {
  if (local_port == 0 || backlog == 0) return Status::invalid_state;
  if (listeners_.count(local_port)) return Status::invalid_state;  // the port is taken
  if (cookie_secret_ == 0) cookie_secret_ = static_cast<uint32_t>(rte_rand()) | 1;
  auto l = std::make_unique<Listener>();
  l->port = local_port;
  l->backlog = backlog;
  l->cached = cached;
  l->accept = std::move(accept);
  listeners_[local_port] = std::move(l);
  return Status::success;
}

void SlowPath::unlisten(uint16_t local_port) {
  auto it = listeners_.find(local_port);
  if (it == listeners_.end()) return;
  // Half-open connections of this listener go with it.
  for (auto h = handshakes_.begin(); h != handshakes_.end();)
    h = h->second->listener == it->second.get() ? handshakes_.erase(h) : std::next(h);
  listeners_.erase(it);
}

void SlowPath::send_syn(Handshake& hs, uint64_t now) {
  const Port& port = dp_.ports[hs.port];
  net::TcpFrameSpec spec = frame_for(hs);
  spec.seq = hs.iss;
  spec.flags = RTE_TCP_SYN_FLAG;
  spec.window = static_cast<uint16_t>(hs.cached.initial_rcv_wnd > 65535 ? 65535 : hs.cached.initial_rcv_wnd);
  spec.opts.has_mss = true;
  spec.opts.mss = static_cast<uint16_t>(port.config.mtu - 40);
  spec.opts.has_wscale = true;
  spec.opts.wscale = our_wscale(hs.cached.initial_rcv_wnd);
  spec.opts.sack_permitted = true;
  spec.opts.has_timestamp = true;
  spec.opts.ts_val = ts_clock(hs, now);
  send_tcp(hs.port, spec, now);
  ++hs_counters_.syn_sent;
  // RFC 6298 (2.1): 1 s, doubled per retransmission (§5.5).
  hs.next_retry = now + (rte_get_tsc_hz() << hs.tries);
  ++hs.tries;
}

void SlowPath::send_synack(const Handshake& hs, uint32_t ts_val, uint64_t now) {
  // Our options answer the peer's (RFC 7323 §1.3, RFC 2018 §2).
  const Port& port = dp_.ports[hs.port];
  net::TcpFrameSpec spec = frame_for(hs);
  spec.seq = hs.iss;
  spec.ack = hs.irs + 1;
  spec.flags = RTE_TCP_SYN_FLAG | RTE_TCP_ACK_FLAG;
  spec.window = static_cast<uint16_t>(hs.cached.initial_rcv_wnd > 65535 ? 65535 : hs.cached.initial_rcv_wnd);
  spec.opts.has_mss = true;
  spec.opts.mss = static_cast<uint16_t>(port.config.mtu - 40);
  spec.opts.has_wscale = hs.peer.has_wscale;
  spec.opts.wscale = our_wscale(hs.cached.initial_rcv_wnd);
  spec.opts.sack_permitted = hs.peer.sack_permitted;
  if (hs.peer.has_timestamp) {
    spec.opts.has_timestamp = true;
    spec.opts.ts_val = ts_val;
    spec.opts.ts_ecr = hs.peer.ts_val;
  }
  send_tcp(hs.port, spec, now);
  ++hs_counters_.synack_sent;
}

void SlowPath::challenge_ack(const Handshake& hs, uint64_t now) {
  // RFC 5961 §7: at most kChallengeAcksPerSecond, as the engine's default.
  const uint64_t hz = rte_get_tsc_hz();
  if (now - challenge_window_tsc_ >= hz) {
    challenge_window_tsc_ = now;
    challenge_acks_in_window_ = 0;
  }
  if (++challenge_acks_in_window_ > tcp::EngineConfig{}.challenge_acks_per_second) {
    ++hs_counters_.challenge_acks_limited;
    return;
  }
  net::TcpFrameSpec spec = frame_for(hs);
  spec.seq = hs.iss + 1;
  spec.ack = hs.irs + 1;
  spec.flags = RTE_TCP_ACK_FLAG;
  // Not a SYN: the window is scaled by the shift our SYN-ACK offered.
  const uint32_t wnd = hs.cached.initial_rcv_wnd >> (hs.peer.has_wscale ? our_wscale(hs.cached.initial_rcv_wnd) : 0);
  spec.window = static_cast<uint16_t>(wnd > 65535 ? 65535 : wnd);
  if (hs.peer.has_timestamp) {
    spec.opts.has_timestamp = true;
    spec.opts.ts_val = ts_clock(hs, now);
    spec.opts.ts_ecr = hs.peer.ts_val;
  }
  send_tcp(hs.port, spec, now);
  ++hs_counters_.challenge_acks;
}

OffloadState SlowPath::established(const Handshake& hs, uint64_t now) const {
  const Port& port = dp_.ports[hs.port];
  const net::TcpOptions& o = hs.peer;
  OffloadState st;
  st.constant.local_ip = port.config.address.addr.value;
  st.constant.remote_ip = hs.remote_ip.value;
  st.constant.local_port = hs.local_port;
  st.constant.remote_port = hs.remote_port;
  // RFC 9293 §3.7.1: 536 without an MSS option. An MSS of 0 says nothing
  // usable and counts as absent; one below the engine's floor (64) is raised
  // to it (Linux: 0 ignored, 48 at least), or the offload would fail after
  // the handshake and leave the peer with a connection nobody serves.
  const uint16_t mss = o.has_mss && o.mss != 0 ? o.mss : 536;
  st.constant.remote_mss = mss < 64 ? 64 : mss;
  st.constant.window_scaling = o.has_wscale;
  st.constant.snd_wscale = o.has_wscale ? (o.wscale > 14 ? 14 : o.wscale) : 0;  // RFC 7323 §2.3
  st.constant.rcv_wscale = o.has_wscale ? our_wscale(hs.cached.initial_rcv_wnd) : 0;
  st.constant.timestamps = o.has_timestamp;
  st.constant.sack = o.sack_permitted;
  st.cached = hs.cached;
  if (!o.has_wscale && st.cached.initial_rcv_wnd > 65535) st.cached.initial_rcv_wnd = 65535;
  DelegatedState& d = st.delegated;
  d.state = TcpState::established;
  d.snd_una = d.snd_nxt = d.snd_max = hs.iss + 1;
  d.snd_wnd = hs.peer_window;
  d.max_snd_wnd = d.snd_wnd;
  d.snd_wl1 = hs.irs;
  d.snd_wl2 = hs.iss + 1;
  d.rcv_nxt = hs.irs + 1;
  d.rcv_wnd = st.cached.initial_rcv_wnd;
  d.ts_recent = o.ts_val;
  d.ts_time = ts_clock(hs, now);  // the engine's timestamps go on from ours (RFC 7323 §5.4)
  std::copy(std::begin(port.mac.addr_bytes), std::end(port.mac.addr_bytes), st.path.local_mac.begin());
  std::copy(std::begin(hs.peer_mac.addr_bytes), std::end(hs.peer_mac.addr_bytes), st.path.next_hop_mac.begin());
  st.path.path_mtu = port.config.mtu;
  return st;
}

uint32_t SlowPath::cookie(const Handshake& hs, uint32_t t) const {
  // RFC 4987 §3.6: top 5 bits t mod 32, 3 bits the MSS, 24 bits a keyed hash
  // of the 4-tuple, t and the peer's ISN.
  const uint32_t words[5] = {hs.remote_ip.value, (uint32_t{hs.remote_port} << 16) | hs.local_port, t, hs.irs,
                             dp_.ports[hs.port].config.address.addr.value};
  const uint32_t h = rte_hash_crc(words, sizeof words, cookie_secret_);
  const uint8_t mss = cookie_mss_index(hs.peer.has_mss ? hs.peer.mss : 536);
  return ((t & 0x1f) << 27) | (uint32_t{mss} << 24) | (h & 0xffffff);
}

void SlowPath::hand_over(Handshake& hs, rte_mbuf* m) {
  // A segment of a connection whose established state is on its way to the
  // engine (phase offloading) reached us because the engine did not have it
  // yet. The host's offload request is already on the owner worker's ops
  // ring (posted from within accept() or done(), before we get here); this
  // segment goes on the same ring behind it, so the worker installs the TCB
  // first and then processes the segment as RFC 9293 §3.10.7.4 says for
  // ESTABLISHED, in the order the segments reached us. The peer's first
  // data is not lost to the handover and needs no retransmission. If the
  // offload fails, or the host never offloads, the engine has no connection
  // for the segment and the worker drops and counts it.
  Counters& c = counters(hs.port);
  auto drop = [&] {
    ++hs_counters_.parked_dropped;
    c.handshake_parked_dropped.add();
    rte_pktmbuf_free(m);
  };
  if (hs.parked >= kParkedPerHandshake) return drop();
  const unsigned worker = dp_.placement.owner(dp_.ports[hs.port].config.address.addr.value, hs.remote_ip.value,
                                              hs.local_port, hs.remote_port);
  void* rec = alloc_op_record(dp_);
  if (rec == nullptr) return drop();
  auto* op = new (rec) OffloadOp{};
  op->kind = OffloadOp::Kind::input;
  op->port = static_cast<uint16_t>(hs.port);
  op->frame = m;
  if (rte_ring_sp_enqueue(dp_.ops[worker], op) != 0) {
    free_op_record(dp_, op);
    return drop();
  }
  ++hs.parked;
  ++hs_counters_.parked;
  c.handshake_parked.add();
}

void SlowPath::rst_reply(size_t p, rte_mbuf* m, uint64_t now) {
  if (net::tcp_rst_for_unknown_in_place(m, net::next_ip_id(ip_id_))) {
    counters(p).rst_sent.add();
    send_ipv4(p, m, now);
  } else {
    rte_pktmbuf_free(m);
  }
}

bool SlowPath::handle_handshake(size_t p, rte_mbuf* m, uint64_t now) {
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
  const Ipv4Addr remote = Ipv4Addr::from_be(ip->src_addr);
  auto it = handshakes_.find(tuple_key(remote, rte_be_to_cpu_16(th->src_port), rte_be_to_cpu_16(th->dst_port)));
  if (it == handshakes_.end() || it->second->port != p) return handle_listener(p, m, now);
  Handshake& hs = *it->second;
  const uint8_t flags = th->tcp_flags;
  const uint32_t ack = rte_be_to_cpu_32(th->recv_ack);
  const uint32_t seq = rte_be_to_cpu_32(th->sent_seq);
  if (hs.phase == Handshake::Phase::offloading) {
    // The engine takes the connection over: what the peer sends meanwhile
    // (its first data, a FIN, a RST, a SYN-ACK again if our ACK was lost)
    // is the engine's (hand_over). A SYN without ACK belongs to no
    // handshake of ours: dropped as before (the peer retries after the
    // entry is gone).
    if ((flags & RTE_TCP_SYN_FLAG) && !(flags & RTE_TCP_ACK_FLAG)) rte_pktmbuf_free(m);
    else hand_over(hs, m);
    return true;
  }
  if (hs.phase == Handshake::Phase::syn_received) {
    // RFC 9293 §3.10.7.4 for SYN-RECEIVED, with RFC 5961 §3.2: a RST at
    // RCV.NXT ends the half-open connection; one elsewhere in the window
    // gets a challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>; outside it
    // is dropped.
    if (flags & RTE_TCP_RST_FLAG) {
      const uint32_t rcv_nxt = hs.irs + 1;
      if (seq == rcv_nxt) {
        --hs.listener->half_open;
        handshakes_.erase(it);
      } else if (seq - rcv_nxt < hs.cached.initial_rcv_wnd) {
        challenge_ack(hs, now);
      }
      rte_pktmbuf_free(m);
      return true;
    }
    if ((flags & RTE_TCP_SYN_FLAG) && !(flags & RTE_TCP_ACK_FLAG)) {
      send_synack(hs, ts_clock(hs, now), now);  // the peer did not see our SYN-ACK
      rte_pktmbuf_free(m);
      return true;
    }
    // First check: the sequence number, against the window our SYN-ACK
    // offered. Not acceptable: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, drop
    // (rate-limited as a challenge ACK, RFC 5961 §7).
    const uint32_t rcv_nxt = hs.irs + 1;
    const uint32_t seg_len = tcp_payload_len(m) + ((flags & RTE_TCP_FIN_FLAG) ? 1 : 0);
    const uint32_t wnd = hs.cached.initial_rcv_wnd;
    const bool acceptable = seq - rcv_nxt < wnd || (seg_len != 0 && seq + seg_len - 1 - rcv_nxt < wnd);
    // Fourth: a SYN with ACK here is answered the same way (RFC 5961 §4.2).
    if (!acceptable || (flags & RTE_TCP_SYN_FLAG)) {
      challenge_ack(hs, now);
      rte_pktmbuf_free(m);
      return true;
    }
    // Fifth: no ACK bit, drop; an ACK of something else than our SYN, RST.
    if (!(flags & RTE_TCP_ACK_FLAG)) {
      rte_pktmbuf_free(m);
      return true;
    }
    if (ack != hs.iss + 1) {
      rst_reply(p, m, now);
      return true;
    }
    // The ACK is acceptable: ESTABLISHED, "continue processing". The
    // segment's text and FIN (sixth to eighth checks) are the engine's,
    // which gets the segment once it has the connection (hand_over); one
    // beyond RCV.NXT (the peer's first segment lost) it keeps out of order.
    // A pure ACK has told all it had.
    const bool text_or_fin = seg_len != 0;
    hs.peer_window = rte_be_to_cpu_16(th->rx_win);  // now scaled by the peer's shift
    OffloadState st = established(hs, now);
    st.delegated.snd_wnd = uint32_t{hs.peer_window} << st.constant.snd_wscale;
    st.delegated.max_snd_wnd = st.delegated.snd_wnd;
    st.delegated.snd_wl1 = seq;
    --hs.listener->half_open;
    hs.phase = Handshake::Phase::offloading;
    hs.expires = now + rte_get_tsc_hz();
    ++hs_counters_.established_passive;
    hs.listener->accept(st);
    if (text_or_fin) hand_over(hs, m);
    else rte_pktmbuf_free(m);
    return true;
  }
  // SYN-SENT (RFC 9293 §3.10.7.3): an ACK must acknowledge our SYN.
  if ((flags & RTE_TCP_ACK_FLAG) && ack != hs.iss + 1) {
    if (flags & RTE_TCP_RST_FLAG) rte_pktmbuf_free(m);
    else rst_reply(p, m, now);
    return true;
  }
  if (flags & RTE_TCP_RST_FLAG) {
    rte_pktmbuf_free(m);
    if (flags & RTE_TCP_ACK_FLAG) {  // connection refused
      ++hs_counters_.refused;
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
  net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), m->l4_len - sizeof(rte_tcp_hdr), hs.peer);
  hs.irs = seq;
  hs.peer_window = rte_be_to_cpu_16(th->rx_win);  // never scaled in a SYN (RFC 7323 §2.2)
  hs.peer_mac = rte_pktmbuf_mtod(m, const rte_ether_hdr*)->src_addr;
  rte_pktmbuf_free(m);
  const OffloadState st = established(hs, now);

  // The ACK completing the handshake (RFC 9293 §3.5), window as our SYN said.
  net::TcpFrameSpec spec = frame_for(hs);
  spec.seq = hs.iss + 1;
  spec.ack = hs.irs + 1;
  spec.flags = RTE_TCP_ACK_FLAG;
  const uint32_t wnd = st.cached.initial_rcv_wnd >> st.constant.rcv_wscale;
  spec.window = static_cast<uint16_t>(wnd > 65535 ? 65535 : wnd);
  if (hs.peer.has_timestamp) {
    spec.opts.has_timestamp = true;
    spec.opts.ts_val = ts_clock(hs, now);
    spec.opts.ts_ecr = hs.peer.ts_val;
  }
  send_tcp(p, spec, now);
  hs.phase = Handshake::Phase::offloading;
  hs.expires = now + rte_get_tsc_hz();
  ++hs_counters_.established_active;
  ConnectDone done = std::move(hs.done);
  done(Status::success, &st);
  return true;
}

bool SlowPath::handle_listener(size_t p, rte_mbuf* m, uint64_t now) {
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
  auto lit = listeners_.find(rte_be_to_cpu_16(th->dst_port));
  if (lit == listeners_.end()) return false;
  Listener& l = *lit->second;
  const uint8_t flags = th->tcp_flags;
  if (flags & RTE_TCP_RST_FLAG) {
    rte_pktmbuf_free(m);  // for a half-open connection we no longer hold
    return true;
  }
  Handshake hs;
  hs.port = p;
  hs.remote_ip = Ipv4Addr::from_be(ip->src_addr);
  hs.remote_port = rte_be_to_cpu_16(th->src_port);
  hs.local_port = l.port;
  hs.cached = l.cached;
  hs.listener = &l;
  hs.peer_mac = rte_pktmbuf_mtod(m, const rte_ether_hdr*)->src_addr;
  const uint32_t t = static_cast<uint32_t>(now / rte_get_tsc_hz() / kCookiePeriodS);

  if ((flags & RTE_TCP_SYN_FLAG) && !(flags & RTE_TCP_ACK_FLAG)) {
    // RFC 9293 §3.10.7.2 LISTEN: a SYN.
    net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), m->l4_len - sizeof(rte_tcp_hdr), hs.peer);
    hs.irs = rte_be_to_cpu_32(th->sent_seq);
    hs.peer_window = rte_be_to_cpu_16(th->rx_win);
    rte_pktmbuf_free(m);
    if (l.half_open < l.backlog) {
      auto entry = std::make_unique<Handshake>(hs);
      entry->phase = Handshake::Phase::syn_received;
      choose_iss(*entry, now);
      entry->next_retry = now + rte_get_tsc_hz();
      entry->tries = 1;
      ++l.half_open;
      send_synack(*entry, ts_clock(*entry, now), now);
      handshakes_[tuple_key(hs.remote_ip, hs.remote_port, hs.local_port)] = std::move(entry);
      return true;
    }
    // The backlog is full: answer with a SYN cookie and keep nothing. With
    // timestamps, the low 5 bits of our TSval carry the peer's window scale
    // and SACK-permitted back to us in the ACK's TSecr.
    hs.iss = cookie(hs, t);
    uint32_t ts_val = ts_clock(hs, now) & ~0x1fu;
    ts_val |= (hs.peer.sack_permitted ? 0x10u : 0u) | (hs.peer.has_wscale ? (hs.peer.wscale & 0xf) : 0xfu);
    send_synack(hs, ts_val, now);
    ++hs_counters_.cookies_sent;
    return true;
  }
  if (!(flags & RTE_TCP_SYN_FLAG) && (flags & RTE_TCP_ACK_FLAG)) {
    // An ACK for no half-open connection: perhaps the answer to a cookie.
    hs.irs = rte_be_to_cpu_32(th->sent_seq) - 1;
    const uint32_t c = rte_be_to_cpu_32(th->recv_ack) - 1;
    hs.peer.has_mss = true;
    hs.peer.mss = kCookieMss[(c >> 24) & 7];
    const uint32_t ct = c >> 27;
    bool valid = false;
    for (uint32_t age = 0; age < 2 && !valid; ++age)  // this period or the last
      valid = ((t - age) & 0x1f) == ct && cookie(hs, t - age) == c;
    if (!valid) {
      ++hs_counters_.cookies_rejected;
      rst_reply(p, m, now);
      return true;
    }
    net::TcpOptions ack_opts;
    net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), m->l4_len - sizeof(rte_tcp_hdr), ack_opts);
    if (ack_opts.has_timestamp) {
      hs.peer.has_timestamp = true;
      hs.peer.ts_val = ack_opts.ts_val;
      hs.peer.sack_permitted = ack_opts.ts_ecr & 0x10;
      hs.peer.has_wscale = (ack_opts.ts_ecr & 0xf) != 0xf;
      hs.peer.wscale = static_cast<uint8_t>(ack_opts.ts_ecr & 0xf);
      hs.ts_base = ack_opts.ts_ecr - static_cast<uint32_t>(now * 1000 / rte_get_tsc_hz());
    }
    hs.iss = c;
    hs.peer_window = rte_be_to_cpu_16(th->rx_win);
    // As in SYN-RECEIVED: an ACK with text or a FIN completes the handshake
    // and the engine gets the segment (RFC 9293 §3.10.7.4).
    const bool text_or_fin = tcp_payload_len(m) != 0 || (flags & RTE_TCP_FIN_FLAG);
    OffloadState st = established(hs, now);
    st.delegated.snd_wnd = uint32_t{hs.peer_window} << st.constant.snd_wscale;
    st.delegated.max_snd_wnd = st.delegated.snd_wnd;
    ++hs_counters_.cookies_accepted;
    ++hs_counters_.established_passive;
    auto entry = std::make_unique<Handshake>(hs);
    entry->phase = Handshake::Phase::offloading;
    entry->expires = now + rte_get_tsc_hz();
    Handshake& ref = *entry;
    handshakes_[tuple_key(hs.remote_ip, hs.remote_port, hs.local_port)] = std::move(entry);
    l.accept(st);
    if (text_or_fin) hand_over(ref, m);
    else rte_pktmbuf_free(m);
    return true;
  }
  return false;  // anything else: RST for no connection
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
    if (hs.tries > 3) {  // the first and three retransmissions unanswered
      ++hs_counters_.timeouts;
      if (hs.phase == Handshake::Phase::syn_received) {
        --hs.listener->half_open;
        it = handshakes_.erase(it);
        continue;
      }
      ConnectDone done = std::move(hs.done);
      it = handshakes_.erase(it);
      done(Status::failure, nullptr);
      continue;
    }
    if (hs.phase == Handshake::Phase::syn_received) {
      send_synack(hs, ts_clock(hs, now), now);
      hs.next_retry = now + (rte_get_tsc_hz() << hs.tries);
      ++hs.tries;
    } else {
      send_syn(hs, now);
    }
    ++it;
  }
}

}  // namespace chimney::dataplane
