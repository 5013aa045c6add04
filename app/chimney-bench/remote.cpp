// chimney-bench remote: a real chimneyd measured from outside. The peer
// endpoint (peer.cpp) runs in this process on a memif port; chimneyd is the
// memif's other end (started here with --chimneyd, or already running with
// its control socket given). With --device tap, both ends are net_tap
// ports instead, their kernel interfaces joined by a bridge in a network
// namespace made for the run (TapNetwork); chimneyd is started in it. A
// host thread drives chimneyd through the C++ client (lib/client), as any
// host would: CONNECT to the peer's services, SEND/RECEIVE through the
// shared region, DISCONNECT, TERMINATE.
//
//   (a) bulk goodput on one connection, each way: chimneyd's host sends to
//       the peer's sink (16 zero-copy SENDs of 256 KiB outstanding; the
//       figure is the bytes ACKed), and receives from the peer's source (8
//       RECEIVEs of 256 KiB posted; the bytes that reached the host)
//   (b) 64 B request/response over N connections to the peer's echo: each
//       connection has one message outstanding; a transaction counts when
//       the whole answer reached the host and its request was ACKed
//   (c) churn, N connections cycling at once: CONNECT to the echo, one 64 B
//       request/response, graceful DISCONNECT, the echo's FIN, TERMINATE; a
//       cycle counts when TERMINATE has returned
//   (f) in (c), each graceful DISCONNECT's latency at the host: from posting
//       it to its completion, and from the peer's TX burst that carried the
//       ACK of our FIN (stamped by the peer, same TSC) to the completion
//
// The figures include everything between the host and the wire: the control
// socket, chimneyd's main lcore and rings, its worker, memif, and the
// peer's engine. They are printed, never judged.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rte_cycles.h>
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
#include <tuple>
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
    // Each completion with the TSC of its arrival (when the client read and
    // dispatched it, also inside a synchronous call).
    c_.on_completion([this](const cc::Completion& done) { q_.emplace_back(done, rte_rdtsc()); });
  }
  cc::Client& client() { return c_; }
  // The arrival TSC of the completion being handed out by pump().
  uint64_t completion_tsc() const { return completion_tsc_; }

  // Reads what arrived (up to 2 ms) and hands each completion to `fn`.
  template <typename Fn>
  void pump(Fn&& fn) {
    c_.poll(std::chrono::milliseconds(2));
    while (!q_.empty()) {
      cc::Completion done = std::move(q_.front().first);
      completion_tsc_ = q_.front().second;
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
  std::deque<std::pair<cc::Completion, uint64_t>> q_;
  uint64_t completion_tsc_ = 0;
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

// Percentiles of latency samples (µs), picked as the in-process figures are:
// the sample at index p·n of the sorted list.
struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
  size_t n = 0;
};
Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))]; };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.max = v.back();
  return p;
}

// Every latency sample of one churn run, in µs, with the counts behind them.
struct ChurnResult {
  Result rate;                 // connection cycles per second
  std::vector<double> post;    // DISCONNECT posted -> its completion at the host
  std::vector<double> ack;     // the peer's TX burst with the ACK of our FIN -> the completion
  uint64_t unmatched = 0;      // window samples without a peer stamp inside [posted, completed]
};

