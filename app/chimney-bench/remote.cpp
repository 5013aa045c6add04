// chimney-bench remote: a real chimneyd measured from outside. The peer
// endpoint (peer.cpp) runs in this process on a memif port; chimneyd is the
// memif's other end (started here with --chimneyd, or already running with
// its control socket given). A host thread drives chimneyd through the C++
// client (lib/client), as any host would: CONNECT to the peer's services,
// SEND/RECEIVE through the shared region, DISCONNECT, TERMINATE.
//
//   (a) bulk goodput on one connection, each way: chimneyd's host sends to
//       the peer's sink (16 zero-copy SENDs of 256 KiB outstanding; the
//       figure is the bytes ACKed), and receives from the peer's source (8
//       RECEIVEs of 256 KiB posted; the bytes that reached the host)
//   (b) 64 B request/response over N connections to the peer's echo: each
//       connection has one message outstanding; a transaction counts when
//       the whole answer reached the host and its request was ACKed
//
// The figures include everything between the host and the wire: the control
// socket, chimneyd's main lcore and rings, its worker, memif, and the
// peer's engine. They are printed, never judged.
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rte_eal.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "bench.hpp"
#include "client/client.hpp"

namespace chimney::bench {

namespace cc = chimney::client;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint16_t kSinkPort = 7001;    // hash=0: the figure, not the check
constexpr uint16_t kSourcePort = 7002;  // bytes=0: until our FIN
constexpr uint16_t kEchoPort = 7003;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The last `lines` lines of `text`.
std::string tail(const std::string& text, size_t lines) {
  size_t end = text.size();
  if (end != 0 && text[end - 1] == '\n') --end;
  size_t pos = end;
  for (size_t n = 0; n < lines; ++n) {
    if (pos == 0) return text;
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

// The host: one client session, every completion queued for the workload
// that runs.
class Host {
 public:
  Host(const std::string& socket, const Options& o) : o_(o), c_(cc::Client::connect_unix(socket, options())) {
    c_.on_completion([this](const cc::Completion& done) { q_.push_back(done); });
  }
  cc::Client& client() { return c_; }

  // Reads what arrived (up to 2 ms) and hands each completion to `fn`.
  template <typename Fn>
  void pump(Fn&& fn) {
    c_.poll(std::chrono::milliseconds(2));
    while (!q_.empty()) {
      cc::Completion done = std::move(q_.front());
      q_.pop_front();
      fn(done);
    }
  }
  // Until `until()` is true, or `seconds` pass (throws then, naming `what`).
  template <typename Fn, typename Until>
  void pump_until(Fn&& fn, Until&& until, double seconds, const std::string& what) {
    const auto give_up = Clock::now() + std::chrono::duration<double>(seconds);
    while (!until()) {
      if (Clock::now() > give_up) throw std::runtime_error(what + ": nothing after " + std::to_string(seconds) + " s");
      pump(fn);
    }
  }
  // The next DISCONNECT or ABORT of `handle` (other advice skipped).
  std::string wait_close_event(uint32_t handle, double seconds) {
    const auto give_up = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < give_up) {
      auto ev = c_.next_event(std::chrono::milliseconds(10));
      if (!ev || ev->handle != handle) continue;
      if (ev->kind == control::WireEvent::disconnect || ev->kind == control::WireEvent::abort ||
          ev->kind == control::WireEvent::retrieve)
        return cc::to_string(ev->kind);
    }
    return "none";
  }

  struct Window {
    Clock::time_point warm_end, t0, t1;
    uint64_t v0 = 0, v1 = 0;
    bool open = false, closed = false;
    // Feeds the current count; true once the window has closed. It opens
    // after the warm-up and once `ready` (every connection has moved data:
    // a first segment lost in the handshake's wake costs a retransmission).
    bool feed(uint64_t value, double seconds, bool ready = true) {
      const auto now = Clock::now();
      if (!open && now >= warm_end && ready) {
        open = true;
        t0 = now;
        v0 = value;
      } else if (open && !closed && seconds_between(t0, now) >= seconds) {
        closed = true;
        t1 = now;
        v1 = value;
      }
      return closed;
    }
    double rate() const { return closed ? static_cast<double>(v1 - v0) / seconds_between(t0, t1) : 0; }
  };
  Window window() const {
    Window w;
    w.warm_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.warmup));
    return w;
  }

