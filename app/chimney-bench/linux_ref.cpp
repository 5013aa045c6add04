// chimney-bench-peer: the Linux kernel TCP reference of chimney-bench. A small
// epoll server and client, run by chimney-bench inside two network
// namespaces joined by a veth pair, both pinned to the core chimney's
// in-process figures use.
//
//   server --addr A --port P --nports K --mode source|echo
//   client --addr A --port P --nports K --mode bulk|bulk2|rr|churn
//          [--connections N] [--msg BYTES] [--warmup S] [--seconds S]
//
// The client prints one line: "result <rate> <cpu_seconds> <window_seconds>
// <errors>", rate in Gbit/s (bulk, bulk2), transactions/s (rr) or
// connections/s (churn), measured over the window after the warm-up.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string role, addr = "198.18.200.2", mode = "echo";
  int port = 5001, nports = 1, connections = 1, msg = 64;
  double warmup = 0.3, seconds = 2;
};

double mono() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

void raise_nofile() {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
}

void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }
void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

sockaddr_in addr_of(const std::string& ip, int port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
  return sa;
}

volatile sig_atomic_t g_stop = 0;

// ------------------------------------------------------------- server ----
struct Peer {
  int fd = -1;
  std::vector<char> pending;  // echo bytes not yet written
  size_t off = 0;
};

int server(const Args& a) {
  raise_nofile();
  signal(SIGTERM, [](int) { g_stop = 1; });
  signal(SIGPIPE, SIG_IGN);
  const int ep = epoll_create1(0);
  std::vector<int> listeners;
  for (int i = 0; i < a.nports; ++i) {
    const int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa = addr_of(a.addr, a.port + i);
    if (bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(l, 4096) != 0) {
      std::perror("server: bind/listen");
      return 1;
    }
    nonblock(l);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = (1ull << 63) | static_cast<uint64_t>(l);
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    listeners.push_back(l);
  }
  std::printf("listening\n");
  std::fflush(stdout);
  std::vector<Peer> peers(1 << 20);
  std::vector<char> buf(256 * 1024, 'x');
  const bool source = a.mode == "source";
  std::vector<epoll_event> evs(1024);
  while (!g_stop) {
    const int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 100);
    for (int i = 0; i < n; ++i) {
      const uint64_t d = evs[i].data.u64;
      if (d >> 63) {
        const int l = static_cast<int>(d & 0xffffffff);
        for (;;) {
          const int fd = accept4(l, nullptr, nullptr, SOCK_NONBLOCK);
          if (fd < 0) break;
          nodelay(fd);
          peers[fd] = Peer{fd, {}, 0};
          epoll_event ev{};
          ev.events = source ? EPOLLOUT : EPOLLIN;
          ev.data.u64 = static_cast<uint64_t>(fd);
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        continue;
      }
      const int fd = static_cast<int>(d);
      Peer& p = peers[fd];
      auto close_peer = [&] {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        close(fd);
        p = Peer{};
      };
      if (source) {
        if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
          close_peer();
          continue;
        }
        while (write(fd, buf.data(), buf.size()) > 0) {
        }
        if (errno != EAGAIN) close_peer();
        continue;
      }
      // echo: flush what is pending first, then read more
      if (!p.pending.empty()) {
        const ssize_t w = write(fd, p.pending.data() + p.off, p.pending.size() - p.off);
        if (w > 0) p.off += static_cast<size_t>(w);
        else if (errno != EAGAIN) {
          close_peer();
          continue;
        }
        if (p.off < p.pending.size()) continue;
        p.pending.clear();
        p.off = 0;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = static_cast<uint64_t>(fd);
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
      }
      const ssize_t r = read(fd, buf.data(), buf.size());
      if (r == 0 || (r < 0 && errno != EAGAIN)) {
        close_peer();
        continue;
      }
      if (r < 0) continue;
      const ssize_t w = write(fd, buf.data(), static_cast<size_t>(r));
      const size_t done = w > 0 ? static_cast<size_t>(w) : 0;
      if (w < 0 && errno != EAGAIN) {
        close_peer();
        continue;
      }
      if (done < static_cast<size_t>(r)) {
        p.pending.assign(buf.data() + done, buf.data() + r);
        p.off = 0;
        epoll_event ev{};
        ev.events = EPOLLOUT;
        ev.data.u64 = static_cast<uint64_t>(fd);
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
      }
    }
  }
  return 0;
}

