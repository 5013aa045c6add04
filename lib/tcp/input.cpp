// Segment arrival for the offloaded (synchronized) states: RFC 9293
// §3.10.7.4 in its order of checks, with RFC 5961 (RST, SYN and ACK
// validity), RFC 7323 (PAWS, timestamps), RFC 5681/6582/6675 (ACK clocking,
// duplicate ACKs, recovery) and RFC 2018 (SACK).
#include <rte_hash.h>
#include <rte_ip.h>
#include <rte_prefetch.h>

#include "net/packet.hpp"
#include "tcp/engine_internal.hpp"

namespace chimney::tcp {

namespace {

constexpr uint32_t kPawsIdleMs = 24u * 24 * 3600 * 1000;  // RFC 7323 §5.5: 24 days
constexpr uint32_t kMaxTimestampRttMs = 60'000;  // an echoed TSval older than this is no RTT sample

struct Parsed {
  uint32_t seq;
  uint32_t ack;
  uint32_t wnd;   // the raw field
  uint32_t len;   // payload bytes
  uint8_t flags;
  net::TcpOptions opts;
};

Parsed parse(rte_mbuf* m) {
  Parsed p{};
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
  p.seq = rte_be_to_cpu_32(th->sent_seq);
  p.ack = rte_be_to_cpu_32(th->recv_ack);
  p.wnd = rte_be_to_cpu_16(th->rx_win);
  p.flags = th->tcp_flags;
  p.len = rte_be_to_cpu_16(ip->total_length) - m->l3_len - m->l4_len;
  // classify_frame validated the option list already.
  net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), m->l4_len - sizeof(rte_tcp_hdr), p.opts);
  return p;
}

Engine::Key key_from(const rte_mbuf* m) {
  const auto* ip = rte_pktmbuf_mtod_offset(m, const rte_ipv4_hdr*, m->l2_len);
  const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
  return {rte_be_to_cpu_32(ip->src_addr), rte_be_to_cpu_32(ip->dst_addr), rte_be_to_cpu_16(th->src_port),
          rte_be_to_cpu_16(th->dst_port)};
}

}  // namespace

uint16_t Engine::input(rte_mbuf** pkts, uint16_t n, uint64_t now_us, rte_mbuf** unmatched) {
  now_us_ = now_us;
  now_ms_ = now_us / 1000;
  uint16_t n_unmatched = 0;
  constexpr unsigned kBatch = 32;  // RTE_HASH_LOOKUP_BULK_MAX
  Key keys[kBatch];
  const void* key_ptrs[kBatch];
  void* data[kBatch];
  for (uint16_t base = 0; base < n; base += kBatch) {
    const unsigned cnt = static_cast<unsigned>(n - base) < kBatch ? static_cast<unsigned>(n - base) : kBatch;
    for (unsigned i = 0; i < cnt; ++i) {
      keys[i] = key_from(pkts[base + i]);
      key_ptrs[i] = &keys[i];
    }
    // A burst of one connection's segments (a bulk stream) needs one lookup,
    // not a bulk lookup of the same key `cnt` times.
    bool one_flow = cnt > 1;
    for (unsigned i = 1; i < cnt && one_flow; ++i)
      one_flow = keys[i].remote_ip == keys[0].remote_ip && keys[i].local_ip == keys[0].local_ip &&
                 keys[i].remote_port == keys[0].remote_port && keys[i].local_port == keys[0].local_port;
    uint64_t hits = 0;
    if (one_flow) {
      void* d = nullptr;
      if (rte_hash_lookup_data(table_, &keys[0], &d) >= 0) {
        hits = (1ull << cnt) - 1;  // cnt <= 32
        for (unsigned i = 0; i < cnt; ++i) data[i] = d;
      }
    } else {
      rte_hash_lookup_bulk_data(table_, key_ptrs, cnt, &hits, data);
      // The hot part of each TCB (two cache lines, tcb.hpp) is on its way
      // while the segments before it are processed: with many connections
      // the table and the records miss the cache (docs/PERFORMANCE.md).
      for (unsigned i = 0; i < cnt; ++i) {
        if (!(hits & (1ull << i))) continue;
        const Tcb* t = &tcbs_[reinterpret_cast<uintptr_t>(data[i])];
        rte_prefetch0(t);
        rte_prefetch0(&t->rcv);
      }
    }
    for (unsigned i = 0; i < cnt; ++i) {
      rte_mbuf* m = pkts[base + i];
      if (hits & (1ull << i)) {
        segment_arrives(tcbs_[reinterpret_cast<uintptr_t>(data[i])], m);
      } else if (!time_wait_input(m)) {
        unmatched[n_unmatched++] = m;
      }
    }
  }
  run_output_list();
  flush();
  return n_unmatched;
}

