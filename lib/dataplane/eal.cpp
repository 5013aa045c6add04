#include "dataplane/eal.hpp"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace chimney::dataplane {

namespace {

bool has_any(const std::vector<std::string>& args, std::initializer_list<const char*> names) {
  for (const auto& a : args)
    for (const char* n : names) {
      std::string name(n);
      if (a == name || a.rfind(name + "=", 0) == 0) return true;
      // short options may be glued to their value: -l0-1, -c3
      if (name.size() == 2 && name[0] == '-' && name[1] != '-' && a.rfind(name, 0) == 0) return true;
    }
  return false;
}

}  // namespace

HugepageInfo detect_hugepages() {
  HugepageInfo info;
  std::ifstream mounts("/proc/mounts");
  for (std::string line; std::getline(mounts, line);) {
    std::istringstream is(line);
    std::string dev, dir, type;
    is >> dev >> dir >> type;
    if (type == "hugetlbfs") info.mounted = true;
  }
  std::ifstream meminfo("/proc/meminfo");
  uint64_t free_pages = 0, page_kb = 0;
  for (std::string line; std::getline(meminfo, line);) {
    std::istringstream is(line);
    std::string key;
    uint64_t value = 0;
    is >> key >> value;
    if (key == "HugePages_Free:") free_pages = value;
    if (key == "Hugepagesize:") page_kb = value;
  }
  info.free_bytes = free_pages * page_kb * 1024;
  return info;
}

std::string port_device_name(const PortConfig& port, size_t index) {
  switch (port.kind) {
    case PortKind::tap: return "net_tap" + std::to_string(index);
    case PortKind::virtio_user: return "virtio_user" + std::to_string(index);
    case PortKind::memif: return "net_memif" + std::to_string(index);
    case PortKind::af_packet: return "net_af_packet" + std::to_string(index);
    case PortKind::pci: return port.pci;
  }
  return {};
}

std::vector<unsigned> usable_cpus() {
  std::vector<unsigned> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (unsigned c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

EalPlan plan_eal(const std::string& argv0, const std::vector<std::string>& user,
                 const Config& cfg, const HugepageInfo& huge, int pid, const std::vector<unsigned>& cpus) {
  EalPlan plan;
  std::vector<std::string> given = cfg.eal_args;
  given.insert(given.end(), user.begin(), user.end());

  plan.args.push_back(argv0);
  plan.args.insert(plan.args.end(), given.begin(), given.end());

  if (!has_any(given, {"-l", "-c", "--lcores"})) {
    // -l0-N when CPUs 0..N are ours (or nothing is known)
    bool fits = true;
    for (unsigned l = 0; l <= cfg.workers && !cpus.empty(); ++l)
      fits &= std::find(cpus.begin(), cpus.end(), l) != cpus.end();
    if (fits) {
      plan.args.push_back("-l0-" + std::to_string(cfg.workers));
    } else {
      std::string lcores = "--lcores=";
      for (unsigned l = 0; l <= cfg.workers; ++l)
        lcores += (l == 0 ? "" : ",") + std::to_string(l) + "@" + std::to_string(cpus[l % cpus.size()]);
      plan.args.push_back(lcores);
    }
  }

  const uint64_t needed = uint64_t{cfg.memory_mb} << 20;
  if (has_any(given, {"--no-huge"})) {
    plan.hugepages = false;
    plan.memory_note = "no hugepages (--no-huge given)";
  } else if (has_any(given, {"-m", "--socket-mem"}) || cfg.huge == HugeMode::on) {
    plan.hugepages = true;
    plan.memory_note = "hugepages (" + std::to_string(huge.free_bytes >> 20) + " MiB free)";
  } else if (cfg.huge == HugeMode::automatic && huge.mounted && huge.free_bytes >= needed) {
    plan.hugepages = true;
    plan.args.push_back("-m");
    plan.args.push_back(std::to_string(cfg.memory_mb));
    plan.memory_note = "hugepages (" + std::to_string(huge.free_bytes >> 20) + " MiB free, using " +
                       std::to_string(cfg.memory_mb) + ")";
  } else {
    plan.hugepages = false;
    plan.args.push_back("--no-huge");
    plan.args.push_back("-m");
    plan.args.push_back(std::to_string(cfg.memory_mb));
    if (cfg.huge == HugeMode::off)
      plan.memory_note = "no hugepages (huge=off), --no-huge -m " + std::to_string(cfg.memory_mb);
    else
      plan.memory_note = std::string("no hugepages (") +
                         (huge.mounted ? std::to_string(huge.free_bytes >> 20) + " MiB free"
                                       : "no hugetlbfs mounted") +
                         "), falling back to --no-huge -m " + std::to_string(cfg.memory_mb);
  }
  if (plan.hugepages && !has_any(given, {"--huge-unlink"})) plan.args.push_back("--huge-unlink");
  // A vhost-user backend maps the frontend's memory file by file, at most 8
  // of them (VHOST_MEMORY_MAX_NREGIONS): with hugepages, one file per memseg
  // list. (Without, the EAL's memory is one memfd already.)
  bool any_virtio_user = false;
  for (const PortConfig& p : cfg.ports) any_virtio_user |= p.kind == PortKind::virtio_user;
  if (plan.hugepages && any_virtio_user && !has_any(given, {"--single-file-segments"}))
    plan.args.push_back("--single-file-segments");

  if (!has_any(given, {"--file-prefix"})) {
    plan.file_prefix = "chimney-" + std::to_string(pid);
    plan.args.push_back("--file-prefix=" + plan.file_prefix);
  } else {
    for (size_t i = 0; i < given.size(); ++i) {
      if (given[i] == "--file-prefix" && i + 1 < given.size()) plan.file_prefix = given[i + 1];
      else if (given[i].rfind("--file-prefix=", 0) == 0) plan.file_prefix = given[i].substr(14);
    }
  }

  bool any_pci = false;
  for (size_t i = 0; i < cfg.ports.size(); ++i) {
    const PortConfig& p = cfg.ports[i];
    std::string dev = port_device_name(p, i);
    std::string queues = std::to_string(cfg.workers + 1);
    std::string vdev;
    switch (p.kind) {
      case PortKind::tap: vdev = dev + ",iface=" + p.iface; break;
      case PortKind::virtio_user:
        vdev = dev + ",path=" + p.path + ",queues=" + queues;
        break;
      case PortKind::memif:
        vdev = dev + ",role=" + p.role + (p.path.empty() ? "" : ",socket=" + p.path);
        break;
      case PortKind::af_packet: vdev = dev + ",iface=" + p.iface + ",qpairs=" + queues; break;
      case PortKind::pci: any_pci = true; break;
    }
    if (p.kind == PortKind::pci) {
      plan.args.push_back("-a");
      plan.args.push_back(p.devargs.empty() ? p.pci : p.pci + "," + p.devargs);
    } else {
      if (!p.devargs.empty()) vdev += "," + p.devargs;
      plan.args.push_back("--vdev=" + vdev);
    }
  }
  if (!any_pci && !has_any(given, {"-a", "--allow", "-b", "--block", "--no-pci"}))
    plan.args.push_back("--no-pci");
  return plan;
}

}  // namespace chimney::dataplane
