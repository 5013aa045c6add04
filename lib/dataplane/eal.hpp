// The EAL command line: what the user gave, plus the defaults chimneyd adds
// (lcores, memory mode, a private file prefix, one vdev/allow entry per port).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataplane/config.hpp"

namespace chimney::dataplane {

struct HugepageInfo {
  bool mounted = false;   // a hugetlbfs mount exists
  uint64_t free_bytes = 0;
};

// Reads /proc/meminfo and /proc/mounts.
HugepageInfo detect_hugepages();

struct EalPlan {
  std::vector<std::string> args;  // argv for rte_eal_init, argv[0] included
  bool hugepages = false;         // whether the EAL will use hugepages
  std::string memory_note;        // one line for the log: which memory and why
  std::string file_prefix;
};

// The driver name of port `index` (what rte_eth_dev_get_port_by_name finds).
std::string port_device_name(const PortConfig& port, size_t index);

// The CPUs this process may run on (sched_getaffinity), in order.
std::vector<unsigned> usable_cpus();

// `user` holds the EAL options given on the command line (before `--`).
// `cpus` (usable_cpus(); empty: not known) matters only when the user gave
// no lcore list: the main lcore and `workers` worker lcores are lcores
// 0..workers, on CPUs 0..workers (-l0-N) when there are that many, else
// spread over `cpus` in turn (--lcores=0@a,1@b,2@a...: two workers on a
// 2-CPU machine share a CPU with the mostly idle main lcore).
EalPlan plan_eal(const std::string& argv0, const std::vector<std::string>& user,
                 const Config& cfg, const HugepageInfo& huge, int pid,
                 const std::vector<unsigned>& cpus = {});

}  // namespace chimney::dataplane