 private:
  static cc::Options options() {
    cc::Options co;
    co.region_size = 64u << 20;
    co.timeout = std::chrono::seconds(30);
    return co;
  }
  const Options& o_;
  cc::Client c_;
  std::deque<cc::Completion> q_;
};

constexpr uint32_t kPeerIp = 0xC6120001;  // 198.18.0.1 (PeerOptions' default address)

CachedState bulk_cached() {
  CachedState c;
  c.initial_rcv_wnd = 4u << 20;
  c.nagle = false;
  return c;
}

// Ends a connection both sides are done with: our graceful disconnect
// (C-11/C-12: SUCCESS once the FIN is ACKed), the peer's FIN (DISCONNECT),
// then TERMINATE. Returns an error text, empty when all went as the contract says.
std::string close_connection(Host& host, uint32_t h, bool fin_seen, std::function<void(cc::Completion&)> other) {
  cc::Client& c = host.client();
  const cc::Request d = c.disconnect(h, true);
  bool done = false;
  std::string why;
  host.pump_until(
      [&](cc::Completion& x) {
        if (x.request == d) {
          done = true;
          if (!x.ok()) why = std::string("disconnect ") + chimney::to_string(x.status);
        } else {
          other(x);
        }
      },
      [&] { return done; }, 30, "graceful disconnect");
  if (!fin_seen) {
    const std::string ev = host.wait_close_event(h, 30);
    if (ev != "DISCONNECT" && why.empty()) why = "the peer's FIN: " + ev;
  }
  c.terminate(h);
  return why;
}

struct Result {
  double value = 0;
  bool ok = false;
  std::string note;
};

// (a) chimneyd -> peer: zero-copy sends to the sink.
Result bulk_to_peer(Host& host, const Options& o) {
  cc::Client& c = host.client();
  const uint32_t h = c.connect(kPeerIp, kSinkPort, 0, bulk_cached());
  constexpr uint32_t kRequest = 256 * 1024;
  constexpr int kOutstanding = 16;
  std::vector<cc::Buffer> bufs;
  for (int i = 0; i < kOutstanding; ++i) {
    auto b = c.alloc(kRequest);
    if (!b) throw std::runtime_error("region full");
    for (uint32_t k = 0; k < kRequest; ++k) b->bytes[k] = static_cast<uint8_t>(k % 251);
    bufs.push_back(*b);
  }
  std::unordered_map<cc::Request, int> inflight;
  for (int i = 0; i < kOutstanding; ++i) inflight[c.send_region(h, bufs[i].offset, kRequest)] = i;
  uint64_t acked = 0;
  bool stopping = false;
  std::string why;
  Host::Window w = host.window();
  auto on = [&](cc::Completion& x) {
    auto it = inflight.find(x.request);
    if (it == inflight.end()) return;
    const int i = it->second;
    inflight.erase(it);
    if (!x.ok()) {
      if (why.empty()) why = std::string("send ") + chimney::to_string(x.status);
      stopping = true;
      return;
    }
    acked += x.bytes_transferred;
    if (!stopping) inflight[c.send_region(h, bufs[i].offset, kRequest)] = i;
  };
  host.pump_until(on, [&] {
    if (w.feed(acked, o.seconds, acked != 0)) stopping = true;
    return stopping && inflight.empty();
  }, o.warmup + o.seconds + 60, "bulk to the peer");
  if (why.empty()) why = close_connection(host, h, false, on);
  for (auto& b : bufs) c.free(b);
  return {w.rate() * 8 / 1e9, why.empty() && w.rate() > 0, why.empty() ? "bytes ACKed" : why};
}

