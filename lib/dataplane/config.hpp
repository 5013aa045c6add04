// chimneyd's configuration: application options from the command line (after
// the EAL's `--`) and from the config file, parsed with Boost.Program_options.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <rte_ether.h>

#include "net/addr.hpp"
#include "net/impair.hpp"

namespace chimney::dataplane {

enum class PortKind : uint8_t { tap, virtio_user, memif, af_packet, pci };
const char* to_string(PortKind kind);

// One `--port` / `port =` value: "kind=tap,iface=chimney0,address=198.18.0.2/24,...".
struct PortConfig {
  PortKind kind = PortKind::tap;
  std::string iface;        // tap, af_packet: the kernel interface
  std::string path;         // virtio_user: vhost-user socket; memif: control socket
  std::string pci;          // pci: the device address (as for EAL -a)
  std::string role;         // memif: client | server
  std::string devargs;      // extra driver arguments, appended verbatim
  net::Ipv4Prefix address;  // our address and the on-link prefix
  std::optional<net::Ipv4Addr> gateway;  // next hop for addresses off the prefix
  uint16_t mtu = 1500;
  std::optional<rte_ether_addr> mac;     // default: the device's own

  static std::optional<PortConfig> parse(const std::string& spec, std::string& error);
  std::string str() const;
};

enum class HugeMode : uint8_t { automatic, on, off };

struct Config {
  std::string config_file;  // the file that was read, empty if none
  std::vector<PortConfig> ports;
  std::vector<std::string> eal_args;  // from the `eal` option, before the command line's
  unsigned workers = 1;
  std::string log_level = "info";
  HugeMode huge = HugeMode::automatic;
  unsigned memory_mb = 512;     // EAL memory under --no-huge
  unsigned mbufs = 16383;       // per port
  uint16_t rx_desc = 1024;
  uint16_t tx_desc = 1024;
  uint16_t burst = 32;
  unsigned idle_sleep_us = 50;  // 0: poll without ever sleeping
  unsigned neighbour_entries = 1024;
  unsigned neighbour_reachable_s = 60;
  unsigned slowpath_ring = 4096;
  unsigned max_connections = 16384;  // per worker and port
  // TIME_WAIT entries per worker and port; 0 (not given): chosen from
  // max_connections by tcp::default_time_wait_entries, which parse_config
  // writes here.
  unsigned time_wait_entries = 0;
  unsigned msl_ms = 30000;           // TIME_WAIT lasts 2·MSL (C-19)
  unsigned ooo_segments = 16384;     // reassembly nodes per worker and port
  unsigned ooo_segments_per_connection = 4096;
  // Control socket (docs/CONTROL_PROTOCOL.md); empty path: none.
  std::string control_socket = "/run/chimney/chimney.sock";
  std::vector<unsigned> control_allowed_uids;  // root is always allowed
  unsigned control_max_connections = 65536;    // per session
  unsigned control_max_requests = 4096;        // outstanding per connection
  unsigned control_max_memory_mb = 4096;       // registered per session
  unsigned control_grace_s = 10;               // a lost session's connections wait this long for ATTACH
  // Faults made on purpose on every port (net/impair.hpp), per direction.
  net::ImpairSpec impair_rx;
  net::ImpairSpec impair_tx;
  uint64_t impair_seed = 0;  // 0: one is chosen at start and logged
};

// The outcome of reading the options: run with a config, or exit at once
// (after --help/--version with code 0, after a bad value with code 2 and one
// line naming the option).
struct Exit {
  int code;
  std::string message;
};
using ParseOutcome = std::variant<Config, Exit>;

// `argv` holds only the application's options (what follows the EAL's `--`).
// The config file is `--config`, else $CHIMNEY_CONF, else ./config/chimney.conf
// and the installed one when present. Command-line values win over the file's.
ParseOutcome parse_config(const std::vector<std::string>& args);

}  // namespace chimney::dataplane