void Engine::challenge_ack(Tcb& c) {
  // RFC 5961 §7: a global budget of challenge ACKs per second.
  if (now_ms_ - challenge_window_ms_ >= 1000) {
    challenge_window_ms_ = now_ms_;
    challenge_acks_ = 0;
  }
  if (++challenge_acks_ > cfg_.challenge_acks_per_second) {
    ++stats_.challenge_acks_limited;
    return;
  }
  ++stats_.challenge_acks;
  send_ack(c);
}

void Engine::segment_arrives(Tcb& c, rte_mbuf* m) {
  ++stats_.segments_in;
  if (c.flags.terminating) {  // C-21
    ++stats_.drop_terminating;
    rte_pktmbuf_free(m);
    return;
  }
  const Parsed s = parse(m);
  stats_.bytes_in += s.len;
  c.last_rx_ms = static_cast<uint32_t>(now_ms_);
  c.keepalive_probes_sent = 0;
  const bool rst = s.flags & kRst;
  const bool syn = s.flags & kSyn;
  const bool fin = s.flags & kFin;

  // RFC 7323 §5.3 R1: PAWS. A RST is exempt; so is a ts_recent left idle
  // for 24 days (§5.5).
  if (c.flags.timestamps && s.opts.has_timestamp && !rst && seq_lt(s.opts.ts_val, c.rcv.ts_recent) &&
      static_cast<uint32_t>(now_ms_) - c.rcv.ts_recent_ms < kPawsIdleMs) {
    ++stats_.drop_paws;
    c.flags.ack_now = true;
    mark_output(c);
    rte_pktmbuf_free(m);
    return;
  }

  // RFC 9293 §3.10.7.4 first check: sequence number acceptability.
  const uint32_t wnd = seq_gt(c.rcv.adv, c.rcv.nxt) ? c.rcv.adv - c.rcv.nxt : 0;
  const uint32_t seg_len = s.len + (syn ? 1 : 0) + (fin ? 1 : 0);
  bool acceptable;
  if (seg_len == 0) acceptable = wnd == 0 ? s.seq == c.rcv.nxt : seq_in(s.seq, c.rcv.nxt, c.rcv.nxt + wnd);
  else if (wnd == 0) acceptable = false;
  else
    acceptable = seq_in(s.seq, c.rcv.nxt, c.rcv.nxt + wnd) ||
                 seq_in(s.seq + seg_len - 1, c.rcv.nxt, c.rcv.nxt + wnd);
  // With a zero window the ACK, RST of a segment at rcv.nxt still count.
  const bool zero_window_at_edge = !acceptable && wnd == 0 && s.seq == c.rcv.nxt;
  if (!acceptable && !zero_window_at_edge) {
    if (rst) {
      ++stats_.rst_in_ignored;  // RFC 5961 §3.2: out of window, dropped
    } else {
      ++stats_.drop_out_of_window;
      // RFC 7323 §4.3 (2) asks SEG.SEQ <= Last.ACK.sent (and PAWS, passed
      // above): a retransmission of the segment our lost ACK covered, ending
      // at Last.ACK.sent, updates TS.Recent, so the duplicate ACK echoes its
      // TSval and the sender's RTT sample is one round trip, not the whole
      // backoff. As Linux (tcp_sequence, then tcp_replace_ts_recent: the
      // segment reaches rcv_wup, its ACK is valid). Echoing the original's
      // TSval grew a Linux peer's RTO to 120 s at 20% loss. A blind sender
      // cannot move TS.Recent this way: the segment must end at
      // Last.ACK.sent and carry an acceptable ACK (RFC 5961 §5.2). The same
      // for a SYN-ACK retransmitted because our ACK of it was lost: echoing
      // the first SYN-ACK's TSval, a Linux listener took its whole backoff
      // (15 s at 20% loss) as the handshake's RTT and its RTO grew to 40 s.
      const uint32_t end = s.seq + seg_len;
      if (c.flags.timestamps && s.opts.has_timestamp && (s.flags & kAck) &&
          seq_leq(s.seq, c.rcv.last_ack_sent) && seq_geq(end, c.rcv.last_ack_sent) &&
          seq_leq(end, c.rcv.nxt) && !seq_gt(s.ack, c.snd.max) && !seq_lt(s.ack, c.snd.una - c.snd.max_wnd)) {
        c.rcv.ts_recent = s.opts.ts_val;
        c.rcv.ts_recent_ms = static_cast<uint32_t>(now_ms_);
      }
      c.flags.ack_now = true;  // <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
      mark_output(c);
    }
    rte_pktmbuf_free(m);
    return;
  }

  // Second: RST (RFC 5961 §3.2, C-17).
  if (rst) {
    rte_pktmbuf_free(m);
    if (s.seq == c.rcv.nxt) {
      ++stats_.rst_in_accepted;
      abort_connection(c, /*send_rst=*/false, /*raise_event=*/true);
    } else {
      ++stats_.rst_in_challenged;
      challenge_ack(c);
    }
    return;
  }
  // Fourth: SYN in a synchronized state (RFC 5961 §4).
  if (syn) {
    ++stats_.syn_in_challenged;
    rte_pktmbuf_free(m);
    challenge_ack(c);
    return;
  }
  // Fifth: the ACK field.
  if (!(s.flags & kAck)) {
    ++stats_.drop_no_ack_flag;
    rte_pktmbuf_free(m);
    return;
  }
  if (!process_ack(c, s.ack, s.seq, s.wnd, seg_len != 0, s.opts)) {
    rte_pktmbuf_free(m);
    return;
  }
  if (c.flags.closed) {  // LAST_ACK ended, or a RETRIEVE-worthy state
    rte_pktmbuf_free(m);
    return;
  }
  // RFC 7323 §4.3 (2): TS.Recent takes SEG.TSval when SEG.SEQ <=
  // Last.ACK.sent (not rcv.nxt): an ACK covering several segments echoes the
  // earliest one's timestamp, so the peer's RTT sample includes the delay.
  if (c.flags.timestamps && s.opts.has_timestamp && seq_leq(s.seq, c.rcv.last_ack_sent)) {
    c.rcv.ts_recent = s.opts.ts_val;
    c.rcv.ts_recent_ms = static_cast<uint32_t>(now_ms_);
  }
  if (zero_window_at_edge) {
    // Data beyond a zero window is not taken; the ACK says so.
    if (seg_len != 0) {
      ++stats_.drop_out_of_window;
      c.flags.ack_now = true;
      mark_output(c);
    }
    rte_pktmbuf_free(m);
    return;
  }
  // Seventh and eighth: the text and the FIN.
  process_data(c, m, s.seq, s.len, fin, s.flags & kPsh);
}

