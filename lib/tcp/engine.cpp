// The engine's table and its requests: offload, send, receive, disconnect,
// terminate (CONTRACT.md), and the completions that answer them.
#include <cstring>
#include <stdexcept>

#include <rte_errno.h>
#include <rte_hash.h>
#include <rte_hash_crc.h>
#include <rte_malloc.h>

#include "tcp/engine_internal.hpp"

namespace chimney::tcp {

namespace {

constexpr uint32_t kSlotBits = 20;  // handles: generation << 20 | slot
constexpr uint32_t kSlotMask = (1u << kSlotBits) - 1;

rte_hash* make_hash(const std::string& name, uint32_t entries, uint32_t key_len, int socket) {
  rte_hash_parameters p{};
  p.name = name.c_str();
  p.entries = entries < 8 ? 8 : entries;
  p.key_len = key_len;
  p.hash_func = rte_hash_crc;
  p.socket_id = socket;
  rte_hash* h = rte_hash_create(&p);
  if (h == nullptr) throw std::runtime_error("cannot create hash " + name + ": " + rte_strerror(rte_errno));
  return h;
}

void noop_free(void*, void*) {}

// The engine's own reference on each NetBuffer of a send: payload mbufs add
// theirs; the request is done when only this one is left (DESIGN.md buffers).
void hold_buffers(NetBufferList* n) {
  for (NetBuffer* b = n->first; b != nullptr; b = b->next) {
    auto& bm = *new (b->target_reserved) BufferMeta{};
    bm.shinfo.free_cb = noop_free;
    rte_mbuf_ext_refcnt_set(&bm.shinfo, 1);
  }
}

// A request refused at once completes with `st` on every list, nothing sent.
void refuse_chain(NetBufferList* chain, Status st) {
  for (NetBufferList* n = chain; n != nullptr; n = n->next) {
    n->status = st;
    n->bytes_transferred = 0;
  }
}

bool valid_offload_state(TcpState s) {
  // C-4: never CLOSED, LISTEN, SYN_SENT, SYN_RECEIVED or TIME_WAIT.
  switch (s) {
    case TcpState::established:
    case TcpState::fin_wait_1:
    case TcpState::fin_wait_2:
    case TcpState::close_wait:
    case TcpState::closing:
    case TcpState::last_ack: return true;
    default: return false;
  }
}

}  // namespace

Engine::Engine(const EngineConfig& cfg, HostCallbacks& host, TxSink& wire)
    : cfg_(cfg), host_(host), wire_(wire), tcbs_(nullptr, [](Tcb* p) { rte_free(p); }) {
  if (cfg_.max_connections == 0 || cfg_.max_connections > kSlotMask)
    throw std::runtime_error("engine: max_connections must be 1.." + std::to_string(kSlotMask));
  // Tcb::Recv::ooo_count holds it (an 8-bit count once wrapped before a
  // budget of 256 was reached: one connection could take every node).
  if (cfg_.ooo_segments_per_connection > UINT16_MAX)
    throw std::runtime_error("engine: ooo_segments_per_connection must be 0.." + std::to_string(UINT16_MAX));
  if (cfg_.header_pool == nullptr || cfg_.attach_pool == nullptr)
    throw std::runtime_error("engine: header_pool and attach_pool are required");
  table_ = make_hash(cfg_.name + "_conn", cfg_.max_connections, kKeyLength, cfg_.socket_id);
  tw_table_ = make_hash(cfg_.name + "_tw", cfg_.time_wait_entries, kKeyLength, cfg_.socket_id);
  tcbs_.reset(static_cast<Tcb*>(rte_zmalloc_socket("tcbs", sizeof(Tcb) * cfg_.max_connections,
                                                   RTE_CACHE_LINE_SIZE, cfg_.socket_id)));
  if (!tcbs_) throw std::runtime_error("engine: cannot allocate " + std::to_string(cfg_.max_connections) + " TCBs");
  generation_.assign(cfg_.max_connections, 1);
  free_slots_.reserve(cfg_.max_connections);
  for (uint32_t i = cfg_.max_connections; i-- > 0;) free_slots_.push_back(i);
  if (cfg_.msl_ms > (1u << 29))  // 2·MSL fits TimeWait::expires_ms' wrapping comparison
    throw std::runtime_error("engine: msl_ms must be at most " + std::to_string(1u << 29));
  tw_ = std::make_unique_for_overwrite<TimeWait[]>(cfg_.time_wait_entries);  // untouched until used
  ooo_nodes_ = std::make_unique<OooSegment[]>(cfg_.ooo_segments);
  for (uint32_t i = 0; i < cfg_.ooo_segments; ++i) {
    ooo_nodes_[i].next = ooo_free_list_;
    ooo_free_list_ = &ooo_nodes_[i];
  }
  pending_offloads_.reserve(64);
  pending_terminates_.reserve(64);
  pending_aborts_.reserve(64);
}

Engine::~Engine() {
  flush();
  for (uint32_t i = 0; i < cfg_.max_connections; ++i) {
    Tcb& c = tcbs_[i];
    if (c.handle.value == 0) continue;
    // Buffers the engine holds go back to their pools; host requests are the host's.
    for (rte_mbuf* m = c.rx_buffered.head; m != nullptr;) {
      rte_mbuf* next = m->next;
      m->next = nullptr;
      rte_pktmbuf_free_seg(m);
      m = next;
    }
    ooo_free(c);
  }
  rte_hash_free(table_);
  rte_hash_free(tw_table_);
}

uint32_t Engine::time_wait_entries() const { return tw_used_; }

Tcb* Engine::lookup(ConnectionHandle h) const {
  const uint32_t slot = h.value & kSlotMask;
  if (h.value == 0 || slot >= cfg_.max_connections) return nullptr;
  Tcb& c = tcbs_[slot];
  return c.handle == h ? &c : nullptr;
}

const Tcb* Engine::find(ConnectionHandle h) const { return lookup(h); }

Status Engine::validate(const OffloadState& s) const {
  const ConstState& k = s.constant;
  const DelegatedState& d = s.delegated;
  if (!valid_offload_state(d.state)) return Status::invalid_state;
  if (k.snd_wscale > 14 || k.rcv_wscale > 14) return Status::invalid_state;  // RFC 7323 §2.3
  if (!k.window_scaling && (k.snd_wscale != 0 || k.rcv_wscale != 0)) return Status::invalid_state;
  if (k.remote_mss < 64) return Status::invalid_state;
  if (k.local_port == 0 || k.remote_port == 0 || k.local_ip == 0 || k.remote_ip == 0)
    return Status::invalid_state;
  if (s.path.path_mtu < 576 || s.path.path_mtu > 9216) return Status::invalid_state;
  if (!(seq_leq(d.snd_una, d.snd_nxt) && seq_leq(d.snd_nxt, d.snd_max))) return Status::invalid_state;
  // The window must be expressible at our scale (RFC 7323 §2.3), or it would
  // be advertised as zero for ever.
  if (s.cached.initial_rcv_wnd == 0 || s.cached.initial_rcv_wnd > cfg_.max_rcv_window ||
      (s.cached.initial_rcv_wnd >> (k.window_scaling ? k.rcv_wscale : 0)) == 0)
    return Status::offload_tcp_rcv_window;
  if (d.receive_data.size() > s.cached.initial_rcv_wnd) return Status::offload_tcp_rcv_buffer;
  // The inherited send data must cover what was sent (C-3); our FIN, when the
  // state says it was sent, takes one sequence number after it.
  uint64_t inherited = 0;
  for (const NetBufferList* n = d.send_data; n != nullptr; n = n->next) inherited += n->data_length();
  const uint32_t fin = fin_state(d.state) ? 1 : 0;
  if (inherited + fin < static_cast<uint64_t>(d.snd_max - d.snd_una)) return Status::offload_tcp_xmit_buffer;
  if (inherited > (1ull << 30)) return Status::offload_tcp_xmit_buffer;
  if (d.state == TcpState::fin_wait_2 && inherited != 0) return Status::invalid_state;
  return Status::success;
}

void Engine::initiate_offload(const OffloadState& s, void* host_context, ConnectionHandle* handle) {
  *handle = ConnectionHandle{};
  Status st = validate(s);
  Key key{s.constant.remote_ip, s.constant.local_ip, s.constant.remote_port, s.constant.local_port};
  if (st == Status::success && rte_hash_lookup(table_, &key) >= 0) st = Status::invalid_state;  // in use here
  if (st == Status::success) {
    // A new incarnation of a 4-tuple we hold in TIME_WAIT (its handshake was
    // let through, time_wait_input): it replaces the entry (RFC 9293
    // §3.10.7.4, RFC 6191).
    void* tw_slot = nullptr;
    if (rte_hash_lookup_data(tw_table_, &key, &tw_slot) >= 0) drop_time_wait(tw_[reinterpret_cast<uintptr_t>(tw_slot)]);
  }
  if (st == Status::success && free_slots_.empty()) st = Status::offload_tcp_entries;
  if (st != Status::success) {
    ++stats_.offloads_refused;
    pending_offloads_.push_back({ConnectionHandle{}, host_context, st});  // C-2: nothing was sent
    return;
  }
  const uint32_t slot = free_slots_.back();
  const int32_t pos = rte_hash_add_key_data(table_, &key, reinterpret_cast<void*>(uintptr_t{slot}));
  if (pos < 0) {
    ++stats_.offloads_refused;
    pending_offloads_.push_back({ConnectionHandle{}, host_context, Status::offload_tcp_entries});
    return;
  }
  free_slots_.pop_back();
  ++used_;
  Tcb& c = *new (&tcbs_[slot]) Tcb{};
  c.handle = ConnectionHandle{(uint32_t{generation_[slot]} << kSlotBits) | slot};
  c.host_context = host_context;
  c.flags.in_table = true;

  const ConstState& k = s.constant;
  const CachedState& cached = s.cached;
  const DelegatedState& d = s.delegated;
  c.local_ip = k.local_ip;
  c.remote_ip = k.remote_ip;
  c.local_port = k.local_port;
  c.remote_port = k.remote_port;
  std::memcpy(c.local_mac, s.path.local_mac.data(), 6);
  std::memcpy(c.remote_mac, s.path.next_hop_mac.data(), 6);
  c.flags.timestamps = k.timestamps;
  c.flags.sack = k.sack;
  c.snd.wscale = k.window_scaling ? k.snd_wscale : 0;
  c.rcv.wscale = k.window_scaling ? k.rcv_wscale : 0;
  // RFC 9293 §3.7.1 (Eff.snd.MSS) less the timestamp option on every segment.
  uint32_t mss = k.remote_mss;
  if (mss > s.path.path_mtu - 40u) mss = s.path.path_mtu - 40u;
  if (c.flags.timestamps) mss -= 12;
  c.snd.mss = static_cast<uint16_t>(mss);

  c.ttl = cached.ttl;
  c.tos = cached.tos;
  c.nagle = cached.nagle;
  c.keepalive = cached.keepalive;
  c.keepalive_timeout_ms = cached.keepalive_timeout_ms;
  c.keepalive_interval_ms = cached.keepalive_interval_ms;
  c.keepalive_max_probes = cached.keepalive_probes;
  c.max_retransmissions = cached.max_retransmissions;
  c.max_persist_probes = cached.max_persist_probes;
  c.cc_algo = cached.congestion;
  c.rcv.buf = cached.initial_rcv_wnd;

  c.state = d.state;
  c.snd.una = d.snd_una;
  c.snd.nxt = d.snd_nxt;
  c.snd.max = d.snd_max;
  c.snd.wnd = d.snd_wnd;
  c.snd.max_wnd = d.max_snd_wnd > d.snd_wnd ? d.max_snd_wnd : d.snd_wnd;
  c.snd.wl1 = d.snd_wl1;
  c.snd.wl2 = d.snd_wl2;
  c.snd.recover = d.snd_una;
  c.snd.dupacks = d.dup_ack_count;
  c.rcv.nxt = d.rcv_nxt;
  c.rcv.adv = d.rcv_nxt + (d.rcv_wnd != 0 ? d.rcv_wnd : cached.initial_rcv_wnd);
  c.rcv.ts_recent = d.ts_recent;
  c.ts_offset = d.ts_time - static_cast<uint32_t>(now_ms_);
  c.rcv.last_ack_sent = d.rcv_nxt;
  c.rcv.ts_recent_ms = static_cast<uint32_t>(now_ms_ - d.ts_recent_age_ms);
  c.rtt.srtt_us = d.srtt_us;
  c.rtt.rttvar_us = d.rttvar_us;
  c.rtt.rto_ms = cfg_.rto_initial_ms;
  if (d.srtt_us != 0) {
    uint64_t rto = (d.srtt_us + 4ull * d.rttvar_us) / 1000;
    c.rtt.rto_ms = static_cast<uint32_t>(rto < cfg_.rto_min_ms ? cfg_.rto_min_ms : rto > cfg_.rto_max_ms ? cfg_.rto_max_ms : rto);
  }
  c.total_rt = static_cast<uint8_t>(d.total_rt);
  congestion_ops(c.cc_algo).init(c);
  if (d.cwnd != 0) c.snd.cwnd = d.cwnd;
  if (d.ssthresh != 0) c.snd.ssthresh = d.ssthresh;

  // C-3: inherited send data starts at snd_una.
  uint32_t seq = d.snd_una;
  c.send_head = d.send_data;
  for (NetBufferList* n = d.send_data; n != nullptr; n = n->next) {
    auto& sm = *new (n->target_reserved) SendMeta{seq, static_cast<uint32_t>(n->data_length()), RequestKind::send};
    hold_buffers(n);
    seq += sm.length;
    c.send_tail = n;
  }
  c.snd.queued_end = seq;
  if (fin_state(d.state) && d.send_data_to_follow != 0) {
    // C-3: the host posts the rest of the inherited data as SENDs; the
    // inherited FIN is queued once they reach it (send()).
    c.flags.fin_after_inherited = true;
    c.inherited_end = seq + d.send_data_to_follow;
  } else if (fin_state(d.state)) {
    c.flags.fin_queued = true;
    c.snd.queued_end += 1;
  }
  c.cursor_nbl = c.send_head;
  c.cursor_nb = c.send_head != nullptr ? c.send_head->first : nullptr;
  c.cursor_seq = d.snd_una;
  if (d.state == TcpState::close_wait || d.state == TcpState::closing || d.state == TcpState::last_ack) {
    c.flags.fin_received = true;  // the host already saw the peer's FIN
    c.flags.fin_indicated = true;
    c.rcv.fin_seq = d.rcv_nxt - 1;
  }

  // C-3: inherited receive data is delivered before any new data.
  if (!d.receive_data.empty()) {
    uint32_t off = 0;
    while (off < d.receive_data.size()) {
      rte_mbuf* m = rte_pktmbuf_alloc(cfg_.header_pool);
      if (m == nullptr) break;
      uint32_t room = rte_pktmbuf_tailroom(m);
      uint32_t take = static_cast<uint32_t>(d.receive_data.size()) - off;
      if (take > room) take = room;
      std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(take)), d.receive_data.data() + off, take);
      off += take;
      m->next = nullptr;
      if (c.rx_buffered.tail != nullptr) c.rx_buffered.tail->next = m;
      else c.rx_buffered.head = m;
      c.rx_buffered.tail = m;
      c.rx_buffered.bytes += take;
    }
  }

  if (d.retransmit_timer_ms != 0 || c.snd.una != c.snd.max) arm(c, TimerKind::retransmit, d.retransmit_timer_ms != 0 ? d.retransmit_timer_ms : c.rtt.rto_ms);
  if (c.keepalive)
    arm(c, TimerKind::keepalive, d.keepalive_timer_ms != 0 ? d.keepalive_timer_ms : c.keepalive_timeout_ms);
  ++stats_.offloads;
  *handle = c.handle;
  pending_offloads_.push_back({c.handle, host_context, Status::success});
  mark_output(c);
}