// (c) and (f): n slots cycling. A slot's cycle: CONNECT to the echo
// (synchronous: lib/client has no asynchronous CONNECT, so the host waits
// for each handshake and offload, dispatching the other slots' completions
// meanwhile), a RECEIVE of 64 B and a zero-copy SEND of 64 B, then, once the
// answer is in and the SEND has completed, a graceful DISCONNECT; once it
// has completed and the echo's FIN has come (the DISCONNECT event),
// TERMINATE (synchronous too) and the next cycle. `stamps` is the peer's
// stamp_fin_acks array, indexed by chimneyd's local port, which TERMINATE's
// state names.
ChurnResult churn(Host& host, const Options& o, uint32_t n, const std::atomic<uint64_t>* stamps) {
  cc::Client& c = host.client();
  constexpr uint32_t kMsg = 64;
  const double us_per_tsc = 1e6 / static_cast<double>(rte_get_tsc_hz());
  struct Slot {
    cc::Buffer msg;
    uint32_t h = 0;
    bool live = false, sent = false, disc_done = false, fin = false, in_window = false;
    uint32_t got = 0;
    cc::Request send = 0, recv = 0, disc = 0;
    uint64_t disc_posted = 0, disc_completed = 0;
  };
  std::vector<Slot> slots(n);
  std::unordered_map<cc::Request, uint32_t> by_request;
  std::unordered_map<uint32_t, uint32_t> by_handle;
  CachedState cached;
  cached.nagle = false;
  for (uint32_t i = 0; i < n; ++i) {
    auto b = c.alloc(kMsg);
    if (!b) throw std::runtime_error("region full");
    std::memset(b->bytes.data(), static_cast<int>('a' + i % 26), kMsg);
    slots[i].msg = *b;
  }
  ChurnResult res;
  uint64_t cycles = 0;
  bool stopping = false;
  std::string why;
  std::vector<uint32_t> to_terminate;
  Host::Window w = host.window();

  auto open = [&](uint32_t i) {
    Slot& k = slots[i];
    k.h = c.connect(kPeerIp, kEchoPort, 0, cached);
    k.live = true;
    k.sent = k.disc_done = k.fin = k.in_window = false;
    k.got = 0;
    k.disc = 0;
    by_handle[k.h] = i;
    k.recv = c.receive(k.h, kMsg);
    by_request[k.recv] = i;
    k.send = c.send_region(k.h, k.msg.offset, kMsg);
    by_request[k.send] = i;
  };
  auto ready = [&](uint32_t i) {
    Slot& k = slots[i];
    if (k.disc_done && k.fin) to_terminate.push_back(i);
  };
  auto maybe_disconnect = [&](uint32_t i) {
    Slot& k = slots[i];
    if (!k.sent || k.got < kMsg || k.disc != 0) return;
    k.disc_posted = rte_rdtsc();
    k.disc = c.disconnect(k.h, true);
    by_request[k.disc] = i;
  };
  auto on = [&](cc::Completion& x) {
    auto it = by_request.find(x.request);
    if (it == by_request.end()) return;
    const uint32_t i = it->second;
    by_request.erase(it);
    Slot& k = slots[i];
    if (x.request == k.send) {
      k.send = 0;
      k.sent = true;
      if (!x.ok() && why.empty()) why = std::string("send ") + chimney::to_string(x.status);
      maybe_disconnect(i);
    } else if (x.request == k.recv) {
      c.release(x.request);
      k.recv = 0;
      if (!x.ok()) {
        if (why.empty()) why = std::string("receive ") + chimney::to_string(x.status) + " before the whole answer";
        return;
      }
      k.got += static_cast<uint32_t>(x.bytes_transferred);
      if (k.got < kMsg) {
        k.recv = c.receive(k.h, kMsg - k.got);
        by_request[k.recv] = i;
      }
      maybe_disconnect(i);
    } else if (x.request == k.disc) {
      k.disc_completed = host.completion_tsc();
      k.disc_done = true;
      k.in_window = w.open && !w.closed;
      if (!x.ok() && why.empty()) why = std::string("disconnect ") + chimney::to_string(x.status);
      ready(i);
    }
  };
  // Events: the echo's FIN (DISCONNECT) ends a slot's wait; anything that
  // ends a connection otherwise is a failure.
  auto events = [&] {
    while (c.pending_events() != 0) {
      const auto ev = c.next_event();
      if (!ev) break;
      auto it = by_handle.find(ev->handle);
      if (it == by_handle.end()) continue;
      if (ev->kind == control::WireEvent::disconnect) {
        slots[it->second].fin = true;
        ready(it->second);
      } else if (ev->kind == control::WireEvent::abort || ev->kind == control::WireEvent::retrieve) {
        if (why.empty()) why = std::string("event ") + cc::to_string(ev->kind) + " in a churn cycle";
      }
    }
  };
  auto finish = [&](uint32_t i) {
    Slot& k = slots[i];
    events();  // what was read before TERMINATE's reply belongs to this connection
    const cc::Terminated t = c.terminate(k.h);
    by_handle.erase(k.h);
    k.live = false;
    events();  // (its events read during the call go with the handle)
    ++cycles;
    if (k.in_window) {
      res.post.push_back(static_cast<double>(k.disc_completed - k.disc_posted) * us_per_tsc);
      const uint64_t at = stamps != nullptr ? stamps[t.state.constant.local_port].load(std::memory_order_acquire) : 0;
      if (at > k.disc_posted && at <= k.disc_completed)
        res.ack.push_back(static_cast<double>(k.disc_completed - at) * us_per_tsc);
      else
        ++res.unmatched;
    }
  };
  auto state = [&] {  // for a stall: the first slots as the host sees them
    std::string out = "cycles " + std::to_string(cycles) + ";";
    for (uint32_t i = 0; i < n && i < 8; ++i) {
      const Slot& k = slots[i];
      out += " [slot " + std::to_string(i) + ": live " + std::to_string(k.live) + ", sent " + std::to_string(k.sent) +
             ", answer bytes " + std::to_string(k.got) + ", disconnect posted " + std::to_string(k.disc != 0) +
             ", done " + std::to_string(k.disc_done) + ", peer FIN " + std::to_string(k.fin) + "]";
    }
    return out;
  };
  try {
    for (uint32_t i = 0; i < n; ++i) open(i);
    host.pump_until(on, [&] {
      events();
      while (!to_terminate.empty()) {
        const uint32_t i = to_terminate.back();
        to_terminate.pop_back();
        finish(i);
        if (!stopping && why.empty()) open(i);
      }
      if (w.feed(cycles, o.seconds, cycles >= n)) stopping = true;
      if (!why.empty()) return true;
      if (!stopping) return false;
      for (const Slot& k : slots)
        if (k.live) return false;
      return true;
    }, o.warmup + o.seconds + 60, "churn");
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(e.what()) + ": " + state());
  }
  for (Slot& k : slots) {
    if (k.live) {
      try {
        c.terminate(k.h);  // after a failure: upload what is left
      } catch (const std::exception&) {
      }
    }
    c.free(k.msg);
  }
  char note[160];
  std::snprintf(note, sizeof note, "cycles at the host (TERMINATE returned); %zu disconnects in the window", res.post.size());
  res.rate = {w.rate(), why.empty() && w.rate() > 0, why.empty() ? note : why};
  return res;
}

