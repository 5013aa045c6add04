// The offload engine of one lcore: owns its connections (a fixed table of
// TCBs, a 4-tuple rte_hash), their timers (one wheel) and the TIME_WAIT
// entries, runs RFC 9293 for the offloaded states, and implements the offload
// API of lib/chimney. Single-threaded: every call comes from the lcore that
// owns the engine, and every callback is made from it.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "chimney/target.hpp"
#include "net/build.hpp"
#include "tcp/stats.hpp"
#include "tcp/tcb.hpp"
#include "tcp/timer_wheel.hpp"

struct rte_hash;

namespace chimney::tcp {

struct EngineConfig {
  std::string name = "engine";       // prefixes the rte_hash names; unique per process
  int socket_id = 0;
  uint32_t max_connections = 4096;
  // TIME_WAIT entries (C-19); when all are taken the oldest makes room
  // (Engine::enter_time_wait). chimneyd: default_time_wait_entries().
  uint32_t time_wait_entries = 4096;
  uint32_t msl_ms = 30'000;           // TIME_WAIT lasts 2·MSL (C-19)
  uint32_t rto_initial_ms = 1000;     // RFC 6298 (2.1)
  uint32_t rto_min_ms = 200;          // RFC 6298 (2.4) says 1 s; 200 ms as Linux
  uint32_t rto_max_ms = 60'000;       // RFC 6298 (2.5)
  uint32_t delayed_ack_ms = 40;       // RFC 1122 §4.2.3.2: < 0.5 s
  uint32_t push_timer_ms = 200;       // C-9 push mode
  uint32_t persist_max_ms = 60'000;
  uint32_t ooo_segments = 16384;      // reassembly nodes for the whole engine
  // Nodes one connection may hold (at most 65535): enough for a 4 MiB window
  // of 1448-byte segments (2897) beyond a hole, so that a loss in a bulk
  // stream does not make the peer send the window again; an attacker's
  // 1-byte segments stop here, leaving the rest of the engine's nodes.
  uint32_t ooo_segments_per_connection = 4096;
  uint32_t max_rcv_window = 64u << 20;  // largest initial_rcv_wnd accepted
  uint32_t challenge_acks_per_second = 1000;  // RFC 5961 §7
  net::TxChecksumCaps tx_caps;        // what the port computes
  rte_mempool* header_pool = nullptr; // header mbufs (headroom for Eth/IP/TCP)
  rte_mempool* attach_pool = nullptr; // mbufs for zero-copy payload (data room may be 0)
  // The device reads only the EAL's own memory (virtio-user: its vhost-user
  // backend maps nothing else, so payload attached from host memory is never
  // sent and blocks the ring): copy payload into header_pool mbufs instead.
  bool copy_payload = false;
};

// The TIME_WAIT table chimneyd gives an engine of `max_connections` unless
// told otherwise (`time-wait-entries`), and chimney-bench likewise. An entry
// lives 2·MSL (60 s at the default MSL) and only a connection we close first
// makes one (RFC 9293 §3.6: the side whose FIN goes first), so the table needs
// (our closes per second × 2·MSL) entries, not one per connection. An eighth
// of max_connections holds the closes of a full table of connections spread
// over 8 minutes (max_connections / 8 / 60 s: 2 k closes/s at 1M connections);
// beyond that the oldest entries, nearest their end, make room. At an eighth
// the table (rte_hash about 45 B and record 56 B per entry) costs about 13 B
// per connection slot, which keeps a whole slot, TCB and connection hash
// included, under 512 B (docs/PERFORMANCE.md, Memory). Small tables keep an
// entry per connection, up to 1024.
inline uint32_t default_time_wait_entries(uint32_t max_connections) {
  return std::max(max_connections / 8, std::min(max_connections, 1024u));
}

// Where the engine's segments go (the worker's TX queue, a test's capture).
class TxSink {
 public:
  virtual ~TxSink() = default;
  virtual void transmit(rte_mbuf** pkts, uint16_t n) = 0;
};

class Engine final : public OffloadTarget {
 public:
  Engine(const EngineConfig& cfg, HostCallbacks& host, TxSink& wire);
  ~Engine() override;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // OffloadTarget (CONTRACT.md).
  void initiate_offload(const OffloadState& state, void* host_context, ConnectionHandle* handle) override;
  Status send(ConnectionHandle h, NetBufferList* chain) override;
  Status receive(ConnectionHandle h, NetBufferList* chain) override;
  Status disconnect(ConnectionHandle h, NetBufferList* nbl, DisconnectKind kind) override;
  Status terminate(ConnectionHandle h) override;
  Status update_cached(ConnectionHandle h, const CachedState& cached) override;
  Status query_delegated(ConnectionHandle h, DelegatedState* out) override;