Status Engine::send(ConnectionHandle h, NetBufferList* chain) {
  Tcb* cp = lookup(h);
  if (cp == nullptr || chain == nullptr) return Status::invalid_state;
  Tcb& c = *cp;
  // Nothing can be sent after our FIN, an abort, or once the upload began:
  // the chain completes at once with the status that says why (C-7).
  Status refuse = Status::success;
  if (c.flags.terminating) refuse = Status::upload_in_progress;
  else if (c.flags.aborted || c.flags.closed) refuse = Status::request_aborted;
  else if (c.flags.fin_queued) refuse = Status::invalid_state;
  else if (c.flags.fin_after_inherited) {
    // C-3, C-7: the inherited data announced at the offload, nothing beyond
    // its FIN.
    uint64_t len = 0;
    for (const NetBufferList* n = chain; n != nullptr; n = n->next) len += n->data_length();
    if (len > c.inherited_end - c.snd.queued_end) refuse = Status::invalid_state;
  }
  if (refuse == Status::request_aborted && c.flags.abort_deferred) {
    // C-6 FIFO: behind the sends whose aborted completions wait for the NIC.
    for (NetBufferList* n = chain; n != nullptr; n = n->next) {
      new (n->target_reserved) SendMeta{c.snd.una, static_cast<uint32_t>(n->data_length()), RequestKind::send};
      hold_buffers(n);
      if (n->next == nullptr) {
        if (c.send_tail != nullptr) c.send_tail->next = chain;
        else c.send_head = chain;
        c.send_tail = n;
        break;
      }
    }
    return Status::pending;
  }
  if (refuse != Status::success) {
    refuse_chain(chain, refuse);
    ++stats_.send_completions;
    host_.send_complete(c.handle, c.host_context, chain);
    return Status::pending;
  }
  NetBufferList* last = chain;
  for (NetBufferList* n = chain; n != nullptr; n = n->next) {
    n->status = Status::pending;
    n->bytes_transferred = 0;
    new (n->target_reserved) SendMeta{c.snd.queued_end, static_cast<uint32_t>(n->data_length()), RequestKind::send};
    hold_buffers(n);
    c.snd.queued_end += meta<SendMeta>(n).length;
    last = n;
  }
  if (c.send_tail != nullptr) c.send_tail->next = chain;
  else c.send_head = chain;
  c.send_tail = last;
  if (c.flags.fin_after_inherited && c.snd.queued_end == c.inherited_end) {
    c.flags.fin_after_inherited = false;  // the inherited FIN follows the last inherited byte
    c.flags.fin_queued = true;
    c.snd.queued_end += 1;
  }
  if (c.cursor_nbl == nullptr) {
    // The cursor had run off the end of the queue: it resumes at the new data.
    c.cursor_nbl = chain;
    c.cursor_nb = chain->first;
    c.cursor_seq = meta<SendMeta>(chain).seq_start;
  }
  mark_output(c);
  return Status::pending;
}

