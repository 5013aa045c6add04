// Bringing chimneyd up and down: EAL, ports, rings, lcores, telemetry, the
// main loop, and a clean stop on SIGINT/SIGTERM.
#pragma once

#include "dataplane/config.hpp"
#include "dataplane/eal.hpp"

namespace chimney::dataplane {

// Sends DPDK's own log lines through spdlog (keeping their levels).
void route_dpdk_log_to_spdlog();

// Runs the target until SIGINT or SIGTERM. Returns the exit code: 0 after a
// clean stop, 1 when start-up failed (the reason is logged as one error line).
int run_target(const Config& cfg, const EalPlan& plan);

}  // namespace chimney::dataplane
