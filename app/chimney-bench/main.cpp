// chimney-bench: chimney's figures side by side with their references,
// measured in one run (docs/PERFORMANCE.md).
//
//   chimney-bench run     [options]   everything: in-process engine, Linux, wire limit
//   chimney-bench inproc  [options]   the in-process engine figures only
//   chimney-bench linux   [options]   the Linux reference only
//   chimney-bench wire    [options]   the memif wire limit only
//   chimney-bench patterns [options]  tests/pktgen's three traffic patterns, replayed in-process
//   chimney-bench smoke               every workload briefly; non-zero if one moved nothing
//                                     (with --chimneyd: the remote workloads too)
//   chimney-bench peer    [options]   the remote end of a real chimneyd over memif, until SIGTERM
//   chimney-bench remote  [options]   a real chimneyd over memif (--device tap: over two TAPs
//                                     and a bridge) driven through lib/client, beside the
//                                     in-process and Linux figures
#include <filesystem>
#include <sched.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_lcore.h>

#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "bench.hpp"
#include "dataplane/eal.hpp"

namespace po = boost::program_options;
using namespace chimney::bench;

namespace {

std::vector<uint32_t> parse_list(const std::string& s) {
  std::vector<uint32_t> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) v.push_back(static_cast<uint32_t>(std::stoul(x)));
  return v;
}
std::vector<std::string> parse_words(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) v.push_back(x);
  return v;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string human(double v) {
  char b[64];
  const double a = std::fabs(v);
  if (a >= 1e9) std::snprintf(b, sizeof b, "%.2fG", v / 1e9);
  else if (a >= 1e6) std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
  else if (a >= 1e4) std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
  else if (a >= 100) std::snprintf(b, sizeof b, "%.0f", v);
  else std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// A table row: chimney's figure, its reference, and how the ratio reads.
struct Row {
  std::string label, unit, key, ref_label, ref_key, goal;
  bool inverse = false;  // ratio = reference / chimney (lower is better for chimney)
  double ref_const = 0;  // a fixed reference (the goal itself) when ref_key is empty
};

std::vector<Row> table_rows(const Options& o, const RemoteOptions& remote) {
  const std::vector<uint32_t>& remote_rr = remote.rr_connections;
  std::vector<Row> rows;
  if (o.remote) {
    // chimneyd over memif (or TAP), each figure beside the in-process one and Linux's
    const std::string kp = remote_key_prefix(remote.peer.device);
    const std::string lp = remote_label_prefix(remote.peer.device);
    for (const auto& [dir, key] : {std::pair<std::string, std::string>{"host -> peer", kp + "bulk_tx_gbps"},
                                   {"peer -> host", kp + "bulk_rx_gbps"}}) {
      const std::string label = lp + "bulk, 1 conn, " + dir;
      rows.push_back({label, "Gbit/s", key, "in-process one way", "bulk_1way_gbps", ""});
      rows.push_back({label, "Gbit/s", key, "Linux veth one way", "linux_bulk_1way_gbps", ""});
    }
    for (uint32_t n : remote_rr) {
      const std::string k = "64_" + std::to_string(n);
      const std::string label = lp + "req/resp 64 B, " + std::to_string(n) + " conn";
      rows.push_back({label, "trans/s", kp + "rr_" + k, "in-process", "rr_" + k, ""});
      rows.push_back({label, "trans/s", kp + "rr_" + k, "Linux veth", "linux_rr_" + k, ""});
    }
    for (uint32_t n : remote.churn_parallel) {
      const std::string k = std::to_string(n);
      const std::string label = lp + "churn, " + k + " in parallel";
      rows.push_back({label, "conn/s", kp + "churn_" + k + "_per_s", "in-process", "churn_" + k + "_per_s", ""});
      rows.push_back({label, "conn/s", kp + "churn_" + k + "_per_s", "Linux veth", "linux_churn_" + k + "_per_s", ""});
      // (f) from outside: DISCONNECT posted -> completion, and the peer's
      // ACK of our FIN sent -> completion; beside the in-process FIN-ACK
      // arrival -> completion callback (Linux has no such figure here).
      for (const auto& [what, text] : {std::pair<std::string, std::string>{"post", "post->done"},
                                       {"ack", "peer ACK->done"}}) {
        for (const char* p : {"p50", "p90", "p99", "max"})
          rows.push_back({lp + "disc " + text + " " + p + ", N=" + k, "us",
                          kp + "disc_" + what + "_" + k + "_" + p + "_us", "in-process FIN-ACK -> done",
                          "disc_latency_" + k + "_" + p + "_us", ""});
        rows.push_back({"  samples (disconnects done in the window)", "", kp + "disc_" + what + "_" + k + "_samples",
                        "", "", ""});
      }
    }
  }
  rows.push_back({"bulk goodput, 1 connection, one way", "Gbit/s", "bulk_1way_gbps", "Linux veth", "linux_bulk_1way_gbps", ">= 1"});
  rows.push_back({"bulk goodput, 1 connection, both ways", "Gbit/s", "bulk_2way_gbps", "Linux veth", "linux_bulk_2way_gbps", ">= 1"});
  for (int msg : {64, 1024})
    for (uint32_t n : o.rr_connections) {
      const std::string k = std::to_string(msg) + "_" + std::to_string(n);
      rows.push_back({"request/response " + std::to_string(msg) + " B, " + std::to_string(n) + " conn", "trans/s", "rr_" + k,
                      "Linux veth", "linux_rr_" + k, ">= 8"});
    }
  rows.push_back({"churn: offload, 1 req/resp, close, release", "conn/s", "churn_per_s", "Linux veth", "linux_churn_per_s", ""});
  rows.push_back({"segments/s per core (bulk, in-process)", "seg/s", "bulk_1way_segments_per_s", "memif testpmd 1514 B", "wire_memif_1514_pps", ">= 0.7"});
  rows.push_back({"segments/s per core (bulk, in-process)", "seg/s", "bulk_1way_segments_per_s", "in-process handoff 1514 B", "handoff_pps_1514", ""});
  rows.push_back({"segments/s per core (64 B req/resp, 100 conn)", "seg/s", "rr_64_100_segments_per_s", "memif testpmd 64 B", "wire_memif_64_pps", ">= 0.7"});
  rows.push_back({"segments/s per core (64 B req/resp, 100 conn)", "seg/s", "rr_64_100_segments_per_s", "in-process handoff 64 B", "handoff_pps_64", ""});
  for (uint32_t n : o.cost_connections)
    if (n <= o.connections)
      rows.push_back({"cost per segment, " + std::to_string(n) + " conn open", "cycles", "cost_cycles_" + std::to_string(n),
                      n == 1 ? "" : "cost at 1 conn", n == 1 ? "" : "cost_cycles_1", n == 1 ? "" : "<= 1.5", true});
  rows.push_back({"memory per idle connection (RSS/N, N=" + std::to_string(o.connections) + ")", "bytes", "idle_bytes_per_conn",
                  "goal 512 B", "", "<= 1", false, 512});
  rows.push_back({"  of which rte_malloc (TCB + hash tables) per slot", "bytes", "idle_rte_bytes_per_slot", "", "", ""});
  rows.push_back({"  of which engine heap (TIME_WAIT records, lists)", "bytes", "idle_heap_bytes_per_slot", "", "", ""});
  rows.push_back({"time to offload " + std::to_string(o.connections) + " idle connections", "s", "idle_offload_seconds", "", "", ""});
  rows.push_back({"disconnect completion latency p50", "us", "disc_latency_p50_us", "", "", ""});
  rows.push_back({"disconnect completion latency p90", "us", "disc_latency_p90_us", "", "", ""});
  rows.push_back({"disconnect completion latency p99", "us", "disc_latency_p99_us", "", "", ""});
  rows.push_back({"disconnect completion latency p99.9", "us", "disc_latency_p999_us", "", "", ""});
  rows.push_back({"wire limit: memif testpmd macswap 64 B", "pkt/s", "wire_memif_64_pps", "", "", ""});
  rows.push_back({"wire limit: memif testpmd macswap 64 B", "bit/s", "wire_memif_64_bps", "", "", ""});
  rows.push_back({"wire limit: memif testpmd macswap 1514 B", "pkt/s", "wire_memif_1514_pps", "", "", ""});
  rows.push_back({"wire limit: memif testpmd macswap 1514 B", "bit/s", "wire_memif_1514_bps", "", "", ""});
  rows.push_back({"in-process handoff only, 64 B", "pkt/s", "handoff_pps_64", "", "", ""});
  rows.push_back({"pktgen pattern 1: in-window 1460 B segments", "seg/s", "pat_inwindow_segments_per_s",
                  "memif testpmd 1514 B", "wire_memif_1514_pps", ""});
  rows.push_back({"  its goodput (delivered into posted receives)", "Gbit/s", "pat_inwindow_gbps", "", "", ""});
  rows.push_back({"  bytes delivered, every one checked", "bytes", "pat_inwindow_bytes_checked", "", "", ""});
  rows.push_back({"pktgen pattern 2: SYN flood, all to the slow path", "SYN/s", "pat_syn_per_s", "", "", ""});
  rows.push_back({"pktgen pattern 3: garbage frames dropped", "frames/s", "pat_garbage_per_s", "", "", ""});
  rows.push_back({"  garbage frames not dropped as expected", "frames", "pat_garbage_mismatches", "", "", ""});
  for (const std::string& r : garbage_drop_reasons())
    rows.push_back({"  garbage drops: " + r, "frames", "pat_garbage_drop_" + r, "", "", ""});
  return rows;
}

struct Printed {
  std::string label, unit, chimney, ref_label, ref, ratio, goal;
};

int report(const Options& o, const RemoteOptions& remote, const Figures& f, const std::string& csv_path,
           const std::string& raw_path, bool smoke) {
  std::vector<Printed> out;
  for (const Row& r : table_rows(o, remote)) {
    const Figure* c = f.get(r.key);
    const Figure* rk = r.ref_key.empty() ? nullptr : f.get(r.ref_key);
    if (c == nullptr && rk == nullptr) continue;
    static const Figure missing{0, false, "not measured"};
    const bool measured = c != nullptr;
    if (c == nullptr) c = &missing;
    Printed p{r.label, r.unit, measured ? (c->ok ? human(c->value) : "FAILED") : "-", r.ref_label, "", "", r.goal};
    double ref = r.ref_const;
    bool have_ref = r.ref_const != 0;
    if (!r.ref_key.empty()) {
      const Figure* rf = f.get(r.ref_key);
      if (rf != nullptr && rf->ok) {
        ref = rf->value;
        have_ref = true;
      } else {
        p.ref = rf == nullptr ? "not measured" : "FAILED";
      }
    }
    if (have_ref) {
      p.ref = human(ref);
      if (c->ok && ref != 0 && c->value != 0) {
        char b[32];
        std::snprintf(b, sizeof b, "%.2f", r.inverse ? c->value / ref : c->value / ref);
        p.ratio = b;
      }
    }
    out.push_back(p);
  }
  std::printf("\nchimney-bench: %ld cores online, %s; all measured work on core %d; load at start %s\n",
              sysconf(_SC_NPROCESSORS_ONLN), cpu_model().c_str(), o.cpu, o.load_note.c_str());
  std::printf("%-52s %-8s %10s  %-26s %10s %7s %7s\n", "figure", "unit", "chimney", "reference", "ref", "ratio", "goal");
  for (const auto& p : out)
    std::printf("%-52s %-8s %10s  %-26s %10s %7s %7s\n", p.label.c_str(), p.unit.c_str(), p.chimney.c_str(),
                p.ref_label.c_str(), p.ref.c_str(), p.ratio.c_str(), p.goal.c_str());
  double share_min = 2, share_max = 0;
  for (const auto& k : f.keys()) {
    const Figure* g = f.get(k);
    const auto at = g->note.find("cpu share ");
    if (at == std::string::npos) continue;
    const double v = std::atof(g->note.c_str() + at + 10);
    share_min = std::min(share_min, v);
    share_max = std::max(share_max, v);
  }
  if (share_max > 0)
    std::printf("bench thread's CPU share of the in-process windows: %.2f .. %.2f (below 1: preempted by other load)\n",
                share_min, share_max);
  for (const auto& k : f.keys()) {
    const Figure* g = f.get(k);
    if (k.rfind("load_", 0) == 0) std::printf("load %s: %s\n", k.substr(5).c_str(), g->note.c_str());
  }
  if (!csv_path.empty()) {
    std::ofstream csv(csv_path);
    csv << "figure,unit,chimney,reference,reference_value,ratio,goal\n";
    for (const Row& r : table_rows(o, remote)) {
      const Figure* c = f.get(r.key);
      if (c == nullptr) continue;
      const Figure* rf = r.ref_key.empty() ? nullptr : f.get(r.ref_key);
      double ref = r.ref_const;
      if (rf != nullptr && rf->ok) ref = rf->value;
      const bool have = ref != 0 && c->ok && c->value != 0;
      csv << '"' << r.label << "\"," << r.unit << ',' << (c->ok ? std::to_string(c->value) : "FAILED") << ",\""
          << r.ref_label << "\"," << (ref != 0 ? std::to_string(ref) : "") << ','
          << (have ? std::to_string(c->value / ref) : "") << ",\"" << r.goal << "\"\n";
    }
  }
  if (!raw_path.empty()) {
    std::ofstream raw(raw_path);
    raw << "key,value,ok,note\n";
    for (const auto& k : f.keys()) {
      const Figure* g = f.get(k);
      raw << k << ',' << g->value << ',' << (g->ok ? 1 : 0) << ",\"" << g->note << "\"\n";
    }
  }
  int failed = 0;
  for (const auto& k : f.keys()) {
    const Figure* g = f.get(k);
    if (!g->ok && k.rfind("load_", 0) != 0) {
      std::fprintf(stderr, "FAILED: %s %s\n", k.c_str(), g->note.c_str());
      ++failed;
    }
  }
  if (smoke) std::printf("smoke: %zu figures, %d failed\n", f.keys().size(), failed);
  return failed == 0 ? 0 : 1;
}

bool init_eal(const Options& o, uint64_t memory_mb, const std::vector<std::string>& extra = {}) {
  const auto huge = chimney::dataplane::detect_hugepages();
  std::vector<std::string> args = {"chimney-bench", "-l", std::to_string(o.cpu), "--no-pci", "--log-level=warning",
                                   "--file-prefix=cbench-" + std::to_string(getpid())};
  args.insert(args.end(), extra.begin(), extra.end());
  if (huge.mounted && huge.free_bytes >= (memory_mb << 20)) {
    args.insert(args.end(), {"-m", std::to_string(memory_mb), "--huge-unlink"});
  } else {
    args.insert(args.end(), {"--no-huge", "-m", std::to_string(memory_mb)});
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  std::fprintf(stderr, "[eal]");
  for (auto& a : args) std::fprintf(stderr, " %s", a.c_str());
  std::fprintf(stderr, "\n");
  return rte_eal_init(static_cast<int>(argv.size()), argv.data()) >= 0;
}

std::string self_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.rfind('/'));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string command, csv, raw_csv, plot_dir, rr_list, cost_list, linux_rr_list, only_list;
  uint64_t memory_mb = 0;
  RemoteOptions remote;
  std::vector<std::string> listen_specs;
  std::string remote_rr_list, remote_churn_list;
  bool no_references = false;
  po::options_description desc("chimney-bench <run|inproc|linux|wire|patterns|smoke|peer|remote> [options]");
  desc.add_options()
      ("help,h", "this text")
      ("command", po::value(&command), "run | inproc | linux | wire | patterns | smoke | peer | remote")
      ("csv", po::value(&csv), "write the table as CSV to this file")
      ("raw-csv", po::value(&raw_csv), "write every figure (key,value,ok,note) to this file")
      ("plot-data", po::value(&plot_dir), "write gnuplot data files (rr.dat, cost.dat, latency.dat) to this directory")
      ("seconds", po::value(&o.seconds)->default_value(2.0), "measured window of each workload")
      ("warmup", po::value(&o.warmup)->default_value(0.3), "warm-up before each window")
      ("connections", po::value(&o.connections)->default_value(1'000'000), "idle connections (d), and the engines' table size")
      ("rr-connections", po::value(&rr_list)->default_value("1,100,10000,100000"), "request/response connection counts")
      ("linux-rr-connections", po::value(&linux_rr_list)->default_value("1,100,10000"), "... for the Linux reference")
      ("cost-connections", po::value(&cost_list)->default_value("1,1000,100000,1000000"), "connections open for the cost per segment")
      ("churn-parallel", po::value(&o.churn_parallel)->default_value(64), "connections cycling at once in the churn workload")
      ("only", po::value(&only_list),
       "workloads to run: idle,bulk,rr,churn,cost,handoff,patterns (default all); remote: bulk,rr,churn (default all three)")
      ("cpu", po::value(&o.cpu)->default_value(1), "the core every measured process runs on")
      ("other-cpu", po::value(&o.other_cpu)->default_value(0), "testpmd's main lcore")
      ("memory", po::value(&memory_mb), "EAL memory in MiB (default from --connections)")
      ("peer", po::value(&o.peer_path), "chimney-bench-peer (default: next to this program)")
      ("testpmd", po::value(&o.testpmd)->default_value("dpdk-testpmd"), "dpdk-testpmd");
  po::options_description peer_desc("peer and remote (a chimneyd over memif or TAP)");
  peer_desc.add_options()
      ("device", po::value(&remote.peer.device)->default_value("memif"),
       "memif | tap. remote/smoke with tap: both ends on net_tap ports joined by a bridge in a network namespace "
       "made for the run (chimney-bench-<pid>), chimneyd started in it (needs --chimneyd)")
      ("tap-iface", po::value(&remote.peer.tap_iface)->default_value("chimney-peer0"),
       "the peer's TAP interface (--device tap)")
      ("socket", po::value(&remote.peer.socket), "memif control socket (peer: /run/chimney/memif.sock; remote: a private one)")
      ("role", po::value(&remote.peer.role)->default_value("server"), "the peer's memif role (chimneyd takes the other)")
      ("address", po::value(&remote.peer.address)->default_value("198.18.0.1/24"), "the peer's address/prefix (198.18.0.0/15 only)")
      ("mac", po::value(&remote.peer.mac)->default_value("02:00:c6:12:00:01"), "the peer's MAC")
      ("memif-devargs", po::value(&remote.peer.memif_devargs), "more memif devargs, e.g. socket-abstract=no")
      ("listen", po::value(&listen_specs)->composing(),
       "a service, repeatable: PORT=sink|source|echo[,bytes=N][,chunk=N][,window=N][,hash=0|1] "
       "(default 7001=sink 7002=source,bytes=4194304 7003=echo)")
      ("max-connections", po::value(&remote.peer.max_connections)->default_value(16384), "the peer engine's table size")
      ("rcv-window", po::value(&remote.peer.rcv_window)->default_value(4u << 20), "the peer's receive window per connection")
      ("idle-sleep-us", po::value(&remote.peer.idle_sleep_us)->default_value(50),
       "the peer loop sleeps this long after 1000 idle polls (0: spin)")
      ("chimneyd", po::value(&remote.chimneyd), "remote/smoke: start this chimneyd as the memif's other end")
      ("chimneyd-arg", po::value(&remote.chimneyd_args)->composing(),
       "remote/smoke: one more chimneyd option for the chimneyd started here, repeatable "
       "(e.g. --chimneyd-arg=--idle-sleep-us=0)")
      ("control-socket", po::value(&remote.control_socket), "remote: the control socket of a chimneyd already running")
      ("remote-rr-connections", po::value(&remote_rr_list)->default_value("1,100"), "remote: request/response connection counts")
      ("remote-churn-parallel", po::value(&remote_churn_list)->default_value("1,64"),
       "remote: churn, connections cycling at once (each also measured in-process and over Linux veth)")
      ("no-references", po::bool_switch(&no_references), "remote: skip the in-process and Linux figures");
  desc.add(peer_desc);
  po::positional_options_description pos;
  pos.add("command", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n" << desc;
    return 2;
  }
  if (vm.count("help") || command.empty()) {
    std::cout << desc;
    return command.empty() && !vm.count("help") ? 2 : 0;
  }
  // The dataplane's log lines (port set-up) go to stderr with DPDK's.
  spdlog::set_default_logger(spdlog::stderr_color_mt("chimney-bench"));
  if (command == "peer" || command == "remote" || (command == "smoke" && !remote.chimneyd.empty())) {
    if (listen_specs.empty()) {
      remote.peer.services = default_peer_services();
    } else {
      for (const std::string& spec : listen_specs) {
        std::string error;
        auto s = parse_peer_service(spec, error);
        if (!s) {
          std::cerr << "--listen " << error << "\n";
          return 2;
        }
        remote.peer.services.push_back(*s);
      }
    }
    remote.rr_connections = parse_list(remote_rr_list);
    remote.churn_parallel = parse_list(remote_churn_list);
  }
  if (command == "peer") {
    // The remote end of a chimneyd, until SIGINT/SIGTERM (tests/integration/devices.py).
    if (remote.peer.socket.empty()) remote.peer.socket = "/run/chimney/memif.sock";
    if (!init_eal(o, memory_mb != 0 ? memory_mb : 512, {"--vdev=" + peer_vdev(remote.peer)})) {
      std::fprintf(stderr, "rte_eal_init failed\n");
      return 1;
    }
    const int rc = run_peer_command(remote.peer);
    const std::string runtime = rte_eal_get_runtime_dir();
    rte_eal_cleanup();
    std::error_code ignored;  // our EAL runtime directory (cbench-<pid>)
    std::filesystem::remove_all(runtime, ignored);
    return rc;
  }
  if (remote.peer.device != "memif" && remote.peer.device != "tap") {
    std::cerr << "--device must be memif or tap\n";
    return 2;
  }
  if (command == "remote" && remote.peer.device == "tap" && remote.chimneyd.empty()) {
    std::cerr << "remote --device tap needs --chimneyd PATH (it is started in the run's namespace)\n";
    return 2;
  }
  if (command == "remote" && remote.chimneyd.empty() && remote.control_socket.empty()) {
    std::cerr << "remote needs --chimneyd PATH (start one) or --control-socket PATH (one already running)\n";
    return 2;
  }
  if (command == "smoke") {
    // every workload, briefly, with small counts (CI; < 60 s)
    o.smoke = true;
    o.seconds = 0.2;
    o.warmup = 0.05;
    o.connections = 20'000;
    rr_list = "1,100,10000";
    linux_rr_list = "1,100";
    cost_list = "1,20000";
    o.churn_parallel = 16;
    remote_rr_list = "1,100";
    remote.rr_connections = parse_list(remote_rr_list);
    remote.churn_parallel = {1, o.churn_parallel};
  }
  o.remote = command == "remote" || (command == "smoke" && !remote.chimneyd.empty());
  if (o.remote && remote.peer.socket.empty()) remote.peer.socket = "/tmp/cbench-" + std::to_string(getpid()) + "-peer.sock";
  if (command == "remote") {
    // The references of the remote figures, measured in this run: the same
    // workloads in-process and over Linux veth, with the same connection counts.
    rr_list = linux_rr_list = remote_rr_list;
    if (vm["connections"].defaulted()) o.connections = 16384;  // chimneyd's default table size per worker
    if (only_list.empty()) only_list = "bulk,rr,churn";
  }
  o.rr_connections = parse_list(rr_list);
  o.linux_rr_connections = parse_list(linux_rr_list);
  o.cost_connections = parse_list(cost_list);
  const std::vector<std::string> only = parse_words(only_list);
  // remote: the churn's references run once per --remote-churn-parallel
  // (run_churn_references), the other references as `only` says.
  std::vector<std::string> ref_only = only;
  bool remote_churn = false;
  if (command == "remote") {
    remote_churn = std::find(only.begin(), only.end(), "churn") != only.end();
    ref_only.erase(std::remove(ref_only.begin(), ref_only.end(), "churn"), ref_only.end());
  }
  const bool general_refs = command != "remote" || !ref_only.empty();
  if (o.peer_path.empty()) o.peer_path = self_dir() + "/chimney-bench-peer";
  o.load_note = load_average();
  if (memory_mb == 0)
    memory_mb = o.smoke || command == "patterns" ? 1024 : 1536 + static_cast<uint64_t>(o.connections) * 2600 / 1'000'000;

  const bool references = command != "remote" || !no_references;
  if (command == "remote" && !references && !vm.count("memory")) memory_mb = 256;  // the peer only (+256 below)
  const bool patterns = command == "patterns" ||
      ((command == "run" || command == "inproc" || command == "smoke") &&
       (only.empty() || std::find(only.begin(), only.end(), "patterns") != only.end()));
  const bool inproc = command == "run" || command == "inproc" || command == "smoke" || (command == "remote" && references);
  const bool linux_ref = command == "run" || command == "linux" || command == "smoke" || (command == "remote" && references);
  const bool churn_refs = command == "remote" && references && remote_churn;
  const bool wire = command == "run" || command == "wire" || command == "smoke";
  if (!inproc && !linux_ref && !wire && !patterns && !o.remote) {
    std::cerr << "unknown command " << command << "\n" << desc;
    return 2;
  }
  Figures f;
  std::vector<double> latency;
  std::vector<std::string> eal_extra;
  if (o.remote) {
    eal_extra.push_back("--vdev=" + peer_vdev(remote.peer));
    memory_mb += 256;  // the peer's port, engine and slow path
  }
  // --device tap: the run's namespace and bridge; our TAP (the peer's port)
  // is made in it by the EAL's probe, so rte_eal_init runs inside it.
  std::unique_ptr<TapNetwork> tap;
  if (o.remote && remote.peer.device == "tap") {
    try {
      tap = std::make_unique<TapNetwork>();
      remote.netns = tap->name();
      tap->enter();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
  }
  const bool eal = inproc || patterns || o.remote;
  const bool eal_up = !eal || init_eal(o, memory_mb, eal_extra);
  if (tap) tap->leave();
  if (!eal_up) {
    std::fprintf(stderr, "rte_eal_init failed\n");
    return 1;
  }
  if (eal) track_dir(rte_eal_get_runtime_dir());  // removed on SIGINT/SIGTERM too
  if (inproc && general_refs) {
    f.set("load_inproc", 0, true, load_average());
    try {
      run_inproc(o, ref_only, f, latency);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "inproc: %s\n", e.what());
      f.fail("inproc", e.what());
    }
  }
  if (patterns) {
    f.set("load_patterns", 0, true, load_average());
    try {
      run_patterns(o, f);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "patterns: %s\n", e.what());
      f.fail("patterns", e.what());
    }
  }
  if (linux_ref && general_refs) {
    f.set("load_linux", 0, true, load_average());
    run_linux(o, ref_only, f);
  }
  if (churn_refs) {
    f.set("load_churn_references", 0, true, load_average());
    run_churn_references(o, remote.churn_parallel, inproc, linux_ref, f);
  }
  if (o.remote) {
    f.set("load_remote", 0, true, load_average());
    run_remote(o, remote, command == "smoke" ? std::vector<std::string>{} : only, f, tap.get());
  }
  if (wire && (only.empty() || std::find(only.begin(), only.end(), "wire") != only.end() || command == "wire")) {
    f.set("load_wire", 0, true, load_average());
    run_wire(o, f);
  }
  f.set("load_end", 0, true, load_average());

  if (!plot_dir.empty()) {
    // rr.dat: connections, chimney 64 B, Linux 64 B, chimney 1 KiB, Linux 1 KiB (trans/s; "?" = not measured)
    std::ofstream rr(plot_dir + "/rr.dat");
    rr << "# connections chimney_64 linux_64 chimney_1024 linux_1024 (transactions/s)\n";
    auto val = [&](const std::string& k) -> std::string {
      const Figure* g = f.get(k);
      return g != nullptr && g->ok ? std::to_string(g->value) : "?";
    };
    for (uint32_t n : o.rr_connections)
      rr << n << ' ' << val("rr_64_" + std::to_string(n)) << ' ' << val("linux_rr_64_" + std::to_string(n)) << ' '
         << val("rr_1024_" + std::to_string(n)) << ' ' << val("linux_rr_1024_" + std::to_string(n)) << '\n';
    std::ofstream cost(plot_dir + "/cost.dat");
    cost << "# connections_open cycles_per_segment segments_per_s\n";
    for (uint32_t n : o.cost_connections)
      if (f.get("cost_cycles_" + std::to_string(n)) != nullptr)
        cost << n << ' ' << val("cost_cycles_" + std::to_string(n)) << ' ' << val("cost_segments_per_s_" + std::to_string(n)) << '\n';
    std::ofstream lat(plot_dir + "/latency.dat");
    lat << "# disconnect completion latency (us) cumulative_fraction\n";
    std::sort(latency.begin(), latency.end());
    const size_t step = latency.size() > 2000 ? latency.size() / 2000 : 1;
    for (size_t i = 0; i < latency.size(); i += step)
      lat << latency[i] << ' ' << static_cast<double>(i + 1) / static_cast<double>(latency.size()) << '\n';
    if (!latency.empty()) lat << latency.back() << " 1\n";
  }
  const int rc = report(o, remote, f, csv, raw_csv, command == "smoke");
  if (eal) {
    const std::string runtime = rte_eal_get_runtime_dir();
    rte_eal_cleanup();
    std::error_code ignored;  // our EAL runtime directory (cbench-<pid>), as chimney.testing does
    std::filesystem::remove_all(runtime, ignored);
  }
  return rc;
}