Status Engine::receive(ConnectionHandle h, NetBufferList* chain) {
  Tcb* cp = lookup(h);
  if (cp == nullptr || chain == nullptr) return Status::invalid_state;
  Tcb& c = *cp;
  Status refuse = Status::success;
  if (c.flags.terminating) refuse = Status::upload_in_progress;
  else if (c.flags.aborted) refuse = Status::request_aborted;
  else if (c.flags.fin_indicated && c.rx_buffered.bytes == 0) refuse = Status::invalid_state;  // C-16
  if (refuse != Status::success) {
    refuse_chain(chain, refuse);
    ++stats_.receive_completions;
    host_.receive_complete(c.handle, c.host_context, chain);
    return Status::pending;
  }
  NetBufferList* last = chain;
  for (NetBufferList* n = chain; n != nullptr; n = n->next) {
    n->status = Status::pending;
    n->bytes_transferred = 0;
    new (n->target_reserved) ReceiveMeta{n->first, 0, 0, static_cast<uint32_t>(n->data_length())};
    last = n;
  }
  if (c.recv_tail != nullptr) c.recv_tail->next = chain;
  else c.recv_head = chain;
  c.recv_tail = last;
  c.flags.indicate_blocked = false;
  drain_buffered(c);
  return Status::pending;
}