  // Classified TCP segments (net::classify_frame, addressed to us). Segments
  // of no offloaded connection and no TIME_WAIT entry are returned in
  // `unmatched` (the slow path's); the engine owns the rest. Returns the
  // number of unmatched segments.
  uint16_t input(rte_mbuf** pkts, uint16_t n, uint64_t now_us, rte_mbuf** unmatched);
  // Timers, deferred completions and pending output.
  void poll(uint64_t now_us);

  const EngineStats& stats() const { return stats_; }
  uint32_t connections() const { return used_; }
  uint32_t time_wait_entries() const;
  // The record behind a handle (tests and diagnostics), nullptr if released.
  const Tcb* find(ConnectionHandle h) const;

 struct Key;       // the 4-tuple (engine_internal.hpp)
  struct TimeWait;  // a TIME_WAIT entry

 private:
  struct PendingOffload {
    ConnectionHandle handle;
    void* host_context;
    Status status;
  };

  // engine.cpp: table, requests, completions
  Tcb* lookup(ConnectionHandle h) const;
  Status validate(const OffloadState& s) const;
  void release(Tcb& c);
  void complete_sends(Tcb& c);
  void complete_sends_aborted(Tcb& c, Status status);
  void complete_receives(Tcb& c, Status status_if_empty);
  void complete_disconnect(Tcb& c, Status status);
  // C-13/C-17: `request` is the abortive disconnect, if the host asked for one.
  void abort_connection(Tcb& c, bool with_rst, bool raise_event, NetBufferList* request = nullptr);
  void finish_abort(Tcb& c);
  bool send_queue_released(const Tcb& c) const;
  void enter_closed(Tcb& c);
  void enter_time_wait(Tcb& c);
  void drop_time_wait(TimeWait& tw);
  void restart_time_wait(TimeWait& tw);  // 2·MSL again from now
  uint32_t take_time_wait_record();       // kNoTimeWait when all are in use
  void link_newest(uint32_t slot);
  void unlink_time_wait(uint32_t slot);
  void finish_terminate(Tcb& c);
  void maybe_indicate_fin(Tcb& c);
  void report_backlog(Tcb& c);
  void raise(Tcb& c, EventKind kind, RetrieveReason reason, uint32_t value = 0);
  bool send_memory_released(const NetBufferList* nbl) const;

  // input.cpp: RFC 9293 §3.10.7.4 for the synchronized states
  void segment_arrives(Tcb& c, rte_mbuf* m);
  bool process_ack(Tcb& c, uint32_t ack, uint32_t seq, uint32_t wnd, bool has_data_or_fin,
                   const net::TcpOptions& opts);
  void process_sack(Tcb& c, const net::TcpOptions& opts);
  void process_data(Tcb& c, rte_mbuf* m, uint32_t seq, uint32_t len, bool fin, bool psh);
  void challenge_ack(Tcb& c);
  bool time_wait_input(rte_mbuf* m);
  void send_time_wait_ack(const TimeWait& tw);

  // receive.cpp: delivery to the host (C-9, C-10), reassembly
  void deliver(Tcb& c, rte_mbuf* m, uint32_t len, bool psh);
  void drain_buffered(Tcb& c);
  void ooo_insert(Tcb& c, rte_mbuf* m, uint32_t seq, uint32_t len);
  void ooo_pull(Tcb& c);
  void ooo_free(Tcb& c);
  uint32_t advertise_window(Tcb& c);
  void update_window_after_read(Tcb& c);
  void complete_filled_receives(Tcb& c, bool push);