// (a) peer -> chimneyd: receives posted for the source's stream.
Result bulk_from_peer(Host& host, const Options& o) {
  cc::Client& c = host.client();
  const uint32_t h = c.connect(kPeerIp, kSourcePort, 0, bulk_cached());
  constexpr uint32_t kRequest = 256 * 1024;
  constexpr int kPosted = 8;
  std::unordered_map<cc::Request, bool> posted;
  for (int i = 0; i < kPosted; ++i) posted[c.receive(h, kRequest)] = true;
  uint64_t received = 0;
  bool fin = false, closing = false;
  std::string why;
  Host::Window w = host.window();
  auto on = [&](cc::Completion& x) {
    if (posted.erase(x.request) == 0) return;
    c.release(x.request);
    if (x.status == Status::invalid_state) {
      fin = true;  // the source's FIN came after its last byte (C-16)
      return;
    }
    if (!x.ok()) {
      if (why.empty()) why = std::string("receive ") + chimney::to_string(x.status);
      fin = true;
      return;
    }
    received += x.bytes_transferred;
    if (!fin) posted[c.receive(h, kRequest)] = true;
  };
  cc::Request d = 0;
  bool disc_done = false;
  host.pump_until(
      [&](cc::Completion& x) {
        if (d != 0 && x.request == d) {
          disc_done = true;
          if (!x.ok() && why.empty()) why = std::string("disconnect ") + chimney::to_string(x.status);
          return;
        }
        on(x);
      },
      [&] {
        if (w.feed(received, o.seconds, received != 0) && !closing) {
          closing = true;
          d = c.disconnect(h, true);  // the source stops at our FIN and sends its own
        }
        return closing && disc_done && fin && posted.empty();
      },
      o.warmup + o.seconds + 60, "bulk from the peer");
  c.terminate(h);
  return {w.rate() * 8 / 1e9, why.empty() && w.rate() > 0, why.empty() ? "bytes received" : why};
}

// (b) 64 B request/response over n connections to the echo.
Result request_response(Host& host, const Options& o, uint32_t n) {
  cc::Client& c = host.client();
  constexpr uint32_t kMsg = 64;
  struct Conn {
    uint32_t h = 0;
    cc::Buffer msg;
    cc::Request send = 0, recv = 0;
    uint32_t got = 0;
    bool in_txn = false, fin = false, answered = false;
  };
  std::vector<Conn> conns(n);
  std::unordered_map<uint32_t, uint32_t> by_handle;
  CachedState cached;
  cached.nagle = false;
  for (uint32_t i = 0; i < n; ++i) {
    conns[i].h = c.connect(kPeerIp, kEchoPort, 0, cached);
    auto b = c.alloc(kMsg);
    if (!b) throw std::runtime_error("region full");
    std::memset(b->bytes.data(), static_cast<int>('a' + i % 26), kMsg);
    conns[i].msg = *b;
    by_handle[conns[i].h] = i;
  }
  uint64_t transactions = 0;
  uint32_t answered = 0;  // connections with a transaction done
  Clock::time_point started, all_answered, last_done;
  double longest_gap = 0;  // between two transactions completing
  bool stopping = false;
  std::string why;
  auto start = [&](Conn& k) {
    k.in_txn = true;
    k.got = 0;
    k.send = c.send_region(k.h, k.msg.offset, kMsg);
  };
  auto finish_if_done = [&](Conn& k) {
    if (k.in_txn && k.send == 0 && k.got >= kMsg) {
      k.in_txn = false;
      if (!k.answered) {
        k.answered = true;
        if (++answered == n) all_answered = Clock::now();
      }
      ++transactions;
      const auto now = Clock::now();
      if (transactions > 1) longest_gap = std::max(longest_gap, seconds_between(last_done, now));
      last_done = now;
      if (!stopping) start(k);
    }
  };
  auto on = [&](cc::Completion& x) {
    auto it = by_handle.find(x.handle);
    if (it == by_handle.end()) return;
    Conn& k = conns[it->second];
    if (x.request == k.send) {
      k.send = 0;
      if (!x.ok() && why.empty()) why = std::string("send ") + chimney::to_string(x.status);
      finish_if_done(k);
    } else if (x.request == k.recv) {
      c.release(x.request);
      k.recv = 0;
      if (x.status == Status::invalid_state) {
        k.fin = true;
        return;
      }
      if (!x.ok()) {
        if (why.empty()) why = std::string("receive ") + chimney::to_string(x.status);
        k.fin = true;
        return;
      }
      k.got += static_cast<uint32_t>(x.bytes_transferred);
      k.recv = c.receive(k.h, kMsg);
      finish_if_done(k);
    }
  };
  started = Clock::now();
  for (Conn& k : conns) {
    k.recv = c.receive(k.h, kMsg);
    start(k);
  }
  Host::Window w = host.window();
  auto state = [&] {  // for a stall: each connection's transaction as the host sees it
    std::string out;
    for (uint32_t i = 0; i < n && i < 8; ++i)
      out += " [conn " + std::to_string(i) + ": in_txn " + std::to_string(conns[i].in_txn) + ", send pending " +
             std::to_string(conns[i].send != 0) + ", answer bytes " + std::to_string(conns[i].got) +
             ", receive posted " + std::to_string(conns[i].recv != 0) + "]";
    return "transactions " + std::to_string(transactions) + ";" + out;
  };
  try {
  host.pump_until(on, [&] {
    if (w.feed(transactions, o.seconds, answered == n)) stopping = true;
    if (!why.empty()) stopping = true;
    if (!stopping) return false;
    for (const Conn& k : conns)
      if (k.in_txn && why.empty()) return false;
    return true;
  }, o.warmup + o.seconds + 60, "request/response");
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(e.what()) + ": " + state());
  }
  // Close every connection: our FIN, the echo's FIN, terminate.
  std::vector<cc::Request> discs;
  for (Conn& k : conns) discs.push_back(c.disconnect(k.h, true));
  size_t done = 0;
  host.pump_until(
      [&](cc::Completion& x) {
        if (std::find(discs.begin(), discs.end(), x.request) != discs.end()) {
          ++done;
          if (!x.ok() && why.empty()) why = std::string("disconnect ") + chimney::to_string(x.status);
          return;
        }
        on(x);
      },
      [&] {
        if (done < discs.size()) return false;
        for (const Conn& k : conns)
          if (!k.fin) return false;
        return true;
      },
      60, "closing the request/response connections");
  for (Conn& k : conns) {
    c.terminate(k.h);
    c.free(k.msg);
  }
  char first[160];
  std::snprintf(first, sizeof first,
                "transactions at the host; every connection answered %.1f ms after the first send; "
                "longest wait between transactions %.1f ms",
                seconds_between(started, all_answered) * 1e3, longest_gap * 1e3);
  return {w.rate(), why.empty() && w.rate() > 0, why.empty() ? first : why};
}