Status Engine::disconnect(ConnectionHandle h, NetBufferList* nbl, DisconnectKind kind) {
  Tcb* cp = lookup(h);
  if (cp == nullptr || nbl == nullptr) return Status::invalid_state;
  Tcb& c = *cp;
  nbl->next = nullptr;
  nbl->bytes_transferred = 0;
  // C-15: a disconnect fails only while uploading or after an abort.
  if (c.flags.terminating || c.flags.aborted) {
    nbl->status = c.flags.terminating ? Status::upload_in_progress : Status::request_aborted;
    host_.disconnect_complete(c.handle, c.host_context, nbl);
    return Status::pending;
  }
  if (kind == DisconnectKind::abortive) {
    // C-13: the RST goes out; a pending graceful disconnect completes first,
    // then every send, then this request (SUCCESS).
    abort_connection(c, /*send_rst=*/!c.flags.closed, /*raise_event=*/false, nbl);
    return Status::pending;
  }
  if (c.flags.fin_queued || c.flags.closed || c.disconnect != nullptr) {
    nbl->status = Status::invalid_state;  // our send half is already closed
    host_.disconnect_complete(c.handle, c.host_context, nbl);
    return Status::pending;
  }
  // C-11: the request's data goes after every queued send, then the FIN.
  nbl->status = Status::pending;
  new (nbl->target_reserved) SendMeta{c.snd.queued_end, static_cast<uint32_t>(nbl->data_length()), RequestKind::disconnect};
  hold_buffers(nbl);
  c.snd.queued_end += meta<SendMeta>(nbl).length + 1;
  c.flags.fin_queued = true;
  c.disconnect = nbl;
  if (c.send_tail != nullptr) c.send_tail->next = nbl;
  else c.send_head = nbl;
  c.send_tail = nbl;
  if (c.cursor_nbl == nullptr) {
    c.cursor_nbl = nbl;
    c.cursor_nb = nbl->first;
    c.cursor_seq = meta<SendMeta>(nbl).seq_start;
  }
  // RFC 9293 §3.10.4 CLOSE: ESTABLISHED -> FIN_WAIT_1, CLOSE_WAIT -> LAST_ACK.
  c.state = c.state == TcpState::close_wait ? TcpState::last_ack : TcpState::fin_wait_1;
  mark_output(c);
  return Status::pending;
}

