// chimneyctl: chimneyd's control plane from a shell (docs/CLIENT.md).
//
//   chimneyctl [--socket PATH] [--timeout S] stats
//   chimneyctl [...] send IP PORT (--file F | --bytes N) [--graceful | --abortive]
//   chimneyctl [...] recv IP PORT [--bytes N] [--output F]
//
// Exit status: 0 done, 1 the operation failed (a status other than success,
// a refused request, no answer in time, no target), 2 bad usage (one line on
// stderr naming the option).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "client/client.hpp"

namespace po = boost::program_options;
namespace cc = chimney::client;
using chimney::Status;

namespace {

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;

const char* const kHelp = R"(chimneyctl: drive chimneyd over its control socket.

Usage: chimneyctl [--socket PATH] [--timeout SECONDS] COMMAND [ARGS]

Commands:
  stats                       print chimneyd's counters (STATS, one JSON object)
  send IP PORT (--file F | --bytes N) [--graceful | --abortive]
                              CONNECT to IP:PORT, SEND the data, DISCONNECT
                              (graceful by default: FIN once everything is ACKed;
                              --abortive: RST as soon as the data is posted),
                              then TERMINATE. Prints each completion as
                              "<request> NDIS_STATUS_... bytes=N" and then
                              "sent bytes=N acked=N fnv1a64=X" for what was sent.
  recv IP PORT [--bytes N] [--output F]
                              CONNECT to IP:PORT, post RECEIVEs until the peer's
                              FIN (event DISCONNECT) or N bytes, then DISCONNECT
                              gracefully and TERMINATE. Prints "received bytes=N fnv1a64=X
                              end=..." (and writes the bytes to F).

Global options (anywhere on the line):
  --socket PATH               control socket (default /run/chimney/chimney.sock)
  --timeout SECONDS           longest wait for any reply or completion (default 60)
  --linger SECONDS            after our graceful close, how long to wait for the
                              peer's FIN before releasing the connection with
                              TERMINATE (default 2)
  -h, --help                  this text

send/recv options:
  --file F                    send F's bytes ("-": standard input)
  --bytes N                   send: N bytes of the pattern byte[i] = i mod 251;
                              recv: stop after N bytes. N may end in K, M or G (x1024).
  --output F                  recv: write the received bytes to F ("-": stdout,
                              then the report goes to stderr)
  --graceful, --abortive      send: how to disconnect (default graceful)
  --local-port P              local port (default 0: the target picks one)
  --chunk N                   bytes per SEND/RECEIVE request (default 1M)
  --window N                  requests in flight (default 8)

The checksum is FNV-1a 64 (non-cryptographic: chimney has no crypto
dependency); compare with sha256 of --file/--output for strong checks.

Exit status: 0 success; 1 the operation failed (a status other than
NDIS_STATUS_SUCCESS, a refused request, a timeout, no control socket);
2 bad usage.
)";

struct Usage {
  std::string text;
};

[[noreturn]] void usage(const std::string& text) { throw Usage{text}; }

// FNV-1a, 64 bits.
class Fnv1a64 {
 public:
  void update(std::span<const uint8_t> b) {
    for (uint8_t x : b) {
      h_ ^= x;
      h_ *= 0x100000001b3ull;
    }
  }
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h_));
    return buf;
  }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

// "123", "8M", "4K", "1G" (powers of 1024), "16MiB".
uint64_t parse_bytes(const std::string& option, const std::string& s) {
  const std::string bad = option + ": '" + s + "' is not a byte count (N, NK, NM or NG)";
  if (s.empty() || s[0] < '0' || s[0] > '9') usage(bad);
  size_t used = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &used);
  } catch (...) {
    usage(bad);
  }
  std::string suffix = s.substr(used);
  if (suffix.size() == 3 && (suffix.substr(1) == "iB" || suffix.substr(1) == "ib")) suffix.resize(1);
  uint64_t mul = 1;
  if (suffix.empty()) mul = 1;
  else if (suffix == "K" || suffix == "k") mul = 1ull << 10;
  else if (suffix == "M" || suffix == "m") mul = 1ull << 20;
  else if (suffix == "G" || suffix == "g") mul = 1ull << 30;
  else usage(bad);
  if (v > UINT64_MAX / mul) usage(option + ": '" + s + "' is too large");
  return v * mul;
}

uint16_t parse_port(const std::string& what, const std::string& s, bool zero_ok) {
  size_t used = 0;
  unsigned long v = 0;
  try {
    v = std::stoul(s, &used);
  } catch (...) {
    used = 0;
  }
  if (used != s.size() || s.empty() || s[0] == '-' || v > 65535 || (v == 0 && !zero_ok))
    usage(what + ": '" + s + "' is not a port (" + (zero_ok ? "0" : "1") + "-65535)");
  return static_cast<uint16_t>(v);
}