// chimneyd, started here as the memif client of our socket.
struct Chimneyd {
  pid_t pid = -1;
  std::string dir, log, socket, prefix;
  bool keep_log = false;  // a failed run keeps chimneyd's log (its path is printed)

  Chimneyd(const Options& o, const RemoteOptions& r) {
    char tmpl[] = "/tmp/cbench-remote-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
    log = dir + "/chimneyd.log";
    socket = dir + "/control.sock";
    prefix = "cbench-cd" + std::to_string(getpid());
    std::string port = "kind=memif,role=" + std::string(r.peer.role == "server" ? "client" : "server") + ",path=" +
                       r.peer.socket + ",address=" + r.chimneyd_address + ",devargs=id=0,mac=" + r.chimneyd_mac;
    if (!r.peer.memif_devargs.empty()) port += "," + r.peer.memif_devargs;
    // chimneyd's main lcore on --other-cpu with the peer and this host,
    // its worker on --cpu.
    std::vector<std::string> argv = {
        r.chimneyd, "--lcores", "0@" + std::to_string(o.other_cpu) + ",1@" + std::to_string(o.cpu),
        "--file-prefix", prefix, "--", "--port", port, "--control-socket", socket, "--log-level", "info"};
    argv.insert(argv.end(), r.chimneyd_args.begin(), r.chimneyd_args.end());
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    std::fprintf(stderr, "[remote] %s\n", cmd.c_str());
    pid = spawn(argv, log);
    const auto give_up = Clock::now() + std::chrono::seconds(60);
    for (;;) {
      if (slurp(log).find("chimneyd ready") != std::string::npos) break;
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        throw std::runtime_error("chimneyd exited before it was ready:\n" + tail(slurp(log), 15));
      }
      if (Clock::now() > give_up) throw std::runtime_error("chimneyd not ready after 60 s:\n" + tail(slurp(log), 15));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~Chimneyd() {
    if (pid > 0) stop(pid, SIGTERM, 15);
    std::error_code ignored;  // its EAL runtime directory (our prefix) and the temp dir
    std::filesystem::remove_all("/var/run/dpdk/" + prefix, ignored);
    if (keep_log) {
      std::filesystem::remove(socket, ignored);
      std::fprintf(stderr, "[remote] chimneyd's log kept: %s\n", log.c_str());
    } else {
      std::filesystem::remove_all(dir, ignored);
    }
  }
};

bool wanted(const std::vector<std::string>& only, const std::string& w) {
  return only.empty() || std::find(only.begin(), only.end(), w) != only.end();
}

}  // namespace

