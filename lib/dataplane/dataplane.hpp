// State shared by the lcores of one chimneyd process: ports, counters, the
// worker-to-slow-path rings, and the stop flag.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include <rte_ethdev.h>
#include <rte_ring.h>

#include "dataplane/config.hpp"
#include "dataplane/counters.hpp"
#include "dataplane/port.hpp"
#include "dataplane/rss.hpp"
#include "tcp/engine.hpp"
#include "net/packet.hpp"

namespace chimney::dataplane {

class Steering;

struct Dataplane {
  Config cfg;
  std::vector<Port> ports;
  std::array<int16_t, RTE_MAX_ETHPORTS> port_index;  // DPDK port id -> index in `ports`, -1 none
  std::vector<unsigned> worker_lcores;               // worker slot w+1 runs on worker_lcores[w]
  std::vector<rte_ring*> to_slowpath;    // per worker: frames for the slow path (worker -> main)
  std::vector<rte_ring*> from_slowpath;  // per worker: frames the slow path sends (main -> worker)
  std::vector<rte_ring*> ops;            // per worker: OffloadOp requests (main -> worker)
  std::vector<rte_ring*> notes;          // per worker: OffloadNote completions (worker -> main)
  // Which worker owns a connection (rss.hpp); set by build_dataplane.
  Placement placement;
  // Software steering (steer.hpp), with several workers only:
  // steer[from * workers + to] carries frames worker `from` received for
  // worker `to` (nullptr where from == to).
  std::vector<rte_ring*> steer;
  rte_mempool* op_pool = nullptr;        // OffloadOp and OffloadNote records
  std::vector<rte_mempool*> attach_pools;  // per port: mbufs for zero-copy send payload
  // counters[slot * ports.size() + port]: slot 0 is the main lcore, slot w+1 worker w.
  std::unique_ptr<Counters[]> counters;
  std::atomic<bool> stop{false};

  Dataplane() { port_index.fill(-1); }
  size_t slots() const { return worker_lcores.size() + 1; }
  rte_ring* steer_ring(unsigned from, unsigned to) const { return steer[size_t{from} * placement.workers() + to]; }
  Counters& at(size_t slot, size_t port) { return counters[slot * ports.size() + port]; }
  CounterTotals port_totals(size_t port) const;
  CounterTotals slot_totals(size_t slot) const;
};

// Classifies a received frame (net::classify_frame) and checks that it is
// addressed to this port: our MAC (or broadcast, for ARP) and our IPv4 address.
// ARP for other addresses goes on to the slow path, which merges the sender
// (RFC 826) before it drops the frame.
net::Classified accept_frame(const Port& port, rte_mbuf* m);

// The engine's segments go out through a TX queue (a worker's, of its port).
class PortSink : public tcp::TxSink {
 public:
  explicit PortSink(TxQueue& q) : q_(q) {}
  void transmit(rte_mbuf** pkts, uint16_t n) override {
    for (uint16_t i = 0; i < n; ++i) q_.push(pkts[i]);
  }

 private:
  TxQueue& q_;
};

// What one receive step on a port found (receive_burst).
struct RxStep {
  uint16_t received = 0;     // frames taken from the RX queue
  uint16_t to_slowpath = 0;  // frames placed in `slow` for the slow path
};

// A worker's receive step on one port: an RX burst of up to `burst` frames
// on `queue`, through the impairment stage when there is one, each frame
// classified and checked (accept_frame; drops counted in `c` and freed),
// the TCP segments handed to `engine` in one input() burst. ARP, ICMP and
// segments of no connection are placed in `slow`. `rx`, `tcp` and `slow`
// hold at least `burst` frames each. With `steer` (several workers), TCP
// segments another worker owns go to it instead (Steering::keep, flush).
// No allocation, lock or system call.
RxStep receive_burst(const Port& port, uint16_t queue, uint16_t burst, tcp::Engine& engine, uint64_t now_us,
                     Counters& c, net::Impairment* impair, rte_mbuf** rx, rte_mbuf** tcp, rte_mbuf** slow,
                     Steering* steer = nullptr);
// Queues `n` frames on a worker's to-slow-path ring; what the ring refuses
// is dropped and counted (slowpath_ring_full).
void queue_to_slowpath(rte_ring* ring, rte_mbuf** frames, unsigned n, Counters& c);
// Moves up to `max` frames the slow path built (a worker's from-slow-path
// ring) into the TX queues of their ports (`tx` indexed like dp.ports);
// `scratch` holds `max` frames. Returns how many were moved.
unsigned take_from_slowpath(const Dataplane& dp, rte_ring* ring, std::vector<TxQueue>& tx, rte_mbuf** scratch,
                            unsigned max);

// A segment the slow path passed on while the engine took its connection
// over (OffloadOp::Kind::input, SlowPath::hand_over), behind the offload on
// the same ring: into `engine` (counted handshake_parked_delivered); when
// the engine has no connection for it (the offload failed or never came) it
// is freed and counted (handshake_parked_dropped).
void hand_over_input(tcp::Engine& engine, rte_mbuf* m, uint64_t now_us, Counters& c);

struct WorkerContext {
  Dataplane* dp;
  size_t slot;     // 1-based: counters slot, and RX/TX queue slot - 1
};

// The engine configuration a worker uses for `port` (also for tests).
tcp::EngineConfig engine_config(const Dataplane& dp, size_t worker, size_t port);

// A record for the ops/notes rings; nullptr when the pool is empty.
void* alloc_op_record(Dataplane& dp);
void free_op_record(Dataplane& dp, void* record);

// The worker lcore loop: RX burst, demux, TX burst, until dp->stop.
// `arg` is a WorkerContext*.
int worker_main(void* arg);

// Sleeps when an lcore found no work for a while (Config::idle_sleep_us).
class IdleBackoff {
 public:
  explicit IdleBackoff(unsigned sleep_us) : sleep_us_(sleep_us) {}
  void update(unsigned work);

 private:
  static constexpr unsigned kSpinsBeforeSleep = 1000;
  unsigned sleep_us_;
  unsigned idle_ = 0;
};

}  // namespace chimney::dataplane
