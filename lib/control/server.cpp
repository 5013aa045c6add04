#include "control/server.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <rte_cycles.h>
#include <rte_random.h>
#include <spdlog/spdlog.h>

namespace chimney::control {

using dataplane::OffloadNote;
using dataplane::OffloadOp;

struct Server::Region {
  uint32_t id = 0;
  uint8_t* base = nullptr;
  uint64_t size = 0;
  uint32_t in_use = 0;  // requests naming it
};

struct Server::Conn {
  Session* session = nullptr;
  uint32_t handle = 0;       // the session's name for it
  unsigned worker = 0;
  bool placed = false;       // counted in worker_conns_ (its offload went to `worker`)
  uint16_t port = 0;
  ConnectionHandle engine;   // valid once offloaded
  bool offloaded = false;
  bool terminating = false;
  uint32_t outstanding = 0;  // requests on the worker
  uint64_t offload_tag = 0;
  uint64_t terminate_tag = 0;
  bool accepted = false;     // came from a listener: ACCEPT, not OFFLOAD_COMPLETE
  uint16_t state_local_port = 0;
  uint16_t state_remote_port = 0;
  uint32_t state_remote_ip = 0;
  std::unique_ptr<OffloadState> state;  // while the offload is on its way
  OffloadState base;         // its const, cached and path parts, returned on terminate
};

struct Server::HostRequest {
  NetBufferList nbl;
  NetBuffer nb;
  uint64_t tag = 0;
  Conn* conn = nullptr;
  Region* region = nullptr;
};

struct Server::Session {
  uint64_t id = 0;
  int fd = -1;
  uid_t uid = 0;
  bool closing = false;   // ended: waiting for the workers to return everything
  bool detached = false;  // the host went away; its connections wait for an ATTACH
  uint64_t detached_until = 0;  // TSC
  std::vector<uint8_t> in;
  std::vector<uint8_t> out;
  // Descriptors received with SCM_RIGHTS and the stream offset of the bytes
  // they came with: a REGISTER_MEMORY takes only one that came with it.
  std::deque<std::pair<uint64_t, int>> fds;
  uint64_t consumed = 0;  // stream offset of in[0]
  std::unordered_map<uint32_t, std::unique_ptr<Region>> regions;
  uint64_t registered = 0;
  uint32_t next_region = 1;
  std::unordered_map<uint32_t, std::unique_ptr<Conn>> conns;
  std::vector<uint16_t> listens;  // ports this session listens on
};

namespace {
constexpr size_t kMaxOutput = 64u << 20;  // a host that stops reading is dropped
}  // namespace

Server::HostRequest* Server::request_of(NetBufferList* n) {
  return reinterpret_cast<HostRequest*>(reinterpret_cast<uint8_t*>(n) - offsetof(HostRequest, nbl));
}

Server::Server(dataplane::Dataplane& dp, dataplane::SlowPath& slow)
    : dp_(dp), slow_(slow), path_(dp.cfg.control_socket), worker_conns_(dp.placement.workers(), 0) {
  if (path_.empty()) return;
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(path_).parent_path();
  std::error_code ec;
  if (!dir.empty()) {
    fs::create_directories(dir, ec);
    if (ec) throw std::runtime_error("control socket: cannot create " + dir.string() + ": " + ec.message());
    ::chmod(dir.c_str(), 0700);
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof(addr.sun_path))
    throw std::runtime_error("control socket: path '" + path_ + "' is too long");
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw std::runtime_error(std::string("control socket: ") + std::strerror(errno));
  ::unlink(path_.c_str());  // a stale socket of an earlier run
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::chmod(path_.c_str(), 0600) != 0 ||
      ::listen(listen_fd_, 64) != 0) {
    const std::string why = std::strerror(errno);
    ::close(listen_fd_);
    throw std::runtime_error("control socket " + path_ + ": " + why);
  }
  spdlog::info("control socket {}", path_);
}

Server::~Server() {
  for (auto& s : sessions_) {
    if (s->fd >= 0) ::close(s->fd);
    for (auto& [off, fd] : s->fds) ::close(fd);
    for (auto& [id, r] : s->regions) ::munmap(r->base, r->size);
  }
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    ::unlink(path_.c_str());
  }
}

