// Counters of one engine: what arrived, what left, and why segments were
// dropped or answered as they were (RFC 9293, RFC 5961, RFC 7323).
#pragma once

#include <cstddef>
#include <cstdint>

namespace chimney::tcp {

#define CHIMNEY_ENGINE_COUNTERS(X)                                                        \
  X(segments_in)            X(segments_out)          X(bytes_in)             X(bytes_out) \
  X(retransmits)            X(fast_retransmits)      X(rto_expirations)      X(sack_recoveries)\
  X(loss_probes)            X(loss_probe_recoveries) X(reorder_timeouts)                \
  X(dup_acks)               X(delayed_acks)          X(pure_acks_out)        X(window_probes)\
  X(keepalive_probes)       X(challenge_acks)        X(challenge_acks_limited)               \
  X(drop_paws)              X(drop_out_of_window)    X(drop_ack_unsent)      X(drop_old_ack) \
  X(drop_no_ack_flag)       X(drop_after_abort)      X(drop_terminating)     X(drop_ooo_budget)\
  X(rst_in_accepted)        X(rst_in_challenged)     X(rst_in_ignored)       X(rst_out)       \
  X(syn_in_challenged)      X(time_wait_acks)        X(time_wait_drops)      X(no_mbuf)       \
  X(time_wait_evictions)    X(time_wait_overflows)                                            \
  X(ooo_segments_in)        X(offloads)              X(offloads_refused)     X(terminates)    \
  X(send_completions)       X(receive_completions)   X(indications)          X(retrieves)

struct EngineStats {
#define CHIMNEY_X(name) uint64_t name = 0;
  CHIMNEY_ENGINE_COUNTERS(CHIMNEY_X)
#undef CHIMNEY_X

  // The counters in declaration order, with their names (telemetry).
  static constexpr size_t kCount = 0
#define CHIMNEY_X(name) +1
      CHIMNEY_ENGINE_COUNTERS(CHIMNEY_X)
#undef CHIMNEY_X
      ;
  static constexpr const char* kNames[kCount] = {
#define CHIMNEY_X(name) #name,
      CHIMNEY_ENGINE_COUNTERS(CHIMNEY_X)
#undef CHIMNEY_X
  };
  const uint64_t* values() const { return &segments_in; }
};
static_assert(sizeof(EngineStats) == EngineStats::kCount * sizeof(uint64_t), "plain array of counters");

}  // namespace chimney::tcp