struct Common {
  std::string socket = std::string(cc::kDefaultSocket);
  double timeout_s = 60;
  double linger_s = 2;
  cc::Timeout timeout() const { return std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)); }
  cc::Timeout linger() const { return std::chrono::milliseconds(static_cast<int64_t>(linger_s * 1000)); }
};

struct Endpoint {
  std::string ip_text;
  uint32_t ip = 0;
  uint16_t port = 0;
  uint16_t local_port = 0;
  uint64_t chunk = 1u << 20;
  unsigned window = 8;
};

// The output of completions and reports (stdout, or stderr when stdout carries data).
FILE* report = stdout;

void print_completion(const cc::Completion& c) {
  std::fprintf(report, "%s %s bytes=%llu\n", cc::to_string(c.kind), chimney::to_string(c.status),
               static_cast<unsigned long long>(c.bytes_transferred));
  std::fflush(report);
}

void print_refused(cc::RequestKind kind, const cc::Error& e) {
  std::fprintf(report, "%s refused %s\n", cc::to_string(kind), e.what());
  std::fflush(report);
}

// Connects; prints "connect STATUS ...". nullopt (and exit 1 by the caller) on failure.
std::optional<uint32_t> open_connection(cc::Client& client, const Endpoint& ep, const Common& common) {
  try {
    const uint32_t h = client.connect(ep.ip, ep.port, ep.local_port, chimney::CachedState{}, common.timeout());
    std::fprintf(report, "connect NDIS_STATUS_SUCCESS %s:%u handle=%#x\n", ep.ip_text.c_str(), ep.port, h);
    std::fflush(report);
    return h;
  } catch (const cc::TimeoutError& e) {
    std::fprintf(report, "connect timeout %s:%u\n", ep.ip_text.c_str(), ep.port);
    std::fprintf(stderr, "chimneyctl: %s\n", e.what());
  } catch (const cc::Error& e) {
    if (e.code())
      std::fprintf(report, "connect %s %s:%u\n", cc::code_name(*e.code()).c_str(), ep.ip_text.c_str(), ep.port);
    std::fprintf(stderr, "chimneyctl: %s\n", e.what());
  }
  return std::nullopt;
}

cc::Client open_client(const Common& common, uint64_t region_size) {
  cc::Options o;
  o.region_size = region_size;
  o.timeout = common.timeout();
  return cc::Client::connect_unix(common.socket, o);
}

// A wait that turns "no completion in time" into an error.
cc::Completion wait_or_fail(cc::Client& client, cc::Request r, cc::RequestKind kind, const Common& common) {
  auto c = client.wait(r, common.timeout());
  if (!c)
    throw cc::Error(std::nullopt, std::string(cc::to_string(kind)) + ": no completion within " +
                                      std::to_string(common.timeout_s) + " s");
  return *c;
}

// Waits for a disconnect's completion and prints it; true on SUCCESS. A
// refusal is printed; a timeout or a lost session is thrown.
bool await_disconnect(cc::Client& client, cc::Request d, const Common& common) {
  try {
    const cc::Completion c = wait_or_fail(client, d, cc::RequestKind::disconnect, common);
    print_completion(c);
    return c.status == Status::success;
  } catch (const cc::TimeoutError&) {
    throw;
  } catch (const cc::Error& e) {
    if (client.closed()) throw;
    print_refused(cc::RequestKind::disconnect, e);
    return false;
  }
}

// Ends our part: after a graceful close, waits up to `linger` for the peer's
// FIN (event DISCONNECT) unless it came already, then TERMINATEs the
// connection so the session closes with nothing left for chimneyd to abort.
// Prints "terminate STATUS state=..."; failures here do not fail the command.
void release_connection(cc::Client& client, uint32_t handle, const Common& common, bool wait_for_fin,
                        bool peer_closed) {
  try {
    if (wait_for_fin && !peer_closed) {
      const auto deadline = cc::Clock::now() + common.linger();
      while (!peer_closed) {
        const auto left = std::chrono::duration_cast<cc::Timeout>(deadline - cc::Clock::now());
        const auto e = client.next_event(std::max(left, cc::Timeout::zero()));
        if (!e) break;
        if (e->handle == handle && (e->kind == chimney::control::WireEvent::disconnect ||
                                    e->kind == chimney::control::WireEvent::abort))
          peer_closed = true;
      }
    }
    const cc::Terminated t = client.terminate(handle, common.timeout());
    std::fprintf(report, "terminate %s state=%s\n", chimney::to_string(t.status), chimney::to_string(t.state.delegated.state));
  } catch (const cc::Error& e) {
    std::fprintf(report, "terminate failed: %s\n", e.what());
  }
  std::fflush(report);
}

