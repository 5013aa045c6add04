// The receive half: segment text and FIN (RFC 9293 §3.10.7.4 seventh and
// eighth), out-of-order reassembly with a bounded budget, delivery to posted
// receives or by indication (C-9, C-10, C-16), and the advertised window
// without silly-window syndrome (RFC 9293 §3.8.6.2.2).
#include <cstring>

#include "tcp/engine_internal.hpp"

namespace chimney::tcp {

namespace {

// Drops the first `n` bytes of a payload-only chain; returns the new head
// (nullptr when nothing is left).
rte_mbuf* drop_front(rte_mbuf* m, uint32_t n) {
  while (m != nullptr && n != 0) {
    if (m->data_len <= n) {
      n -= m->data_len;
      rte_mbuf* next = m->next;
      m->next = nullptr;
      rte_pktmbuf_free_seg(m);
      m = next;
    } else {
      m->data_off = static_cast<uint16_t>(m->data_off + n);
      m->data_len = static_cast<uint16_t>(m->data_len - n);
      n = 0;
    }
  }
  return m;
}

// Keeps the first `len` bytes of a payload-only chain, frees the rest.
rte_mbuf* keep_front(rte_mbuf* m, uint32_t len) {
  if (len == 0) {
    while (m != nullptr) {
      rte_mbuf* next = m->next;
      m->next = nullptr;
      rte_pktmbuf_free_seg(m);
      m = next;
    }
    return nullptr;
  }
  rte_mbuf* seg = m;
  uint32_t left = len;
  while (seg != nullptr && seg->data_len < left) {
    left -= seg->data_len;
    seg = seg->next;
  }
  if (seg != nullptr) {
    seg->data_len = static_cast<uint16_t>(left);
    rte_mbuf* rest = seg->next;
    seg->next = nullptr;
    keep_front(rest, 0);
  }
  return m;
}

void queue_append(ByteQueue& q, rte_mbuf* m) {
  while (m != nullptr) {
    rte_mbuf* next = m->next;
    m->next = nullptr;
    if (m->data_len == 0) {
      rte_pktmbuf_free_seg(m);
    } else {
      m->nb_segs = 1;
      m->pkt_len = m->data_len;
      if (q.tail != nullptr) q.tail->next = m;
      else q.head = m;
      q.tail = m;
      q.bytes += m->data_len;
    }
    m = next;
  }
}

void queue_consume(ByteQueue& q, uint32_t n) {
  q.bytes -= n;
  q.head = drop_front(q.head, n);
  if (q.head == nullptr) q.tail = nullptr;
}

}  // namespace

void Engine::process_data(Tcb& c, rte_mbuf* m, uint32_t seq, uint32_t len, bool fin, bool psh) {
  // Payload only from here on.
  rte_pktmbuf_adj(m, static_cast<uint16_t>(m->l2_len + m->l3_len + m->l4_len));
  const uint32_t total = rte_pktmbuf_pkt_len(m);
  m = keep_front(m, len < total ? len : total);  // Ethernet padding, if any
  // Text is taken in ESTABLISHED, FIN_WAIT_1 and FIN_WAIT_2 only; after the
  // peer's FIN a retransmission is just acknowledged.
  if (c.flags.fin_received) {
    keep_front(m, 0);
    if (len != 0 || fin) {
      c.flags.ack_now = true;
      mark_output(c);
    }
    return;
  }
  // Trim what was received already, and what lies beyond the window.
  if (seq_lt(seq, c.rcv.nxt)) {
    const uint32_t old = c.rcv.nxt - seq;
    if (old >= len) {
      m = keep_front(m, 0);
      len = 0;
    } else {
      m = drop_front(m, old);
      len -= old;
    }
    seq = c.rcv.nxt;
    if (len == 0 && !fin) {
      c.flags.ack_now = true;  // a duplicate: say where we are
      mark_output(c);
      return;
    }
  }
  const uint32_t right = seq_gt(c.rcv.adv, c.rcv.nxt) ? c.rcv.adv : c.rcv.nxt;
  if (seq_gt(seq + len, right)) {
    len = seq_gt(right, seq) ? right - seq : 0;
    m = keep_front(m, len);
    fin = false;  // the FIN lies beyond the window
    c.flags.ack_now = true;
  }
  if (len == 0 && m != nullptr) m = keep_front(m, 0);

  if (seq != c.rcv.nxt) {
    // Out of order: keep it, and ACK at once (RFC 5681 §4.2, RFC 2018).
    if (len != 0) ooo_insert(c, m, seq, len);
    if (fin) {
      // RFC 9293 §3.10.7.4 (eighth): a FIN counts only in sequence; keep its
      // place so that it does when the hole fills, rather than waiting for
      // the peer to retransmit it.
      c.flags.fin_out_of_order = true;
      c.rcv.fin_seq = seq + len;
    }
    c.flags.ack_now = true;
    mark_output(c);
    return;
  }
  const bool had_ooo = c.ooo != nullptr;
  if (len != 0) {
    c.rcv.nxt += len;
    ++c.rcv.unacked_segs;
    if (psh) c.flags.push_seen = true;  // drain_buffered delivers up to it promptly
    queue_append(c.rx_buffered, m);
    if (had_ooo) ooo_pull(c);
    drain_buffered(c);
  }
  // RFC 5681 §4.2: ACK at once when a hole is filled.
  if (had_ooo) c.flags.ack_now = true;

  const bool fin_reached = c.flags.fin_out_of_order && c.ooo == nullptr && c.rcv.nxt == c.rcv.fin_seq;
  if ((fin && c.ooo == nullptr && seq + len == c.rcv.nxt) || fin_reached) {
    // Eighth: the FIN (RFC 9293 §3.10.7.4), with this segment or kept from
    // one beyond the hole this segment filled.
    c.flags.fin_out_of_order = false;
    c.rcv.fin_seq = c.rcv.nxt;
    c.rcv.nxt += 1;
    c.flags.fin_received = true;
    c.flags.ack_now = true;
    complete_filled_receives(c, /*push=*/true);
    switch (c.state) {
      case TcpState::established: c.state = TcpState::close_wait; break;
      case TcpState::fin_wait_1:
        // Simultaneous close: our FIN is still unACKed.
        c.state = (c.flags.fin_queued && c.snd.una == c.snd.queued_end) ? TcpState::time_wait : TcpState::closing;
        break;
      case TcpState::fin_wait_2: c.state = TcpState::time_wait; break;
      default: break;
    }
    maybe_indicate_fin(c);
    if (c.state == TcpState::time_wait) {
      enter_time_wait(c);  // it ACKs the FIN first
      return;
    }
  }
  mark_output(c);
}

void Engine::drain_buffered(Tcb& c) {
  // C-9: posted receives are filled first, in order; C-10: without one, the
  // data is indicated, and what the host does not take stays buffered.
  bool consumed = false;
  while (c.rx_buffered.bytes != 0) {
    if (c.recv_head != nullptr) {
      NetBufferList* n = c.recv_head;
      ReceiveMeta& rm = meta<ReceiveMeta>(n);
      while (rm.cur != nullptr && rm.cur_off >= rm.cur->data_length) {
        rm.cur = rm.cur->next;
        rm.cur_off = 0;
      }
      if (rm.cur == nullptr) {
        complete_filled_receives(c, /*push=*/false);
        continue;
      }
      rte_mbuf* seg = c.rx_buffered.head;
      uint32_t take = rm.cur->data_length - rm.cur_off;
      if (take > seg->data_len) take = seg->data_len;
      std::memcpy(rm.cur->data + rm.cur_off, rte_pktmbuf_mtod(seg, const uint8_t*), take);
      rm.cur_off += take;
      rm.filled += take;
      queue_consume(c.rx_buffered, take);
      consumed = true;
      if (rm.filled == rm.capacity) complete_filled_receives(c, /*push=*/false);
      continue;
    }
    if (c.flags.indicate_blocked) break;
    rte_mbuf* seg = c.rx_buffered.head;
    const uint32_t offered = seg->data_len;
    ++stats_.indications;
    const IndicateResult r =
        host_.receive_indicate(c.handle, c.host_context, rte_pktmbuf_mtod(seg, const uint8_t*), offered,
                               c.flags.push_seen);
    const uint32_t accepted = r.accepted > offered ? offered : r.accepted;
    if (accepted != 0) {
      queue_consume(c.rx_buffered, accepted);
      consumed = true;
    }
    if (accepted < offered) {
      c.flags.indicate_blocked = true;  // until the host posts a receive
      break;
    }
  }
  // RFC 9293 §3.9.1 (PUSH): once the data up to a PSH is all in the host's
  // receives (or taken by indication), the partly filled receive completes
  // now, also when it was posted after that data arrived.
  if (c.flags.push_seen && c.rx_buffered.bytes == 0) {
    c.flags.push_seen = false;
    complete_filled_receives(c, /*push=*/true);
  }
  // A partly filled receive in push mode completes on the push timer. A
  // closed connection has no timers (and its FIN came after this data):
  // there it completes now, as the FIN would have completed it.
  if (c.recv_head != nullptr && meta<ReceiveMeta>(c.recv_head).filled != 0 &&
      !(c.recv_head->flags & kReceiveNoPush)) {
    if (c.flags.closed) complete_filled_receives(c, /*push=*/true);
    else if (c.due_ms[size_t(TimerKind::push)] == 0) arm(c, TimerKind::push, cfg_.push_timer_ms);
  }
  if (consumed) update_window_after_read(c);
  maybe_indicate_fin(c);
}

void Engine::complete_filled_receives(Tcb& c, bool push) {
  // C-9: FIFO; a full request completes; with `push` (PSH, FIN, push timer)
  // so does a partly filled one in push mode. Zero-byte requests complete
  // when they reach the head. Completions go out as one chain.
  NetBufferList* head = nullptr;
  NetBufferList* tail = nullptr;
  while (c.recv_head != nullptr) {
    NetBufferList* n = c.recv_head;
    const ReceiveMeta& rm = meta<ReceiveMeta>(n);
    const bool full = rm.filled == rm.capacity;
    const bool pushed = push && rm.filled != 0 && !(n->flags & kReceiveNoPush);
    if (!full && !pushed) break;
    c.recv_head = n->next;
    if (c.recv_head == nullptr) c.recv_tail = nullptr;
    n->next = nullptr;
    n->status = Status::success;
    n->bytes_transferred = rm.filled;
    if (tail != nullptr) tail->next = n;
    else head = n;
    tail = n;
    push = false;  // PSH completes the request it landed in, not the next
  }
  if (head == nullptr) return;
  disarm(c, TimerKind::push);
  ++stats_.receive_completions;
  host_.receive_complete(c.handle, c.host_context, head);
}

uint32_t Engine::advertise_window(Tcb& c) {
  // Free buffer space, in units the scale can express, never more than the
  // 16-bit field allows.
  const uint32_t used = c.rx_buffered.bytes + c.rcv.ooo_bytes;
  uint32_t space = c.rcv.buf > used ? c.rcv.buf - used : 0;
  const uint32_t max_field = 65535u << c.rcv.wscale;
  if (space > max_field) space = max_field;
  space &= ~((1u << c.rcv.wscale) - 1);
  const uint32_t right = c.rcv.nxt + space;
  if (seq_gt(right, c.rcv.adv)) {
    // RFC 9293 §3.8.6.2.2: keep RCV.NXT + RCV.WND fixed until
    // RCV.BUFF - RCV.USER - RCV.WND >= min(Fr * RCV.BUFF, Eff.snd.MSS), Fr = 1/2;
    // a closed window too (a 100-byte opening is the silly window).
    const uint32_t step = c.rcv.buf / 2 < c.snd.mss ? c.rcv.buf / 2 : c.snd.mss;
    const uint32_t offered = seq_gt(c.rcv.adv, c.rcv.nxt) ? c.rcv.adv - c.rcv.nxt : 0;
    if (space >= offered + step) c.rcv.adv = right;
  }
  // Never shrink: a right edge once offered stays (RFC 9293 §3.8.6.2.2).
  return seq_gt(c.rcv.adv, c.rcv.nxt) ? c.rcv.adv - c.rcv.nxt : 0;
}

void Engine::update_window_after_read(Tcb& c) {
  // The host took data: tell the peer once the window grew usefully
  // (a window update, RFC 9293 §3.8.6.2.2), e.g. after a zero window.
  const uint32_t offered = seq_gt(c.rcv.adv, c.rcv.nxt) ? c.rcv.adv - c.rcv.nxt : 0;
  const uint32_t used = c.rx_buffered.bytes + c.rcv.ooo_bytes;
  const uint32_t space = c.rcv.buf > used ? c.rcv.buf - used : 0;
  const uint32_t step = c.rcv.buf / 2 < c.snd.mss ? c.rcv.buf / 2 : c.snd.mss;
  if (space >= offered + step && (offered < c.rcv.buf / 2)) {
    c.flags.ack_now = true;
    mark_output(c);
  }
}

// ---------------------------------------------------------------------------
// Reassembly: a sorted list of payload chains, bounded per connection and
// per engine; overlaps are trimmed so the list holds each byte once.

void Engine::ooo_insert(Tcb& c, rte_mbuf* m, uint32_t seq, uint32_t len) {
  ++stats_.ooo_segments_in;
  c.last_ooo_seq = seq;
  const uint32_t arrival = ++ooo_arrivals_;
  OooSegment** link = &c.ooo;
  // Skip segments that end before this one starts.
  while (*link != nullptr && seq_leq((*link)->seq + (*link)->len, seq)) link = &(*link)->next;
  // Trim what an earlier segment already holds.
  if (*link != nullptr && seq_leq((*link)->seq, seq)) {
    const uint32_t have_end = (*link)->seq + (*link)->len;
    if (seq_geq(have_end, seq + len)) {  // entirely held already: its block was just reported
      (*link)->arrival = arrival;
      keep_front(m, 0);
      return;
    }
    const uint32_t dup = have_end - seq;
    m = drop_front(m, dup);
    seq += dup;
    len -= dup;
    link = &(*link)->next;
  }
  // Segments entirely inside the new one go; a partial overlap at the end
  // shortens the new one.
  while (*link != nullptr && seq_leq((*link)->seq + (*link)->len, seq + len)) {
    OooSegment* gone = *link;
    *link = gone->next;
    c.rcv.ooo_bytes -= gone->len;
    --c.rcv.ooo_count;
    keep_front(gone->m, 0);
    gone->next = ooo_free_list_;
    ooo_free_list_ = gone;
  }
  if (*link != nullptr && seq_lt((*link)->seq, seq + len)) {
    len = (*link)->seq - seq;
    m = keep_front(m, len);
  }
  if (len == 0) return;
  if (ooo_free_list_ == nullptr || c.rcv.ooo_count >= cfg_.ooo_segments_per_connection) {
    ++stats_.drop_ooo_budget;  // the sender will retransmit it
    keep_front(m, 0);
    return;
  }
  OooSegment* node = ooo_free_list_;
  ooo_free_list_ = node->next;
  node->m = m;
  node->seq = seq;
  node->len = len;
  node->arrival = arrival;
  node->next = *link;
  *link = node;
  c.rcv.ooo_bytes += len;
  ++c.rcv.ooo_count;
}

void Engine::ooo_pull(Tcb& c) {
  while (c.ooo != nullptr && seq_leq(c.ooo->seq, c.rcv.nxt)) {
    OooSegment* node = c.ooo;
    c.ooo = node->next;
    c.rcv.ooo_bytes -= node->len;
    --c.rcv.ooo_count;
    rte_mbuf* m = node->m;
    const uint32_t end = node->seq + node->len;
    if (seq_gt(end, c.rcv.nxt)) {
      m = drop_front(m, c.rcv.nxt - node->seq);
      c.rcv.nxt = end;
      ++c.rcv.unacked_segs;
      queue_append(c.rx_buffered, m);
    } else {
      keep_front(m, 0);
    }
    node->next = ooo_free_list_;
    ooo_free_list_ = node;
  }
}

void Engine::ooo_free(Tcb& c) {
  while (c.ooo != nullptr) {
    OooSegment* node = c.ooo;
    c.ooo = node->next;
    keep_front(node->m, 0);
    node->next = ooo_free_list_;
    ooo_free_list_ = node;
  }
  c.rcv.ooo_bytes = 0;
  c.rcv.ooo_count = 0;
}

}  // namespace chimney::tcp
