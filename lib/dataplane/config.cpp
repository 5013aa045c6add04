#include "dataplane/config.hpp"

#include <boost/program_options.hpp>

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>

#include "tcp/engine.hpp"

namespace po = boost::program_options;

namespace chimney::dataplane {

namespace {

const char* const kPortKinds[] = {"tap", "virtio_user", "memif", "af_packet", "pci"};

template <typename T>
bool parse_uint(std::string_view text, T& out, uint64_t min, uint64_t max) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || ptr != text.data() + text.size() || v < min || v > max) return false;
  out = static_cast<T>(v);
  return true;
}

// Thrown while validating; caught in parse_config and turned into Exit{2}.
struct BadValue {
  std::string option;
  std::string message;
};

bool is_log_level(const std::string& s) {
  for (const char* l : {"trace", "debug", "info", "warn", "error", "critical", "off"})
    if (s == l) return true;
  return false;
}

std::optional<std::filesystem::path> default_config_file() {
  if (const char* env = std::getenv("CHIMNEY_CONF"); env != nullptr && *env != '\0') return env;
  for (std::filesystem::path p : {std::filesystem::path("config/chimney.conf"),
                                  std::filesystem::path(CHIMNEY_SYSCONFDIR) / "chimney.conf"}) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(p, ec)) return p;
  }
  return std::nullopt;
}

}  // namespace

const char* to_string(PortKind kind) { return kPortKinds[static_cast<size_t>(kind)]; }

std::optional<PortConfig> PortConfig::parse(const std::string& spec, std::string& error) {
  PortConfig pc;
  bool have_kind = false;
  bool have_address = false;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto eq = item.find('=');
    if (eq == std::string::npos) {
      error = "'" + item + "' is not key=value";
      return std::nullopt;
    }
    std::string key = item.substr(0, eq);
    std::string value = item.substr(eq + 1);
    if (key == "kind") {
      bool found = false;
      for (size_t i = 0; i < std::size(kPortKinds); ++i) {
        if (value == kPortKinds[i]) {
          pc.kind = static_cast<PortKind>(i);
          found = true;
        }
      }
      if (!found) {
        error = "kind '" + value + "' is not one of tap, virtio_user, memif, af_packet, pci";
        return std::nullopt;
      }
      have_kind = true;
    } else if (key == "iface") {
      if (value.empty() || value.size() > 15) {
        error = "iface '" + value + "' must be 1 to 15 characters";
        return std::nullopt;
      }
      pc.iface = value;
    } else if (key == "path") {
      pc.path = value;
    } else if (key == "pci") {
      pc.pci = value;
    } else if (key == "role") {
      if (value != "client" && value != "server") {
        error = "role '" + value + "' must be client or server";
        return std::nullopt;
      }
      pc.role = value;
    } else if (key == "devargs") {
      // devargs may itself contain commas: it takes the rest of the spec.
      std::string rest;
      std::getline(ss, rest, '\0');
      pc.devargs = rest.empty() ? value : value + "," + rest;
    } else if (key == "address") {
      auto p = net::Ipv4Prefix::parse(value);
      if (!p || p->len == 0) {
        error = "address '" + value + "' is not an IPv4 address/prefix";
        return std::nullopt;
      }
      pc.address = *p;
      have_address = true;
    } else if (key == "gateway") {
      auto a = net::Ipv4Addr::parse(value);
      if (!a) {
        error = "gateway '" + value + "' is not an IPv4 address";
        return std::nullopt;
      }
      pc.gateway = *a;
    } else if (key == "mtu") {
      if (!parse_uint(value, pc.mtu, 576, 9000)) {
        error = "mtu '" + value + "' must be a number from 576 to 9000";
        return std::nullopt;
      }
    } else if (key == "mac") {
      auto m = net::parse_mac(value);
      if (!m || rte_is_multicast_ether_addr(&*m) || rte_is_zero_ether_addr(&*m)) {
        error = "mac '" + value + "' is not a unicast Ethernet address";
        return std::nullopt;
      }
      pc.mac = *m;
    } else {
      error = "unknown key '" + key + "'";
      return std::nullopt;
    }
  }
  if (!have_kind) pc.kind = PortKind::tap;
  if (!have_address) {
    error = "address= is required";
    return std::nullopt;
  }
  if (pc.gateway && !pc.address.contains(*pc.gateway)) {
    error = "gateway " + pc.gateway->str() + " is not inside " + pc.address.str();
    return std::nullopt;
  }
  switch (pc.kind) {
    case PortKind::tap:
      if (pc.iface.empty()) pc.iface = "chimney0";
      break;
    case PortKind::af_packet:
      if (pc.iface.empty()) {
        error = "kind=af_packet needs iface=";
        return std::nullopt;
      }
      break;
    case PortKind::virtio_user:
      if (pc.path.empty()) {
        error = "kind=virtio_user needs path= (the vhost-user socket)";
        return std::nullopt;
      }
      break;
    case PortKind::memif:
      if (pc.role.empty()) pc.role = "client";
      break;
    case PortKind::pci:
      if (pc.pci.empty()) {
        error = "kind=pci needs pci= (the device address)";
        return std::nullopt;
      }
      break;
  }
  return pc;
}