  // output.cpp: segments, timers
  void output(Tcb& c);
  bool send_segment(Tcb& c, uint32_t seq, uint32_t len, uint8_t tcp_flags, bool retransmission);
  void send_ack(Tcb& c);
  void send_rst(Tcb& c);
  rte_mbuf* build_header(const net::TcpFrameSpec& h);
  rte_mbuf* header(Tcb& c, uint32_t seq, uint8_t tcp_flags, bool sack_blocks, uint32_t payload_len);
  void finish_segment(rte_mbuf* m);
  bool attach_payload(Tcb& c, rte_mbuf* hdr, uint32_t seq, uint32_t len, bool& psh);
  bool copy_into(rte_mbuf* hdr, rte_mbuf*& last, const uint8_t* src, uint32_t len);
  void transmit(rte_mbuf* m);
  void flush();
  void mark_output(Tcb& c);
  void run_output_list();
  void arm(Tcb& c, TimerKind k, uint32_t delay_ms);
  void disarm(Tcb& c, TimerKind k);
  void rearm_wheel(Tcb& c);
  void on_timer(Tcb& c);
  void on_retransmit_timeout(Tcb& c);
  void on_persist_timeout(Tcb& c);
  void on_loss_probe_timeout(Tcb& c);
  void on_reorder_timeout(Tcb& c);
  void arm_loss_probe(Tcb& c);
  bool send_window_probe(Tcb& c);  // false: the persist limit was reached (RETRIEVE raised)
  void on_keepalive_timeout(Tcb& c);
  void sack_recovery_output(Tcb& c);
  void enter_recovery(Tcb& c);
  void restart_retransmit_timer(Tcb& c);
  // Our timestamp clock for `c` (1 ms ticks, RFC 7323 §5.4), continuing the
  // one the host used before the offload (DelegatedState::ts_time).
  uint32_t ts_now(const Tcb& c) const { return static_cast<uint32_t>(now_ms_) + c.ts_offset; }
  void rtt_sample(Tcb& c, uint64_t rtt_us);

  EngineConfig cfg_;
  HostCallbacks& host_;
  TxSink& wire_;
  rte_hash* table_ = nullptr;          // Key -> slot
  std::unique_ptr<Tcb[], void (*)(Tcb*)> tcbs_;
  std::vector<uint16_t> generation_;   // per slot: the high bits of handles
  std::vector<uint32_t> free_slots_;
  uint32_t used_ = 0;

  // TIME_WAIT: records indexed by slot, linked by index in order of expiry
  // (every entry lasts 2·MSL, so the oldest is the first to expire and the
  // one that makes room when the table is full); records never used yet are
  // not touched.
  static constexpr uint32_t kNoTimeWait = UINT32_MAX;
  rte_hash* tw_table_ = nullptr;       // Key -> TimeWait slot
  std::unique_ptr<TimeWait[]> tw_;
  uint32_t tw_used_ = 0;               // entries in TIME_WAIT
  uint32_t tw_untouched_ = 0;          // records [tw_untouched_, time_wait_entries) never used
  uint32_t tw_free_ = kNoTimeWait;     // released records, linked through TimeWait::next
  uint32_t tw_oldest_ = kNoTimeWait;   // the entries, oldest first
  uint32_t tw_newest_ = kNoTimeWait;

  std::unique_ptr<OooSegment[]> ooo_nodes_;
  OooSegment* ooo_free_list_ = nullptr;
  uint32_t ooo_arrivals_ = 0;  // stamps OooSegment::arrival

  TimerWheel wheel_;
  uint64_t now_us_ = 0;
  uint64_t now_ms_ = 0;
  Tcb* output_list_ = nullptr;
  std::vector<PendingOffload> pending_offloads_;
  std::vector<Tcb*> pending_terminates_;
  std::vector<Tcb*> pending_aborts_;  // aborted, completions waiting for the NIC (finish_abort)
  std::array<rte_mbuf*, 64> tx_{};
  uint16_t tx_n_ = 0;
  uint64_t challenge_window_ms_ = 0;
  uint32_t challenge_acks_ = 0;
  EngineStats stats_;
};

}  // namespace chimney::tcp
