// The references chimney's figures are put beside: Linux kernel TCP between
// two network namespaces over a veth pair (chimney-bench-peer, pinned to the
// same core), and the wire limit of memif (dpdk-testpmd in macswap mode
// forwarding between the two ends of one memif, one forwarding core).
#include <filesystem>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"

namespace chimney::bench {

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

namespace {

bool wanted(const std::vector<std::string>& only, const std::string& w) {
  return only.empty() || std::find(only.begin(), only.end(), w) != only.end();
}

int run_quiet(const std::string& cmd) {
  const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// The namespaces this process made and has not deleted yet, and the
// directories it (or a child) made and has not removed yet.
std::vector<std::string> g_namespaces, g_dirs;
void delete_namespaces() {
  for (const auto& ns : g_namespaces) run_quiet("ip netns del " + ns);
  g_namespaces.clear();
  std::error_code ignored;
  for (const auto& d : g_dirs) std::filesystem::remove_all(d, ignored);
  g_dirs.clear();
}
void install_cleanup() {
  static const bool installed = [] {
    std::atexit(delete_namespaces);
    for (int sig : {SIGINT, SIGTERM}) signal(sig, [](int s) {
      delete_namespaces();
      signal(s, SIG_DFL);
      raise(s);
    });
    return true;
  }();
  (void)installed;
}

}  // namespace

int run_command_quiet(const std::string& cmd) { return run_quiet(cmd); }

void track_namespace(const std::string& ns) {
  install_cleanup();
  g_namespaces.push_back(ns);
}

void track_dir(const std::string& path) {
  install_cleanup();
  g_dirs.push_back(path);
}

void untrack_dir(const std::string& path) {
  auto it = std::find(g_dirs.begin(), g_dirs.end(), path);
  if (it != g_dirs.end()) g_dirs.erase(it);
}

// Deletes `ns` (when tracked) and forgets it.
void untrack_namespace(const std::string& ns) {
  auto it = std::find(g_namespaces.begin(), g_namespaces.end(), ns);
  if (it == g_namespaces.end()) return;
  g_namespaces.erase(it);
  run_quiet("ip netns del " + ns);
}

// Starts argv with stdout to `out_path` (or /dev/null); returns the pid.
pid_t spawn(const std::vector<std::string>& argv, const std::string& out_path) {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the bench (a crash, a kill)
    const int out = open(out_path.empty() ? "/dev/null" : out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int in = open("/dev/null", O_RDONLY);
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Waits for `pid` up to `seconds`; on time-out sends SIGKILL to its process
// group (it is the leader: only what it started). Returns the exit status or -1.
int wait_for(pid_t pid, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    int st = 0;
    const pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() > end) {
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void stop(pid_t pid, int sig, double grace) {
  kill(-pid, sig);
  if (wait_for(pid, grace) == -1) {
    // wait_for killed it
  }
}

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// ------------------------------------------------------- namespaces ----
// Two namespaces, a veth pair, 198.18.200.1/30 and .2/30; deleted by the
// destructor, at exit and on SIGINT/SIGTERM.
class Namespaces {
 public:
  Namespaces() {
    const std::string id = std::to_string(getpid());
    a = "cbench" + id + "a";
    b = "cbench" + id + "b";
    track_namespace(a);
    track_namespace(b);
    const std::string va = "cbv" + id + "a", vb = "cbv" + id + "b";
    const std::vector<std::string> cmds = {
        "ip netns add " + a,
        "ip netns add " + b,
        "ip link add " + va + " type veth peer name " + vb,
        "ip link set " + va + " netns " + a,
        "ip link set " + vb + " netns " + b,
        "ip -n " + a + " addr add 198.18.200.1/30 dev " + va,
        "ip -n " + b + " addr add 198.18.200.2/30 dev " + vb,
        "ip -n " + a + " link set lo up",
        "ip -n " + b + " link set lo up",
        "ip -n " + a + " link set " + va + " up",
        "ip -n " + b + " link set " + vb + " up",
        // the churn client needs ports; TIME_WAIT stays on its side
        "ip netns exec " + a + " sysctl -q -w net.ipv4.ip_local_port_range='1024 65535'",
        "ip netns exec " + a + " sysctl -q -w net.ipv4.tcp_tw_reuse=1",
        "ip netns exec " + b + " sysctl -q -w net.core.somaxconn=4096",
        "ip netns exec " + b + " sysctl -q -w net.ipv4.tcp_max_syn_backlog=8192",
    };
    for (const auto& c : cmds)
      if (run_quiet(c) != 0) {
        error = "failed: " + c;
        return;
      }
  }
  ~Namespaces() {
    untrack_namespace(a);
    untrack_namespace(b);
  }
  std::string a, b, error;
};

struct PeerResult {
  double rate = 0, cpu = 0, window = 0;
  uint64_t errors = 0;
  bool ok = false;
  std::string why;
};

PeerResult run_pair(const Options& o, const Namespaces& ns, const std::string& server_mode, const std::string& client_mode,
                    int connections, int msg, int nports) {
  PeerResult r;
  const std::string cpu = std::to_string(o.cpu);
  const std::string tag = "/tmp/cbench-" + std::to_string(getpid());
  const std::string port = "5001";
  const pid_t server =
      spawn({"ip", "netns", "exec", ns.b, "taskset", "-c", cpu, o.peer_path, "server", "--addr", "198.18.200.2", "--port",
             port, "--nports", std::to_string(nports), "--mode", server_mode},
            tag + "-server.out");
  const std::string client_out = tag + "-client.out";
  const pid_t client = spawn({"ip", "netns", "exec", ns.a, "taskset", "-c", cpu, o.peer_path, "client", "--addr",
                              "198.18.200.2", "--port", port, "--nports", std::to_string(nports), "--mode", client_mode,
                              "--connections", std::to_string(connections), "--msg", std::to_string(msg), "--warmup",
                              std::to_string(o.warmup), "--seconds", std::to_string(o.seconds)},
                             client_out);
  const int rc = wait_for(client, o.warmup + o.seconds + 120);
  stop(server, SIGTERM, 5);
  const std::string out = slurp(client_out);
  std::remove(client_out.c_str());
  std::remove((tag + "-server.out").c_str());
  const auto at = out.find("result ");
  if (rc != 0 || at == std::string::npos) {
    r.why = "client exit " + std::to_string(rc) + ": " + out.substr(0, 200);
    return r;
  }
  std::istringstream is(out.substr(at + 7));
  is >> r.rate >> r.cpu >> r.window >> r.errors;
  r.ok = r.rate > 0;
  if (r.errors != 0) r.why = std::to_string(r.errors) + " errors";
  return r;
}

}  // namespace

void run_linux(const Options& o, const std::vector<std::string>& only, Figures& f) {
  Namespaces ns;
  if (!ns.error.empty()) {
    std::fprintf(stderr, "[linux] %s\n", ns.error.c_str());
    f.fail("linux_setup", ns.error);
    return;
  }
  auto progress = [](const std::string& what) {
    std::fprintf(stderr, "[linux] %s (load %s)\n", what.c_str(), load_average().c_str());
  };
  auto put = [&](const std::string& key, const PeerResult& r) {
    f.set(key, r.rate, r.ok, r.why);
    f.set(key + "_cpu_share", r.window > 0 ? r.cpu / r.window : 0, r.ok, "client process CPU / window");
    if (!r.ok) std::fprintf(stderr, "[linux] %s failed: %s\n", key.c_str(), r.why.c_str());
  };
  if (wanted(only, "bulk")) {
    progress("bulk one way");
    put("linux_bulk_1way_gbps", run_pair(o, ns, "source", "bulk", 1, 64, 1));
    progress("bulk both ways");
    put("linux_bulk_2way_gbps", run_pair(o, ns, "echo", "bulk2", 1, 64, 1));
  }
  if (wanted(only, "rr")) {
    for (int msg : {64, 1024})
      for (uint32_t n : o.linux_rr_connections) {
        progress("rr " + std::to_string(msg) + " B, " + std::to_string(n) + " connections");
        put("linux_rr_" + std::to_string(msg) + "_" + std::to_string(n),
            run_pair(o, ns, "echo", "rr", static_cast<int>(n), msg, n > 5000 ? 4 : 1));
      }
  }
  if (wanted(only, "churn")) {
    progress("churn");
    put("linux_churn_per_s", run_pair(o, ns, "echo", "churn", static_cast<int>(o.churn_parallel), 64, 8));
  }
}

// ------------------------------------------------------------- wire ----
// dpdk-testpmd with two memif ports, the server and the client end of one
// socket, forwarding between them in macswap mode on one core: every packet
// is copied into the ring by one end and out of it by the other, as between
// chimneyd and a memif peer. Rx-pps of both ports summed is what the core
// moves.
void run_wire(const Options& o, Figures& f) {
  const std::string tag = "/tmp/cbench-" + std::to_string(getpid());
  for (int len : {64, 1514}) {
    std::fprintf(stderr, "[wire] testpmd macswap over memif, %d-byte frames (load %s)\n", len, load_average().c_str());
    const std::string sock = tag + "-memif.sock", out = tag + "-testpmd.out";
    const double run_s = o.warmup + o.seconds + 3;
    const pid_t pid = spawn({o.testpmd, "-l", std::to_string(o.other_cpu) + "," + std::to_string(o.cpu),
                             "--main-lcore", std::to_string(o.other_cpu), "--no-huge", "-m", "512",
                             "--file-prefix=cbench-tp" + std::to_string(getpid()), "--no-pci",
                             "--vdev=net_memif0,role=server,id=0,socket=" + sock,
                             "--vdev=net_memif1,role=client,id=0,socket=" + sock, "--log-level=warning", "--",
                             "--total-num-mbufs=16384", "--forward-mode=macswap", "--nb-cores=1", "--tx-first",
                             "--stats-period=1", "--txpkts=" + std::to_string(len), "--no-mlockall"},
                            out);
    std::this_thread::sleep_for(std::chrono::duration<double>(run_s));
    stop(pid, SIGINT, 15);
    const std::string text = slurp(out);
    std::remove(out.c_str());
    std::remove(sock.c_str());
    std::error_code ignored;  // testpmd's EAL runtime directory (our prefix only)
    std::filesystem::remove_all("/var/run/dpdk/cbench-tp" + std::to_string(getpid()), ignored);
    // "Rx-pps: N   Rx-bps: M" once per port per period, port 0 then 1.
    std::vector<double> pps, bps;
    std::istringstream is(text);
    std::vector<std::pair<double, double>> lines;
    for (std::string line; std::getline(is, line);) {
      const auto p = line.find("Rx-pps:");
      if (p == std::string::npos) continue;
      double a = 0, b = 0;
      std::string k;
      std::istringstream ls(line.substr(p + 7));
      ls >> a >> k >> b;
      lines.emplace_back(a, b);
    }
    for (size_t i = 0; i + 1 < lines.size(); i += 2) {
      pps.push_back(lines[i].first + lines[i + 1].first);
      bps.push_back(lines[i].second + lines[i + 1].second);
    }
    // the first periods include the start; keep the rest, take the median
    const size_t skip = pps.size() > 3 ? 2 : 0;
    std::vector<double> p(pps.begin() + static_cast<long>(skip), pps.end()), b(bps.begin() + static_cast<long>(skip), bps.end());
    std::sort(p.begin(), p.end());
    std::sort(b.begin(), b.end());
    const std::string key = "wire_memif_" + std::to_string(len);
    if (p.empty() || p[p.size() / 2] <= 0) {
      f.fail(key + "_pps", "no testpmd stats: " + text.substr(text.size() > 300 ? text.size() - 300 : 0));
      std::fprintf(stderr, "[wire] no figures from testpmd\n");
      continue;
    }
    f.set(key + "_pps", p[p.size() / 2]);
    f.set(key + "_bps", b[b.size() / 2]);
  }
}

}  // namespace chimney::bench