unsigned Server::poll(uint64_t now_tsc) {
  now_tsc_ = now_tsc;
  unsigned work = drain_notes();
  if (listen_fd_ < 0) return work;
  accept_sessions();
  for (size_t i = 0; i < sessions_.size(); ++i) {
    Session& s = *sessions_[i];
    if (s.detached) {
      if (now_tsc >= s.detached_until) {
        s.detached = false;
        close_session(s, "nobody re-attached within control-grace-s", /*may_detach=*/false);
      }
      continue;
    }
    if (!s.closing) read_session(s);
    if (!s.closing) flush_session(s);
  }
  // Sessions whose host left go once the workers returned everything.
  for (size_t i = 0; i < sessions_.size();) {
    Session& s = *sessions_[i];
    if (s.closing && s.conns.empty()) {
      for (auto& [id, r] : s.regions) ::munmap(r->base, r->size);
      for (auto& [off, fd] : s.fds) ::close(fd);
      sessions_.erase(sessions_.begin() + static_cast<long>(i));
      continue;
    }
    ++i;
  }
  return work;
}

void Server::accept_sessions() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
    const auto& allowed = dp_.cfg.control_allowed_uids;
    if (cred.uid != 0 && std::find(allowed.begin(), allowed.end(), cred.uid) == allowed.end()) {
      ++counters_.sessions_refused;
      spdlog::warn("control: refused a session of uid {} (not root, not in control-allowed-uids)", cred.uid);
      std::vector<uint8_t> out;
      encode({MsgType::error, 0, Error{static_cast<uint32_t>(ProtocolError::not_allowed), "uid not allowed"}}, out);
      (void)!::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
      continue;
    }
    auto s = std::make_unique<Session>();
    s->id = next_session_++;
    s->fd = fd;
    s->uid = cred.uid;
    ++counters_.sessions_opened;
    spdlog::info("control: session {} opened (pid {}, uid {})", s->id, cred.pid, cred.uid);
    sessions_.push_back(std::move(s));
  }
}

void Server::read_session(Session& s) {
  uint8_t buf[65536];
  std::string ended;  // why the socket ended, once it did: requests read before still count
  for (;;) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(s.fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n == 0) {
      ended = "the host closed the socket";
      break;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      ended = std::string("read: ") + std::strerror(errno);
      break;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        s.fds.emplace_back(s.consumed + s.in.size(), fd);
      }
    }
    s.in.insert(s.in.end(), buf, buf + n);
  }
  size_t off = 0;
  while (!s.closing) {
    std::string why;
    const std::span<const uint8_t> rest(s.in.data() + off, s.in.size() - off);
    // The tag, once the header holds it: every ERROR names its request.
    uint64_t tag = 0;
    if (rest.size() >= kHeaderSize)
      for (int i = 7; i >= 0; --i) tag = (tag << 8) | rest[8 + static_cast<size_t>(i)];
    const std::optional<size_t> len = message_length(rest, why);
    if (!len) {
      if (!why.empty()) {
        // The stream cannot be resynchronised: say why and end the session.
        const uint16_t version = rest.size() >= 6 ? static_cast<uint16_t>(rest[4] | rest[5] << 8) : kVersion;
        const ProtocolError code = version != kVersion ? ProtocolError::unsupported_version : ProtocolError::malformed;
        error(s, tag, static_cast<uint32_t>(code), why);
        flush_session(s);
        close_session(s, "protocol error: " + why);
      }
      break;
    }
    if (rest.size() < *len) break;
    std::optional<Message> m = decode(rest.first(*len), why);
    const uint64_t begin = s.consumed + off;
    off += *len;
    ++counters_.requests;
    // Descriptors that came with this message: REGISTER_MEMORY takes the
    // first; any other is closed (it belongs to no request).
    int fd = -1;
    while (!s.fds.empty() && s.fds.front().first < begin + *len) {
      const int f = s.fds.front().second;
      s.fds.pop_front();
      if (fd < 0 && m && m->type == MsgType::register_memory) fd = f;
      else ::close(f);
    }
    if (!m) {
      error(s, tag, static_cast<uint32_t>(ProtocolError::malformed), why);
      continue;
    }
    handle(s, *m, fd);
  }
  const size_t used = std::min(off, s.in.size());
  s.in.erase(s.in.begin(), s.in.begin() + static_cast<long>(used));
  s.consumed += used;
  if (!ended.empty()) close_session(s, ended);
}