namespace {

// SACKed bytes sent after the hole at snd.una was last retransmitted.
uint32_t sacked_after_rxt(const Tcb& c) {
  uint32_t after = 0;
  for (uint8_t i = 0; i < c.sacked.count; ++i) {
    const uint32_t l = seq_max(c.sacked.blocks[i].left, c.rxt_mark);
    if (seq_lt(l, c.sacked.blocks[i].right)) after += c.sacked.blocks[i].right - l;
  }
  return after;
}

}  // namespace

bool Engine::process_ack(Tcb& c, uint32_t ack, uint32_t seq, uint32_t seg_wnd, bool has_data_or_fin,
                         const net::TcpOptions& opts) {
  // RFC 9293 §3.10.7.4: an ACK of something not yet sent is answered and dropped.
  if (seq_gt(ack, c.snd.max)) {
    ++stats_.drop_ack_unsent;
    c.flags.ack_now = true;
    mark_output(c);
    return false;
  }
  // RFC 5961 §5.2: too old to be from this connection's recent past.
  if (seq_lt(ack, c.snd.una - c.snd.max_wnd)) {
    ++stats_.drop_old_ack;
    c.flags.ack_now = true;
    mark_output(c);
    return false;
  }
  // RFC 1122 §4.2.2.17: an acceptable ACK answers our zero-window probes;
  // only unanswered ones count towards the persist limit.
  c.persist_unanswered = 0;
  const uint32_t wnd = seg_wnd << c.snd.wscale;
  const uint32_t old_wnd = c.snd.wnd;
  if (c.flags.sack && opts.sack_count != 0) process_sack(c, opts);

  if (seq_gt(ack, c.snd.una)) {
    const uint32_t acked = ack - c.snd.una;
    // RFC 6298 §3 with Karn's rule: only a segment sent once is timed.
    if (c.flags.timed && seq_gt(ack, c.rtt.timed_seq)) {
      rtt_sample(c, now_us_ - c.rtt.timed_at_us);
      c.flags.timed = false;
    } else if (c.flags.timestamps && opts.has_timestamp && opts.ts_ecr != 0 &&
               ts_now(c) - opts.ts_ecr < kMaxTimestampRttMs) {
      // RFC 7323 §4.1: the echoed TSval times the ACK of new data even after
      // a retransmission, so the backed-off RTO (RFC 6298 §5.5) ends with
      // the first ACK that moves snd.una, as in Linux, not with the next
      // segment that happens to be sent once.
      rtt_sample(c, (ts_now(c) - opts.ts_ecr) * 1000u);
    }
    c.snd.una = ack;
    if (seq_lt(c.snd.nxt, c.snd.una)) c.snd.nxt = c.snd.una;
    c.total_rt = 0;
    // Drop SACK blocks now below snd.una.
    uint8_t k = 0;
    for (uint8_t i = 0; i < c.sacked.count; ++i) {
      net::SackBlock b = c.sacked.blocks[i];
      if (seq_leq(b.right, c.snd.una)) continue;
      if (seq_lt(b.left, c.snd.una)) b.left = c.snd.una;
      c.sacked.blocks[k++] = b;
    }
    c.sacked.count = k;
    if (c.flags.in_recovery) {
      if (seq_geq(ack, c.snd.recover)) {
        // RFC 6582 §3.2 step 3 (full ACK): deflate to ssthresh, leave recovery.
        const uint32_t flight = flight_size(c);
        c.snd.cwnd = c.snd.ssthresh < flight + c.snd.mss ? c.snd.ssthresh : flight + c.snd.mss;
        if (c.snd.cwnd < 2u * c.snd.mss) c.snd.cwnd = 2u * c.snd.mss;
        c.flags.in_recovery = false;
        c.snd.dupacks = 0;
      } else if (!c.flags.sack) {
        // RFC 6582 §3.2 step 4 (partial ACK): retransmit the next hole,
        // deflate by what was ACKed, add back one segment.
        const uint32_t len = seq_lt(c.snd.una + c.snd.mss, data_end(c)) ? c.snd.mss : data_end(c) - c.snd.una;
        if (len != 0) {
          send_segment(c, c.snd.una, len, kAck, /*retransmission=*/true);
          ++stats_.retransmits;
        }
        c.snd.cwnd = (c.snd.cwnd > acked ? c.snd.cwnd - acked : 0) + (acked >= c.snd.mss ? c.snd.mss : 0);
        if (c.snd.cwnd < c.snd.mss) c.snd.cwnd = c.snd.mss;
        restart_retransmit_timer(c);
      } else if (seq_lt(c.high_rxt, c.snd.una)) {
        c.high_rxt = c.snd.una;  // RFC 6675: holes below snd.una are gone
      }
    } else {
      congestion_ops(c.cc_algo).on_ack(c, acked, now_ms_);
      c.snd.dupacks = 0;
    }
    // RFC 8985 §7.4: the probe's episode ends when its data is ACKed. A
    // retransmitted probe may have repaired a loss; without D-SACK to say
    // the original arrived too, the window is reduced as for a loss.
    if (c.flags.tlp_in_flight && seq_geq(ack, c.tlp_end_seq)) {
      c.flags.tlp_in_flight = false;
      if (c.flags.tlp_retrans && !c.flags.in_recovery) {
        ++stats_.loss_probe_recoveries;
        congestion_ops(c.cc_algo).on_loss(c, now_ms_);
      }
    }
    // RFC 6298 §5.2, §5.3: stop the timer when all is ACKed, else restart it.
    if (c.snd.una == c.snd.max) disarm(c, TimerKind::retransmit);
    else restart_retransmit_timer(c);
    arm_loss_probe(c);  // RFC 8985 §7.2: restarted by an ACK of new data
    c.persist_probes = 0;
    complete_sends(c);
    // Our FIN is ACKed when snd.una passes it (RFC 9293 §3.10.7.4 fifth).
    if (c.flags.fin_queued && c.snd.una == c.snd.queued_end) {
      switch (c.state) {
        case TcpState::fin_wait_1: c.state = TcpState::fin_wait_2; break;
        case TcpState::closing:
          enter_time_wait(c);
          return true;
        case TcpState::last_ack:
          enter_closed(c);
          return true;
        default: break;
      }
    }
    report_backlog(c);
    mark_output(c);
  } else if (ack == c.snd.una && c.snd.una != c.snd.max) {
    // RFC 5681 §2: a duplicate ACK carries no data and leaves the window.
    const bool dup = !has_data_or_fin && wnd == old_wnd;
    if (dup) {
      ++stats_.dup_acks;
      if (c.snd.dupacks < 255) ++c.snd.dupacks;
    }
    uint32_t sacked = 0;
    for (uint8_t i = 0; i < c.sacked.count; ++i) sacked += c.sacked.blocks[i].right - c.sacked.blocks[i].left;
    // With SACK every SACKed segment stands for a duplicate ACK (RFC 6675
    // §2 "DupAck" counts ACKs that may carry data when both sides send).
    if (c.flags.sack) {
      const uint32_t segs = sacked / c.snd.mss;
      if (segs > c.snd.dupacks) c.snd.dupacks = static_cast<uint8_t>(segs < 255 ? segs : 255);
    }
    // A retransmission of the hole at snd.una is lost when DupThresh
    // segments sent after it are SACKed (lost-retransmission detection, as
    // RFC 8985 does by time): repair the holes again.
    if (c.flags.in_recovery && c.flags.sack && sacked_after_rxt(c) >= 3u * c.snd.mss &&
        seq_gt(c.high_rxt, c.snd.una)) {
      c.high_rxt = c.snd.una;
      c.rxt_mark = c.snd.max;
    }
    // RFC 5827 early retransmit: with fewer than four segments outstanding
    // and nothing new to send, fewer duplicates can ever come.
    uint32_t dupthresh = 3;
    const uint32_t oseg = (flight_size(c) + c.snd.mss - 1) / c.snd.mss;
    if (oseg < 4 && !seq_gt(data_end(c), c.snd.max)) dupthresh = oseg > 1 ? oseg - 1 : 1;
    // RFC 6675 §5: with SACK, DupThresh segments SACKed above snd.una mean
    // loss, whether or not the ACKs carried data (they do both ways).
    const bool loss = (dup && c.snd.dupacks >= dupthresh) || (c.flags.sack && sacked >= dupthresh * c.snd.mss);
    // RFC 6582 §3.2 step 1: no new recovery until snd.una passes `recover`.
    if (!c.flags.in_recovery && loss && seq_geq(c.snd.una, c.snd.recover)) {
      enter_recovery(c);
    } else if (c.flags.in_recovery && !c.flags.sack && dup) {
      c.snd.cwnd += c.snd.mss;  // RFC 6582 §3.2 step 3: inflate per duplicate
    }
    if (dup || opts.sack_count != 0) mark_output(c);
  }

  // RFC 8985 §6.3: data sent after the hole at snd.una (or after its
  // retransmission) was SACKed; unless the hole fills within the reordering
  // window, it is lost (on_reorder_timeout). Window: SRTT/4, at least 2 ms.
  if (c.flags.sack && c.sacked.count != 0 && c.snd.una != c.snd.max &&
      c.due_ms[size_t(TimerKind::reorder)] == 0 && (!c.flags.in_recovery || sacked_after_rxt(c) != 0)) {
    const uint32_t reo_wnd = c.rtt.srtt_us / 4000;
    arm(c, TimerKind::reorder, reo_wnd < 2 ? 2 : reo_wnd);
  }

  // RFC 9293 §3.10.7.4: update the window from the newest segment, if
  // SND.UNA =< SEG.ACK (an old ACK's window is stale).
  if (seq_geq(ack, c.snd.una) && (seq_lt(c.snd.wl1, seq) || (c.snd.wl1 == seq && seq_leq(c.snd.wl2, ack)))) {
    c.snd.wnd = wnd;
    c.snd.wl1 = seq;
    c.snd.wl2 = ack;
    if (wnd > c.snd.max_wnd) c.snd.max_wnd = wnd;
    if (wnd != old_wnd) {
      if (wnd != 0) {
        disarm(c, TimerKind::persist);
        c.persist_probes = 0;
      }
      mark_output(c);
    }
  }
  return true;
}

