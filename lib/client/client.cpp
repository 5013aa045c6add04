// The C++ control client (client.hpp). Messages go through the codec of
// lib/control/protocol.hpp; this file only moves bytes, tracks tags and the
// region, and completes requests.
#include "client/client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <unordered_map>
#include <utility>

namespace chimney::client {

using control::Message;
using control::MsgType;

namespace {

constexpr uint64_t kAlign = 64;
constexpr size_t kReadChunk = 256u << 10;

std::string errno_text(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

const char* protocol_error_name(uint32_t code) {
  switch (static_cast<control::ProtocolError>(code)) {
    case control::ProtocolError::malformed: return "MALFORMED";
    case control::ProtocolError::unsupported_version: return "UNSUPPORTED_VERSION";
    case control::ProtocolError::bad_buffer: return "BAD_BUFFER";
    case control::ProtocolError::unknown_handle: return "UNKNOWN_HANDLE";
    case control::ProtocolError::limit: return "LIMIT";
    case control::ProtocolError::not_allowed: return "NOT_ALLOWED";
  }
  return nullptr;
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return buf;
}

// First fit over the region, 64-byte aligned, neighbours merged on free
// (the Python client's _Allocator).
class Allocator {
 public:
  explicit Allocator(uint64_t size) : size_(size) {
    if (size > 0) free_.emplace(0, size);
  }

  std::optional<std::pair<uint64_t, uint64_t>> alloc(uint64_t n) {
    n = std::max(kAlign, (n + kAlign - 1) / kAlign * kAlign);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < n) continue;
      const uint64_t off = it->first;
      const uint64_t left = it->second - n;
      free_.erase(it);
      if (left > 0) free_.emplace(off + n, left);
      available_ -= n;
      return std::pair{off, n};
    }
    return std::nullopt;
  }

  void release(uint64_t off, uint64_t n) {
    auto [it, inserted] = free_.emplace(off, n);
    if (!inserted) return;  // double free: ignore rather than corrupt the map
    available_ += n;
    auto next = std::next(it);
    if (next != free_.end() && off + n == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == off) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }

  uint64_t available() const { return available_; }

 private:
  uint64_t size_;
  uint64_t available_ = size_;
  std::map<uint64_t, uint64_t> free_;  // offset -> length
};

}  // namespace

// ---- errors and names

std::string code_name(uint32_t code) {
  if (const char* p = protocol_error_name(code)) return p;
  return to_string(static_cast<Status>(code));
}

Error::Error(std::optional<uint32_t> code, const std::string& text)
    : std::runtime_error(code ? code_name(*code) + ": " + text : text), code_(code), text_(text) {}

std::optional<Status> Error::status() const {
  if (!code_ || protocol_error_name(*code_) != nullptr) return std::nullopt;
  return static_cast<Status>(*code_);
}

RegionFull::RegionFull(uint64_t bytes, uint64_t region_size)
    : Error(std::nullopt, "no free buffer of " + std::to_string(bytes) + " bytes in the " +
                              std::to_string(region_size) + "-byte region") {}

std::optional<uint32_t> parse_ipv4(std::string_view dotted) {
  if (dotted.size() > 15) return std::nullopt;
  const std::string s(dotted);
  in_addr a{};
  if (::inet_pton(AF_INET, s.c_str(), &a) != 1) return std::nullopt;
  return ntohl(a.s_addr);
}

std::string format_ipv4(uint32_t host_order) {
  in_addr a{};
  a.s_addr = htonl(host_order);
  char buf[INET_ADDRSTRLEN];
  return ::inet_ntop(AF_INET, &a, buf, sizeof buf) ? buf : "?";
}

const char* to_string(RequestKind k) {
  switch (k) {
    case RequestKind::send: return "send";
    case RequestKind::receive: return "receive";
    case RequestKind::disconnect: return "disconnect";
  }
  return "?";
}

const char* to_string(control::WireEvent k) {
  switch (k) {
    case control::WireEvent::disconnect: return "DISCONNECT";
    case control::WireEvent::abort: return "ABORT";
    case control::WireEvent::retrieve: return "RETRIEVE";
    case control::WireEvent::send_backlog_change: return "SEND_BACKLOG_CHANGE";
    case control::WireEvent::receive_ready: return "RECEIVE_READY";
  }
  return "?";
}

