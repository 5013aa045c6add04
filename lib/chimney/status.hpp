// NDIS statuses of the offload contract (CONTRACT.md "Statuses"), printed by
// their NDIS names everywhere.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace chimney {

enum class Status : uint32_t {
  success = 0x00000000,
  pending = 0x00000103,
  request_aborted = 0xC023000C,
  upload_in_progress = 0xC0231001,
  invalid_state = 0xC0000184,
  failure = 0xC0000001,
  resources = 0xC000009A,
  offload_tcp_entries = 0xC0231004,
  offload_tcp_xmit_buffer = 0xC023100A,
  offload_tcp_rcv_buffer = 0xC023100B,
  offload_tcp_rcv_window = 0xC023100C,
};

// "NDIS_STATUS_SUCCESS", ...; "NDIS_STATUS_0x........" for a value not listed.
const char* to_string(Status s);
std::optional<Status> status_from_string(std::string_view name);

}  // namespace chimney