void Engine::enter_recovery(Tcb& c) {
  // RFC 6582 §3.2 step 2 / RFC 6675 §5 step 4: remember the highest sent,
  // halve (or CUBIC-reduce) the window, retransmit the first unACKed segment.
  ++stats_.fast_retransmits;
  if (c.flags.sack) ++stats_.sack_recoveries;
  c.flags.in_recovery = true;
  c.flags.tlp_in_flight = false;  // recovery's own reduction covers a probe's loss
  disarm(c, TimerKind::loss_probe);
  disarm(c, TimerKind::reorder);  // re-armed by SACKs of data sent after the retransmission
  c.snd.recover = c.snd.max;
  congestion_ops(c.cc_algo).on_loss(c, now_ms_);
  const uint32_t end = data_end(c);
  uint32_t len = seq_lt(c.snd.una + c.snd.mss, end) ? c.snd.mss : end - c.snd.una;
  if (c.flags.sack && c.sacked.count != 0) {
    // Retransmit only the hole up to the lowest SACKed block.
    const net::SackBlock& lowest = c.sacked.blocks[c.sacked.count - 1];
    if (seq_lt(lowest.left, c.snd.una + len)) len = lowest.left - c.snd.una;
  }
  if (len != 0 || (c.flags.fin_queued && seq_lt(c.snd.una, c.snd.max))) {
    const bool fin = c.flags.fin_queued && c.snd.una + len == end && seq_gt(c.snd.max, end);
    send_segment(c, c.snd.una, len, kAck | (fin ? kFin : 0), /*retransmission=*/true);
    ++stats_.retransmits;
  }
  c.high_rxt = c.snd.una + len;
  c.rxt_mark = c.snd.max;
  if (!c.flags.sack) c.snd.cwnd = c.snd.ssthresh + 3u * c.snd.mss;  // RFC 6582 step 2
  restart_retransmit_timer(c);
}

