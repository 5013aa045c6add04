// Software steering between workers: a TCP frame that reached a worker's RX
// queue but belongs to a connection another worker owns (rss.hpp: a device
// without RSS, one whose RETA we could not program, or a flow the kernel's
// TAP queue choice sent elsewhere) is handed to its owner through a
// single-producer/single-consumer ring per (from, to) pair of workers; the
// owner drains its rings every loop iteration and feeds the frames to its
// engines like its own RX burst. Bursts both ways; no allocation, lock or
// system call per frame. With one worker there is no Steering at all.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <rte_mbuf.h>
#include <rte_ring.h>

#include "dataplane/counters.hpp"
#include "dataplane/port.hpp"
#include "dataplane/rss.hpp"

namespace chimney::tcp {
class Engine;
}

namespace chimney::dataplane {

struct Dataplane;

class Steering {
 public:
  // Frames one receive step (or one ring drain) handles at most.
  static constexpr unsigned kMaxBurst = 256;

  // Worker `self` (0-based) of dp, whose rings dp.steer holds (made by
  // build_dataplane when there are several workers). `engines` indexed
  // like dp.ports.
  Steering(Dataplane& dp, unsigned self, std::vector<tcp::Engine*> engines);

  // Whether this worker owns the classified TCP frame `m` of `port`; when
  // not, the frame is staged for its owner (flush() sends it).
  bool keep(const Port& port, rte_mbuf* m) {
    const unsigned w = placement_.owner_of_frame(m, port.rss.hash_ours);
    if (w == self_) return true;
    Staged& s = out_[w];
    s.frames[s.n++] = m;
    return false;
  }
  // Hands the staged frames to their owners, a burst per owner; what a
  // full ring refuses is freed and counted (steer_ring_full). Call once per
  // receive step with at most kMaxBurst frames staged.
  void flush(Counters& c);

  // Takes what the other workers handed here and feeds it to the engines;
  // segments of no connection go on `to_slowpath`. Returns the frames taken.
  unsigned receive(uint64_t now_us, rte_ring* to_slowpath);

 private:
  struct Staged {
    std::array<rte_mbuf*, kMaxBurst> frames;
    unsigned n = 0;
  };
  void feed(size_t port, rte_mbuf** frames, uint16_t n, uint64_t now_us, rte_ring* to_slowpath);

  Dataplane& dp_;
  unsigned self_;
  size_t slot_;
  Placement placement_;
  std::vector<tcp::Engine*> engines_;
  std::vector<rte_ring*> to_;    // to_[w]: this worker -> w (nullptr for self)
  std::vector<rte_ring*> from_;  // the rings into this worker
  std::vector<Staged> out_;      // by owner worker
  std::array<rte_mbuf*, kMaxBurst> in_{};
  std::array<rte_mbuf*, kMaxBurst> by_port_{};
  std::array<rte_mbuf*, kMaxBurst> slow_{};
};

}  // namespace chimney::dataplane
