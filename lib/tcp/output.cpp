// The send half: segmentation of the send queue (C-5, C-8), Nagle and
// sender-side SWS avoidance (RFC 9293 §3.7.4, §3.8.6.2.1), ACKs (delayed per
// RFC 1122 §4.2.3.2 / RFC 5681 §4.2), zero-copy payload (DESIGN.md buffers),
// and the timers: retransmission (RFC 6298), persist (RFC 9293 §3.8.6.1),
// keepalive (RFC 1122 §4.2.3.6), push (C-9).
#include <cstring>
#include <iterator>

#include <rte_eal.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_memory.h>

#include "tcp/engine_internal.hpp"

namespace chimney::tcp {

rte_mbuf* Engine::build_header(const net::TcpFrameSpec& h) {
  rte_mbuf* m = net::build_tcp_frame(cfg_.header_pool, h);
  if (m == nullptr) ++stats_.no_mbuf;
  return m;
}

void Engine::finish_segment(rte_mbuf* m) {
  auto* ip = rte_pktmbuf_mtod_offset(m, rte_ipv4_hdr*, m->l2_len);
  ip->total_length = rte_cpu_to_be_16(static_cast<uint16_t>(rte_pktmbuf_pkt_len(m) - m->l2_len));
  net::finalize_tx_checksums(m, cfg_.tx_caps);
  transmit(m);
}

rte_mbuf* Engine::header(Tcb& c, uint32_t seq, uint8_t tcp_flags, bool sack_blocks, uint32_t payload_len) {
  net::TcpFrameSpec h;
  std::memcpy(h.src_mac.addr_bytes, c.local_mac, 6);
  std::memcpy(h.dst_mac.addr_bytes, c.remote_mac, 6);
  h.src_ip = net::Ipv4Addr{c.local_ip};
  h.dst_ip = net::Ipv4Addr{c.remote_ip};
  h.src_port = c.local_port;
  h.dst_port = c.remote_port;
  h.seq = seq;
  h.flags = tcp_flags;
  h.ttl = c.ttl;
  h.tos = c.tos;
  h.ip_id = net::next_ip_id(c.ip_id);  // C-8: 0x8000-0xFFFF
  if (tcp_flags & kAck) {
    h.ack = c.rcv.nxt;
    // RFC 7323 §2.3: SEG.WND = RCV.WND >> Rcv.Wind.Shift. Rounding down would
    // put the right edge up to 2^shift - 1 bytes left of the one offered
    // before whenever RCV.NXT moved by other than whole units (RFC 9293
    // §3.8.6.2.2: the window SHOULD NOT shrink); round up, as Linux does, and
    // take the edge the peer is told as ours.
    const uint32_t unit = (1u << c.rcv.wscale) - 1;
    uint32_t wnd = (advertise_window(c) + unit) >> c.rcv.wscale;
    if (wnd > 65535) wnd = 65535;
    if (seq_gt(c.rcv.nxt + (wnd << c.rcv.wscale), c.rcv.adv)) c.rcv.adv = c.rcv.nxt + (wnd << c.rcv.wscale);
    h.window = static_cast<uint16_t>(wnd);
  }
  if (c.flags.timestamps) {
    h.opts.has_timestamp = true;  // RFC 7323 §3.2: on every segment
    h.opts.ts_val = ts_now(c);
    h.opts.ts_ecr = c.rcv.ts_recent;
  }
  if (sack_blocks && c.flags.sack && c.ooo != nullptr) {
    // RFC 2018 §4: the block holding the latest arrival first, then the
    // most recently reported ones: a block's recency is that of the latest
    // arrival in it (each was the first block when that arrival was ACKed).
    uint8_t n = 0;
    net::SackBlock ranges[4];
    uint32_t recency[4];
    OooSegment* s = c.ooo;
    net::SackBlock first{};
    bool have_first = false;
    while (s != nullptr) {
      net::SackBlock b{s->seq, s->seq + s->len};
      uint32_t arrival = s->arrival;
      while (s->next != nullptr && s->next->seq == b.right) {
        s = s->next;
        b.right = s->seq + s->len;
        if (seq_gt(s->arrival, arrival)) arrival = s->arrival;
      }
      s = s->next;
      if (!have_first && seq_in(c.last_ooo_seq, b.left, b.right)) {
        first = b;
        have_first = true;
        continue;
      }
      // Keep the most recent blocks, most recent first.
      uint8_t pos = n;
      while (pos > 0 && seq_gt(arrival, recency[pos - 1])) --pos;
      if (pos >= std::size(ranges)) continue;
      for (uint8_t j = n < std::size(ranges) ? n : std::size(ranges) - 1; j > pos; --j) {
        ranges[j] = ranges[j - 1];
        recency[j] = recency[j - 1];
      }
      ranges[pos] = b;
      recency[pos] = arrival;
      if (n < std::size(ranges)) ++n;
    }
    // The blocks take what the payload leaves of the MSS (RFC 6691): 4 bytes
    // of NOP, NOP, kind, length, then 8 a block.
    const uint32_t room = c.snd.mss > payload_len ? c.snd.mss - payload_len : 0;
    const uint32_t fit = room >= 12 ? (room - 4) / 8 : 0;
    const uint32_t max_blocks = fit < h.opts.sack.size() ? fit : h.opts.sack.size();
    uint8_t k = 0;
    if (have_first && k < max_blocks) h.opts.sack[k++] = first;
    for (uint8_t i = 0; i < n && k < max_blocks; ++i) h.opts.sack[k++] = ranges[i];
    h.opts.sack_count = k;
  }
  rte_mbuf* m = build_header(h);
  if (m != nullptr && (tcp_flags & kAck)) {
    // An ACK went out: nothing is owed any more (RFC 1122 §4.2.3.2).
    c.rcv.last_ack_sent = c.rcv.nxt;  // RFC 7323 §4.3 Last.ACK.sent
    c.rcv.unacked_segs = 0;
    c.flags.ack_now = false;
    disarm(c, TimerKind::delayed_ack);
  }
  return m;
}

bool Engine::attach_payload(Tcb& c, rte_mbuf* hdr, uint32_t seq, uint32_t len, bool& psh) {
  // Find the request and NetBuffer holding `seq`: from the cursor when it
  // is at or before `seq` (new data), from the head otherwise (retransmission).
  NetBufferList* n = c.cursor_nbl;
  NetBuffer* b = c.cursor_nb;
  uint32_t b_seq = c.cursor_seq;
  if (n == nullptr || seq_lt(seq, b_seq)) {
    n = c.send_head;
    b = n != nullptr ? n->first : nullptr;
    b_seq = n != nullptr ? meta<SendMeta>(n).seq_start : seq;
  }
  const bool va = rte_eal_iova_mode() == RTE_IOVA_VA;
  rte_mbuf* last = hdr;
  while (last->next != nullptr) last = last->next;
  while (len != 0) {
    if (n == nullptr) return false;
    if (b == nullptr || seq_geq(seq, b_seq + b->data_length)) {
      // Past this NetBuffer: the next one, or the next request.
      if (b != nullptr) {
        b_seq += b->data_length;
        b = b->next;
      }
      if (b == nullptr) {
        n = n->next;
        if (n == nullptr) return false;
        b = n->first;
        b_seq = meta<SendMeta>(n).seq_start;
      }
      continue;
    }
    const uint32_t off = seq - b_seq;
    uint32_t piece = b->data_length - off;
    if (piece > len) piece = len;
    if (piece > UINT16_MAX) piece = UINT16_MAX;
    uint8_t* addr = b->data + off;
    if (cfg_.copy_payload) {
      // No mbuf references the host's buffer: it completes on the ACK alone.
      if (!copy_into(hdr, last, addr, piece)) return false;
    } else {
      rte_mbuf* pm = rte_pktmbuf_alloc(cfg_.attach_pool);
      if (pm == nullptr) {
        ++stats_.no_mbuf;
        return false;
      }
      BufferMeta& bm = meta(b);
      rte_mbuf_ext_refcnt_update(&bm.shinfo, 1);
      rte_pktmbuf_attach_extbuf(pm, addr, va ? reinterpret_cast<rte_iova_t>(addr) : rte_mem_virt2iova(addr),
                                static_cast<uint16_t>(piece), &bm.shinfo);
      pm->data_len = static_cast<uint16_t>(piece);
      pm->pkt_len = piece;
      last->next = pm;
      last = pm;
      hdr->nb_segs = static_cast<uint16_t>(hdr->nb_segs + 1);
      hdr->pkt_len += piece;
    }
    seq += piece;
    len -= piece;
    // C-8: PSH where a request ends.
    if (seq == meta<SendMeta>(n).seq_start + meta<SendMeta>(n).length) psh = true;
  }
  // Remember where new data continues.
  if (seq_geq(seq, c.cursor_seq)) {
    c.cursor_nbl = n;
    c.cursor_nb = b;
    c.cursor_seq = b_seq;
  }
  return true;
}

bool Engine::copy_into(rte_mbuf* hdr, rte_mbuf*& last, const uint8_t* src, uint32_t len) {
  // Appends after the headers, then into more header_pool mbufs as needed
  // (the caller frees the whole chain on failure).
  while (len != 0) {
    uint16_t room = rte_pktmbuf_tailroom(last);
    if (room == 0) {
      rte_mbuf* m = rte_pktmbuf_alloc(cfg_.header_pool);
      if (m == nullptr) {
        ++stats_.no_mbuf;
        return false;
      }
      last->next = m;
      last = m;
      hdr->nb_segs = static_cast<uint16_t>(hdr->nb_segs + 1);
      room = rte_pktmbuf_tailroom(m);
    }
    const uint16_t n = static_cast<uint16_t>(len < room ? len : room);
    std::memcpy(rte_pktmbuf_mtod_offset(last, uint8_t*, last->data_len), src, n);
    last->data_len = static_cast<uint16_t>(last->data_len + n);
    hdr->pkt_len += n;
    src += n;
    len -= n;
  }
  return true;
}

bool Engine::send_segment(Tcb& c, uint32_t seq, uint32_t len, uint8_t tcp_flags, bool retransmission) {
  rte_mbuf* m = header(c, seq, tcp_flags, /*sack_blocks=*/true, len);
  if (m == nullptr) return false;
  bool psh = false;
  if (len != 0 && !attach_payload(c, m, seq, len, psh)) {
    rte_pktmbuf_free(m);
    return false;
  }
  if (psh) rte_pktmbuf_mtod_offset(m, rte_tcp_hdr*, m->l2_len + m->l3_len)->tcp_flags |= kPsh;
  finish_segment(m);
  ++stats_.segments_out;
  stats_.bytes_out += len;
  if (retransmission) {
    if (c.flags.timed && seq_leq(seq, c.rtt.timed_seq)) c.flags.timed = false;  // Karn
  } else if ((len != 0 || (tcp_flags & kFin)) && !c.flags.timed) {
    c.flags.timed = true;
    c.rtt.timed_seq = seq;
    c.rtt.timed_at_us = now_us_;
  }
  return true;
}

void Engine::send_ack(Tcb& c) {
  // SEQ = SND.MAX, not SND.NXT: after a timeout snd.nxt went back, and an
  // ACK below the peer's rcv.nxt would fail its acceptability test (as BSD).
  rte_mbuf* m = header(c, c.snd.max, kAck, /*sack_blocks=*/true, 0);
  if (m == nullptr) return;
  finish_segment(m);
  ++stats_.segments_out;
  ++stats_.pure_acks_out;
}

void Engine::send_rst(Tcb& c) {
  // RFC 9293 §3.10.4 ABORT: <SEQ=SND.NXT><CTL=RST> (with the ACK, as Linux);
  // snd.max, the peer's rcv.nxt, when a timeout moved snd.nxt back.
  rte_mbuf* m = header(c, c.snd.max, kRst | kAck, false, 0);
  if (m == nullptr) return;
  finish_segment(m);
  ++stats_.segments_out;
  ++stats_.rst_out;
}

void Engine::send_time_wait_ack(const TimeWait& tw) {
  net::TcpFrameSpec h;
  std::memcpy(h.src_mac.addr_bytes, tw.local_mac, 6);
  std::memcpy(h.dst_mac.addr_bytes, tw.remote_mac, 6);
  h.src_ip = net::Ipv4Addr{tw.key.local_ip};
  h.dst_ip = net::Ipv4Addr{tw.key.remote_ip};
  h.src_port = tw.key.local_port;
  h.dst_port = tw.key.remote_port;
  h.seq = tw.snd_nxt;
  h.ack = tw.rcv_nxt;
  h.window = tw.window;
  h.flags = kAck;
  h.ttl = 64;
  h.ip_id = static_cast<uint16_t>(0x8000 | (now_ms_ & 0x7fff));
  if (tw.timestamps) {
    h.opts.has_timestamp = true;
    h.opts.ts_val = static_cast<uint32_t>(now_ms_) + tw.ts_offset;
    h.opts.ts_ecr = tw.ts_recent;
  }
  rte_mbuf* m = build_header(h);
  if (m == nullptr) return;
  finish_segment(m);
  ++stats_.segments_out;
}

void Engine::transmit(rte_mbuf* m) {
  tx_[tx_n_++] = m;
  if (tx_n_ == tx_.size()) flush();
}

void Engine::flush() {
  if (tx_n_ == 0) return;
  wire_.transmit(tx_.data(), tx_n_);
  tx_n_ = 0;
}

void Engine::mark_output(Tcb& c) {
  if (c.flags.listed_output) return;
  c.flags.listed_output = true;
  c.output_next = output_list_;
  output_list_ = &c;
}

void Engine::run_output_list() {
  // Taken whole: a connection marked again while this runs waits for the next call.
  Tcb* list = output_list_;
  output_list_ = nullptr;
  while (list != nullptr) {
    Tcb* c = list;
    list = c->output_next;
    c->flags.listed_output = false;
    if (c->handle.value != 0) output(*c);
  }
}

void Engine::output(Tcb& c) {
  if (c.flags.closed || c.flags.terminating) return;
  complete_sends(c);
  if (c.send_head != nullptr && seq_leq(meta<SendMeta>(c.send_head).seq_start + meta<SendMeta>(c.send_head).length, c.snd.una) &&
      !send_memory_released(c.send_head))
    mark_output(c);  // ACKed, but an mbuf still holds it: look again next poll
  if (c.flags.in_recovery && c.flags.sack) {
    sack_recovery_output(c);
  } else {
    const uint32_t end = data_end(c);
    for (;;) {
      // RFC 3042 limited transmit: the first two duplicate ACKs each let
      // one new segment out, so that a small window can still yield three.
      const uint32_t cwnd = c.snd.cwnd + (c.flags.in_recovery ? 0 : (c.snd.dupacks < 2 ? c.snd.dupacks : 2) * c.snd.mss);
      const uint32_t win = c.snd.wnd < cwnd ? c.snd.wnd : cwnd;
      const uint32_t usable = seq_gt(c.snd.una + win, c.snd.nxt) ? c.snd.una + win - c.snd.nxt : 0;
      const uint32_t avail = seq_gt(end, c.snd.nxt) ? end - c.snd.nxt : 0;
      uint32_t len = avail < usable ? avail : usable;
      const uint32_t mss = c.snd.mss - sack_space(c);
      if (len > mss) len = mss;
      // The FIN rides on the last data segment (C-11), or goes alone.
      const bool fin = c.flags.fin_queued && c.snd.nxt + len == end && seq_lt(c.snd.nxt + len, c.snd.queued_end);
      if (len == 0 && !fin) break;
      if (len < mss && !fin) {
        // RFC 9293 §3.8.6.2.1: no small segment while more data waits for
        // window, unless it is half the largest window ever offered.
        if (len < avail && len < c.snd.max_wnd / 2 && !c.flags.sws_override) break;
        // RFC 9293 §3.7.4 Nagle: one small segment outstanding at a time.
        // New data only: a retransmission (snd.nxt went back after a
        // timeout) is what is outstanding, and must not wait for itself.
        if (c.nagle && len == avail && c.snd.una != c.snd.max && !seq_lt(c.snd.nxt, c.snd.max)) break;
      }
      const bool retransmission = seq_lt(c.snd.nxt, c.snd.max);
      if (!send_segment(c, c.snd.nxt, len, kAck | (fin ? kFin : 0), retransmission)) break;
      if (retransmission) ++stats_.retransmits;
      c.snd.nxt += len + (fin ? 1 : 0);
      if (seq_gt(c.snd.nxt, c.snd.max)) c.snd.max = c.snd.nxt;
      if (c.due_ms[size_t(TimerKind::retransmit)] == 0) arm(c, TimerKind::retransmit, c.rtt.rto_ms);
      if (!retransmission) arm_loss_probe(c);
    }
    // Data waits with nothing in flight, so no ACK will come to clock it out.
    // Behind a zero window: probe it (RFC 9293 §3.8.6.1). Behind a window
    // too small to use (sender SWS avoidance): the override timeout of
    // RFC 9293 §3.8.6.2.1 (0.1 to 1 s) sends what fits; either way a lost
    // window update cannot stall the connection.
    if (seq_gt(end, c.snd.nxt) && c.snd.una == c.snd.max && c.due_ms[size_t(TimerKind::persist)] == 0)
      arm(c, TimerKind::persist, c.snd.wnd == 0 || c.rtt.rto_ms < 1000 ? c.rtt.rto_ms : 1000);
  }
  // An ACK owed and not carried by data: at once when asked (out of order,
  // window update, ...) or two segments in (RFC 5681 §4.2), else delayed.
  if (c.flags.ack_now || c.rcv.unacked_segs >= 2) send_ack(c);
  else if (c.rcv.unacked_segs == 1 && c.due_ms[size_t(TimerKind::delayed_ack)] == 0)
    arm(c, TimerKind::delayed_ack, cfg_.delayed_ack_ms);
}

void Engine::sack_recovery_output(Tcb& c) {
  // RFC 6675 §5 (simplified scoreboard): holes below the highest SACKed
  // byte are lost; pipe = what is beyond the highest SACK plus what was
  // retransmitted into the holes. Send while pipe + MSS fits in cwnd:
  // first the next hole above HighRxt, then new data.
  const uint32_t high_sack = c.sacked.count != 0 ? c.sacked.blocks[0].right : c.snd.una;
  auto sacked = [&](uint32_t seq) {
    for (uint8_t i = 0; i < c.sacked.count; ++i)
      if (seq_in(seq, c.sacked.blocks[i].left, c.sacked.blocks[i].right)) return true;
    return false;
  };
  auto hole_bytes_below = [&](uint32_t limit) {
    // Bytes in [snd.una, limit) not SACKed.
    uint32_t total = seq_gt(limit, c.snd.una) ? limit - c.snd.una : 0;
    for (uint8_t i = 0; i < c.sacked.count; ++i) {
      const uint32_t l = seq_max(c.sacked.blocks[i].left, c.snd.una);
      const uint32_t r = seq_min(c.sacked.blocks[i].right, limit);
      if (seq_lt(l, r)) total -= r - l;
    }
    return total;
  };
  const uint32_t end = data_end(c);
  for (int guard = 0; guard < 64; ++guard) {
    const uint32_t beyond = seq_gt(c.snd.max, high_sack) ? c.snd.max - high_sack : 0;
    const uint32_t rxt_limit = seq_min(c.high_rxt, high_sack);
    const uint32_t pipe = beyond + hole_bytes_below(rxt_limit);
    if (pipe + c.snd.mss > c.snd.cwnd) break;
    // NextSeg: the first unSACKed byte at or above HighRxt, below high_sack.
    uint32_t seq = seq_max(c.high_rxt, c.snd.una);
    while (seq_lt(seq, high_sack) && sacked(seq)) {
      for (uint8_t i = 0; i < c.sacked.count; ++i)
        if (seq_in(seq, c.sacked.blocks[i].left, c.sacked.blocks[i].right)) seq = c.sacked.blocks[i].right;
    }
    if (seq_lt(seq, high_sack)) {
      uint32_t len = c.snd.mss - sack_space(c);
      for (uint8_t i = 0; i < c.sacked.count; ++i)
        if (seq_gt(c.sacked.blocks[i].left, seq) && c.sacked.blocks[i].left - seq < len) len = c.sacked.blocks[i].left - seq;
      if (seq_gt(seq + len, end)) len = end - seq;
      const bool fin = c.flags.fin_queued && seq + len == end && seq_gt(c.snd.max, end);
      if (len == 0 && !fin) break;
      if (!send_segment(c, seq, len, kAck | (fin ? kFin : 0), /*retransmission=*/true)) break;
      ++stats_.retransmits;
      if (seq == c.snd.una) c.rxt_mark = c.snd.max;
      c.high_rxt = seq + len;
      continue;
    }
    // No hole left to repair: new data, as the window allows.
    const uint32_t usable = seq_gt(c.snd.una + c.snd.wnd, c.snd.nxt) ? c.snd.una + c.snd.wnd - c.snd.nxt : 0;
    const uint32_t avail = seq_gt(end, c.snd.nxt) ? end - c.snd.nxt : 0;
    uint32_t len = avail < usable ? avail : usable;
    if (len > c.snd.mss - sack_space(c)) len = c.snd.mss - sack_space(c);
    const bool fin = c.flags.fin_queued && c.snd.nxt + len == end && seq_lt(c.snd.nxt + len, c.snd.queued_end);
    if (len == 0 && !fin) break;
    const bool retransmission = seq_lt(c.snd.nxt, c.snd.max);
    if (!send_segment(c, c.snd.nxt, len, kAck | (fin ? kFin : 0), retransmission)) break;
    c.snd.nxt += len + (fin ? 1 : 0);
    if (seq_gt(c.snd.nxt, c.snd.max)) c.snd.max = c.snd.nxt;
  }
  if (c.due_ms[size_t(TimerKind::retransmit)] == 0) arm(c, TimerKind::retransmit, c.rtt.rto_ms);
}

// ---------------------------------------------------------------------------
// Timers: one wheel node per connection, a deadline per kind.

void Engine::arm(Tcb& c, TimerKind k, uint32_t delay_ms) {
  uint32_t due = static_cast<uint32_t>(now_ms_ + (delay_ms == 0 ? 1 : delay_ms));
  if (due == 0) due = 1;
  c.due_ms[size_t(k)] = due;
  rearm_wheel(c);
}

void Engine::disarm(Tcb& c, TimerKind k) {
  c.due_ms[size_t(k)] = 0;  // the wheel node may fire for nothing and re-arm
}

void Engine::rearm_wheel(Tcb& c) {
  // The node waits for the earliest deadline.
  const uint32_t now = static_cast<uint32_t>(now_ms_);
  uint32_t earliest = 0;
  bool any = false;
  for (uint32_t d : c.due_ms) {
    if (d == 0) continue;
    const uint32_t left = static_cast<int32_t>(d - now) < 0 ? 0 : d - now;
    if (!any || left < earliest) earliest = left;
    any = true;
  }
  if (!any) {
    wheel_.cancel(c.timer);
    return;
  }
  const uint64_t due = now_ms_ + earliest;
  if (!c.timer.linked() || c.timer.due_ms > due) wheel_.arm(c.timer, due);
}

void Engine::on_timer(Tcb& c) {
  const uint32_t now = static_cast<uint32_t>(now_ms_);
  auto due = [&](TimerKind k) {
    const uint32_t d = c.due_ms[size_t(k)];
    if (d == 0 || static_cast<int32_t>(d - now) > 0) return false;
    c.due_ms[size_t(k)] = 0;
    return true;
  };
  if (!c.flags.closed && !c.flags.terminating) {
    if (due(TimerKind::delayed_ack)) {
      ++stats_.delayed_acks;
      send_ack(c);
    }
    if (due(TimerKind::push)) complete_filled_receives(c, /*push=*/true);
    if (due(TimerKind::retransmit)) on_retransmit_timeout(c);
    if (due(TimerKind::loss_probe)) on_loss_probe_timeout(c);
    if (due(TimerKind::reorder)) on_reorder_timeout(c);
    if (due(TimerKind::persist)) on_persist_timeout(c);
    if (due(TimerKind::keepalive)) on_keepalive_timeout(c);
  }
  if (!c.flags.closed) rearm_wheel(c);
  run_output_list();
}

void Engine::restart_retransmit_timer(Tcb& c) { arm(c, TimerKind::retransmit, c.rtt.rto_ms); }

void Engine::rtt_sample(Tcb& c, uint64_t r) {
  // RFC 6298 §2.2, §2.3 (alpha 1/8, beta 1/4), G = 1 ms.
  if (r == 0) r = 1;
  const uint32_t rtt = r > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(r);
  if (c.rtt.srtt_us == 0) {
    c.rtt.srtt_us = rtt;
    c.rtt.rttvar_us = rtt / 2;
  } else {
    const uint32_t diff = c.rtt.srtt_us > rtt ? c.rtt.srtt_us - rtt : rtt - c.rtt.srtt_us;
    c.rtt.rttvar_us = (3 * c.rtt.rttvar_us + diff) / 4;
    c.rtt.srtt_us = (7 * c.rtt.srtt_us + rtt) / 8;
  }
  const uint32_t var = 4 * c.rtt.rttvar_us > 1000 ? 4 * c.rtt.rttvar_us : 1000;
  uint32_t rto = (c.rtt.srtt_us + var + 999) / 1000;
  if (rto < cfg_.rto_min_ms) rto = cfg_.rto_min_ms;
  if (rto > cfg_.rto_max_ms) rto = cfg_.rto_max_ms;
  c.rtt.rto_ms = rto;
}

void Engine::on_retransmit_timeout(Tcb& c) {
  if (c.snd.una == c.snd.max) return;
  if (c.snd.wnd == 0) {
    // RFC 9293 §3.8.6: the peer shrank its window to zero with data in
    // flight. No loss, and no reason to time the connection out for data
    // beyond the right edge (MUST-34: max_retransmissions does not count
    // this): probe the window the standard way (MUST-35), backing off as any
    // RTO; the persist limit applies (C-18). When it opens, go on from SND.UNA.
    if (!send_window_probe(c)) return;
  } else {
    ++stats_.rto_expirations;
    // C-18: the retransmission limit from the cached state asks for an upload.
    if (++c.total_rt > c.max_retransmissions) {
      raise(c, EventKind::retrieve, RetrieveReason::timeout_expiration);
      return;  // no more retransmissions; the host terminates
    }
    // RFC 6298 §5.5-5.7, RFC 5681 §3.1 eq. 4, RFC 6582 §4 (recover = snd.max).
    congestion_ops(c.cc_algo).on_rto(c, now_ms_);
  }
  c.flags.in_recovery = false;
  c.flags.tlp_in_flight = false;
  disarm(c, TimerKind::loss_probe);
  disarm(c, TimerKind::reorder);
  c.snd.dupacks = 0;
  c.snd.recover = c.snd.max;
  c.sacked.count = 0;  // RFC 2018 §8: the receiver may have reneged
  c.high_rxt = c.snd.una;
  c.snd.nxt = c.snd.una;  // go back: resend from the oldest unACKed byte
  c.flags.timed = false;  // Karn
  c.rtt.rto_ms = c.rtt.rto_ms * 2 > cfg_.rto_max_ms ? cfg_.rto_max_ms : c.rtt.rto_ms * 2;
  arm(c, TimerKind::retransmit, c.rtt.rto_ms);
  output(c);
}

void Engine::arm_loss_probe(Tcb& c) {
  // RFC 8985 §7.2: in the open state (no recovery), with SACK, an RTT
  // sample and no probe already out, a tail loss is probed for after
  // PTO = 2·SRTT (plus the peer's delayed-ACK time when only one segment is
  // in flight), never later than the RTO. Floor 10 ms: the timer's
  // granularity and reordering on fast paths.
  if (!c.flags.sack || c.flags.in_recovery || c.flags.tlp_in_flight || c.rtt.srtt_us == 0 ||
      c.snd.una == c.snd.max) {
    disarm(c, TimerKind::loss_probe);
    return;
  }
  uint32_t pto = 2 * c.rtt.srtt_us / 1000;
  if (flight_size(c) <= c.snd.mss) pto += cfg_.delayed_ack_ms;
  if (pto < 10) pto = 10;
  if (pto >= c.rtt.rto_ms) {
    disarm(c, TimerKind::loss_probe);
    return;
  }
  arm(c, TimerKind::loss_probe, pto);
}

void Engine::on_loss_probe_timeout(Tcb& c) {
  if (!c.flags.sack || c.flags.in_recovery || c.flags.tlp_in_flight || c.snd.una == c.snd.max) return;
  // RFC 8985 §7.3: new data if the peer's window takes it (cwnd aside),
  // else the last segment sent again; then the RTO watches it.
  const uint32_t end = data_end(c);
  const uint32_t usable = seq_gt(c.snd.una + c.snd.wnd, c.snd.nxt) ? c.snd.una + c.snd.wnd - c.snd.nxt : 0;
  const uint32_t avail = seq_gt(end, c.snd.nxt) ? end - c.snd.nxt : 0;
  const uint32_t mss = c.snd.mss - sack_space(c);
  bool sent = false;
  if (c.snd.nxt == c.snd.max && avail != 0 && usable != 0) {
    uint32_t len = avail < usable ? avail : usable;
    if (len > mss) len = mss;
    const bool fin = c.flags.fin_queued && c.snd.nxt + len == end && seq_lt(c.snd.nxt + len, c.snd.queued_end);
    sent = send_segment(c, c.snd.nxt, len, kAck | (fin ? kFin : 0), /*retransmission=*/false);
    if (sent) {
      c.snd.nxt += len + (fin ? 1 : 0);
      c.snd.max = c.snd.nxt;
      c.flags.tlp_retrans = false;
    }
  } else {
    const uint32_t data_max = seq_gt(c.snd.max, end) ? end : c.snd.max;  // a FIN sent lies past the data
    const uint32_t len = data_max - c.snd.una < mss ? data_max - c.snd.una : mss;
    const uint32_t seq = data_max - len;
    const bool fin = seq_gt(c.snd.max, end);
    if (len != 0 || fin) {
      sent = send_segment(c, seq, len, kAck | (fin ? kFin : 0), /*retransmission=*/true);
      if (sent) {
        ++stats_.retransmits;
        c.flags.tlp_retrans = true;
      }
    }
  }
  if (!sent) return;
  ++stats_.loss_probes;
  c.flags.tlp_in_flight = true;
  c.tlp_end_seq = c.snd.max;
  restart_retransmit_timer(c);
}

void Engine::on_reorder_timeout(Tcb& c) {
  // RFC 8985 §6.2-6.3, without per-segment send times: the reordering
  // window has passed since SACKs showed data sent after the hole at
  // snd.una (or after its retransmission) arriving, and the hole is still
  // there: it is lost, however few duplicate ACKs a small window yields.
  if (c.snd.una == c.snd.max || c.sacked.count == 0 || !c.flags.sack) return;
  ++stats_.reorder_timeouts;
  if (!c.flags.in_recovery) {
    enter_recovery(c);
  } else {
    c.high_rxt = c.snd.una;  // the retransmissions into the holes are lost again
    c.rxt_mark = c.snd.max;
  }
  mark_output(c);
}

void Engine::on_persist_timeout(Tcb& c) {
  if (c.snd.una != c.snd.max || !seq_gt(data_end(c), c.snd.nxt)) return;
  if (c.snd.wnd != 0) {
    // RFC 9293 §3.8.6.2.1 (d): the data is pushed (C-8) and the override
    // timeout ran out: send what the window allows now.
    c.flags.sws_override = true;
    output(c);
    c.flags.sws_override = false;
    return;
  }
  if (!send_window_probe(c)) return;
  ++c.persist_probes;
  uint64_t backoff = uint64_t{c.rtt.rto_ms} << (c.persist_probes < 10 ? c.persist_probes : 10);
  if (backoff > cfg_.persist_max_ms) backoff = cfg_.persist_max_ms;
  arm(c, TimerKind::persist, static_cast<uint32_t>(backoff));
}

bool Engine::send_window_probe(Tcb& c) {
  // C-18: a persist limit from the cached state, on probes left unanswered
  // (RFC 1122 §4.2.2.17: the connection stays open while the peer answers).
  if (c.max_persist_probes != 0 && c.persist_unanswered >= c.max_persist_probes) {
    raise(c, EventKind::retrieve, RetrieveReason::timeout_expiration);
    return false;
  }
  // A zero-window probe: an old sequence number with no data makes the peer
  // answer with its current window (as Linux does).
  ++stats_.window_probes;
  ++c.persist_unanswered;
  rte_mbuf* m = header(c, c.snd.una - 1, kAck, false, 0);
  if (m != nullptr) {
    finish_segment(m);
    ++stats_.segments_out;
  }
  return true;
}

void Engine::on_keepalive_timeout(Tcb& c) {
  if (!c.keepalive) return;
  // RFC 1122 §4.2.3.6: only an idle connection is probed; with data in
  // flight the retransmission timer and its limit watch the peer.
  if (c.snd.una != c.snd.max) {
    arm(c, TimerKind::keepalive, c.keepalive_interval_ms);
    return;
  }
  const uint32_t idle = static_cast<uint32_t>(now_ms_) - c.last_rx_ms;
  if (c.keepalive_probes_sent == 0 && idle < c.keepalive_timeout_ms) {
    arm(c, TimerKind::keepalive, c.keepalive_timeout_ms - idle);
    return;
  }
  if (c.keepalive_probes_sent >= c.keepalive_max_probes) {
    raise(c, EventKind::retrieve, RetrieveReason::timeout_expiration);
    return;
  }
  // RFC 1122 §4.2.3.6: an old sequence number (SND.UNA-1), no data.
  ++stats_.keepalive_probes;
  ++c.keepalive_probes_sent;
  rte_mbuf* m = header(c, c.snd.una - 1, kAck, false, 0);
  if (m != nullptr) {
    finish_segment(m);
    ++stats_.segments_out;
  }
  arm(c, TimerKind::keepalive, c.keepalive_interval_ms);
}

}  // namespace chimney::tcp