void Engine::process_sack(Tcb& c, const net::TcpOptions& opts) {
  // RFC 2018: merge the blocks into the scoreboard; keep the highest ones.
  for (uint8_t i = 0; i < opts.sack_count; ++i) {
    net::SackBlock b = opts.sack[i];
    if (!seq_lt(b.left, b.right) || seq_leq(b.right, c.snd.una) || seq_gt(b.right, c.snd.max)) continue;
    if (seq_lt(b.left, c.snd.una)) b.left = c.snd.una;
    // Merge with every overlapping or touching block.
    uint8_t k = 0;
    for (uint8_t j = 0; j < c.sacked.count; ++j) {
      const net::SackBlock& e = c.sacked.blocks[j];
      if (seq_leq(e.left, b.right) && seq_leq(b.left, e.right)) {
        b.left = seq_min(b.left, e.left);
        b.right = seq_max(b.right, e.right);
      } else {
        c.sacked.blocks[k++] = e;
      }
    }
    c.sacked.count = k;
    // Insert in descending order of sequence; the lowest falls off when full.
    uint8_t pos = 0;
    while (pos < c.sacked.count && seq_gt(c.sacked.blocks[pos].left, b.left)) ++pos;
    if (pos >= SackScoreboard::kBlocks) continue;
    const uint8_t last = c.sacked.count < SackScoreboard::kBlocks ? c.sacked.count : SackScoreboard::kBlocks - 1;
    for (uint8_t j = last; j > pos; --j) c.sacked.blocks[j] = c.sacked.blocks[j - 1];
    c.sacked.blocks[pos] = b;
    if (c.sacked.count < SackScoreboard::kBlocks) ++c.sacked.count;
  }
}

