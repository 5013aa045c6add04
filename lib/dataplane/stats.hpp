// Counters made visible: DPDK telemetry commands under /chimney/ and the
// SIGUSR1 dump to the log. Both read the same snapshots.
#pragma once

#include "dataplane/dataplane.hpp"

namespace chimney::dataplane {

// Registers /chimney/ports, /chimney/port, /chimney/lcores, /chimney/lcore,
// /chimney/drops. Commands answer with an error until attach() is called and
// after detach().
void register_telemetry();
void attach_telemetry(Dataplane* dp);
void detach_telemetry();

// Logs every port's and lcore's counters (info level).
void log_counters(const Dataplane& dp);

}  // namespace chimney::dataplane