Status Engine::terminate(ConnectionHandle h) {
  Tcb* cp = lookup(h);
  if (cp == nullptr) return Status::invalid_state;
  Tcb& c = *cp;
  if (c.flags.terminating) return Status::invalid_state;
  c.flags.terminating = true;  // C-21: from now on segments are not processed
  ++stats_.terminates;
  // C-21: posted receives complete (with what they hold); the pending
  // disconnect completes UPLOAD_IN_PROGRESS (the seed) once no mbuf holds its
  // buffers, just before the terminate does (finish_terminate) ...
  complete_receives(c, Status::upload_in_progress);
  // ... a pending delayed ACK is sent.
  if (!c.flags.aborted && !c.flags.closed && (c.rcv.unacked_segs != 0 || c.due_ms[size_t(TimerKind::delayed_ack)] != 0)) send_ack(c);
  flush();
  pending_terminates_.push_back(&c);
  return Status::pending;
}

Status Engine::update_cached(ConnectionHandle h, const CachedState& cached) {
  Tcb* cp = lookup(h);
  if (cp == nullptr) return Status::invalid_state;
  if (cached.initial_rcv_wnd == 0 || cached.initial_rcv_wnd > cfg_.max_rcv_window) return Status::offload_tcp_rcv_window;
  Tcb& c = *cp;
  c.ttl = cached.ttl;
  c.tos = cached.tos;
  c.nagle = cached.nagle;
  c.max_retransmissions = cached.max_retransmissions;
  c.max_persist_probes = cached.max_persist_probes;
  if (cached.congestion != c.cc_algo) {
    c.cc_algo = cached.congestion;
    const uint32_t cwnd = c.snd.cwnd, ssthresh = c.snd.ssthresh;
    congestion_ops(c.cc_algo).init(c);
    c.snd.cwnd = cwnd;
    c.snd.ssthresh = ssthresh;
  }
  // The buffer may grow; the right edge already advertised never moves back.
  c.rcv.buf = cached.initial_rcv_wnd;
  const bool was = c.keepalive;
  c.keepalive = cached.keepalive;
  c.keepalive_timeout_ms = cached.keepalive_timeout_ms;
  c.keepalive_interval_ms = cached.keepalive_interval_ms;
  c.keepalive_max_probes = cached.keepalive_probes;
  if (c.keepalive && !was && !c.flags.closed) arm(c, TimerKind::keepalive, c.keepalive_timeout_ms);
  if (!c.keepalive) disarm(c, TimerKind::keepalive);
  return Status::success;
}

Status Engine::query_delegated(ConnectionHandle h, DelegatedState* out) {
  Tcb* cp = lookup(h);
  if (cp == nullptr || out == nullptr) return Status::invalid_state;
  const Tcb& c = *cp;
  DelegatedState d;
  d.state = c.state;
  d.rcv_nxt = c.rcv.nxt;
  d.rcv_wnd = seq_gt(c.rcv.adv, c.rcv.nxt) ? c.rcv.adv - c.rcv.nxt : 0;
  d.snd_una = c.snd.una;
  d.snd_nxt = c.snd.nxt;
  d.snd_max = c.snd.max;
  d.snd_wnd = c.snd.wnd;
  d.max_snd_wnd = c.snd.max_wnd;
  d.snd_wl1 = c.snd.wl1;
  d.snd_wl2 = c.snd.wl2;
  d.cwnd = c.snd.cwnd;
  d.ssthresh = c.snd.ssthresh;
  d.srtt_us = c.rtt.srtt_us;
  d.rttvar_us = c.rtt.rttvar_us;
  d.ts_recent = c.rcv.ts_recent;
  d.ts_recent_age_ms = static_cast<uint32_t>(now_ms_) - c.rcv.ts_recent_ms;
  d.ts_time = ts_now(c);
  d.total_rt = c.total_rt;
  d.dup_ack_count = c.snd.dupacks;
  auto remaining = [&](TimerKind k) -> uint32_t {
    const uint32_t due = c.due_ms[size_t(k)];
    return due == 0 ? 0 : static_cast<uint32_t>(due - static_cast<uint32_t>(now_ms_));
  };
  d.retransmit_timer_ms = remaining(TimerKind::retransmit);
  d.keepalive_timer_ms = remaining(TimerKind::keepalive);
  *out = std::move(d);
  return Status::success;
}

// ---------------------------------------------------------------------------
// Completions

bool Engine::send_memory_released(const NetBufferList* nbl) const {
  for (const NetBuffer* b = nbl->first; b != nullptr; b = b->next)
    if (rte_mbuf_ext_refcnt_read(&meta(b).shinfo) != 1) return false;
  return true;
}

void Engine::complete_sends(Tcb& c) {
  // C-6: a send completes when every byte was ACKed and no mbuf still
  // references its memory; FIFO, so the first one not done stops the walk.
  NetBufferList* done_head = nullptr;
  NetBufferList* done_tail = nullptr;
  while (c.send_head != nullptr) {
    NetBufferList* n = c.send_head;
    const SendMeta& sm = meta<SendMeta>(n);
    const bool is_disconnect = sm.kind == RequestKind::disconnect;
    const uint32_t end = sm.seq_start + sm.length + (is_disconnect ? 1 : 0);
    if (!seq_leq(end, c.snd.una) || !send_memory_released(n)) break;
    c.send_head = n->next;
    if (c.send_head == nullptr) c.send_tail = nullptr;
    if (c.cursor_nbl == n) {
      c.cursor_nbl = c.send_head;
      c.cursor_nb = c.send_head != nullptr ? c.send_head->first : nullptr;
      c.cursor_seq = end;
    }
    n->next = nullptr;
    if (is_disconnect) {
      // C-11: the sends before it complete first; C-12: FIN and data sent
      // and ACKed; C-14: completed alone.
      if (done_head != nullptr) {
        ++stats_.send_completions;
        host_.send_complete(c.handle, c.host_context, done_head);
        done_head = done_tail = nullptr;
      }
      complete_disconnect(c, Status::success);
      continue;
    }
    for (NetBuffer* b = n->first; b != nullptr; b = b->next) b->advance_data_start(b->data_length);
    n->bytes_transferred = sm.length;
    n->status = Status::success;
    if (done_tail != nullptr) done_tail->next = n;
    else done_head = n;
    done_tail = n;
  }
  if (done_head != nullptr) {
    ++stats_.send_completions;
    host_.send_complete(c.handle, c.host_context, done_head);
  }
}