// ---- stats

int cmd_stats(const Common& common, const std::vector<std::string>& args) {
  if (!args.empty()) usage("stats: unexpected argument '" + args.front() + "'");
  cc::Client client = open_client(common, 4096);
  std::printf("%s\n", client.stats(common.timeout()).c_str());
  return kOk;
}

// ---- send

int cmd_send(const Common& common, const Endpoint& ep, std::optional<std::string> file, std::optional<uint64_t> nbytes,
             bool graceful) {
  int fd = -1;
  if (file) {
    if (*file == "-") {
      fd = STDIN_FILENO;
    } else {
      fd = ::open(file->c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        std::fprintf(stderr, "chimneyctl: --file: %s: %s\n", file->c_str(), std::strerror(errno));
        return kFailed;
      }
    }
  }
  cc::Client client = open_client(common, ep.chunk * ep.window + (64u << 10) * ep.window);
  const auto handle = open_connection(client, ep, common);
  if (!handle) return kFailed;

  struct Posted {
    cc::Request request;
    cc::Buffer buffer;
    uint64_t length;
  };
  std::deque<Posted> posted;
  Fnv1a64 sum;
  uint64_t offered = 0;  // bytes posted
  uint64_t acked = 0;    // bytes_transferred of the sends
  bool eof = false;
  bool ok = true;

  // The next piece of the data into `b`; 0 at the end.
  auto fill = [&](cc::Buffer& b) -> uint64_t {
    const uint64_t want = ep.chunk;
    if (fd < 0) {
      const uint64_t n = std::min<uint64_t>(want, *nbytes - offered);
      for (uint64_t i = 0; i < n; ++i) b.bytes[i] = static_cast<uint8_t>((offered + i) % 251);
      return n;
    }
    uint64_t got = 0;
    while (got < want) {
      const ssize_t n = ::read(fd, b.bytes.data() + got, want - got);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        throw cc::Error(std::nullopt, std::string("--file: read: ") + std::strerror(errno));
      }
      got += static_cast<uint64_t>(n);
    }
    return got;
  };

  auto complete_front = [&]() {
    Posted p = posted.front();
    posted.pop_front();
    try {
      const cc::Completion c = wait_or_fail(client, p.request, cc::RequestKind::send, common);
      print_completion(c);
      acked += c.bytes_transferred;
      const bool fine = c.status == Status::success ? c.bytes_transferred == p.length
                                                    : !graceful && c.status == Status::request_aborted;
      if (!fine) ok = false;
    } catch (const cc::TimeoutError&) {
      throw;
    } catch (const cc::Error& e) {
      if (client.closed()) throw;
      print_refused(cc::RequestKind::send, e);
      ok = false;
    }
    client.free(p.buffer);
  };

  try {
    while (!eof) {
      while (!eof && posted.size() < ep.window) {
        auto b = client.alloc(ep.chunk);
        if (!b) break;  // the region is full until a send completes
        const uint64_t n = fill(*b);
        if (n == 0) {
          client.free(*b);
          eof = true;
          break;
        }
        sum.update(b->bytes.first(n));
        posted.push_back({client.send_region(*handle, b->offset, static_cast<uint32_t>(n)), *b, n});
        offered += n;
      }
      if (!eof && !posted.empty()) complete_front();
    }
    // Everything is posted: disconnect now (graceful completes once all of it
    // and the FIN are ACKed, C-11; abortive resets at once, C-13).
    const cc::Request d = client.disconnect(*handle, graceful);
    while (!posted.empty()) complete_front();
    const bool closed_ok = await_disconnect(client, d, common);
    if (!closed_ok) ok = false;
    release_connection(client, *handle, common, graceful && closed_ok, false);
  } catch (const cc::Error& e) {
    std::fprintf(stderr, "chimneyctl: %s\n", e.what());
    ok = false;
  }
  if (fd > STDIN_FILENO) ::close(fd);
  std::fprintf(report, "sent bytes=%llu acked=%llu fnv1a64=%s\n", static_cast<unsigned long long>(offered),
               static_cast<unsigned long long>(acked), sum.hex().c_str());
  return ok ? kOk : kFailed;
}

// ---- recv

