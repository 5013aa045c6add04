// chimney-bench: shared definitions of the benchmark driver (figures, options).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace chimney::bench {

struct Options {
  double seconds = 2.0;              // measured window of each rate workload
  double warmup = 0.3;               // before the window opens
  uint32_t connections = 1'000'000;  // (d)/(e): idle connections, and the engines' table size
  std::vector<uint32_t> rr_connections{1, 100, 10'000, 100'000};
  std::vector<uint32_t> linux_rr_connections{1, 100, 10'000};
  std::vector<uint32_t> cost_connections{1, 1'000, 100'000, 1'000'000};
  uint32_t churn_parallel = 64;      // connections cycling at once
  int cpu = 1;                       // the core everything measured runs on
  int other_cpu = 0;                 // testpmd's main lcore (mostly asleep)
  bool smoke = false;
  std::string peer_path;             // chimney-bench-peer
  std::string testpmd = "dpdk-testpmd";
  std::string load_note;             // uptime's load average at the start
};

// One measured figure; `ok` false when the workload moved nothing or failed.
struct Figure {
  double value = 0;
  bool ok = false;
  std::string note;
};

// Every figure of a run by key (chimney's and the references'), in order.
class Figures {
 public:
  void set(const std::string& key, double value, bool ok = true, const std::string& note = "") {
    if (!map_.count(key)) order_.push_back(key);
    map_[key] = Figure{value, ok, note};
  }
  void fail(const std::string& key, const std::string& why) { set(key, 0, false, why); }
  const Figure* get(const std::string& key) const {
    auto it = map_.find(key);
    return it == map_.end() ? nullptr : &it->second;
  }
  const std::vector<std::string>& keys() const { return order_; }

 private:
  std::map<std::string, Figure> map_;
  std::vector<std::string> order_;
};

// in-process engine workloads (inproc.cpp); needs the EAL
void run_inproc(const Options& o, const std::vector<std::string>& only, Figures& f,
                std::vector<double>& latency_samples_us);
// Linux kernel TCP over veth between two namespaces (reference.cpp)
void run_linux(const Options& o, const std::vector<std::string>& only, Figures& f);
// dpdk-testpmd macswap over a memif pair (reference.cpp)
void run_wire(const Options& o, Figures& f);
// tests/pktgen's three traffic patterns replayed against one engine (patterns.cpp); needs the EAL
void run_patterns(const Options& o, Figures& f);
std::vector<std::string> garbage_drop_reasons();  // the DropReasons of the garbage frames, in order

std::string load_average();  // /proc/loadavg's first three fields

}  // namespace chimney::bench