// Advances each NetBuffer of `n` past the first `acked` bytes (C-6, C-12).
static void advance_acked(NetBufferList* n, uint32_t acked) {
  for (NetBuffer* b = n->first; b != nullptr && acked != 0; b = b->next) {
    const uint32_t take = acked < b->data_length ? acked : b->data_length;
    b->advance_data_start(take);
    acked -= take;
  }
}

static uint32_t acked_bytes(const SendMeta& sm, uint32_t snd_una) {
  if (!seq_gt(snd_una, sm.seq_start)) return 0;
  const uint32_t a = snd_una - sm.seq_start;
  return a > sm.length ? sm.length : a;
}

void Engine::complete_sends_aborted(Tcb& c, Status status) {
  // C-13, C-17: every outstanding send completes with `status` on each list;
  // the bytes already ACKed are reported (C-7: at most one is partial).
  NetBufferList* done_head = nullptr;
  NetBufferList* done_tail = nullptr;
  for (NetBufferList* n = c.send_head; n != nullptr;) {
    NetBufferList* next = n->next;
    n->next = nullptr;
    if (n != c.disconnect) {
      const uint32_t acked = acked_bytes(meta<SendMeta>(n), c.snd.una);
      advance_acked(n, acked);
      n->bytes_transferred = acked;
      n->status = status;
      if (done_tail != nullptr) done_tail->next = n;
      else done_head = n;
      done_tail = n;
    }
    n = next;
  }
  c.send_head = c.send_tail = nullptr;
  if (c.disconnect != nullptr) {
    c.send_head = c.send_tail = c.disconnect;  // it stays queued for its own completion
    c.disconnect->next = nullptr;
  }
  c.cursor_nbl = nullptr;
  c.cursor_nb = nullptr;
  if (done_head != nullptr) {
    ++stats_.send_completions;
    host_.send_complete(c.handle, c.host_context, done_head);
  }
}

void Engine::complete_disconnect(Tcb& c, Status status) {
  NetBufferList* d = c.disconnect;
  if (d == nullptr) return;
  c.disconnect = nullptr;
  // Unlink it from the send queue if it is still there.
  NetBufferList* prev = nullptr;
  for (NetBufferList* n = c.send_head; n != nullptr; prev = n, n = n->next) {
    if (n != d) continue;
    if (prev != nullptr) prev->next = n->next;
    else c.send_head = n->next;
    if (c.send_tail == n) c.send_tail = prev;
    if (c.cursor_nbl == n) {
      c.cursor_nbl = nullptr;
      c.cursor_nb = nullptr;
    }
    break;
  }
  d->next = nullptr;
  // C-12: bytes of this request sent and ACKed; its data start moves by as many.
  const SendMeta& sm = meta<SendMeta>(d);
  const uint32_t acked = status == Status::success ? sm.length : acked_bytes(sm, c.snd.una);
  advance_acked(d, acked);
  d->bytes_transferred = acked;
  d->status = status;
  host_.disconnect_complete(c.handle, c.host_context, d);
}

void Engine::complete_receives(Tcb& c, Status status_if_empty) {
  NetBufferList* chain = c.recv_head;
  if (chain == nullptr) return;
  c.recv_head = c.recv_tail = nullptr;
  for (NetBufferList* n = chain; n != nullptr; n = n->next) {
    const ReceiveMeta& rm = meta<ReceiveMeta>(n);
    n->bytes_transferred = rm.filled;
    n->status = rm.filled != 0 ? Status::success : status_if_empty;
  }
  ++stats_.receive_completions;
  host_.receive_complete(c.handle, c.host_context, chain);
}

void Engine::raise(Tcb& c, EventKind kind, RetrieveReason reason, uint32_t value) {
  if (kind == EventKind::retrieve) ++stats_.retrieves;
  host_.event(c.handle, c.host_context, kind, reason, value);
}

void Engine::maybe_indicate_fin(Tcb& c) {
  // C-16: DISCONNECT only once every byte before the FIN was consumed.
  if (!c.flags.fin_received || c.rx_buffered.bytes != 0) return;
  if (c.flags.fin_indicated) {
    // Offloaded after the FIN was indicated (CLOSE_WAIT with undelivered
    // data): receives posted to drain that data can get no more (C-16), and
    // complete now, before a later post is refused (C-9 FIFO).
    complete_receives(c, Status::invalid_state);
    return;
  }
  c.flags.fin_indicated = true;
  // A partly filled receive completes with what it has; empty ones can
  // never be filled now (C-16: INVALID_STATE).
  complete_receives(c, Status::invalid_state);
  raise(c, EventKind::disconnect, RetrieveReason::none);
}

void Engine::report_backlog(Tcb& c) {
  // C-18: the outstanding send data the host should keep queued, about two
  // windows' worth, reported when it changes by half and at most every 100 ms.
  uint32_t want = 2 * (c.snd.cwnd < c.snd.wnd ? c.snd.cwnd : c.snd.wnd);
  if (want < 65536) want = 65536;
  if (want > (16u << 20)) want = 16u << 20;
  const uint32_t last = c.backlog_reported;
  if (last != 0 && want < last + last / 2 && want > last / 2) return;
  if (last != 0 && static_cast<uint32_t>(now_ms_) - c.backlog_reported_ms < 100) return;
  c.backlog_reported = want;
  c.backlog_reported_ms = static_cast<uint32_t>(now_ms_);
  raise(c, EventKind::send_backlog_change, RetrieveReason::none, want);
}

