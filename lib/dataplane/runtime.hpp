// Bringing chimneyd up and down: EAL, ports, rings, lcores, telemetry, the
// main loop, and a clean stop on SIGINT/SIGTERM.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "dataplane/config.hpp"
#include "dataplane/eal.hpp"

namespace chimney::dataplane {

struct Dataplane;
class SlowPath;

// A service the main lcore runs beside the slow path (the control server).
class MainService {
 public:
  virtual ~MainService() = default;
  // Does what is ready; returns how much work it found (0: idle).
  virtual unsigned poll(uint64_t now_tsc) = 0;
};
// Made once the ports run; throws std::runtime_error to refuse to start.
using ServiceFactory = std::function<std::unique_ptr<MainService>(Dataplane&, SlowPath&)>;

// Sends DPDK's own log lines through spdlog (keeping their levels).
void route_dpdk_log_to_spdlog();

// Opens dp.cfg's ports with one RX and TX queue pair per worker
// (dp.worker_lcores, set by the caller) and makes the rings, the op-record
// pool, the attach pools and the counters of a Dataplane: what run_target
// does before it launches the workers (chimney-bench peer does the same
// with its one lcore). Throws std::runtime_error; teardown_dataplane then
// undoes what was made.
void build_dataplane(Dataplane& dp);
// Stops and closes the ports and frees the rings (and what they still hold).
void teardown_dataplane(Dataplane& dp);

// Runs the target until SIGINT or SIGTERM. Returns the exit code: 0 after a
// clean stop, 1 when start-up failed (the reason is logged as one error line).
int run_target(const Config& cfg, const EalPlan& plan, const ServiceFactory& make_service = {});

}  // namespace chimney::dataplane