// chimneyd, started here as the memif client of our socket, or on a TAP in
// the run's namespace.
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
    track_dir(dir);  // both removed if the bench is stopped by a signal
    track_dir("/var/run/dpdk/" + prefix);
    std::string port;
    if (r.peer.device == "tap") {
      port = "kind=tap,iface=" + r.chimneyd_tap_iface + ",address=" + r.chimneyd_address + ",mac=" + r.chimneyd_mac;
    } else {
      port = "kind=memif,role=" + std::string(r.peer.role == "server" ? "client" : "server") + ",path=" +
             r.peer.socket + ",address=" + r.chimneyd_address + ",devargs=id=0,mac=" + r.chimneyd_mac;
      if (!r.peer.memif_devargs.empty()) port += "," + r.peer.memif_devargs;
    }
    // chimneyd's main lcore on --other-cpu with the peer and this host,
    // its worker on --cpu. Over TAP in the run's namespace (`ip netns exec`
    // execs chimneyd in place: the pid is chimneyd's).
    std::vector<std::string> argv;
    if (r.peer.device == "tap") argv = {"ip", "netns", "exec", r.netns};
    argv.insert(argv.end(), {r.chimneyd, "--lcores", "0@" + std::to_string(o.other_cpu) + ",1@" + std::to_string(o.cpu),
                             "--file-prefix", prefix, "--", "--port", port, "--control-socket", socket, "--log-level",
                             "info"});
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
      if (Clock::now() > give_up) {
        stop(pid, SIGTERM, 15);  // (no destructor after a throw)
        pid = -1;
        throw std::runtime_error("chimneyd not ready after 60 s:\n" + tail(slurp(log), 15));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~Chimneyd() {
    if (pid > 0) stop(pid, SIGTERM, 15);
    untrack_dir(dir);
    untrack_dir("/var/run/dpdk/" + prefix);
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

std::string remote_key_prefix(const std::string& device) { return device == "tap" ? "remote_tap_" : "remote_"; }
std::string remote_label_prefix(const std::string& device) {
  return device == "tap" ? "chimneyd over TAP: " : "chimneyd over memif: ";
}

// ------------------------------------------------------------ TAP ----
TapNetwork::TapNetwork() : name_("chimney-bench-" + std::to_string(getpid())) {
  track_namespace(name_);  // deleted at exit and on SIGINT/SIGTERM too
  // Only the bridge and the two TAPs live here; no IPv6 (the kernel
  // interfaces would send router solicitations and MLD reports to both
  // ends), no multicast snooping (its IGMP), no STP (a port forwards as
  // soon as it is up).
  const std::vector<std::string> cmds = {
      "ip netns add " + name_,
      "ip -n " + name_ + " link set lo up",
      "ip netns exec " + name_ + " sysctl -q -w net.ipv6.conf.all.disable_ipv6=1",
      "ip netns exec " + name_ + " sysctl -q -w net.ipv6.conf.default.disable_ipv6=1",
      "ip -n " + name_ + " link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
      "ip -n " + name_ + " link set br0 up",
  };
  for (const auto& c : cmds)
    if (run_command_quiet(c) != 0) {
      untrack_namespace(name_);
      throw std::runtime_error("tap network: failed: " + c);
    }
}

TapNetwork::~TapNetwork() {
  if (home_ >= 0) leave();
  run_command_quiet("ip -n " + name_ + " link del br0");
  untrack_namespace(name_);  // deletes it
}

void TapNetwork::enter() {
  if (home_ >= 0) return;  // inside already
  home_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home_ < 0) throw std::runtime_error("tap network: cannot open this thread's network namespace");
  const std::string path = "/var/run/netns/" + name_;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
    const std::string why = std::strerror(errno);
    if (fd >= 0) close(fd);
    close(home_);
    home_ = -1;
    throw std::runtime_error("tap network: cannot enter " + path + ": " + why);
  }
  close(fd);
}