void Engine::abort_connection(Tcb& c, bool with_rst, bool raise_event, NetBufferList* request) {
  // C-13, C-17: the RST goes now and nothing more is processed; receives
  // complete at once (no mbuf holds their memory).
  if (with_rst) send_rst(c);
  flush();
  c.flags.aborted = true;
  c.flags.abort_event = raise_event;
  complete_receives(c, Status::request_aborted);
  if (request != nullptr) {
    // Queued last: it completes after every send (C-13).
    request->next = nullptr;
    new (request->target_reserved) SendMeta{c.snd.una, 0, RequestKind::abort};
    hold_buffers(request);
    if (c.send_tail != nullptr) c.send_tail->next = request;
    else c.send_head = request;
    c.send_tail = request;
  }
  enter_closed(c);
  // DESIGN.md buffers: a send completes only once no mbuf references its
  // memory, aborted or not; frames still queued at the NIC hold it.
  if (send_queue_released(c)) {
    finish_abort(c);
  } else {
    c.flags.abort_deferred = true;
    pending_aborts_.push_back(&c);
  }
}

bool Engine::send_queue_released(const Tcb& c) const {
  for (const NetBufferList* n = c.send_head; n != nullptr; n = n->next)
    if (!send_memory_released(n)) return false;
  return true;
}

void Engine::finish_abort(Tcb& c) {
  // C-13 order: a pending graceful disconnect, then the sends, then the
  // abortive disconnect; then the ABORT event (C-17).
  c.flags.abort_deferred = false;
  complete_disconnect(c, Status::request_aborted);
  NetBufferList* request = nullptr;  // sends posted after it may follow it in the queue
  c.send_tail = nullptr;
  for (NetBufferList** link = &c.send_head; *link != nullptr;) {
    if (meta<SendMeta>(*link).kind == RequestKind::abort) {
      request = *link;
      *link = request->next;
      request->next = nullptr;
      continue;
    }
    c.send_tail = *link;
    link = &(*link)->next;
  }
  complete_sends_aborted(c, Status::request_aborted);
  if (request != nullptr) {
    request->status = Status::success;  // the RST was sent (or the connection had ended)
    request->bytes_transferred = 0;
    host_.disconnect_complete(c.handle, c.host_context, request);
  }
  if (c.flags.abort_event) raise(c, EventKind::abort, RetrieveReason::none);
  c.flags.abort_event = false;
}

void Engine::enter_closed(Tcb& c) {
  // The connection's resources go; the record stays for the host's
  // terminate (C-20). Segments for it now reach the slow path.
  for (size_t k = 0; k < size_t(TimerKind::count); ++k) c.due_ms[k] = 0;
  wheel_.cancel(c.timer);
  if (c.flags.in_table) {
    const Key key = key_of(c);
    rte_hash_del_key(table_, &key);
    c.flags.in_table = false;
  }
  ooo_free(c);
  c.flags.closed = true;
  if (c.state != TcpState::time_wait) c.state = TcpState::closed;
}

void Engine::enter_time_wait(Tcb& c) {
  // C-19: the full state goes; a compact entry answers for 2·MSL. An ACK
  // still owed (for the peer's FIN, say) leaves first.
  if (c.flags.ack_now || c.rcv.unacked_segs != 0) send_ack(c);
  c.state = TcpState::time_wait;
  const Key key = key_of(c);
  uint32_t slot = take_time_wait_record();
  if (slot == kNoTimeWait && tw_oldest_ != kNoTimeWait) {
    // The table is full: the oldest entry, the nearest its end, makes room.
    // TIME_WAIT is there so that a retransmitted FIN of the peer's is ACKed
    // (RFC 9293 §3.3.2) and old duplicates die out for 2·MSL before the
    // 4-tuple carries a new connection (§3.6, RFC 6191 §1). The oldest entry
    // has had most of that: the peer's FIN retransmissions come within its
    // RTO backoff, long over, and a new incarnation of its 4-tuple is still
    // told apart by timestamps or a higher sequence number (RFC 6191 §2, as
    // time_wait_input does). The connection closing now has had none of it,
    // and is the one most likely to see its last ACK lost. Linux does the
    // opposite, the closing socket goes without TIME_WAIT ("time wait bucket
    // table overflow"). Counted: a rising time_wait_evictions says the table
    // is small for the close rate (chimneyd's time-wait-entries).
    ++stats_.time_wait_evictions;
    drop_time_wait(tw_[tw_oldest_]);
    slot = take_time_wait_record();
  }
  if (slot != kNoTimeWait && rte_hash_add_key_data(tw_table_, &key, reinterpret_cast<void*>(uintptr_t{slot})) >= 0) {
    TimeWait& tw = tw_[slot];
    tw.key = {key.remote_ip, key.local_ip, key.remote_port, key.local_port};
    tw.snd_nxt = c.snd.nxt;
    tw.rcv_nxt = c.rcv.nxt;
    tw.ts_recent = c.rcv.ts_recent;
    tw.timestamps = c.flags.timestamps;
    tw.ts_offset = c.ts_offset;
    const uint32_t offered = seq_gt(c.rcv.adv, c.rcv.nxt) ? c.rcv.adv - c.rcv.nxt : 0;
    const uint32_t units = (offered + (1u << c.rcv.wscale) - 1) >> c.rcv.wscale;  // rounded up as in header()
    tw.window = static_cast<uint16_t>(units > 65535 ? 65535 : units);
    std::memcpy(tw.local_mac, c.local_mac, 6);
    std::memcpy(tw.remote_mac, c.remote_mac, 6);
    tw.expires_ms = static_cast<uint32_t>(now_ms_ + 2ull * cfg_.msl_ms);
    link_newest(slot);
    ++tw_used_;
  } else {
    // No entry (a table of 0, or the hash found no place for the key):
    // the connection goes without TIME_WAIT, as in Linux on overflow.
    if (slot != kNoTimeWait) {
      tw_[slot].next = tw_free_;
      tw_free_ = slot;
    }
    ++stats_.time_wait_overflows;
  }
  enter_closed(c);
}