int cmd_recv(const Common& common, const Endpoint& ep, std::optional<uint64_t> limit,
             std::optional<std::string> output) {
  FILE* out = nullptr;
  if (output) {
    if (*output == "-") {
      out = stdout;
      report = stderr;
    } else {
      out = std::fopen(output->c_str(), "wb");
      if (out == nullptr) {
        std::fprintf(stderr, "chimneyctl: --output: %s: %s\n", output->c_str(), std::strerror(errno));
        return kFailed;
      }
    }
  }
  cc::Client client = open_client(common, ep.chunk * ep.window + (64u << 10) * ep.window);
  const auto handle = open_connection(client, ep, common);
  if (!handle) {
    if (out != nullptr && out != stdout) std::fclose(out);
    return kFailed;
  }

  struct Posted {
    cc::Request request;
    uint64_t length;
  };
  std::deque<Posted> posted;
  Fnv1a64 sum;
  uint64_t received = 0;
  uint64_t committed = 0;  // received + lengths of the receives outstanding
  bool peer_closed = false, peer_reset = false, ok = true;
  std::string end = "bytes";

  auto drain_events = [&]() {
    while (auto e = client.next_event()) {
      if (e->handle != *handle) continue;
      if (e->kind == chimney::control::WireEvent::disconnect) peer_closed = true;
      if (e->kind == chimney::control::WireEvent::abort) peer_reset = true;
    }
  };

  try {
    for (;;) {
      drain_events();
      while (!peer_closed && !peer_reset && posted.size() < ep.window && (!limit || committed < *limit)) {
        const uint64_t n = limit ? std::min<uint64_t>(ep.chunk, *limit - committed) : ep.chunk;
        posted.push_back({client.receive(*handle, static_cast<uint32_t>(n)), n});
        committed += n;
      }
      if (posted.empty()) break;
      const Posted p = posted.front();
      posted.pop_front();
      cc::Completion c;
      try {
        c = wait_or_fail(client, p.request, cc::RequestKind::receive, common);
      } catch (const cc::TimeoutError&) {
        throw;
      } catch (const cc::Error& e) {
        if (client.closed()) throw;
        print_refused(cc::RequestKind::receive, e);
        committed -= p.length;
        ok = false;
        peer_reset = true;  // stop posting
        continue;
      }
      committed -= p.length - std::min<uint64_t>(c.data.size(), p.length);
      if (c.status == Status::success) {
        sum.update(c.data);
        received += c.data.size();
        if (out != nullptr && !c.data.empty() && std::fwrite(c.data.data(), 1, c.data.size(), out) != c.data.size())
          throw cc::Error(std::nullopt, std::string("--output: write: ") + std::strerror(errno));
      } else if (c.status == Status::invalid_state) {
        peer_closed = true;  // C-16: receives posted after the peer's FIN
      } else {
        print_completion(c);
        if (c.status == Status::request_aborted) peer_reset = true;
        ok = false;
      }
      client.release(p.request);
    }
    drain_events();
    if (peer_reset) end = "reset";
    else if (peer_closed) end = "DISCONNECT";
    if (limit && received < *limit) {
      ok = false;
      std::fprintf(stderr, "chimneyctl: recv: the connection ended after %llu of %llu bytes\n",
                   static_cast<unsigned long long>(received), static_cast<unsigned long long>(*limit));
    }
    bool closed_ok = false;
    if (!peer_reset) {
      closed_ok = await_disconnect(client, client.disconnect(*handle, true), common);
      if (!closed_ok) ok = false;
    }
    release_connection(client, *handle, common, closed_ok, peer_closed);
  } catch (const cc::Error& e) {
    std::fprintf(stderr, "chimneyctl: %s\n", e.what());
    ok = false;
  }
  if (out != nullptr && (out == stdout ? std::fflush(out) : std::fclose(out)) != 0) {
    std::fprintf(stderr, "chimneyctl: --output: %s\n", std::strerror(errno));
    ok = false;
  }
  std::fprintf(report, "received bytes=%llu fnv1a64=%s end=%s\n", static_cast<unsigned long long>(received),
               sum.hex().c_str(), end.c_str());
  return ok ? kOk : kFailed;
}

// ---- command line

