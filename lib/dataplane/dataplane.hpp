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
