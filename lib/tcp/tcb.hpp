// The connection record (TCB, RFC 9293 §3.3.1) of an offloaded connection.
// Two hot cache lines hold what every segment touches (the send and receive
// sequence variables, windows, congestion state); the rest is per-connection
// bookkeeping that stays under 512 bytes in all (static_asserts below).
#pragma once

#include <cstddef>
#include <cstdint>

#include <rte_common.h>
#include <rte_mbuf.h>

#include "chimney/net_buffer.hpp"
#include "chimney/offload_state.hpp"
#include "chimney/target.hpp"
#include "net/tcp_options.hpp"
#include "tcp/timer_wheel.hpp"

namespace chimney::tcp {

// The timers of a connection (one wheel node; each kind keeps its deadline).
enum class TimerKind : uint8_t {
  retransmit,   // RFC 6298
  persist,      // RFC 9293 §3.8.6.1 zero-window probes
  delayed_ack,  // RFC 1122 §4.2.3.2, RFC 5681 §4.2
  keepalive,    // RFC 1122 §4.2.3.6
  push,         // CONTRACT C-9: complete a partly filled receive in push mode
  loss_probe,   // RFC 8985 §7 tail loss probe (PTO)
  reorder,      // RFC 8985 §6.3 reordering window: a hole below SACKed data is lost
  count
};

// Received SACK information kept for loss recovery (RFC 6675 scoreboard).
struct SackScoreboard {
  static constexpr int kBlocks = 4;
  net::SackBlock blocks[kBlocks];  // disjoint, above snd_una, highest first
  uint8_t count = 0;
};

// Out-of-order data waiting for the hole before it (RFC 9293 §3.10.7.4).
struct OooSegment {
  OooSegment* next;
  rte_mbuf* m;    // payload only (headers stripped), possibly several segments
  uint32_t seq;   // first byte
  uint32_t len;
  uint32_t arrival;  // engine-wide arrival count: orders SACK blocks (RFC 2018 §4)
};

// A FIFO of received payload held by the target, segment by segment.
struct ByteQueue {
  rte_mbuf* head = nullptr;  // segments linked through m->next; each is payload only
  rte_mbuf* tail = nullptr;
  uint32_t bytes = 0;
};

struct alignas(RTE_CACHE_LINE_SIZE) Tcb {
  // ---------------- cache line 0: sender (RFC 9293 §3.3.1, RFC 5681), state --
  struct Send {
    uint32_t una;       // oldest unacknowledged
    uint32_t nxt;       // next to send
    uint32_t max;       // highest sent + 1
    uint32_t wnd;       // peer's window, scaled (bytes)
    uint32_t wl1;       // seq of the segment that last updated wnd
    uint32_t wl2;       // ack of the segment that last updated wnd
    uint32_t max_wnd;   // largest window the peer offered
    uint32_t cwnd;      // congestion window (bytes)
    uint32_t ssthresh;
    uint32_t recover;   // RFC 6582: snd.max when recovery began
    uint32_t queued_end;  // sequence number after the last queued byte (FIN included)
    uint16_t mss;       // effective send MSS (payload bytes, options excluded)
    uint8_t wscale;     // shift applied to windows we receive
    uint8_t dupacks;
  } snd;
  TcpState state;
  uint8_t total_rt;          // RTO expirations in a row
  uint8_t persist_probes;          // zero-window probes since the window closed (the backoff)
  uint8_t persist_unanswered;      // ... since the peer last ACKed one (C-18 limit, RFC 1122 §4.2.2.17)
  uint8_t keepalive_probes_sent;
  struct Flags {
    bool timestamps : 1;
    bool sack : 1;
    bool in_recovery : 1;      // fast recovery (RFC 6582 / RFC 6675)
    bool fin_queued : 1;       // a graceful disconnect put a FIN after the data
    bool fin_received : 1;     // the peer's FIN arrived in order
    bool fin_indicated : 1;    // DISCONNECT event raised (C-16)
    bool ack_now : 1;          // send an ACK when this input burst is done
    bool aborted : 1;          // RST sent or received: no more processing (C-13, C-17)
    bool terminating : 1;      // terminate started (C-21)
    bool indicate_blocked : 1; // the host took less than offered: wait for a receive
    bool push_seen : 1;        // PSH since the last receive completion
    bool timed : 1;            // rtt.timed_seq is being timed (Karn)
    bool in_table : 1;         // in the 4-tuple table
    bool listed_output : 1;    // on the engine's output list
    bool closed : 1;           // CLOSED or TIME_WAIT: state released, awaiting terminate (C-19, C-20)
    bool sws_override : 1;     // the SWS override timeout fired: send a small segment (RFC 9293 §3.8.6.2.1)
    bool fin_out_of_order : 1; // the peer's FIN came beyond a hole; rcv.fin_seq holds its place
    bool tlp_in_flight : 1;    // RFC 8985 §7.3: a loss probe is out; tlp_end_seq is set
    bool tlp_retrans : 1;      // ... and it was a retransmission (§7.4: it may have repaired a loss)
    bool abort_deferred : 1;   // aborted; completions wait until no mbuf holds send memory (DESIGN.md buffers)
    bool abort_event : 1;      // ... and then an ABORT event is raised (C-17)
    bool fin_after_inherited : 1;  // FIN state offloaded with sends to follow: the FIN waits for fin_seq's data (C-3)
  } flags;

