#include <cstdio>
#include <string>

#include "chimney/offload_state.hpp"
#include "chimney/status.hpp"
#include "chimney/target.hpp"

namespace chimney {

namespace {

struct StatusName {
  Status status;
  const char* name;
};

constexpr StatusName kStatusNames[] = {
    {Status::success, "NDIS_STATUS_SUCCESS"},
    {Status::pending, "NDIS_STATUS_PENDING"},
    {Status::request_aborted, "NDIS_STATUS_REQUEST_ABORTED"},
    {Status::upload_in_progress, "NDIS_STATUS_UPLOAD_IN_PROGRESS"},
    {Status::invalid_state, "NDIS_STATUS_INVALID_STATE"},
    {Status::failure, "NDIS_STATUS_FAILURE"},
    {Status::resources, "NDIS_STATUS_RESOURCES"},
    {Status::offload_tcp_entries, "NDIS_STATUS_OFFLOAD_TCP_ENTRIES"},
    {Status::offload_tcp_xmit_buffer, "NDIS_STATUS_OFFLOAD_TCP_XMIT_BUFFER"},
    {Status::offload_tcp_rcv_buffer, "NDIS_STATUS_OFFLOAD_TCP_RCV_BUFFER"},
    {Status::offload_tcp_rcv_window, "NDIS_STATUS_OFFLOAD_TCP_RCV_WINDOW"},
};

}  // namespace

const char* to_string(Status s) {
  for (const auto& n : kStatusNames)
    if (n.status == s) return n.name;
  thread_local char buf[32];
  std::snprintf(buf, sizeof buf, "NDIS_STATUS_0x%08X", static_cast<unsigned>(s));
  return buf;
}

std::optional<Status> status_from_string(std::string_view name) {
  for (const auto& n : kStatusNames)
    if (name == n.name) return n.status;
  return std::nullopt;
}

const char* to_string(TcpState s) {
  static const char* const names[] = {"CLOSED",     "LISTEN",     "SYN_SENT", "SYN_RECEIVED",
                                      "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT",
                                      "CLOSING",     "LAST_ACK",   "TIME_WAIT"};
  return names[static_cast<size_t>(s)];
}

const char* to_string(CongestionAlgorithm a) {
  return a == CongestionAlgorithm::newreno ? "newreno" : "cubic";
}

const char* to_string(EventKind k) {
  static const char* const names[] = {"DISCONNECT", "ABORT", "RETRIEVE", "SEND_BACKLOG_CHANGE"};
  return names[static_cast<size_t>(k)];
}

const char* to_string(RetrieveReason r) {
  static const char* const names[] = {"None", "TimeoutExpiration", "UploadRequested",
                                      "InvalidState", "TimeWait"};
  return names[static_cast<size_t>(r)];
}

}  // namespace chimney