void Server::flush_session(Session& s) {
  if (s.fd < 0) return;  // detached: what is queued waits for an ATTACH
  size_t off = 0;
  while (off < s.out.size()) {
    const ssize_t n = ::send(s.fd, s.out.data() + off, s.out.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      s.out.clear();
      close_session(s, std::string("write: ") + std::strerror(errno));
      return;
    }
    off += static_cast<size_t>(n);
  }
  s.out.erase(s.out.begin(), s.out.begin() + static_cast<long>(off));
  if (s.out.size() > kMaxOutput) close_session(s, "the host stopped reading its completions", false);
}

void Server::close_session(Session& s, const std::string& why, bool may_detach) {
  if (s.closing || s.detached) return;
  if (s.fd >= 0) ::close(s.fd);
  s.fd = -1;
  s.in.clear();
  const uint64_t grace = dp_.cfg.control_grace_s;
  if (may_detach && grace != 0 && (!s.conns.empty() || !s.listens.empty())) {
    // Kept for a new session of the same uid to ATTACH and collect what
    // completes meanwhile; then aborted (issue: sessions and grace period).
    s.detached = true;
    s.detached_until = now_tsc_ + grace * rte_get_tsc_hz();
    ++counters_.sessions_detached;
    spdlog::info("control: session {} detached ({}); {} connection(s) kept {} s for uid {} to re-attach", s.id, why,
                 s.conns.size(), grace, s.uid);
    return;
  }
  s.closing = true;
  ++counters_.sessions_closed;
  s.out.clear();
  for (uint16_t port : s.listens) slow_.unlisten(port);
  s.listens.clear();
  // Its connections are aborted (RST) and released; regions stay mapped until
  // the workers returned every request that names them.
  size_t aborted = 0;
  for (auto& [h, c] : s.conns) {
    if (!c->offloaded || c->terminating) continue;
    abort_and_release(*c);
    ++aborted;
  }
  counters_.orphans_aborted += aborted;
  spdlog::info("control: session {} closed ({}); {} connection(s) aborted and released", s.id, why, aborted);
}

void Server::reply(Session& s, MsgType type, uint64_t tag, Body body) {
  if (s.closing) return;
  encode(Message{type, tag, std::move(body)}, s.out);
  if (s.detached && s.out.size() > kMaxOutput) {  // too much waits for nobody
    s.detached = false;
    close_session(s, "too many completions queued while detached", false);
  }
}

void Server::error(Session& s, uint64_t tag, uint32_t code, const std::string& text) {
  ++counters_.errors;
  reply(s, MsgType::error, tag, Error{code, text});
}

Server::Conn* Server::find_conn(Session& s, uint32_t handle) {
  auto it = s.conns.find(handle);
  return it == s.conns.end() ? nullptr : it->second.get();
}

Server::Region* Server::find_buffer(Session& s, const BufferRef& b, std::string& why) {
  auto it = s.regions.find(b.region);
  if (it == s.regions.end()) {
    why = "region " + std::to_string(b.region) + " is not registered";
    return nullptr;
  }
  Region& r = *it->second;
  if (b.offset > r.size || b.length > r.size - b.offset) {
    why = "buffer [" + std::to_string(b.offset) + ", +" + std::to_string(b.length) + ") lies outside region " +
          std::to_string(r.id) + " of " + std::to_string(r.size) + " bytes";
    return nullptr;
  }
  return &r;
}

Server::Conn* Server::new_conn(Session& s, uint16_t port) {
  uint32_t h;
  do {
    h = static_cast<uint32_t>(rte_rand());  // unguessable, never 0
  } while (h == 0 || s.conns.count(h));
  auto c = std::make_unique<Conn>();
  c->session = &s;
  c->handle = h;
  c->port = port;
  Conn* raw = c.get();
  s.conns.emplace(h, std::move(c));
  return raw;
}

unsigned Server::worker_for(const OffloadState& st) const {
  // The worker whose RX queue hardware RSS sends the connection's frames to,
  // and to which the other workers steer them (rss.hpp): one function for
  // every offload, CONNECT, LISTEN and OFFLOAD alike.
  return dp_.placement.owner(st.constant.local_ip, st.constant.remote_ip, st.constant.local_port,
                             st.constant.remote_port);
}

unsigned Server::least_loaded_worker() const {
  unsigned best = 0;
  for (unsigned w = 1; w < worker_conns_.size(); ++w)
    if (worker_conns_[w] < worker_conns_[best]) best = w;
  return best;
}