// ---- the session

struct Client::Impl {
  // A SEND, RECEIVE or DISCONNECT from posting until it is handed out (and,
  // for the client's own receive buffers, until release()).
  struct Pending {
    RequestKind kind = RequestKind::send;
    uint32_t handle = 0;
    uint64_t data_offset = 0;   // where its bytes are in the region
    uint32_t data_length = 0;
    uint64_t alloc_offset = 0;  // the client's own buffer (alloc_length 0: none)
    uint64_t alloc_length = 0;
    std::optional<Completion> completion;
    bool handed_out = false;
  };

  // A synchronous call waiting for the reply to its tag.
  struct Waiter {
    MsgType expect = MsgType::ok;
    std::optional<Message> reply;
    std::optional<Error> error;
    std::function<void(const Message&)> on_reply;  // at dispatch time, before anything after it
    bool done = false;
  };

  std::string path;
  Options options;
  int sock = -1;
  int memfd = -1;
  uint8_t* map = nullptr;
  uint64_t map_size = 0;
  Allocator allocator{0};
  uint32_t region_id = 0;
  uint64_t session_id = 0;
  uint32_t version = 0;
  uint32_t max_msg = static_cast<uint32_t>(control::kMaxMessage);
  uint64_t next_tag = 1;

  std::vector<uint8_t> in;  // bytes read, not yet dispatched, from in_start
  size_t in_start = 0;
  std::vector<uint8_t> out;

  std::unordered_map<uint64_t, Pending> requests;
  size_t outstanding = 0;
  std::unordered_map<uint64_t, Waiter*> waiters;
  std::deque<Event> events;
  std::deque<Accepted> accepts;
  std::vector<control::Error> unsolicited;
  std::function<void(const Completion&)> handler;
  std::optional<Error> closed;  // why the session ended

  ~Impl() { shut(); }

  void shut() {
    if (sock >= 0) ::close(sock);
    sock = -1;
    if (map != nullptr) ::munmap(map, map_size);
    map = nullptr;
    if (memfd >= 0) ::close(memfd);
    memfd = -1;
  }

  void check_open() const {
    if (closed) throw *closed;
  }

  static Clock::time_point deadline_of(Timeout t) {
    if (t == kForever) return Clock::time_point::max();
    return Clock::now() + t;
  }