void TapNetwork::leave() {
  if (home_ < 0) return;
  if (setns(home_, CLONE_NEWNET) != 0)
    std::fprintf(stderr, "[remote] cannot return to the original network namespace: %s\n", std::strerror(errno));
  close(home_);
  home_ = -1;
}

void TapNetwork::attach(const std::string& iface, const std::string& kernel_mac) {
  for (const std::string& c : {"ip -n " + name_ + " link set dev " + iface + " address " + kernel_mac,
                               "ip -n " + name_ + " link set dev " + iface + " master br0",
                               "ip -n " + name_ + " link set dev " + iface + " up"})
    if (run_command_quiet(c) != 0) throw std::runtime_error("tap network: failed: " + c);
}

void run_remote(const Options& o, const RemoteOptions& r_in, const std::vector<std::string>& only, Figures& f,
                TapNetwork* tap) {
  // The services the workloads use; nothing hashed (the figure, not the
  // check: tests/integration/test_devices.py checks the bytes).
  RemoteOptions r = r_in;
  std::string e;
  r.peer.services = {*parse_peer_service(std::to_string(kSinkPort) + "=sink,hash=0", e),
                     *parse_peer_service(std::to_string(kSourcePort) + "=source,bytes=0,hash=0", e),
                     *parse_peer_service(std::to_string(kEchoPort) + "=echo,hash=0", e)};
  const bool over_tap = r.peer.device == "tap";
  const std::string kp = remote_key_prefix(r.peer.device);  // the figures' keys
  const std::string failure_key = kp.substr(0, kp.size() - 1);
  if (over_tap)
    std::fprintf(stderr, "[remote] peer on TAP %s, chimneyd on TAP %s, bridge br0 in namespace %s, load %s\n",
                 r.peer.tap_iface.c_str(), r.chimneyd_tap_iface.c_str(), r.netns.c_str(), load_average().c_str());
  else
    std::fprintf(stderr, "[remote] peer on memif %s (%s), load %s\n", r.peer.socket.c_str(), r.peer.role.c_str(),
                 load_average().c_str());
  if (over_tap && (tap == nullptr || r.chimneyd.empty())) {
    f.fail(failure_key, "--device tap needs --chimneyd (the bench starts it in its namespace)");
    return;
  }
  // net_tap opens a queue's file descriptor by the interface's name when
  // the queue is set up, and its link-state socket when the port starts:
  // both must happen in the namespace, or the kernel makes a second TAP of
  // that name where this thread is.
  std::unique_ptr<PeerEndpoint> peer;
  try {
    if (over_tap) tap->enter();
    peer = std::make_unique<PeerEndpoint>(r.peer, nullptr);
    if (over_tap) tap->leave();
  } catch (const std::exception& e) {
    if (over_tap) tap->leave();
    f.fail(failure_key, e.what());
    std::fprintf(stderr, "[remote] %s\n", e.what());
    return;
  }
  // The peer closes after chimneyd has stopped (declared before it), over
  // TAP inside the namespace where its port was made.
  struct ClosePeer {
    std::unique_ptr<PeerEndpoint>& peer;
    TapNetwork* tap;
    ~ClosePeer() {
      if (!peer) return;
      try {
        if (tap != nullptr) tap->enter();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[remote] %s\n", e.what());
      }
      peer.reset();
      if (tap != nullptr) tap->leave();
    }
  } close_peer{peer, over_tap ? tap : nullptr};
  std::unique_ptr<Chimneyd> chimneyd;
  std::string control = r.control_socket;
  if (!r.chimneyd.empty()) {
    try {
      chimneyd = std::make_unique<Chimneyd>(o, r);
      control = chimneyd->socket;
      if (over_tap) {
        // Both TAPs exist now (and carry their DPDK ports' MACs, which the
        // bridge would keep for itself): other kernel MACs, onto br0, up.
        tap->attach(r.peer.tap_iface, "02:00:c6:12:ff:01");
        tap->attach(r.chimneyd_tap_iface, "02:00:c6:12:ff:02");
      }
    } catch (const std::exception& e) {
      f.fail(failure_key, e.what());
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

  // The peer's stamps of the ACKs of our FINs (churn), by chimneyd's port.
  const auto stamps = std::make_unique<std::atomic<uint64_t>[]>(65536);
  peer->stamp_fin_acks(stamps.get());

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
        results.emplace_back(kp + "bulk_tx_gbps", bulk_to_peer(host, o));
        progress("bulk, peer -> chimneyd");
        results.emplace_back(kp + "bulk_rx_gbps", bulk_from_peer(host, o));
      }
      if (wanted(only, "rr"))
        for (uint32_t n : r.rr_connections) {
          progress("request/response 64 B, " + std::to_string(n) + " connections");
          results.emplace_back(kp + "rr_64_" + std::to_string(n), request_response(host, o, n));
        }
      if (wanted(only, "churn"))
        for (uint32_t n : r.churn_parallel) {
          progress("churn, " + std::to_string(n) + " in parallel");
          const std::string k = std::to_string(n);
          ChurnResult c = churn(host, o, n, stamps.get());
          results.emplace_back(kp + "churn_" + k + "_per_s", c.rate);
          const bool ok = c.rate.ok && !c.post.empty();
          for (const auto& [what, samples, note] :
               {std::tuple<std::string, const std::vector<double>*, std::string>{
                    "post", &c.post, "DISCONNECT posted -> completion at the host"},
                {"ack", &c.ack, "the peer's ACK of our FIN sent -> completion at the host; " +
                                    std::to_string(c.unmatched) + " disconnects without a stamp"}}) {
            const Percentiles p = percentiles(*samples);
            const std::string key = kp + "disc_" + what + "_" + k;
            const bool have = ok && p.n != 0;
            results.emplace_back(key + "_p50_us", Result{p.p50, have, note});
            results.emplace_back(key + "_p90_us", Result{p.p90, have, note});
            results.emplace_back(key + "_p99_us", Result{p.p99, have, note});
            results.emplace_back(key + "_max_us", Result{p.max, have, note});
            results.emplace_back(key + "_samples", Result{static_cast<double>(p.n), have, note});
          }
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
  f.set(kp + "peer_connections_failed", static_cast<double>(peer->connections_failed()),
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
    f.fail(failure_key, failure);
  }
  std::fprintf(stderr, "[remote] %s\n", peer->exit_json().c_str());
  if (!failure.empty()) std::fprintf(stderr, "[remote] the peer's open connections: %s\n", peer->open_connections_json().c_str());
  chimneyd.reset();  // chimneyd stops before our end of the memif (or our TAP) goes
  // (the peer closes in close_peer's destructor)
}

void run_churn_references(const Options& o, const std::vector<uint32_t>& parallel, bool inproc, bool linux_ref,
                          Figures& f) {
  for (uint32_t n : parallel) {
    Options on = o;
    on.churn_parallel = n;
    const std::string k = std::to_string(n);
    Figures g;
    if (inproc) {
      std::vector<double> lat;
      try {
        run_inproc(on, {"churn"}, g, lat);
      } catch (const std::exception& e) {
        g.fail("churn_per_s", e.what());
      }
      if (const Figure* x = g.get("churn_per_s")) f.set("churn_" + k + "_per_s", x->value, x->ok, x->note);
      const Percentiles p = percentiles(lat);
      const bool ok = p.n != 0;
      const std::string note = "in-process: FIN-ACK at A's input -> A's disconnect_complete; " + std::to_string(p.n) + " samples";
      f.set("disc_latency_" + k + "_p50_us", p.p50, ok, note);
      f.set("disc_latency_" + k + "_p90_us", p.p90, ok, note);
      f.set("disc_latency_" + k + "_p99_us", p.p99, ok, note);
      f.set("disc_latency_" + k + "_max_us", p.max, ok, note);
    }
    if (linux_ref) {
      run_linux(on, {"churn"}, g);
      if (const Figure* x = g.get("linux_churn_per_s")) f.set("linux_churn_" + k + "_per_s", x->value, x->ok, x->note);
      else if (const Figure* s = g.get("linux_setup")) f.set("linux_churn_" + k + "_per_s", 0, false, s->note);
    }
  }
}

}  // namespace chimney::bench