void run_remote(const Options& o, const RemoteOptions& r_in, const std::vector<std::string>& only, Figures& f) {
  // The services the workloads use; nothing hashed (the figure, not the
  // check: tests/integration/test_devices.py checks the bytes).
  RemoteOptions r = r_in;
  std::string e;
  r.peer.services = {*parse_peer_service(std::to_string(kSinkPort) + "=sink,hash=0", e),
                     *parse_peer_service(std::to_string(kSourcePort) + "=source,bytes=0,hash=0", e),
                     *parse_peer_service(std::to_string(kEchoPort) + "=echo,hash=0", e)};
  std::fprintf(stderr, "[remote] peer on memif %s (%s), load %s\n", r.peer.socket.c_str(), r.peer.role.c_str(),
               load_average().c_str());
  std::unique_ptr<PeerEndpoint> peer;
  try {
    peer = std::make_unique<PeerEndpoint>(r.peer, nullptr);
  } catch (const std::exception& e) {
    f.fail("remote", e.what());
    std::fprintf(stderr, "[remote] %s\n", e.what());
    return;
  }
  std::unique_ptr<Chimneyd> chimneyd;
  std::string control = r.control_socket;
  if (!r.chimneyd.empty()) {
    try {
      chimneyd = std::make_unique<Chimneyd>(o, r);
      control = chimneyd->socket;
    } catch (const std::exception& e) {
      f.fail("remote", e.what());
      std::fprintf(stderr, "[remote] %s\n", e.what());
      return;
    }
  }
  // The peer loop runs here (the EAL's main lcore), on --other-cpu beside
  // chimneyd's main lcore; the host is a thread of its own.
  cpu_set_t before;
  pthread_getaffinity_np(pthread_self(), sizeof before, &before);
  cpu_set_t peer_cpu;
  CPU_ZERO(&peer_cpu);
  CPU_SET(o.other_cpu, &peer_cpu);
  pthread_setaffinity_np(pthread_self(), sizeof peer_cpu, &peer_cpu);

  std::atomic<bool> stop_peer{false};
  std::vector<std::pair<std::string, Result>> results;
  std::string failure;
  std::thread driver([&] {
    try {
      Host host(control, o);
      auto progress = [](const std::string& what) {
        std::fprintf(stderr, "[remote] %s (load %s)\n", what.c_str(), load_average().c_str());
      };
      if (wanted(only, "bulk")) {
        progress("bulk, chimneyd -> peer");
        results.emplace_back("remote_bulk_tx_gbps", bulk_to_peer(host, o));
        progress("bulk, peer -> chimneyd");
        results.emplace_back("remote_bulk_rx_gbps", bulk_from_peer(host, o));
      }
      if (wanted(only, "rr"))
        for (uint32_t n : r.rr_connections) {
          progress("request/response 64 B, " + std::to_string(n) + " connections");
          results.emplace_back("remote_rr_64_" + std::to_string(n), request_response(host, o, n));
        }
    } catch (const std::exception& e) {
      failure = e.what();
    }
    stop_peer.store(true);
  });
  peer->run(stop_peer);
  driver.join();
  pthread_setaffinity_np(pthread_self(), sizeof before, &before);
  for (auto& [key, res] : results) {
    f.set(key, res.value, res.ok, res.note);
    if (!res.ok) std::fprintf(stderr, "[remote] %s failed: %s\n", key.c_str(), res.note.c_str());
  }
  const std::string peer_note = "peer: " + std::to_string(peer->connections_closed()) + " closed, " +
                                std::to_string(peer->connections_failed()) + " failed";
  f.set("remote_peer_connections_failed", static_cast<double>(peer->connections_failed()),
        peer->connections_failed() == 0, peer_note);
  if (!failure.empty()) {
    if (chimneyd) {
      int st = 0;
      if (waitpid(chimneyd->pid, &st, WNOHANG) == chimneyd->pid) {
        failure += WIFSIGNALED(st) ? "; chimneyd was killed by signal " + std::to_string(WTERMSIG(st))
                                   : "; chimneyd exited with " + std::to_string(WEXITSTATUS(st));
        chimneyd->pid = -1;
      }
      failure += "\nchimneyd log, last lines:\n" + tail(slurp(chimneyd->log), 15);
      chimneyd->keep_log = true;
    }
    std::fprintf(stderr, "[remote] %s\n", failure.c_str());
    f.fail("remote", failure);
  }
  std::fprintf(stderr, "[remote] %s\n", peer->exit_json().c_str());
  if (!failure.empty()) std::fprintf(stderr, "[remote] the peer's open connections: %s\n", peer->open_connections_json().c_str());
  chimneyd.reset();  // chimneyd stops before our end of the memif goes
  peer.reset();
}

}  // namespace chimney::bench
