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

// `user` holds the EAL options given on the command line (before `--`).
EalPlan plan_eal(const std::string& argv0, const std::vector<std::string>& user,
                 const Config& cfg, const HugepageInfo& huge, int pid);

}  // namespace chimney::dataplane