bool Engine::time_wait_input(rte_mbuf* m) {
  const Key key = key_from(m);
  void* data = nullptr;
  if (rte_hash_lookup_data(tw_table_, &key, &data) < 0) return false;
  TimeWait& tw = tw_[reinterpret_cast<uintptr_t>(data)];
  const auto* th = rte_pktmbuf_mtod_offset(m, const rte_tcp_hdr*, m->l2_len + m->l3_len);
  const uint8_t flags = th->tcp_flags;
  const uint32_t len = net::tcp_payload_len(m);
  if ((flags & kSyn) && !(flags & kRst)) {
    const uint32_t seq = rte_be_to_cpu_32(th->sent_seq);
    bool new_incarnation = (flags & kAck) != 0;  // a SYN-ACK answers a SYN of our slow path's
    if (!new_incarnation) {
      // RFC 6191 §2: a SYN is honoured when its timestamp is newer than the
      // last seen (both incarnations with timestamps), else when its
      // sequence number is greater than the last seen (our FIN at RCV.NXT-1);
      // a SYN with timestamps after a connection without them is honoured.
      net::TcpOptions o;
      net::parse_tcp_options(reinterpret_cast<const uint8_t*>(th + 1), m->l4_len - sizeof(rte_tcp_hdr), o);
      if (o.has_timestamp) new_incarnation = !tw.timestamps || seq_gt(o.ts_val, tw.ts_recent);
      else new_incarnation = seq_gt(seq, tw.rcv_nxt - 1);
    }
    if (new_incarnation) {
      // The slow path opens the connection (listener or CONNECT); the entry
      // goes when the new one is offloaded (initiate_offload), or now for a SYN.
      if (!(flags & kAck)) drop_time_wait(tw);
      return false;
    }
    // Not newer: an old duplicate. RFC 5961 §4 (TIME-WAIT is synchronized):
    // a challenge ACK; the entry stays.
    ++stats_.time_wait_acks;
    send_time_wait_ack(tw);
  } else if (flags & kRst) {
    ++stats_.time_wait_drops;  // RFC 1337: a RST does not end TIME_WAIT
  } else if ((flags & kFin) || len != 0) {
    // RFC 9293 §3.10.7.4 TIME_WAIT: the only thing that can arrive is a
    // retransmission of the remote FIN: acknowledge it and restart 2·MSL.
    ++stats_.time_wait_acks;
    send_time_wait_ack(tw);
    restart_time_wait(tw);
  } else {
    ++stats_.time_wait_drops;
  }
  rte_pktmbuf_free(m);
  return true;
}

}  // namespace chimney::tcp
