// The impairment stage: faults made on purpose in a port's receive or
// transmit path (loss, corruption, duplication, reordering, delay), because
// a test machine has no netem. Every decision comes from a seeded generator
// drawn in frame order, so the same seed and the same frames replay the same
// faults. Used by chimneyd's workers (--impair-rx / --impair-tx /
// --impair-seed) and by the two-engine wire of the unit tests.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "net/counter.hpp"

namespace chimney::net {

struct ImpairSpec {
  double loss = 0;        // probability that a frame is dropped
  double corrupt = 0;     // ... that one byte after the Ethernet header is flipped
  double duplicate = 0;   // ... that a copy follows the frame
  double reorder = 0;     // ... that the frame is held back and goes after the next one
  uint32_t delay_us = 0;  // every frame is held this long (a longer wire)

  bool active() const { return loss > 0 || corrupt > 0 || duplicate > 0 || reorder > 0 || delay_us > 0; }
  // "loss=1%,reorder=10%,duplicate=2%,corrupt=1%,delay-us=200" ("none" for nothing).
  std::string str() const;
  // The same syntax; a probability is a percentage ("5%") or a fraction
  // ("0.05"), from 0 to 1. "" and "none" are the empty spec. nullopt and a
  // message naming the bad item otherwise.
  static std::optional<ImpairSpec> parse(std::string_view text, std::string& error);
};

// What a stage did. The counts are of frames entering the stage: `lost`
// never reached the far side, `overflow` found the delay line full (also lost).
struct ImpairStats {
  Counter frames;
  Counter lost;
  Counter corrupted;
  Counter duplicated;
  Counter reordered;
  Counter overflow;
};

class Impairment {
 public:
  // On transmit a frame may still reference the host's memory (zero-copy
  // send) and its checksums may be left to the port: a corrupted or
  // duplicated frame is therefore a copy from `pool`, and a corrupted copy
  // gets its checksums computed in software before the byte is flipped, so
  // the receiver sees a frame with a wrong checksum, as from a real wire.
  // On receive the frame itself is changed and its checksum flags are reset
  // to "unknown", so the stack verifies it.
  enum class Direction : uint8_t { rx, tx };

  Impairment(const ImpairSpec& spec, uint64_t seed, Direction dir, rte_mempool* pool, ImpairStats* stats,
             uint32_t line_frames = 16384);
  ~Impairment();
  Impairment(const Impairment&) = delete;
  Impairment& operator=(const Impairment&) = delete;

  // Takes `n` frames (ownership passes to the stage) and writes the frames
  // that are due by `now_us`, at most `cap`, to `out`, returning their count.
  // `out` may be `in`. Call it on every poll while held() is non-zero: frames
  // held for delay or reordering come out of later calls.
  uint16_t pass(rte_mbuf** in, uint16_t n, uint64_t now_us, rte_mbuf** out, uint16_t cap);
  // Frames inside the stage (delay line and the one held for reordering).
  size_t held() const { return count_ + (reorder_held_ != nullptr ? 1 : 0); }

  // The seed of stage `index` (worker, port and direction folded in) of a
  // run seeded with `run_seed`.
  static uint64_t stage_seed(uint64_t run_seed, uint64_t index);

 private:
  bool chance(double p) { return p > 0 && (rng_() >> 11) * 0x1.0p-53 < p; }
  rte_mbuf* corrupt(rte_mbuf* m);
  void enqueue(rte_mbuf* m, uint64_t due_us);

  struct Slot {
    rte_mbuf* m;
    uint64_t due_us;
  };
  ImpairSpec spec_;
  Direction dir_;
  rte_mempool* pool_;
  ImpairStats* stats_;
  std::mt19937_64 rng_;
  std::vector<Slot> line_;  // the delay line, a FIFO (every frame has the same delay)
  size_t head_ = 0;
  size_t count_ = 0;
  rte_mbuf* reorder_held_ = nullptr;
};

}  // namespace chimney::net
