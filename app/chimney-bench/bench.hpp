// chimney-bench: shared definitions of the benchmark driver (figures, options).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
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
  bool remote = false;               // chimneyd over memif (remote.cpp) is measured in this run
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

// Child processes (reference.cpp): argv started in a process group of its
// own, stdout and stderr to `out_path` (or /dev/null); waited for up to
// `seconds` (then SIGKILL to the group; -1), or stopped with `sig` and a
// grace period.
pid_t spawn(const std::vector<std::string>& argv, const std::string& out_path);
int wait_for(pid_t pid, double seconds);
void stop(pid_t pid, int sig, double grace);

// ---------------------------------------------------------------- peer ----
// chimney-bench peer (peer.cpp): a tcp::Engine of its own on a memif port,
// the remote end of a real chimneyd. Each listening port runs one service.
struct PeerService {
  enum class Kind : uint8_t { sink, source, echo };
  Kind kind = Kind::sink;
  uint16_t port = 0;
  uint64_t bytes = 0;   // source: bytes to send, then FIN (0: until the other side's FIN)
  uint32_t chunk = 0;   // source, echo: bytes per request (0: the kind's default)
  uint32_t window = 0;  // source, echo: requests outstanding (0: the kind's default)
  bool hash = true;     // sha256 of what was received and sent, in the report
};
const char* to_string(PeerService::Kind k);
// "PORT=KIND[,bytes=N][,chunk=N][,window=N][,hash=0|1]"; nullopt and `error` when bad.
std::optional<PeerService> parse_peer_service(const std::string& spec, std::string& error);

struct PeerOptions {
  std::string device = "memif";        // memif | tap (net_tap0 on the kernel interface `tap_iface`)
  std::string tap_iface = "chimney-peer0";  // tap: the kernel interface's name
  std::string socket;                  // memif control socket (abstract unless memif_devargs say otherwise)
  std::string role = "server";         // memif role; chimneyd takes the other
  std::string address = "198.18.0.1/24";  // ours, and the on-link prefix (198.18.0.0/15 only)
  std::string mac = "02:00:c6:12:00:01";
  std::string memif_devargs;           // more memif devargs (socket-abstract=no, ...)
  std::vector<PeerService> services;
  uint32_t max_connections = 16384;
  uint32_t rcv_window = 4u << 20;      // each connection's receive window (the listeners' CachedState)
  unsigned idle_sleep_us = 0;          // sleep after 1000 idle polls (0: spin)
  unsigned mbufs = 16383;
};
// The EAL --vdev of the peer's port (net_memif0, or net_tap0 with device "tap").
std::string peer_vdev(const PeerOptions& o);
// The default services: 7001 sink, 7002 source (4 MiB), 7003 echo.
std::vector<PeerService> default_peer_services();