  static int poll_ms(Clock::time_point deadline) {
    if (deadline == Clock::time_point::max()) return -1;
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero()) return 0;
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
    return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
  }

  // ---- ending the session: every request and call still waiting fails

  void end(const Error& why) {
    if (!closed) closed = why;
    if (sock >= 0) {
      ::close(sock);
      sock = -1;
    }
    std::vector<uint64_t> tags;
    for (const auto& [tag, p] : requests)
      if (!p.completion) tags.push_back(tag);
    for (uint64_t tag : tags) {
      auto it = requests.find(tag);  // a completion handler may have changed the map
      if (it != requests.end() && !it->second.completion) refuse(tag, it->second, closed->code(), closed->text());
    }
    for (auto& [tag, w] : waiters)
      if (!w->done) {
        w->error = *closed;
        w->done = true;
      }
  }

  // ---- bytes in

  // Reads what the socket has now (never blocks). False at end of stream or
  // on an error (the session is then ended, after what was read is dispatched).
  bool read_some(std::string& why) {
    if (sock < 0) {
      why = "session closed";
      return false;
    }
    for (;;) {
      if (in_start > 0 && in_start == in.size()) {
        in.clear();
        in_start = 0;
      } else if (in_start > (1u << 20) && in_start * 2 > in.size()) {
        in.erase(in.begin(), in.begin() + static_cast<ptrdiff_t>(in_start));
        in_start = 0;
      }
      const size_t old = in.size();
      in.resize(old + kReadChunk);
      const ssize_t n = ::recv(sock, in.data() + old, kReadChunk, MSG_DONTWAIT);
      if (n > 0) {
        in.resize(old + static_cast<size_t>(n));
        if (static_cast<size_t>(n) < kReadChunk) return true;
        continue;
      }
      in.resize(old);
      if (n == 0) {
        why = "the target closed the session";
        return false;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      why = errno_text("control socket", errno);
      return false;
    }
  }

  // Dispatches every whole message buffered; returns how many. A message the
  // codec rejects ends the session.
  size_t dispatch_buffered() {
    size_t count = 0;
    while (!closed) {
      const std::span<const uint8_t> avail(in.data() + in_start, in.size() - in_start);
      std::string error;
      const std::optional<size_t> n = control::message_length(avail, error);
      if (!n) {
        if (!error.empty()) end(Error(std::nullopt, "undecodable message from the target: " + error));
        break;
      }
      if (avail.size() < *n) break;
      std::optional<Message> m = control::decode(avail.first(*n), error);
      in_start += *n;
      if (!m) {
        end(Error(std::nullopt, "undecodable message from the target: " + error));
        break;
      }
      ++count;
      dispatch(*m);
    }
    return count;
  }

  // Reads and dispatches until at least one message was dispatched or the
  // deadline passed. Returns the count; never throws (the session's end is
  // recorded in `closed`).
  size_t pump(Clock::time_point deadline) {
    size_t n = dispatch_buffered();
    while (n == 0 && !closed) {
      pollfd p{sock, POLLIN, 0};
      const int r = ::poll(&p, 1, poll_ms(deadline));
      if (r < 0) {
        if (errno == EINTR) continue;
        end(Error(std::nullopt, errno_text("poll", errno)));
        break;
      }
      if (r > 0) {
        std::string why;
        const bool open = read_some(why);
        n += dispatch_buffered();
        if (!open) {
          std::optional<uint32_t> code;
          if (!unsolicited.empty()) {
            code = unsolicited.back().code;
            why += " (its last error: " + unsolicited.back().text + ")";
          }
          end(Error(code, why));
          break;
        }
      }
      if (n == 0 && Clock::now() >= deadline) break;
    }
    return n;
  }

  // ---- bytes out: a whole message is written before this returns (reading
  // meanwhile, so a target that waits for us to read never deadlocks us).

  void write(const Message& m, int fd = -1) {
    check_open();
    out.clear();
    if (!control::encode(m, out))
      throw Error(static_cast<uint32_t>(control::ProtocolError::limit),
                  std::string(control::to_string(m.type)) + ": message larger than " +
                      std::to_string(control::kMaxMessage) + " bytes");
    size_t done = 0;
    bool fd_sent = fd < 0;
    const Clock::time_point deadline = deadline_of(options.timeout);
    while (done < out.size()) {
      ssize_t n;
      if (!fd_sent) {
        iovec iov{out.data() + done, out.size() - done};
        alignas(cmsghdr) char control_buf[CMSG_SPACE(sizeof(int))] = {};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control_buf;
        msg.msg_controllen = sizeof control_buf;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
        n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) fd_sent = true;
      } else {
        n = ::send(sock, out.data() + done, out.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        const Error e(std::nullopt, errno_text("control socket", errno));
        end(e);
        throw e;
      }
      pollfd p{sock, POLLOUT | POLLIN, 0};
      const int r = ::poll(&p, 1, poll_ms(deadline));
      if (r < 0 && errno != EINTR) {
        const Error e(std::nullopt, errno_text("poll", errno));
        end(e);
        throw e;
      }
      if (r == 0) {
        // Part of a message may be out: the stream cannot go on.
        const Error e(std::nullopt, std::string(control::to_string(m.type)) + ": the target read nothing for " +
                                        std::to_string(options.timeout.count()) + " ms; session closed");
        end(e);
        throw TimeoutError(e.text());
      }
      if (r > 0 && (p.revents & POLLIN)) {
        std::string why;
        if (!read_some(why)) {
          const Error e(std::nullopt, why);
          end(e);
          throw e;
        }
      }
    }
  }

  // ---- dispatch

  void dispatch(const Message& m) {
    if (m.type == MsgType::event) {
      const auto& e = std::get<control::Event>(m.body);
      events.push_back(Event{e.handle, e.kind, e.reason, e.value});
      return;
    }
    if (m.type == MsgType::accept) {
      const auto& a = std::get<control::Accept>(m.body);
      accepts.push_back(Accepted{a.handle, a.remote_ip, a.remote_port, a.local_port});
      return;
    }
    if (auto it = requests.find(m.tag); it != requests.end() && !it->second.completion) {
      Pending& p = it->second;
      const MsgType expect = p.kind == RequestKind::send      ? MsgType::send_complete
                             : p.kind == RequestKind::receive ? MsgType::receive_complete
                                                              : MsgType::disconnect_complete;
      if (m.type == MsgType::error) {
        const auto& e = std::get<control::Error>(m.body);
        refuse(m.tag, p, e.code, e.text);
      } else if (m.type == expect) {
        const auto& c = std::get<control::Completion>(m.body);
        if (c.handle == p.handle)
          complete(m.tag, p, c.status, c.bytes_transferred, false);
        else
          refuse(m.tag, p, std::nullopt,
                 std::string(to_string(p.kind)) + " (tag " + std::to_string(m.tag) + ") completed for handle " +
                     hex(c.handle) + ", posted on " + hex(p.handle));
      } else {
        refuse(m.tag, p, std::nullopt,
               std::string(to_string(p.kind)) + " (tag " + std::to_string(m.tag) + ") answered by " +
                   control::to_string(m.type));
      }
      return;
    }
    auto wit = waiters.find(m.tag);
    if (wit == waiters.end() || wit->second->done) {
      if (m.type == MsgType::error) unsolicited.push_back(std::get<control::Error>(m.body));
      return;
    }
    Waiter& w = *wit->second;
    if (m.type == MsgType::error) {
      const auto& e = std::get<control::Error>(m.body);
      w.error = Error(e.code, e.text);
    } else if (m.type != w.expect) {
      w.error = Error(std::nullopt, "tag " + std::to_string(m.tag) + " answered by " + control::to_string(m.type) +
                                        ", expected " + control::to_string(w.expect));
    } else {
      w.reply = m;
      if (w.on_reply) w.on_reply(m);
    }
    w.done = true;
  }

  void free_buffer(Pending& p) {
    if (p.alloc_length != 0) allocator.release(p.alloc_offset, p.alloc_length);
    p.alloc_length = 0;
  }

  void deliver(uint64_t tag, Pending& p) {
    --outstanding;
    if (!handler) return;  // kept for wait()/take()
    const Completion c = *p.completion;
    p.handed_out = true;
    const bool keep = p.kind == RequestKind::receive && p.alloc_length != 0 && !c.refused;
    if (!keep) requests.erase(tag);  // p is gone
    handler(c);
  }

  void complete(uint64_t tag, Pending& p, Status status, uint64_t bytes, bool returned) {
    Completion c;
    c.request = tag;
    c.kind = p.kind;
    c.handle = p.handle;
    c.status = status;
    c.bytes_transferred = bytes;
    c.returned = returned;
    if (p.kind == RequestKind::receive) {
      const uint64_t n = std::min<uint64_t>(bytes, p.data_length);
      c.data = std::span<const uint8_t>(map + p.data_offset, n);
    } else {
      free_buffer(p);  // send data is not needed once the send completed
    }
    p.completion = std::move(c);
    deliver(tag, p);
  }

  void refuse(uint64_t tag, Pending& p, std::optional<uint32_t> code, const std::string& text) {
    Completion c;
    c.request = tag;
    c.kind = p.kind;
    c.handle = p.handle;
    c.status = Status::failure;
    c.refused = true;
    c.error_code = code;
    c.error_text = text;
    free_buffer(p);
    p.completion = std::move(c);
    deliver(tag, p);
  }

  // ---- calls

  Message call(control::Body body, MsgType expect, std::optional<Timeout> timeout, int fd = -1,
               std::function<void(const Message&)> on_reply = {}) {
    check_open();
    Waiter w;
    w.expect = expect;
    w.on_reply = std::move(on_reply);
    const uint64_t tag = next_tag++;
    Message m{MsgType::hello, tag, std::move(body)};
    m.type = std::visit([](const auto& b) { return type_of_request(b); }, m.body);
    const char* what = control::to_string(m.type);
    waiters.emplace(tag, &w);
    struct Unregister {
      Impl* self;
      uint64_t tag;
      ~Unregister() { self->waiters.erase(tag); }
    } unregister{this, tag};
    write(m, fd);
    const Timeout t = timeout.value_or(options.timeout);
    const Clock::time_point deadline = deadline_of(t);
    while (!w.done) {
      if (closed) throw *closed;
      pump(deadline);
      if (!w.done && Clock::now() >= deadline)
        throw TimeoutError(std::string(what) + ": no reply within " + std::to_string(t.count()) + " ms");
    }
    if (w.error) throw *w.error;
    return std::move(*w.reply);
  }

  template <typename T>
  static MsgType type_of_request(const T&) {
    if constexpr (std::is_same_v<T, control::Hello>) return MsgType::hello;
    else if constexpr (std::is_same_v<T, control::RegisterMemory>) return MsgType::register_memory;
    else if constexpr (std::is_same_v<T, control::UnregisterMemory>) return MsgType::unregister_memory;
    else if constexpr (std::is_same_v<T, control::Connect>) return MsgType::connect;
    else if constexpr (std::is_same_v<T, control::Listen>) return MsgType::listen;
    else if constexpr (std::is_same_v<T, control::Offload>) return MsgType::offload;
    else if constexpr (std::is_same_v<T, control::Send>) return MsgType::send;
    else if constexpr (std::is_same_v<T, control::Receive>) return MsgType::receive;
    else if constexpr (std::is_same_v<T, control::Disconnect>) return MsgType::disconnect;
    else if constexpr (std::is_same_v<T, control::Terminate>) return MsgType::terminate;
    else if constexpr (std::is_same_v<T, control::Stats>) return MsgType::stats;
    else if constexpr (std::is_same_v<T, control::ReleaseListen>) return MsgType::release_listen;
    else return MsgType::error;  // not a request: encode() takes the type from the body anyway
  }

  // ---- requests

  Request post(RequestKind kind, uint32_t handle, std::span<const uint8_t> copy, uint64_t length,
               std::optional<uint64_t> region_offset, uint32_t flags, bool graceful) {
    check_open();
    if (length > UINT32_MAX)
      throw Error(std::nullopt, std::string(to_string(kind)) + ": " + std::to_string(length) +
                                    " bytes do not fit a buffer (u32)");
    Pending p;
    p.kind = kind;
    p.handle = handle;
    p.data_length = static_cast<uint32_t>(length);
    if (region_offset) {
      if (*region_offset > map_size || length > map_size - *region_offset)
        throw Error(static_cast<uint32_t>(control::ProtocolError::bad_buffer),
                    std::string(to_string(kind)) + ": [" + std::to_string(*region_offset) + ", +" +
                        std::to_string(length) + ") lies outside the " + std::to_string(map_size) + "-byte region");
      p.data_offset = *region_offset;
    } else if (length > 0) {
      auto a = allocator.alloc(length);
      if (!a) throw RegionFull(length, map_size);
      p.alloc_offset = p.data_offset = a->first;
      p.alloc_length = a->second;
      if (!copy.empty()) std::memcpy(map + p.data_offset, copy.data(), copy.size());
    }
    const uint64_t tag = next_tag++;
    const control::BufferRef buf{length > 0 ? region_id : 0, length > 0 ? p.data_offset : 0,
                                 static_cast<uint32_t>(length)};
    Message m;
    m.tag = tag;
    switch (kind) {
      case RequestKind::send:
        m.type = MsgType::send;
        m.body = control::Send{handle, buf};
        break;
      case RequestKind::receive:
        m.type = MsgType::receive;
        m.body = control::Receive{handle, buf, flags};
        break;
      case RequestKind::disconnect:
        m.type = MsgType::disconnect;
        m.body = control::Disconnect{handle, graceful ? 0u : 1u, buf};
        break;
    }
    // write() reads but dispatches nothing: no reply can come before the
    // request is recorded below.
    try {
      write(m);
    } catch (...) {
      free_buffer(p);
      throw;
    }
    requests.emplace(tag, std::move(p));
    ++outstanding;
    return tag;
  }

  std::optional<Completion> hand_out(Request r) {
    auto it = requests.find(r);
    if (it == requests.end() || !it->second.completion || it->second.handed_out) return std::nullopt;
    Pending& p = it->second;
    Completion c = *p.completion;
    p.handed_out = true;
    if (!(p.kind == RequestKind::receive && p.alloc_length != 0 && !c.refused)) requests.erase(it);
    return c;
  }
};