int run(int argc, char** argv) {
  Common common;
  po::options_description global;
  global.add_options()("help,h", "")("socket", po::value<std::string>(&common.socket), "")(
      "timeout", po::value<double>(&common.timeout_s), "")("linger", po::value<double>(&common.linger_s), "");
  po::options_description hidden;
  hidden.add_options()("command", po::value<std::string>(), "")("args", po::value<std::vector<std::string>>(), "");
  po::options_description all;
  all.add(global).add(hidden);
  po::positional_options_description pos;
  pos.add("command", 1).add("args", -1);

  po::variables_map vm;
  const po::parsed_options parsed =
      po::command_line_parser(argc, argv).options(all).positional(pos).allow_unregistered().run();
  po::store(parsed, vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::fputs(kHelp, stdout);
    return kOk;
  }
  if (!(common.timeout_s > 0) || common.timeout_s > 86400)
    usage("--timeout: must be more than 0 and at most 86400 seconds");
  if (!(common.linger_s >= 0) || common.linger_s > 3600) usage("--linger: must be 0 to 3600 seconds");
  if (!vm.count("command")) usage("no command (stats, send, recv)");
  const std::string command = vm["command"].as<std::string>();
  std::vector<std::string> rest = po::collect_unrecognized(parsed.options, po::include_positional);
  if (auto it = std::find(rest.begin(), rest.end(), command); it != rest.end()) rest.erase(it);

  if (command == "stats") {
    po::store(po::command_line_parser(rest).options(po::options_description{}).run(), vm);  // names a stray option
    return cmd_stats(common, rest);
  }
  if (command != "send" && command != "recv") usage("unknown command '" + command + "' (stats, send, recv)");

  const bool is_send = command == "send";
  po::options_description opts;
  opts.add_options()("ip", po::value<std::string>(), "")("port", po::value<std::string>(), "")(
      "bytes", po::value<std::string>(), "")("local-port", po::value<std::string>(), "")(
      "chunk", po::value<std::string>(), "")("window", po::value<unsigned>(), "");
  if (is_send)
    opts.add_options()("file", po::value<std::string>(), "")("graceful", "")("abortive", "");
  else
    opts.add_options()("output", po::value<std::string>(), "");
  po::positional_options_description sub_pos;
  sub_pos.add("ip", 1).add("port", 1).add("extra", -1);
  opts.add_options()("extra", po::value<std::vector<std::string>>(), "");
  po::variables_map sv;
  po::store(po::command_line_parser(rest).options(opts).positional(sub_pos).run(), sv);
  po::notify(sv);

  Endpoint ep;
  if (sv.count("extra")) usage(command + ": unexpected argument '" + sv["extra"].as<std::vector<std::string>>().front() + "'");
  if (!sv.count("ip")) usage(command + ": missing IP");
  if (!sv.count("port")) usage(command + ": missing PORT");
  ep.ip_text = sv["ip"].as<std::string>();
  const auto ip = cc::parse_ipv4(ep.ip_text);
  if (!ip) usage(command + ": IP: '" + ep.ip_text + "' is not an IPv4 address");
  ep.ip = *ip;
  ep.port = parse_port(command + ": PORT", sv["port"].as<std::string>(), false);
  if (sv.count("local-port")) ep.local_port = parse_port("--local-port", sv["local-port"].as<std::string>(), true);
  if (sv.count("chunk")) {
    ep.chunk = parse_bytes("--chunk", sv["chunk"].as<std::string>());
    if (ep.chunk == 0 || ep.chunk > (64u << 20)) usage("--chunk: must be 1 byte to 64M");
  }
  if (sv.count("window")) {
    ep.window = sv["window"].as<unsigned>();
    if (ep.window == 0 || ep.window > 1024) usage("--window: must be 1 to 1024");
  }
  std::optional<uint64_t> nbytes;
  if (sv.count("bytes")) nbytes = parse_bytes("--bytes", sv["bytes"].as<std::string>());

  if (is_send) {
    std::optional<std::string> file;
    if (sv.count("file")) file = sv["file"].as<std::string>();
    if (file && nbytes) usage("send: --file and --bytes exclude each other");
    if (!file && !nbytes) usage("send: give --file F or --bytes N");
    if (sv.count("graceful") && sv.count("abortive")) usage("send: --graceful and --abortive exclude each other");
    return cmd_send(common, ep, file, nbytes, !sv.count("abortive"));
  }
  std::optional<std::string> output;
  if (sv.count("output")) output = sv["output"].as<std::string>();
  if (nbytes && *nbytes == 0) usage("--bytes: must be at least 1 for recv");
  return cmd_recv(common, ep, nbytes, output);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Usage& u) {
    std::fprintf(stderr, "chimneyctl: %s (see chimneyctl --help)\n", u.text.c_str());
    return kUsage;
  } catch (const po::error& e) {
    std::fprintf(stderr, "chimneyctl: %s (see chimneyctl --help)\n", e.what());
    return kUsage;
  } catch (const cc::Error& e) {
    std::fprintf(stderr, "chimneyctl: %s\n", e.what());
    return kFailed;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chimneyctl: %s\n", e.what());
    return kFailed;
  }
}