uint32_t Engine::take_time_wait_record() {
  if (tw_free_ != kNoTimeWait) {
    const uint32_t slot = tw_free_;
    tw_free_ = tw_[slot].next;
    return slot;
  }
  return tw_untouched_ < cfg_.time_wait_entries ? tw_untouched_++ : kNoTimeWait;
}

void Engine::link_newest(uint32_t slot) {
  TimeWait& tw = tw_[slot];
  tw.prev = tw_newest_;
  tw.next = kNoTimeWait;
  if (tw_newest_ != kNoTimeWait) tw_[tw_newest_].next = slot;
  else tw_oldest_ = slot;
  tw_newest_ = slot;
}

void Engine::unlink_time_wait(uint32_t slot) {
  TimeWait& tw = tw_[slot];
  if (tw.prev != kNoTimeWait) tw_[tw.prev].next = tw.next;
  else tw_oldest_ = tw.next;
  if (tw.next != kNoTimeWait) tw_[tw.next].prev = tw.prev;
  else tw_newest_ = tw.prev;
}

void Engine::drop_time_wait(TimeWait& tw) {
  const uint32_t slot = static_cast<uint32_t>(&tw - tw_.get());
  const Key key = key_of(tw);
  rte_hash_del_key(tw_table_, &key);
  unlink_time_wait(slot);
  tw.next = tw_free_;
  tw_free_ = slot;
  --tw_used_;
}

void Engine::restart_time_wait(TimeWait& tw) {
  // Every entry lasts 2·MSL, so the one restarted becomes the newest.
  const uint32_t slot = static_cast<uint32_t>(&tw - tw_.get());
  tw.expires_ms = static_cast<uint32_t>(now_ms_ + 2ull * cfg_.msl_ms);
  unlink_time_wait(slot);
  link_newest(slot);
}

void Engine::finish_terminate(Tcb& c) {
  if (c.disconnect != nullptr) complete_disconnect(c, Status::upload_in_progress);
  // C-21: unfinished sends go back in order, their data start at snd_una.
  DelegatedState d;
  query_delegated(c.handle, &d);
  NetBufferList* returned = c.send_head;
  for (NetBufferList* n = returned; n != nullptr; n = n->next) {
    const SendMeta& sm = meta<SendMeta>(n);
    const uint32_t acked = acked_bytes(sm, c.snd.una);
    advance_acked(n, acked);
    n->bytes_transferred = acked;
    n->status = Status::upload_in_progress;
  }
  d.send_data = returned;
  c.send_head = c.send_tail = nullptr;
  d.receive_data.reserve(c.rx_buffered.bytes);
  for (rte_mbuf* m = c.rx_buffered.head; m != nullptr;) {
    const uint8_t* p = rte_pktmbuf_mtod(m, const uint8_t*);
    d.receive_data.insert(d.receive_data.end(), p, p + m->data_len);
    rte_mbuf* next = m->next;
    m->next = nullptr;
    rte_pktmbuf_free_seg(m);
    m = next;
  }
  c.rx_buffered = ByteQueue{};
  if (c.flags.fin_received && !c.flags.fin_indicated) d.rcv_nxt = c.rcv.nxt;  // FIN is in the state
  const ConnectionHandle h = c.handle;
  void* ctx = c.host_context;
  release(c);
  host_.terminate_complete(h, ctx, Status::success, d);
}

void Engine::release(Tcb& c) {
  if (!c.flags.closed) enter_closed(c);
  // The slot is reused by the next offload (a new Tcb over it): its timer
  // node must be in no slot list of the wheel by then.
  wheel_.cancel(c.timer);
  const uint32_t slot = c.handle.value & kSlotMask;
  generation_[slot] = static_cast<uint16_t>(generation_[slot] + 1 == 0 ? 1 : generation_[slot] + 1);
  if (generation_[slot] >= (1u << (32 - kSlotBits))) generation_[slot] = 1;
  c.handle = ConnectionHandle{};
  free_slots_.push_back(slot);
  --used_;
}

void Engine::poll(uint64_t now_us) {
  now_us_ = now_us;
  now_ms_ = now_us / 1000;
  for (const PendingOffload& p : pending_offloads_) host_.offload_complete(p.handle, p.host_context, p.status);
  pending_offloads_.clear();
  wheel_.advance(now_ms_, [this](TimerNode& n) {
    on_timer(*reinterpret_cast<Tcb*>(reinterpret_cast<uint8_t*>(&n) - offsetof(Tcb, timer)));
  });
  // TIME_WAIT entries whose 2·MSL ran out, oldest first (they end in order).
  while (tw_oldest_ != kNoTimeWait &&
         static_cast<int32_t>(static_cast<uint32_t>(now_ms_) - tw_[tw_oldest_].expires_ms) >= 0)
    drop_time_wait(tw_[tw_oldest_]);
  // Aborted connections' completions, then terminates, wait until the NIC
  // released every send buffer (DESIGN.md buffers); aborts first, so that
  // a terminate behind an abort returns nothing it completed (C-13, C-21).
  const auto finish_released = [this](std::vector<Tcb*>& pending, void (Engine::*finish)(Tcb&)) {
    for (size_t i = 0; i < pending.size();) {
      Tcb& c = *pending[i];
      if (!send_queue_released(c)) {
        ++i;
        continue;
      }
      pending[i] = pending.back();
      pending.pop_back();
      (this->*finish)(c);
    }
  };
  finish_released(pending_aborts_, &Engine::finish_abort);
  finish_released(pending_terminates_, &Engine::finish_terminate);
  run_output_list();
  flush();
}

}  // namespace chimney::tcp