// ---- Client

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

Client Client::connect_unix(const std::string& path, const Options& options) {
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.path = path;
  s.options = options;
  if (options.region_size == 0) throw Error(std::nullopt, "region size 0");

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    throw Error(std::nullopt, "control socket path longer than " + std::to_string(sizeof addr.sun_path - 1) +
                                  " bytes: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  s.sock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s.sock < 0) throw Error(std::nullopt, errno_text("socket", errno));
  if (::connect(s.sock, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    throw Error(std::nullopt, errno_text(("cannot connect to " + path).c_str(), errno));
  const int fl = ::fcntl(s.sock, F_GETFL);
  if (fl < 0 || ::fcntl(s.sock, F_SETFL, fl | O_NONBLOCK) != 0) throw Error(std::nullopt, errno_text("fcntl", errno));

  const Message hello = s.call(control::Hello{control::kVersion}, MsgType::hello_reply, std::nullopt);
  const auto& hr = std::get<control::HelloReply>(hello.body);
  if (hr.server_version != control::kVersion)
    throw Error(static_cast<uint32_t>(control::ProtocolError::unsupported_version),
                "server speaks version " + std::to_string(hr.server_version) + ", this client " +
                    std::to_string(control::kVersion));
  s.session_id = hr.session;
  s.version = hr.server_version;
  s.max_msg = hr.max_message;

  s.memfd = ::memfd_create("chimney-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (s.memfd < 0) throw Error(std::nullopt, errno_text("memfd_create", errno));
  if (::ftruncate(s.memfd, static_cast<off_t>(options.region_size)) != 0)
    throw Error(std::nullopt, errno_text("ftruncate of the region", errno));
  // chimneyd maps the region; sealed, it can never shrink under it (the
  // target refuses an unsealed one).
  if (::fcntl(s.memfd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
    throw Error(std::nullopt, errno_text("sealing the region (F_SEAL_SHRINK)", errno));
  void* base = ::mmap(nullptr, options.region_size, PROT_READ | PROT_WRITE, MAP_SHARED, s.memfd, 0);
  if (base == MAP_FAILED) throw Error(std::nullopt, errno_text("mmap of the region", errno));
  s.map = static_cast<uint8_t*>(base);
  s.map_size = options.region_size;
  s.allocator = Allocator(options.region_size);
  const Message reg =
      s.call(control::RegisterMemory{options.region_size}, MsgType::registered, std::nullopt, s.memfd);
  s.region_id = std::get<control::Registered>(reg.body).region;
  return Client(std::move(impl));
}

uint64_t Client::session() const { return impl_->session_id; }
uint32_t Client::server_version() const { return impl_->version; }
uint32_t Client::max_message() const { return impl_->max_msg; }
uint32_t Client::region() const { return impl_->region_id; }
uint64_t Client::region_size() const { return impl_->map_size; }
std::span<uint8_t> Client::region_bytes() { return {impl_->map, impl_->map_size}; }
uint64_t Client::region_available() const { return impl_->allocator.available(); }
bool Client::closed() const { return impl_->closed.has_value(); }

void Client::close() {
  if (!impl_->closed) impl_->end(Error(std::nullopt, "session closed by the client"));
}

uint32_t Client::connect(std::string_view ip, uint16_t port, uint16_t local_port, const CachedState& cached,
                         std::optional<Timeout> timeout) {
  const auto a = parse_ipv4(ip);
  if (!a) throw Error(std::nullopt, "CONNECT: '" + std::string(ip) + "' is not an IPv4 address");
  return connect(*a, port, local_port, cached, timeout);
}

uint32_t Client::connect(uint32_t ip, uint16_t port, uint16_t local_port, const CachedState& cached,
                         std::optional<Timeout> timeout) {
  const Message m = impl_->call(control::Connect{ip, port, local_port, cached}, MsgType::offload_complete, timeout);
  const auto& oc = std::get<control::OffloadComplete>(m.body);
  if (oc.status != Status::success)
    throw Error(static_cast<uint32_t>(oc.status),
                "CONNECT to " + format_ipv4(ip) + ":" + std::to_string(port) + " failed");
  return oc.handle;
}

uint32_t Client::offload(const OffloadState& state, std::span<const uint8_t> receive_data,
                         std::optional<Timeout> timeout) {
  control::Offload o;
  o.state = state;
  o.state.delegated.send_data = nullptr;
  o.state.delegated.receive_data.clear();
  o.receive_data.assign(receive_data.begin(), receive_data.end());
  const Message m = impl_->call(std::move(o), MsgType::offload_complete, timeout);
  const auto& oc = std::get<control::OffloadComplete>(m.body);
  if (oc.status != Status::success)
    throw Error(static_cast<uint32_t>(oc.status), "OFFLOAD of " + format_ipv4(state.constant.local_ip) + ":" +
                                                      std::to_string(state.constant.local_port) + " -> " +
                                                      format_ipv4(state.constant.remote_ip) + ":" +
                                                      std::to_string(state.constant.remote_port) + " failed");
  return oc.handle;
}

Terminated Client::terminate(uint32_t handle, std::optional<Timeout> timeout) {
  Impl& s = *impl_;
  Terminated result;
  // At dispatch time, before anything read after the TERMINATE_COMPLETE.
  auto on_reply = [&](const Message& m) {
    const auto& t = std::get<control::TerminateComplete>(m.body);
    result.status = t.status;
    result.state = t.state;
    result.sends = t.sends;
    result.receive_data = t.receive_data;
    for (const auto& rs : t.sends) {
      auto it = s.requests.find(rs.tag);
      if (it == s.requests.end() || it->second.completion || it->second.handle != handle) continue;
      Impl::Pending& p = it->second;
      if (rs.bytes_transferred < p.data_length)
        result.unacked_send_data.insert(result.unacked_send_data.end(),
                                        s.map + p.data_offset + rs.bytes_transferred,
                                        s.map + p.data_offset + p.data_length);
      s.complete(rs.tag, p, Status::upload_in_progress, rs.bytes_transferred, true);
    }
    // Every other request of the connection completed before this (C-21).
    std::vector<uint64_t> left;
    for (auto& [tag, p] : s.requests)
      if (p.handle == handle && !p.completion) left.push_back(tag);
    for (uint64_t tag : left) {
      auto it = s.requests.find(tag);
      if (it == s.requests.end()) continue;
      s.refuse(tag, it->second, std::nullopt,
               std::string(to_string(it->second.kind)) + " (tag " + std::to_string(tag) +
                   ") not completed before TERMINATE_COMPLETE");
    }
  };
  s.call(control::Terminate{handle}, MsgType::terminate_complete, timeout, -1, on_reply);
  if (result.status != Status::success)
    throw Error(static_cast<uint32_t>(result.status), "TERMINATE of handle " + hex(handle) + " failed");
  return result;
}

std::string Client::stats(std::optional<Timeout> timeout) {
  Message m = impl_->call(control::Stats{}, MsgType::stats_reply, timeout);
  return std::move(std::get<control::StatsReply>(m.body).json);
}

void Client::listen(uint16_t port, uint16_t backlog, const CachedState& cached, std::optional<Timeout> timeout) {
  impl_->call(control::Listen{port, backlog, cached}, MsgType::ok, timeout);
}

void Client::release_listen(uint16_t port, std::optional<Timeout> timeout) {
  impl_->call(control::ReleaseListen{port}, MsgType::ok, timeout);
}

Request Client::send(uint32_t handle, std::span<const uint8_t> data) {
  return impl_->post(RequestKind::send, handle, data, data.size(), std::nullopt, 0, true);
}

Request Client::send_region(uint32_t handle, uint64_t offset, uint32_t length) {
  return impl_->post(RequestKind::send, handle, {}, length, offset, 0, true);
}

Request Client::receive(uint32_t handle, uint32_t n, bool push) {
  return impl_->post(RequestKind::receive, handle, {}, n, std::nullopt, push ? 0 : kReceiveNoPush, true);
}

Request Client::receive_region(uint32_t handle, uint64_t offset, uint32_t length, bool push) {
  return impl_->post(RequestKind::receive, handle, {}, length, offset, push ? 0 : kReceiveNoPush, true);
}

Request Client::disconnect(uint32_t handle, bool graceful, std::span<const uint8_t> data) {
  return impl_->post(RequestKind::disconnect, handle, data, data.size(), std::nullopt, 0, graceful);
}

void Client::release(Request request) {
  auto it = impl_->requests.find(request);
  if (it == impl_->requests.end() || !it->second.completion || !it->second.handed_out) return;
  impl_->free_buffer(it->second);
  impl_->requests.erase(it);
}

std::optional<Buffer> Client::alloc(uint64_t n) {
  auto a = impl_->allocator.alloc(n);
  if (!a) return std::nullopt;
  return Buffer{a->first, a->second, std::span<uint8_t>(impl_->map + a->first, a->second)};
}

void Client::free(const Buffer& b) { impl_->allocator.release(b.offset, b.length); }

size_t Client::poll(Timeout timeout) {
  Impl& s = *impl_;
  const size_t n = s.pump(Impl::deadline_of(timeout));
  if (n == 0 && s.closed) throw *s.closed;
  return n;
}

std::optional<Completion> Client::wait(Request request, Timeout timeout) {
  Impl& s = *impl_;
  const Clock::time_point deadline = Impl::deadline_of(timeout);
  for (;;) {
    auto it = s.requests.find(request);
    if (it == s.requests.end() || it->second.handed_out)
      throw Error(std::nullopt, "request " + std::to_string(request) + " is unknown or its completion was taken");
    if (it->second.completion) {
      std::optional<Completion> c = s.hand_out(request);
      if (c->refused) throw Error(c->error_code, c->error_text);
      return c;
    }
    if (s.closed) throw *s.closed;  // (end() completes every request; not reached)
    if (Clock::now() >= deadline) {
      // One last look at what is already there.
      if (s.pump(Clock::now()) == 0) return std::nullopt;
      continue;
    }
    s.pump(deadline);
  }
}

bool Client::done(Request request) const {
  auto it = impl_->requests.find(request);
  return it != impl_->requests.end() && it->second.completion && !it->second.handed_out;
}

std::optional<Completion> Client::take(Request request) { return impl_->hand_out(request); }

size_t Client::outstanding() const { return impl_->outstanding; }

void Client::on_completion(std::function<void(const Completion&)> handler) { impl_->handler = std::move(handler); }

std::optional<Event> Client::next_event(Timeout timeout) {
  Impl& s = *impl_;
  const Clock::time_point deadline = Impl::deadline_of(timeout);
  for (;;) {
    if (!s.events.empty()) {
      Event e = s.events.front();
      s.events.pop_front();
      return e;
    }
    if (s.closed) throw *s.closed;
    if (Clock::now() >= deadline) {
      s.pump(Clock::now());
      if (s.events.empty()) return std::nullopt;
      continue;
    }
    s.pump(deadline);
  }
}

std::optional<Accepted> Client::accept(Timeout timeout) {
  Impl& s = *impl_;
  const Clock::time_point deadline = Impl::deadline_of(timeout);
  for (;;) {
    if (!s.accepts.empty()) {
      Accepted a = s.accepts.front();
      s.accepts.pop_front();
      return a;
    }
    if (s.closed) throw *s.closed;
    if (Clock::now() >= deadline) {
      s.pump(Clock::now());
      if (s.accepts.empty()) return std::nullopt;
      continue;
    }
    s.pump(deadline);
  }
}

size_t Client::pending_events() const { return impl_->events.size(); }

const std::vector<control::Error>& Client::unsolicited_errors() const { return impl_->unsolicited; }

}  // namespace chimney::client