// The peer endpoint: port, engine, slow path (ARP, listeners' handshakes,
// RST for closed ports) and the services. Made after rte_eal_init with
// peer_vdev among its arguments; throws std::runtime_error. `report`
// (may be nullptr) gets one JSON line per connection when it is released.
class PeerEndpoint {
 public:
  PeerEndpoint(const PeerOptions& o, FILE* report);
  ~PeerEndpoint();
  PeerEndpoint(const PeerEndpoint&) = delete;
  PeerEndpoint& operator=(const PeerEndpoint&) = delete;
  // The poll loop, on the calling (EAL main) thread, until `stop` is set.
  void run(const std::atomic<bool>& stop);
  // Before run(): from now on, when a connection's FIN arrives, the TSC
  // taken just before the TX burst of that loop pass (the one that sends
  // the ACK of the FIN) is stored, release, at by_remote_port[the
  // connection's remote port] (65536 entries; nullptr: none).
  void stamp_fin_acks(std::atomic<uint64_t>* by_remote_port);
  std::string ready_json() const;  // address, MAC, socket, services
  std::string exit_json() const;   // counters: frames, ARP, RST, drops, engine, connections
  std::string open_connections_json() const;  // each live connection's requests (diagnostics)
  uint64_t connections_closed() const;
  uint64_t connections_failed() const;  // ended by abort, retrieve, refusal or a failed request

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// `chimney-bench peer`: the endpoint until SIGINT/SIGTERM (EAL already up).
// Prints ready_json, one line per connection, then exit_json, on stdout.
int run_peer_command(const PeerOptions& o);

// ------------------------------------------------------------- remote ----
// `chimney-bench remote` (remote.cpp): the peer endpoint in this process,
// and chimneyd driven through the C++ client (lib/client) over its control
// socket: bulk goodput each way on one connection, 64 B request/response
// over N connections, and churn (CONNECT, one 64 B request/response,
// graceful disconnect, TERMINATE) with N cycling at once, with the latency
// of its graceful disconnects.
struct RemoteOptions {
  PeerOptions peer;            // peer.device: memif (default) or tap
  std::string chimneyd;        // start this chimneyd (memif client of our socket); empty: use control_socket
  std::string control_socket;  // of a chimneyd already running
  std::string chimneyd_address = "198.18.0.2/24";
  std::string chimneyd_mac = "02:00:c6:12:00:02";
  std::vector<std::string> chimneyd_args;  // more chimneyd options (after the generated ones)
  std::vector<uint32_t> rr_connections{1, 100};
  std::vector<uint32_t> churn_parallel{1, 64};  // connections cycling at once in the churn
  bool smoke = false;
  std::string netns;           // tap: the namespace of the bridge (TapNetwork), chimneyd runs in it
  std::string chimneyd_tap_iface = "chimneyd0";  // tap: chimneyd's kernel interface
};
// The figures' key prefix and the table's label prefix of a device.
std::string remote_key_prefix(const std::string& device);    // "remote_" (memif), "remote_tap_"
std::string remote_label_prefix(const std::string& device);  // "chimneyd over memif: ", "... over TAP: "

// `--device tap`: a network namespace (chimney-bench-<pid>) with a bridge
// br0 that joins the peer's TAP and chimneyd's. The peer's TAP is made in
// it by running rte_eal_init between enter() and leave() (the net_tap probe
// creates the interface in the calling thread's namespace); chimneyd runs
// in it under `ip netns exec`. The destructor deletes the namespace (also
// at exit and on SIGINT/SIGTERM); throws std::runtime_error when a step fails.
class TapNetwork {
 public:
  TapNetwork();
  ~TapNetwork();
  TapNetwork(const TapNetwork&) = delete;
  TapNetwork& operator=(const TapNetwork&) = delete;
  const std::string& name() const { return name_; }
  void enter();  // this thread into the namespace
  void leave();  // back to the namespace it was in
  // The interface (made by a net_tap port, in the namespace) on the bridge
  // and up; its kernel MAC set to `kernel_mac`, which must differ from the
  // DPDK port's (the bridge keeps its ports' own MACs for itself).
  void attach(const std::string& iface, const std::string& kernel_mac);

 private:
  std::string name_;
  int home_ = -1;  // the namespace this thread was in
};

// The namespaces this process makes (the Linux reference's, the TAP one):
// tracked ones are deleted at exit and on SIGINT/SIGTERM (reference.cpp;
// the handler then dies of the signal);
// untrack_namespace deletes one now and forgets it.
void track_namespace(const std::string& ns);
void untrack_namespace(const std::string& ns);
// A directory removed on SIGINT/SIGTERM (and at exit) unless untracked
// first: EAL runtime directories (ours, chimneyd's), chimneyd's temp dir.
void track_dir(const std::string& path);
void untrack_dir(const std::string& path);
int run_command_quiet(const std::string& cmd);  // sh -c, output discarded; the exit status

// `tap`: the run's TapNetwork when r.peer.device is "tap" (the peer's EAL
// was initialised inside it), else nullptr.
void run_remote(const Options& o, const RemoteOptions& r, const std::vector<std::string>& only, Figures& f,
                TapNetwork* tap = nullptr);
// The references of the remote churn rows, for each N of `parallel`: the
// in-process churn (churn_<N>_per_s, disc_latency_<N>_{p50,p90,p99,max}_us)
// and the Linux one (linux_churn_<N>_per_s), as run_inproc and run_linux
// measure them with --churn-parallel N.
void run_churn_references(const Options& o, const std::vector<uint32_t>& parallel, bool inproc, bool linux_ref,
                          Figures& f);

}  // namespace chimney::bench