bool Server::post(Conn& c, OffloadOp::Kind kind, NetBufferList* nbl, OffloadState* state, DisconnectKind dk) {
  void* rec = dataplane::alloc_op_record(dp_);
  if (rec == nullptr) return false;
  auto* op = new (rec) OffloadOp{};
  op->kind = kind;
  op->disconnect_kind = dk;
  op->port = c.port;
  op->handle = c.engine;
  op->host_context = &c;
  op->nbl = nbl;
  op->state = state;
  if (rte_ring_sp_enqueue(dp_.ops[c.worker], op) != 0) {
    dataplane::free_op_record(dp_, op);
    return false;
  }
  ++c.outstanding;
  return true;
}

void Server::start_offload(Conn& c, const OffloadState& state) {
  c.state = std::make_unique<OffloadState>(state);
  c.worker = worker_for(state);
  c.placed = true;
  ++worker_conns_[c.worker];
  if (!post(c, OffloadOp::Kind::offload, nullptr, c.state.get())) {
    Session& s = *c.session;
    reply(s, MsgType::offload_complete, c.offload_tag, OffloadComplete{Status::resources, 0});
    release_conn(c);
  }
}

void Server::abort_and_release(Conn& c) {
  // An abortive disconnect (RST) of the server's own, then the terminate that
  // releases the connection; their completions go nowhere.
  auto* req = new HostRequest{};
  req->conn = &c;
  req->nbl.first = &req->nb;
  if (!post(c, OffloadOp::Kind::disconnect, &req->nbl, nullptr, DisconnectKind::abortive)) delete req;
  c.terminating = post(c, OffloadOp::Kind::terminate, nullptr, nullptr);
  if (!c.terminating) spdlog::error("control: cannot queue the release of an orphaned connection (worker queue full)");
}

void Server::release_conn(Conn& c) {
  Session& s = *c.session;
  ++counters_.connections_released;
  if (c.placed) --worker_conns_[c.worker];
  s.conns.erase(c.handle);  // c is gone after this
}