std::string PortConfig::str() const {
  std::string s = std::string("kind=") + to_string(kind);
  if (!iface.empty()) s += ",iface=" + iface;
  if (!path.empty()) s += ",path=" + path;
  if (!pci.empty()) s += ",pci=" + pci;
  if (!role.empty()) s += ",role=" + role;
  s += ",address=" + address.str();
  if (gateway) s += ",gateway=" + gateway->str();
  s += ",mtu=" + std::to_string(mtu);
  if (mac) s += ",mac=" + net::mac_str(*mac);
  if (!devargs.empty()) s += ",devargs=" + devargs;
  return s;
}

ParseOutcome parse_config(const std::vector<std::string>& args) {
  Config cfg;
  std::string huge = "auto";

  po::options_description general("General");
  general.add_options()
    ("help,h", "print this help and exit")
    ("version", "print the version and exit")
    ("config", po::value<std::string>(),
     "config file (default: $CHIMNEY_CONF, ./config/chimney.conf, or the installed one)")
    ("log-level", po::value<std::string>(&cfg.log_level)->default_value(cfg.log_level),
     "trace, debug, info, warn, error, critical or off");

  po::options_description ports("Ports and lcores");
  ports.add_options()
    ("port", po::value<std::vector<std::string>>(),
     "a port, repeatable: kind=tap|virtio_user|memif|af_packet|pci, address=A.B.C.D/LEN, "
     "and as the kind needs iface=, path=, pci=, role=client|server; optional mtu=, mac=, "
     "gateway=, devargs=... (last). Default: kind=tap,iface=chimney0,address=198.18.0.2/24")
    ("workers", po::value<unsigned>(&cfg.workers)->default_value(cfg.workers),
     "worker lcores when the EAL options give no lcore list (1-64)")
    ("eal", po::value<std::string>(),
     "EAL options, space-separated, used before those on the command line")
    ("huge", po::value<std::string>(&huge)->default_value(huge),
     "hugepages: auto (use when the machine has them), on, off (--no-huge)")
    ("memory-mb", po::value<unsigned>(&cfg.memory_mb)->default_value(cfg.memory_mb),
     "EAL memory in MiB when running without hugepages (64-65536)")
    ("mbufs", po::value<unsigned>(&cfg.mbufs)->default_value(cfg.mbufs),
     "mbufs in each port's pool (1023-4194303)")
    ("rx-desc", po::value<uint16_t>(&cfg.rx_desc)->default_value(cfg.rx_desc),
     "RX descriptors per queue (64-16384)")
    ("tx-desc", po::value<uint16_t>(&cfg.tx_desc)->default_value(cfg.tx_desc),
     "TX descriptors per queue (64-16384)")
    ("burst", po::value<uint16_t>(&cfg.burst)->default_value(cfg.burst),
     "packets per RX/TX burst (1-256)")
    ("idle-sleep-us", po::value<unsigned>(&cfg.idle_sleep_us)->default_value(cfg.idle_sleep_us),
     "sleep this long when an lcore found no work for a while; 0 polls without sleeping "
     "(benchmarks) (0-100000)");

  po::options_description slow("Slow path");
  slow.add_options()
    ("neighbour-entries", po::value<unsigned>(&cfg.neighbour_entries)
       ->default_value(cfg.neighbour_entries), "ARP table capacity (8-1048576)")
    ("neighbour-reachable-s", po::value<unsigned>(&cfg.neighbour_reachable_s)
       ->default_value(cfg.neighbour_reachable_s),
     "seconds an ARP entry is trusted before it is resolved again (1-86400)")
    ("slowpath-ring", po::value<unsigned>(&cfg.slowpath_ring)->default_value(cfg.slowpath_ring),
     "frames each worker can queue for the slow path (power of two, 64-1048576)");

  po::options_description engine("Offload engine");
  engine.add_options()
    ("max-connections", po::value<unsigned>(&cfg.max_connections)->default_value(cfg.max_connections),
     "offloaded connections per worker and port (1-1048575)")
    ("time-wait-entries", po::value<unsigned>(&cfg.time_wait_entries),
     "TIME_WAIT entries per worker and port (1-16777216); when all are taken the oldest makes "
     "room (counted: time_wait_evictions). An entry lasts twice msl-ms, so the table needs our "
     "closes per second x 2 x msl-ms entries. Default: max-connections / 8, but no fewer than "
     "1024 (or max-connections, if smaller)")
    ("msl-ms", po::value<unsigned>(&cfg.msl_ms)->default_value(cfg.msl_ms),
     "maximum segment lifetime; TIME_WAIT lasts twice this (100-600000)")
    ("ooo-segments", po::value<unsigned>(&cfg.ooo_segments)->default_value(cfg.ooo_segments),
     "out-of-order segments held for reassembly per worker and port (1-4194304); beyond, "
     "they are dropped (counted: drop_ooo_budget) and the peer retransmits")
    ("ooo-segments-per-connection",
     po::value<unsigned>(&cfg.ooo_segments_per_connection)->default_value(cfg.ooo_segments_per_connection),
     "out-of-order segments one connection may hold (1-65535); a window of W bytes in "
     "MSS-sized segments needs W / MSS");

  std::string impair_rx, impair_tx;
  po::options_description faults("Fault injection (testing; every port)");
  faults.add_options()
    ("impair-rx", po::value<std::string>(&impair_rx),
     "faults on received frames before the stack sees them: "
     "loss=P,corrupt=P,duplicate=P,reorder=P,delay-us=N (P a fraction or a percentage)")
    ("impair-tx", po::value<std::string>(&impair_tx), "the same for transmitted frames")
    ("impair-seed", po::value<uint64_t>(&cfg.impair_seed)->default_value(cfg.impair_seed),
     "seed of the fault generators; the log names the seed of every run, so a failure can be "
     "replayed (0: choose one)");

  po::options_description all("chimneyd [EAL options --] [options]");
  std::string allowed_uids;
  po::options_description control("Control socket");
  control.add_options()
    ("control-socket", po::value<std::string>(&cfg.control_socket)->default_value(cfg.control_socket),
     "Unix socket hosts connect to (directory made 0700, socket 0600); empty: none")
    ("control-allowed-uids", po::value<std::string>(&allowed_uids),
     "comma-separated uids allowed besides root")
    ("control-max-connections", po::value<unsigned>(&cfg.control_max_connections)
       ->default_value(cfg.control_max_connections), "connections per session (1-16777216)")
    ("control-max-requests", po::value<unsigned>(&cfg.control_max_requests)
       ->default_value(cfg.control_max_requests), "outstanding requests per connection (1-1048576)")
    ("control-max-memory-mb", po::value<unsigned>(&cfg.control_max_memory_mb)
       ->default_value(cfg.control_max_memory_mb), "shared memory a session may register, MiB (1-1048576)")
    ("control-grace-s", po::value<unsigned>(&cfg.control_grace_s)->default_value(cfg.control_grace_s),
     "seconds a lost session's connections wait for a session of the same uid to ATTACH, then are "
     "aborted (0-3600; 0: at once)");
  all.add(general).add(ports).add(slow).add(engine).add(control).add(faults);

  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).run(), vm);
    if (vm.count("help")) {
      std::ostringstream os;
      os << "chimneyd: user-space TCP offload target on DPDK\n\n"
         << "EAL options go before `--`; without `--` every argument is chimneyd's.\n"
         << "Every option below also works in the config file as `name = value`.\n\n"
         << all;
      return Exit{0, os.str()};
    }
    if (vm.count("version")) return Exit{0, std::string("chimneyd ") + CHIMNEY_VERSION};

    std::optional<std::filesystem::path> file;
    bool explicit_file = vm.count("config") != 0;
    if (explicit_file) file = vm["config"].as<std::string>();
    else file = default_config_file();
    if (file) {
      std::ifstream in(*file);
      if (!in) {
        if (explicit_file)
          return Exit{2, "chimneyd: option '--config': cannot read '" + file->string() + "'"};
      } else {
        cfg.config_file = file->string();
        try {
          po::store(po::parse_config_file(in, all), vm);
        } catch (const po::error& e) {
          return Exit{2, "chimneyd: " + file->string() + ": " + e.what()};
        }
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    return Exit{2, std::string("chimneyd: ") + e.what()};
  }

  try {
    auto range = [](const char* option, uint64_t v, uint64_t lo, uint64_t hi) {
      if (v < lo || v > hi)
        throw BadValue{option, "must be from " + std::to_string(lo) + " to " + std::to_string(hi)};
    };
    if (!is_log_level(cfg.log_level))
      throw BadValue{"log-level", "'" + cfg.log_level +
                                      "' is not trace, debug, info, warn, error, critical or off"};
    if (huge == "auto") cfg.huge = HugeMode::automatic;
    else if (huge == "on") cfg.huge = HugeMode::on;
    else if (huge == "off") cfg.huge = HugeMode::off;
    else throw BadValue{"huge", "'" + huge + "' is not auto, on or off"};
    range("workers", cfg.workers, 1, 64);
    range("memory-mb", cfg.memory_mb, 64, 65536);
    range("mbufs", cfg.mbufs, 1023, 4194303);
    range("rx-desc", cfg.rx_desc, 64, 16384);
    range("tx-desc", cfg.tx_desc, 64, 16384);
    range("burst", cfg.burst, 1, 256);
    range("idle-sleep-us", cfg.idle_sleep_us, 0, 100000);
    range("neighbour-entries", cfg.neighbour_entries, 8, 1048576);
    range("neighbour-reachable-s", cfg.neighbour_reachable_s, 1, 86400);
    range("slowpath-ring", cfg.slowpath_ring, 64, 1048576);
    range("max-connections", cfg.max_connections, 1, 1048575);
    if (vm.count("time-wait-entries")) range("time-wait-entries", cfg.time_wait_entries, 1, 16777216);
    else cfg.time_wait_entries = tcp::default_time_wait_entries(cfg.max_connections);
    range("msl-ms", cfg.msl_ms, 100, 600000);
    range("ooo-segments", cfg.ooo_segments, 1, 4194304);
    range("ooo-segments-per-connection", cfg.ooo_segments_per_connection, 1, 65535);
    range("control-max-connections", cfg.control_max_connections, 1, 16777216);
    range("control-max-requests", cfg.control_max_requests, 1, 1048576);
    range("control-max-memory-mb", cfg.control_max_memory_mb, 1, 1048576);
    range("control-grace-s", cfg.control_grace_s, 0, 3600);
    if (!allowed_uids.empty()) {
      std::stringstream us(allowed_uids);
      for (std::string u; std::getline(us, u, ',');) {
        unsigned uid = 0;
        if (!parse_uint(u, uid, 0, 0xfffffffe))
          throw BadValue{"control-allowed-uids", "'" + u + "' is not a uid"};
        cfg.control_allowed_uids.push_back(uid);
      }
    }
    for (auto [option, text, spec] : {std::tuple{"impair-rx", &impair_rx, &cfg.impair_rx},
                                      std::tuple{"impair-tx", &impair_tx, &cfg.impair_tx}}) {
      std::string error;
      auto parsed = net::ImpairSpec::parse(*text, error);
      if (!parsed) throw BadValue{option, error};
      *spec = *parsed;
    }
    if ((cfg.slowpath_ring & (cfg.slowpath_ring - 1)) != 0)
      throw BadValue{"slowpath-ring", "must be a power of two"};

    if (vm.count("port")) {
      for (const std::string& spec : vm["port"].as<std::vector<std::string>>()) {
        std::string error;
        auto pc = PortConfig::parse(spec, error);
        if (!pc) throw BadValue{"port", error};
        cfg.ports.push_back(*pc);
      }
    } else {
      std::string error;
      cfg.ports.push_back(*PortConfig::parse("kind=tap,iface=chimney0,address=198.18.0.2/24", error));
    }
    if (cfg.ports.size() > RTE_MAX_ETHPORTS)
      throw BadValue{"port", "at most " + std::to_string(RTE_MAX_ETHPORTS) + " ports"};
    for (size_t i = 0; i < cfg.ports.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        const auto& a = cfg.ports[i];
        const auto& b = cfg.ports[j];
        if (a.address.addr == b.address.addr)
          throw BadValue{"port", "two ports share the address " + a.address.addr.str()};
        if (a.kind == b.kind && !a.iface.empty() && a.iface == b.iface)
          throw BadValue{"port", "two ports share iface=" + a.iface};
      }
    }

    if (vm.count("eal")) {
      std::istringstream is(vm["eal"].as<std::string>());
      for (std::string w; is >> w;) cfg.eal_args.push_back(w);
    }
  } catch (const BadValue& bad) {
    return Exit{2, "chimneyd: option '--" + bad.option + "': " + bad.message};
  }
  return cfg;
}

}  // namespace chimney::dataplane