// ------------------------------------------------------------- client ----
int connect_blocking(const Args& a, int i, double deadline) {
  for (;;) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa = addr_of(a.addr, a.port + i % a.nports);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
      nodelay(fd);
      nonblock(fd);
      return fd;
    }
    close(fd);
    if (mono() > deadline) return -1;
    usleep(20'000);  // the server may still be starting
  }
}

struct Window {
  double t_start = 0, t_end = 0, cpu0 = 0, cpu1 = 0;
  uint64_t count0 = 0, count1 = 0;
  double warm_end, end;
  Window(double warmup, double seconds) {
    warm_end = mono() + warmup;
    end = warm_end + seconds;
  }
  // false once the window closed
  bool tick(uint64_t count) {
    const double t = mono();
    if (t_start == 0 && t >= warm_end) {
      t_start = t;
      count0 = count;
      cpu0 = cpu_seconds();
    } else if (t_start != 0 && t >= end) {
      t_end = t;
      count1 = count;
      cpu1 = cpu_seconds();
      return false;
    }
    return true;
  }
  double rate() const { return (count1 - count0) / (t_end - t_start); }
};

int client(const Args& a) {
  raise_nofile();
  signal(SIGPIPE, SIG_IGN);
  const int ep = epoll_create1(0);
  std::vector<epoll_event> evs(1024);
  std::vector<char> buf(256 * 1024, 'y');
  uint64_t errors = 0;
  const double connect_deadline = mono() + 30;
  auto report = [&](const Window& w, double scale) {
    std::printf("result %.6g %.6g %.6g %llu\n", w.rate() * scale, w.cpu1 - w.cpu0, w.t_end - w.t_start,
                static_cast<unsigned long long>(errors));
  };

  if (a.mode == "bulk" || a.mode == "bulk2") {
    const int fd = connect_blocking(a, 0, connect_deadline);
    if (fd < 0) return 2;
    const bool both = a.mode == "bulk2";
    epoll_event ev{};
    ev.events = EPOLLIN | (both ? uint32_t{EPOLLOUT} : 0u);
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    uint64_t received = 0;
    Window w(a.warmup, a.seconds);
    while (w.tick(received)) {
      const int n = epoll_wait(ep, evs.data(), 1, 100);
      if (n <= 0) continue;
      if (evs[0].events & EPOLLIN) {
        const ssize_t r = read(fd, buf.data(), buf.size());
        if (r > 0) received += static_cast<uint64_t>(r);
        else if (r == 0 || errno != EAGAIN) return 3;
      }
      if (evs[0].events & EPOLLOUT) (void)!write(fd, buf.data(), buf.size());
    }
    // both ways: the echo returns what we sent, so each direction moved `received`
    report(w, (both ? 2.0 : 1.0) * 8 / 1e9);
    close(fd);
    return 0;
  }

  if (a.mode == "rr") {
    struct C {
      int fd;
      int got;
    };
    std::vector<C> cs(a.connections);
    for (int i = 0; i < a.connections; ++i) {
      cs[i].fd = connect_blocking(a, i, connect_deadline);
      cs[i].got = 0;
      if (cs[i].fd < 0) return 2;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u32 = static_cast<uint32_t>(i);
      epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    for (auto& c : cs)
      if (write(c.fd, buf.data(), a.msg) != a.msg) ++errors;
    uint64_t transactions = 0;
    Window w(a.warmup, a.seconds);
    while (w.tick(transactions)) {
      const int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 100);
      for (int k = 0; k < n; ++k) {
        C& c = cs[evs[k].data.u32];
        const ssize_t r = read(c.fd, buf.data(), static_cast<size_t>(a.msg - c.got));
        if (r <= 0) {
          if (r == 0 || errno != EAGAIN) ++errors;
          continue;
        }
        c.got += static_cast<int>(r);
        if (c.got < a.msg) continue;
        c.got = 0;
        ++transactions;
        if (write(c.fd, buf.data(), a.msg) != a.msg) ++errors;
      }
    }
    report(w, 1.0);
    return 0;
  }

  if (a.mode == "churn") {
    // Connect, one request/response, close; `connections` of them at once.
    struct C {
      int fd = -1;
      int got = 0;
      bool connected = false;
    };
    std::vector<C> slots(a.connections);
    uint64_t cycles = 0, rr = 0;
    auto open = [&](uint32_t i) {
      C& c = slots[i];
      c = C{};
      for (int attempt = 0; attempt < 100 && c.fd < 0; ++attempt) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        nodelay(fd);
        sockaddr_in sa = addr_of(a.addr, a.port + static_cast<int>(rr++ % a.nports));
        if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 || errno == EINPROGRESS) {
          c.fd = fd;
          break;
        }
        ++errors;  // e.g. EADDRNOTAVAIL: no local port free
        close(fd);
      }
      if (c.fd < 0) return;
      epoll_event ev{};
      ev.events = EPOLLOUT;
      ev.data.u32 = i;
      epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
    };
    // the server may still be starting: one blocking connect first
    const int probe = connect_blocking(a, 0, connect_deadline);
    if (probe < 0) return 2;
    close(probe);
    for (int i = 0; i < a.connections; ++i) open(static_cast<uint32_t>(i));
    Window w(a.warmup, a.seconds);
    while (w.tick(cycles)) {
      const int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 100);
      for (int k = 0; k < n; ++k) {
        const uint32_t i = evs[k].data.u32;
        C& c = slots[i];
        if (c.fd < 0) continue;
        if (!c.connected) {
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) {
            ++errors;
            epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
            close(c.fd);
            open(i);
            continue;
          }
          c.connected = true;
          if (write(c.fd, buf.data(), a.msg) != a.msg) ++errors;
          epoll_event ev{};
          ev.events = EPOLLIN;
          ev.data.u32 = i;
          epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
          continue;
        }
        const ssize_t r = read(c.fd, buf.data(), static_cast<size_t>(a.msg - c.got));
        if (r > 0) c.got += static_cast<int>(r);
        else if (r < 0 && errno == EAGAIN) continue;
        if (r <= 0) ++errors;
        if (r <= 0 || c.got >= a.msg) {
          epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
          close(c.fd);  // graceful: FIN
          if (r > 0) ++cycles;
          open(i);
        }
      }
    }
    report(w, 1.0);
    return 0;
  }
  std::fprintf(stderr, "unknown mode %s\n", a.mode.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (argc < 2) {
    std::fprintf(stderr, "usage: chimney-bench-peer server|client [--addr A] [--port P] [--nports K] [--mode M] "
                         "[--connections N] [--msg BYTES] [--warmup S] [--seconds S]\n");
    return 1;
  }
  a.role = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--addr") a.addr = v;
    else if (k == "--port") a.port = std::atoi(v.c_str());
    else if (k == "--nports") a.nports = std::atoi(v.c_str());
    else if (k == "--mode") a.mode = v;
    else if (k == "--connections") a.connections = std::atoi(v.c_str());
    else if (k == "--msg") a.msg = std::atoi(v.c_str());
    else if (k == "--warmup") a.warmup = std::atof(v.c_str());
    else if (k == "--seconds") a.seconds = std::atof(v.c_str());
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 1;
    }
  }
  if (a.msg <= 0 || a.msg > 256 * 1024 || a.connections <= 0 || a.nports <= 0) return 1;
  if (a.role == "server") return server(a);
  if (a.role == "client") return client(a);
  return 1;
}
