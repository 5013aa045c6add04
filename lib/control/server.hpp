// The control server on the main lcore: hosts connect over a Unix socket
// (docs/CONTROL_PROTOCOL.md), register shared memory, and drive offloaded
// connections; requests go to the owning worker through its ops ring and
// completions come back through its notes ring.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "control/protocol.hpp"
#include "dataplane/dataplane.hpp"
#include "dataplane/offload_ops.hpp"
#include "dataplane/runtime.hpp"
#include "dataplane/slowpath.hpp"

namespace chimney::control {

class Server final : public dataplane::MainService {
 public:
  // Creates the socket; throws std::runtime_error naming the problem.
  Server(dataplane::Dataplane& dp, dataplane::SlowPath& slow);
  ~Server() override;
  unsigned poll(uint64_t now_tsc) override;

  struct Counters {
    uint64_t sessions_opened = 0, sessions_closed = 0, sessions_refused = 0, sessions_detached = 0,
             sessions_attached = 0;
    uint64_t requests = 0, errors = 0, completions = 0, events = 0;
    uint64_t connections_offloaded = 0, connections_released = 0, orphans_aborted = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  struct Session;
  struct Conn;
  struct Region;
  struct HostRequest;

  static HostRequest* request_of(NetBufferList* n);
  void accept_sessions();
  void read_session(Session& s);
  void flush_session(Session& s);
  // Ends the session; with may_detach and a grace period its connections
  // wait control-grace-s for an ATTACH before they are aborted.
  void close_session(Session& s, const std::string& why, bool may_detach = true);
  // `fd`: the descriptor that came with the message, or -1.
  void handle(Session& s, const Message& m, int fd);
  unsigned drain_notes();
  void on_note(dataplane::OffloadNote& n);

  void reply(Session& s, MsgType type, uint64_t tag, Body body);
  void error(Session& s, uint64_t tag, uint32_t code, const std::string& text);
  Conn* find_conn(Session& s, uint32_t handle);
  Region* find_buffer(Session& s, const BufferRef& b, std::string& why);
  Conn* new_conn(Session& s, uint16_t port);
  bool post(Conn& c, dataplane::OffloadOp::Kind kind, NetBufferList* nbl, OffloadState* state,
            DisconnectKind dk = DisconnectKind::graceful);
  void start_offload(Conn& c, const OffloadState& state);
  void abort_and_release(Conn& c);
  void release_conn(Conn& c);
  void maybe_free_session(Session& s);
  // The worker that owns the connection (dataplane::Placement, rss.hpp).
  unsigned worker_for(const OffloadState& st) const;
  unsigned least_loaded_worker() const;

  dataplane::Dataplane& dp_;
  dataplane::SlowPath& slow_;
  std::string path_;
  int listen_fd_ = -1;
  uint64_t next_session_ = 1;
  uint64_t now_tsc_ = 0;
  std::vector<std::unique_ptr<Session>> sessions_;  // live and closing
  Counters counters_;
  std::vector<uint32_t> worker_conns_;  // connections placed on each worker
};

}  // namespace chimney::control
