// A statistics counter written by one lcore and read by others (telemetry,
// the SIGUSR1 dump): relaxed atomics, so no lock prefix on the write side and
// no torn reads on the read side.
#pragma once

#include <atomic>
#include <cstdint>

namespace chimney::net {

class Counter {
 public:
  void add(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void set(uint64_t v) { v_.store(v, std::memory_order_relaxed); }
  uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

}  // namespace chimney::net