  // ---------------- cache line 1: receiver, RTT ------------------------------
  struct Recv {
    uint32_t nxt;        // next expected
    uint32_t adv;        // right edge last advertised (nxt + window)
    uint32_t buf;        // receive buffer budget (cached initial_rcv_wnd)
    uint32_t ts_recent;  // RFC 7323 §4.3
    uint32_t last_ack_sent;  // RFC 7323 §4.3 Last.ACK.sent: the ACK field we last sent
    uint32_t ts_recent_ms;   // when ts_recent was taken (engine ms)
    uint32_t fin_seq;    // sequence number of the peer's FIN, when fin_received
    uint32_t ooo_bytes;
    uint16_t unacked_segs;   // segments received since our last ACK
    uint8_t wscale;      // shift applied to windows we send
    uint16_t ooo_count;  // reassembly nodes held, <= ooo_segments_per_connection
  };
  alignas(RTE_CACHE_LINE_SIZE) Recv rcv;
  struct Rtt {
    uint32_t srtt_us;    // RFC 6298 SRTT; 0 before the first sample
    uint32_t rttvar_us;
    uint32_t rto_ms;
    uint32_t timed_seq;  // Karn: the segment being timed
    uint64_t timed_at_us;
  } rtt;

  // ---------------- cold: identity, queues, timers, host --------------------
  TimerNode timer;
  uint32_t due_ms[static_cast<size_t>(TimerKind::count)];  // 0: not armed (low 32 bits of ms)
  Tcb* output_next;          // engine's list of connections with output pending

  // Send queue: the host's send requests (and a graceful disconnect's data)
  // linked through NetBufferList::next; `send_cursor` maps snd.nxt.
  NetBufferList* send_head;
  NetBufferList* send_tail;
  NetBufferList* disconnect;   // the pending graceful disconnect (C-11..C-15)
  NetBufferList* cursor_nbl;   // the send request holding sequence number cursor_seq
  NetBuffer* cursor_nb;        // ... and its NetBuffer starting there
  uint32_t cursor_seq;
  uint32_t high_rxt;           // RFC 6675 HighRxt: highest retransmitted in recovery
  uint32_t rxt_mark;           // snd.max when the hole at snd.una was last retransmitted
  uint32_t last_ooo_seq;       // first SACK block reports the latest arrival (RFC 2018 §4)
  uint32_t tlp_end_seq;        // RFC 8985 TLP.end_seq: snd.max when the probe went out
  uint32_t inherited_end;      // fin_after_inherited: where the inherited data ends and the FIN goes
  NetBufferList* recv_head;    // posted receives (C-9)
  NetBufferList* recv_tail;
  ByteQueue rx_buffered;       // in order, not yet delivered (C-10)
  OooSegment* ooo;             // sorted by seq
  SackScoreboard sacked;
  void* host_context;
  ConnectionHandle handle;

  uint32_t local_ip;
  uint32_t remote_ip;
  uint16_t local_port;
  uint16_t remote_port;
  uint8_t local_mac[6];
  uint8_t remote_mac[6];
  uint16_t ip_id;
  uint8_t ttl;
  uint8_t tos;
  CongestionAlgorithm cc_algo;
  bool nagle;
  bool keepalive;
  uint8_t keepalive_max_probes;
  uint8_t max_retransmissions;
  uint8_t max_persist_probes;
  uint32_t keepalive_timeout_ms;
  uint32_t keepalive_interval_ms;
  uint32_t backlog_reported;    // last SEND_BACKLOG_CHANGE value (C-18)
  uint32_t backlog_reported_ms;
  uint32_t ts_offset;           // our TSval = engine ms + ts_offset: the clock the peer saw goes on (RFC 7323 §5.4)
  uint32_t last_rx_ms;          // keepalive idleness (RFC 1122 §4.2.3.6)
  uint32_t cubic_w_max;         // RFC 9438 W_max (bytes)
  uint32_t cubic_k_ms;          // RFC 9438 K
  uint64_t cubic_epoch_ms;      // start of the congestion-avoidance epoch; 0 none
  uint32_t cubic_w_est;         // RFC 9438 §4.3 Reno-friendly estimate (bytes)
  uint32_t cubic_cwnd_epoch;    // cwnd at the epoch start
};

static_assert(offsetof(Tcb, rcv) == RTE_CACHE_LINE_SIZE, "sender and state: cache line 0");
static_assert(offsetof(Tcb, timer) <= 2 * RTE_CACHE_LINE_SIZE, "the hot part is two cache lines");
static_assert(sizeof(Tcb) <= 512, "a connection record stays within 512 bytes");

}  // namespace chimney::tcp