void Server::handle(Session& s, const Message& m, int fd) {
  const uint64_t tag = m.tag;
  auto bad_handle = [&](uint32_t h) {
    error(s, tag, static_cast<uint32_t>(ProtocolError::unknown_handle),
          std::string(to_string(m.type)) + ": no connection " + std::to_string(h) + " in this session");
  };
  switch (m.type) {
    case MsgType::hello:
      reply(s, MsgType::hello_reply, tag, HelloReply{kVersion, static_cast<uint32_t>(kMaxMessage), s.id});
      return;
    case MsgType::register_memory: {
      const auto& r = std::get<RegisterMemory>(m.body);
      if (fd < 0) {
        error(s, tag, static_cast<uint32_t>(ProtocolError::bad_buffer), "REGISTER_MEMORY: no file descriptor came with it");
        return;
      }
      struct stat st{};
      const uint64_t limit = uint64_t{dp_.cfg.control_max_memory_mb} << 20;
      std::string why;
      const int seals = ::fcntl(fd, F_GET_SEALS);
      if (r.size == 0) why = "size 0";
      // A region that could shrink under us would fault chimneyd (SIGBUS):
      // the host seals it (memfd_create MFD_ALLOW_SEALING, F_SEAL_SHRINK).
      else if (seals < 0 || !(seals & F_SEAL_SHRINK))
        why = "the memory object is not sealed against shrinking (F_SEAL_SHRINK)";
      else if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < r.size)
        why = "the memory object is smaller than " + std::to_string(r.size) + " bytes";
      else if (s.registered + r.size > limit)
        why = "control-max-memory-mb (" + std::to_string(dp_.cfg.control_max_memory_mb) + " MiB) reached";
      void* base = MAP_FAILED;
      if (why.empty()) {
        base = ::mmap(nullptr, r.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) why = std::string("mmap: ") + std::strerror(errno);
      }
      ::close(fd);
      if (!why.empty()) {
        const bool limit_hit = why.find("control-max") != std::string::npos;
        error(s, tag, static_cast<uint32_t>(limit_hit ? ProtocolError::limit : ProtocolError::bad_buffer),
              "REGISTER_MEMORY: " + why);
        return;
      }
      auto region = std::make_unique<Region>();
      region->id = s.next_region++;
      region->base = static_cast<uint8_t*>(base);
      region->size = r.size;
      s.registered += r.size;
      const uint32_t id = region->id;
      s.regions.emplace(id, std::move(region));
      reply(s, MsgType::registered, tag, Registered{id});
      return;
    }
    case MsgType::unregister_memory: {
      const auto& u = std::get<UnregisterMemory>(m.body);
      auto it = s.regions.find(u.region);
      if (it == s.regions.end() || it->second->in_use != 0) {
        error(s, tag, static_cast<uint32_t>(ProtocolError::bad_buffer),
              "UNREGISTER_MEMORY: region " + std::to_string(u.region) +
                  (it == s.regions.end() ? " is not registered" : " is in use by requests"));
        return;
      }
      ::munmap(it->second->base, it->second->size);
      s.registered -= it->second->size;
      s.regions.erase(it);
      reply(s, MsgType::ok, tag, Ok{});
      return;
    }
    case MsgType::connect: {
      const auto& c = std::get<Connect>(m.body);
      const int port = slow_.port_for(net::Ipv4Addr{c.remote_ip});
      if (port < 0) {
        error(s, tag, static_cast<uint32_t>(Status::invalid_state),
              "CONNECT: no port reaches " + net::Ipv4Addr{c.remote_ip}.str());
        return;
      }
      if (s.conns.size() >= dp_.cfg.control_max_connections) {
        error(s, tag, static_cast<uint32_t>(Status::offload_tcp_entries), "CONNECT: control-max-connections reached");
        return;
      }
      Conn* conn = new_conn(s, static_cast<uint16_t>(port));
      conn->offload_tag = tag;
      dataplane::SlowPath::ConnectRequest req;
      req.port = static_cast<size_t>(port);
      req.remote_ip = net::Ipv4Addr{c.remote_ip};
      req.remote_port = c.remote_port;
      req.local_port = c.local_port;
      // An ephemeral port that places the connection on the worker with the
      // fewest (the hash alone spreads only on average).
      req.worker = static_cast<int>(least_loaded_worker());
      req.cached = c.cached;
      const uint64_t session_id = s.id;
      const uint32_t handle = conn->handle;
      const Status st = slow_.connect(req, [this, session_id, handle](Status result, const OffloadState* state) {
        // The session may have gone meanwhile: find it again.
        for (auto& sp : sessions_) {
          if (sp->id != session_id) continue;
          Conn* cn = find_conn(*sp, handle);
          if (cn == nullptr) return;
          if (result != Status::success || sp->closing) {
            reply(*sp, MsgType::offload_complete, cn->offload_tag, OffloadComplete{result, 0});
            release_conn(*cn);
            return;
          }
          start_offload(*cn, *state);
          return;
        }
      });
      if (st != Status::pending) {
        reply(s, MsgType::offload_complete, tag, OffloadComplete{st, 0});
        release_conn(*conn);
      }
      return;
    }
    case MsgType::offload: {
      const auto& o = std::get<Offload>(m.body);
      const int port = slow_.port_for(net::Ipv4Addr{o.state.constant.remote_ip});
      if (port < 0 || dp_.ports[static_cast<size_t>(port)].config.address.addr.value != o.state.constant.local_ip) {
        error(s, tag, static_cast<uint32_t>(Status::invalid_state),
              "OFFLOAD: local address " + net::Ipv4Addr{o.state.constant.local_ip}.str() +
                  " is not a port's address on the way to " + net::Ipv4Addr{o.state.constant.remote_ip}.str());
        return;
      }
      if (s.conns.size() >= dp_.cfg.control_max_connections) {
        error(s, tag, static_cast<uint32_t>(Status::offload_tcp_entries), "OFFLOAD: control-max-connections reached");
        return;
      }
      Conn* conn = new_conn(s, static_cast<uint16_t>(port));
      conn->offload_tag = tag;
      OffloadState st = o.state;
      st.delegated.send_data = nullptr;  // inherited sends come as SENDs (send_data_to_follow bytes)
      st.delegated.receive_data = o.receive_data;
      start_offload(*conn, st);
      return;
    }
    case MsgType::send:
    case MsgType::receive:
    case MsgType::disconnect: {
      uint32_t h = 0;
      BufferRef b;
      if (m.type == MsgType::send) std::tie(h, b) = std::pair(std::get<Send>(m.body).handle, std::get<Send>(m.body).buf);
      if (m.type == MsgType::receive)
        std::tie(h, b) = std::pair(std::get<Receive>(m.body).handle, std::get<Receive>(m.body).buf);
      if (m.type == MsgType::disconnect)
        std::tie(h, b) = std::pair(std::get<Disconnect>(m.body).handle, std::get<Disconnect>(m.body).buf);
      Conn* c = find_conn(s, h);
      if (c == nullptr || !c->offloaded) {
        bad_handle(h);
        return;
      }
      std::string why;
      Region* r = nullptr;
      if (b.length != 0 || b.region != 0) {
        r = find_buffer(s, b, why);
        if (r == nullptr) {
          error(s, tag, static_cast<uint32_t>(ProtocolError::bad_buffer), std::string(to_string(m.type)) + ": " + why);
          return;
        }
      }
      if (c->outstanding >= dp_.cfg.control_max_requests) {
        error(s, tag, static_cast<uint32_t>(ProtocolError::limit),
              std::string(to_string(m.type)) + ": control-max-requests (" + std::to_string(dp_.cfg.control_max_requests) +
                  ") outstanding on this connection");
        return;
      }
      auto* req = new HostRequest{};
      req->tag = tag;
      req->conn = c;
      req->region = r;
      req->nb.data = r != nullptr ? r->base + b.offset : nullptr;
      req->nb.data_length = b.length;
      req->nbl.first = &req->nb;
      if (m.type == MsgType::receive) req->nbl.flags = std::get<Receive>(m.body).flags & kReceiveNoPush;
      OffloadOp::Kind kind = m.type == MsgType::send      ? OffloadOp::Kind::send
                             : m.type == MsgType::receive ? OffloadOp::Kind::receive
                                                          : OffloadOp::Kind::disconnect;
      const DisconnectKind dk = m.type == MsgType::disconnect && std::get<Disconnect>(m.body).kind == 1
                                    ? DisconnectKind::abortive
                                    : DisconnectKind::graceful;
      if (!post(*c, kind, &req->nbl, nullptr, dk)) {
        delete req;
        error(s, tag, static_cast<uint32_t>(ProtocolError::limit), std::string(to_string(m.type)) + ": the worker's queue is full");
        return;
      }
      if (r != nullptr) ++r->in_use;
      return;
    }
    case MsgType::terminate: {
      const uint32_t h = std::get<Terminate>(m.body).handle;
      Conn* c = find_conn(s, h);
      if (c == nullptr || !c->offloaded) {
        bad_handle(h);
        return;
      }
      if (c->terminating) {
        error(s, tag, static_cast<uint32_t>(Status::invalid_state), "TERMINATE: already terminating");
        return;
      }
      c->terminate_tag = tag;
      if (!post(*c, OffloadOp::Kind::terminate, nullptr, nullptr)) {
        error(s, tag, static_cast<uint32_t>(ProtocolError::limit), "TERMINATE: the worker's queue is full");
        return;
      }
      c->terminating = true;
      return;
    }
    case MsgType::stats: {
      std::string json = "{\"sessions\": " + std::to_string(sessions_.size());
      size_t conns = 0;
      for (auto& sp : sessions_) conns += sp->conns.size();
      json += ", \"connections\": " + std::to_string(conns);
      json += ", \"sessions_opened\": " + std::to_string(counters_.sessions_opened);
      json += ", \"sessions_closed\": " + std::to_string(counters_.sessions_closed);
      json += ", \"sessions_detached\": " + std::to_string(counters_.sessions_detached);
      json += ", \"sessions_attached\": " + std::to_string(counters_.sessions_attached);
      json += ", \"sessions_refused\": " + std::to_string(counters_.sessions_refused);
      json += ", \"requests\": " + std::to_string(counters_.requests);
      json += ", \"errors\": " + std::to_string(counters_.errors);
      json += ", \"completions\": " + std::to_string(counters_.completions);
      json += ", \"events\": " + std::to_string(counters_.events);
      json += ", \"connections_offloaded\": " + std::to_string(counters_.connections_offloaded);
      json += ", \"connections_released\": " + std::to_string(counters_.connections_released);
      json += ", \"orphans_aborted\": " + std::to_string(counters_.orphans_aborted);
      const auto& hc = slow_.handshake_counters();
      json += ", \"syn_sent\": " + std::to_string(hc.syn_sent) + ", \"synack_sent\": " + std::to_string(hc.synack_sent) +
              ", \"established_active\": " + std::to_string(hc.established_active) +
              ", \"established_passive\": " + std::to_string(hc.established_passive) +
              ", \"syn_cookies_sent\": " + std::to_string(hc.cookies_sent) +
              ", \"syn_cookies_accepted\": " + std::to_string(hc.cookies_accepted) +
              ", \"syn_cookies_rejected\": " + std::to_string(hc.cookies_rejected) +
              ", \"connect_refused\": " + std::to_string(hc.refused) +
              ", \"handshake_timeouts\": " + std::to_string(hc.timeouts) +
              ", \"handshake_challenge_acks\": " + std::to_string(hc.challenge_acks) +
              ", \"handshake_challenge_acks_limited\": " + std::to_string(hc.challenge_acks_limited) +
              ", \"handshake_parked\": " + std::to_string(hc.parked) +
              ", \"handshake_parked_dropped\": " + std::to_string(hc.parked_dropped);
      json += ", \"op_records_free\": " + std::to_string(rte_mempool_avail_count(dp_.op_pool));
      for (size_t w = 0; w < worker_conns_.size(); ++w)  // connections placed on each worker now
        json += ", \"worker" + std::to_string(w) + "_connections\": " + std::to_string(worker_conns_[w]);
      for (size_t p = 0; p < dp_.ports.size(); ++p) {
        json += ", \"port" + std::to_string(p) + "_mbufs_free\": " + std::to_string(rte_mempool_avail_count(dp_.ports[p].pool));
        json += ", \"port" + std::to_string(p) + "_attach_mbufs_free\": " +
                std::to_string(rte_mempool_avail_count(dp_.attach_pools[p]));
      }
      json += "}";
      reply(s, MsgType::stats_reply, tag, StatsReply{json});
      return;
    }
    case MsgType::listen: {
      const auto& l = std::get<Listen>(m.body);
      const uint64_t session_id = s.id;
      const Status st = slow_.listen(l.port, l.backlog == 0 ? 1 : l.backlog, l.cached,
                                     [this, session_id](const OffloadState& state) {
        for (auto& sp : sessions_) {
          if (sp->id != session_id || sp->closing) continue;
          if (sp->conns.size() >= dp_.cfg.control_max_connections) return;  // the peer sees a RST
          const int port = slow_.port_for(net::Ipv4Addr{state.constant.remote_ip});
          if (port < 0) return;
          Conn* c = new_conn(*sp, static_cast<uint16_t>(port));
          c->accepted = true;
          start_offload(*c, state);
          return;
        }
      });
      if (st != Status::success) {
        error(s, tag, static_cast<uint32_t>(st), "LISTEN: port " + std::to_string(l.port) + " is already listened on");
        return;
      }
      s.listens.push_back(l.port);
      reply(s, MsgType::ok, tag, Ok{});
      return;
    }
    case MsgType::attach: {
      const uint64_t id = std::get<Attach>(m.body).session;
      Session* old = nullptr;
      for (auto& sp : sessions_)
        if (sp.get() != &s && sp->id == id && sp->detached && sp->uid == s.uid) old = sp.get();
      if (old == nullptr || !s.conns.empty() || !s.regions.empty() || !s.listens.empty()) {
        error(s, tag, static_cast<uint32_t>(ProtocolError::not_allowed),
              old == nullptr ? "ATTACH: no detached session " + std::to_string(id) + " of this uid"
                             : "ATTACH: only a fresh session can take another one over");
        return;
      }
      // This session becomes the old one: its connections, regions,
      // listeners, identity, and the completions queued meanwhile.
      s.conns = std::move(old->conns);
      for (auto& [h, c] : s.conns) c->session = &s;
      s.regions = std::move(old->regions);
      s.registered = old->registered;
      s.next_region = old->next_region;
      s.listens = std::move(old->listens);
      std::vector<uint8_t> queued = std::move(old->out);
      std::swap(s.id, old->id);
      old->detached = false;
      old->closing = true;  // empty now: the poll loop lets it go
      old->conns.clear();
      old->regions.clear();
      ++counters_.sessions_attached;
      spdlog::info("control: session {} re-attached with {} connection(s), {} bytes of completions queued", s.id,
                   s.conns.size(), queued.size());
      reply(s, MsgType::attached, tag,
            Attached{static_cast<uint32_t>(s.conns.size()), static_cast<uint32_t>(s.regions.size())});
      s.out.insert(s.out.end(), queued.begin(), queued.end());
      return;
    }
    case MsgType::release_listen: {
      const uint16_t port = std::get<ReleaseListen>(m.body).port;
      auto it = std::find(s.listens.begin(), s.listens.end(), port);
      if (it == s.listens.end()) {
        error(s, tag, static_cast<uint32_t>(Status::invalid_state),
              "RELEASE_LISTEN: this session does not listen on port " + std::to_string(port));
        return;
      }
      slow_.unlisten(port);
      s.listens.erase(it);
      reply(s, MsgType::ok, tag, Ok{});
      return;
    }
    default:
      error(s, tag, static_cast<uint32_t>(ProtocolError::malformed),
            std::string(to_string(m.type)) + " is not a request a host sends");
      return;
  }
}

unsigned Server::drain_notes() {
  unsigned total = 0;
  void* notes[64];
  for (rte_ring* ring : dp_.notes) {
    const unsigned n = rte_ring_sc_dequeue_burst(ring, notes, 64, nullptr);
    for (unsigned i = 0; i < n; ++i) {
      auto* note = static_cast<OffloadNote*>(notes[i]);
      on_note(*note);
      if (note->heap) ::operator delete(note);
      else dataplane::free_op_record(dp_, note);
    }
    total += n;
  }
  for (auto& s : sessions_)
    if (!s->closing && !s->out.empty()) flush_session(*s);
  return total;
}

void Server::on_note(OffloadNote& n) {
  Conn& c = *static_cast<Conn*>(n.host_context);
  Session& s = *c.session;
  auto finish_request = [&](NetBufferList* nbl, MsgType type) {
    for (NetBufferList* l = nbl; l != nullptr;) {
      NetBufferList* next = l->next;
      HostRequest* req = request_of(l);
      ++counters_.completions;
      reply(s, type, req->tag, Completion{c.handle, l->status, l->bytes_transferred});
      if (req->region != nullptr) --req->region->in_use;
      --c.outstanding;
      delete req;
      l = next;
    }
  };
  switch (n.kind) {
    case OffloadNote::Kind::offload:
      --c.outstanding;
      c.state_local_port = c.state->constant.local_port;
      c.state_remote_port = c.state->constant.remote_port;
      c.state_remote_ip = c.state->constant.remote_ip;
      c.base.constant = c.state->constant;
      c.base.cached = c.state->cached;
      c.base.path = c.state->path;
      c.state.reset();
      if (n.status == Status::success) {
        c.engine = n.handle;
        c.offloaded = true;
        ++counters_.connections_offloaded;
        if (c.accepted)
          reply(s, MsgType::accept, 0,
                Accept{c.state_local_port, c.state_remote_port, c.state_remote_ip, c.handle});
        else
          reply(s, MsgType::offload_complete, c.offload_tag, OffloadComplete{Status::success, c.handle});
        if (s.closing) abort_and_release(c);  // the host left while the offload was on its way
      } else {
        if (!c.accepted) reply(s, MsgType::offload_complete, c.offload_tag, OffloadComplete{n.status, 0});
        release_conn(c);
      }
      return;
    case OffloadNote::Kind::send: finish_request(n.nbl, MsgType::send_complete); return;
    case OffloadNote::Kind::receive: finish_request(n.nbl, MsgType::receive_complete); return;
    case OffloadNote::Kind::disconnect:
      finish_request(n.nbl, MsgType::disconnect_complete);
      return;
    case OffloadNote::Kind::terminate: {
      --c.outstanding;
      std::unique_ptr<DelegatedState> d(n.state);
      TerminateComplete tc;
      tc.handle = c.handle;
      tc.status = n.status;
      // C-21: the whole state: the const, cached and path parts as offloaded
      // (cached state changes only through the host), the delegated as now.
      tc.state.constant = c.base.constant;
      tc.state.cached = c.base.cached;
      tc.state.path = c.base.path;
      if (d) {
        tc.state.delegated = *d;
        tc.state.delegated.send_data = nullptr;
        tc.state.delegated.receive_data.clear();
        tc.receive_data = std::move(d->receive_data);
        for (NetBufferList* l = d->send_data; l != nullptr;) {
          NetBufferList* next = l->next;
          HostRequest* req = request_of(l);
          tc.sends.push_back({req->tag, l->bytes_transferred});
          if (req->region != nullptr) --req->region->in_use;
          --c.outstanding;
          delete req;
          l = next;
        }
      }
      reply(s, MsgType::terminate_complete, c.terminate_tag, std::move(tc));
      release_conn(c);
      return;
    }
    case OffloadNote::Kind::event:
      ++counters_.events;
      reply(s, MsgType::event, 0, Event{c.handle, static_cast<WireEvent>(n.event), static_cast<uint8_t>(n.reason), n.value});
      return;
    case OffloadNote::Kind::receive_ready:
      ++counters_.events;
      reply(s, MsgType::event, 0, Event{c.handle, WireEvent::receive_ready, 0, n.value});
      return;
  }
}

}  // namespace chimney::control
