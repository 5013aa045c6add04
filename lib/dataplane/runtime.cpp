#include "dataplane/runtime.hpp"

#include <csignal>
#include <cstdio>
#include <stdexcept>
#include <string_view>

#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <spdlog/spdlog.h>

#include "dataplane/dataplane.hpp"
#include "dataplane/offload_ops.hpp"
#include "dataplane/slowpath.hpp"
#include "dataplane/stats.hpp"

namespace chimney::dataplane {

namespace {

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_dump = 0;

void on_signal(int sig) {
  if (sig == SIGUSR1) g_dump = 1;
  else g_stop = 1;
}

// fopencookie writer: one spdlog line per DPDK log line, at DPDK's level.
ssize_t dpdk_log_write(void*, const char* buf, size_t size) {
  std::string_view line(buf, size);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.empty()) return static_cast<ssize_t>(size);
  switch (rte_log_cur_msg_loglevel()) {
    case RTE_LOG_EMERG:
    case RTE_LOG_ALERT:
    case RTE_LOG_CRIT: spdlog::critical("dpdk: {}", line); break;
    case RTE_LOG_ERR: spdlog::error("dpdk: {}", line); break;
    case RTE_LOG_WARNING: spdlog::warn("dpdk: {}", line); break;
    case RTE_LOG_NOTICE:
    case RTE_LOG_INFO: spdlog::info("dpdk: {}", line); break;
    default: spdlog::debug("dpdk: {}", line); break;
  }
  return static_cast<ssize_t>(size);
}

void install_signals() {
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

// Frames one worker can have waiting for another (software steering): a
// few RX bursts' worth.
constexpr unsigned kSteerRing = 1024;

}  // namespace

void build_dataplane(Dataplane& dp) {
  if (dp.worker_lcores.empty()) throw std::runtime_error("build_dataplane: no worker");
  const unsigned workers = static_cast<unsigned>(dp.worker_lcores.size());
  dp.placement = Placement(workers);

  for (size_t i = 0; i < dp.cfg.ports.size(); ++i) {
    const std::string device = port_device_name(dp.cfg.ports[i], i);
    dp.ports.push_back(open_port(i, device, dp.cfg.ports[i], dp.cfg, workers));
    dp.port_index[dp.ports.back().id] = static_cast<int16_t>(i);
    const Port& port = dp.ports.back();
    spdlog::info("port {} {} ({}): mac {} address {} mtu {} queues rx {} tx {}; offloads: rx checksum "
                 "{}, tx ipv4 checksum {}, tx tcp checksum {}, tso {}",
                 i, port.device, dp.cfg.ports[i].str(), net::mac_str(port.mac),
                 port.config.address.str(), port.config.mtu, workers, workers,
                 port.rx_checksum ? "hw" : "sw", port.tx_caps.ipv4 ? "hw" : "sw",
                 port.tx_caps.tcp ? "hw" : "sw", port.tso ? "yes" : "no");
    if (workers > 1)
      spdlog::info("port {}: {} workers; placement: {} (RETA size {})", i, workers, port.rss.note,
                   port.rss.reta_size);
  }
  dp.counters = std::make_unique<Counters[]>(dp.slots() * dp.ports.size());
  auto make_ring = [&](const std::string& name) {
    rte_ring* r = rte_ring_create(name.c_str(), dp.cfg.slowpath_ring, rte_socket_id(),
                                  RING_F_SP_ENQ | RING_F_SC_DEQ);
    if (r == nullptr)
      throw std::runtime_error("cannot create ring " + name + ": " + rte_strerror(rte_errno));
    return r;
  };
  for (unsigned w = 0; w < workers; ++w) {
    dp.to_slowpath.push_back(make_ring("to_slow_w" + std::to_string(w)));
    dp.from_slowpath.push_back(make_ring("from_slow_w" + std::to_string(w)));
    dp.ops.push_back(make_ring("ops_w" + std::to_string(w)));
    dp.notes.push_back(make_ring("notes_w" + std::to_string(w)));
  }
  if (workers > 1) {
    // Software steering (steer.hpp): a ring per ordered pair of workers.
    dp.steer.assign(size_t{workers} * workers, nullptr);
    for (unsigned from = 0; from < workers; ++from)
      for (unsigned to = 0; to < workers; ++to) {
        if (from == to) continue;
        const std::string name = "steer_" + std::to_string(from) + "_" + std::to_string(to);
        rte_ring* r = rte_ring_create(name.c_str(), kSteerRing, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
        if (r == nullptr)
          throw std::runtime_error("cannot create ring " + name + ": " + rte_strerror(rte_errno));
        dp.steer[size_t{from} * workers + to] = r;
      }
  }
  const size_t record = sizeof(OffloadOp) > sizeof(OffloadNote) ? sizeof(OffloadOp) : sizeof(OffloadNote);
  dp.op_pool = rte_mempool_create("offload_ops", 4 * dp.cfg.slowpath_ring * workers - 1,
                                  static_cast<unsigned>(record), 64, 0, nullptr, nullptr, nullptr, nullptr,
                                  static_cast<int>(rte_socket_id()), 0);
  if (dp.op_pool == nullptr)
    throw std::runtime_error(std::string("cannot create the offload op pool: ") + rte_strerror(rte_errno));
  for (size_t p = 0; p < dp.ports.size(); ++p) {
    // Payload mbufs carry no data room: they point into host memory.
    const std::string name = "attach_p" + std::to_string(p);
    rte_mempool* pool = rte_pktmbuf_pool_create(name.c_str(), dp.cfg.mbufs, 256, 0, 0,
                                                static_cast<int>(rte_socket_id()));
    if (pool == nullptr)
      throw std::runtime_error("cannot create " + name + ": " + rte_strerror(rte_errno) +
                               " (lower --mbufs or raise --memory-mb)");
    dp.attach_pools.push_back(pool);
  }
}

void teardown_dataplane(Dataplane& dp) {
  for (Port& port : dp.ports) {
    close_port(port);
    spdlog::info("port {} {} stopped and closed", port.index, port.device);
  }
  dp.ports.clear();
  for (auto* rings : {&dp.ops, &dp.notes}) {
    for (rte_ring* r : *rings) {
      void* rec = nullptr;
      while (rte_ring_dequeue(r, &rec) == 0) {
        if (rings == &dp.notes && static_cast<OffloadNote*>(rec)->heap) {
          ::operator delete(rec);
          continue;
        }
        if (rings == &dp.ops && static_cast<OffloadOp*>(rec)->kind == OffloadOp::Kind::input)
          rte_pktmbuf_free(static_cast<OffloadOp*>(rec)->frame);  // a segment kept for the engine
        rte_mempool_put(dp.op_pool, rec);
      }
      rte_ring_free(r);
    }
    rings->clear();
  }
  for (auto* rings : {&dp.to_slowpath, &dp.from_slowpath, &dp.steer}) {
    for (rte_ring* r : *rings) {
      if (r == nullptr) continue;
      void* m = nullptr;
      while (rte_ring_dequeue(r, &m) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(m));
      rte_ring_free(r);
    }
    rings->clear();
  }
}

void route_dpdk_log_to_spdlog() {
  cookie_io_functions_t io{};
  io.write = dpdk_log_write;
  FILE* f = fopencookie(nullptr, "w", io);
  if (f == nullptr) return;
  setvbuf(f, nullptr, _IOLBF, 0);
  rte_openlog_stream(f);
}

int run_target(const Config& cfg, const EalPlan& plan, const ServiceFactory& make_service) {
  std::string cmdline;
  for (const auto& a : plan.args) cmdline += (cmdline.empty() ? "" : " ") + a;
  spdlog::info("chimneyd {} starting; memory: {}", CHIMNEY_VERSION, plan.memory_note);
  spdlog::info("EAL: {}", cmdline);
  if (!cfg.config_file.empty()) spdlog::info("config file: {}", cfg.config_file);

  std::vector<std::string> args = plan.args;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  install_signals();
  register_telemetry();
  if (rte_eal_init(static_cast<int>(args.size()), argv.data()) < 0) {
    spdlog::error("EAL initialisation failed: {} (EAL options: {})", rte_strerror(rte_errno), cmdline);
    return 1;
  }
  // rte_eal_init installs nothing for these, but keep ours whatever a driver did.
  install_signals();

  auto dp = std::make_unique<Dataplane>();
  dp->cfg = cfg;
  if (cfg.impair_rx.active() || cfg.impair_tx.active()) {
    if (dp->cfg.impair_seed == 0) dp->cfg.impair_seed = rte_rdtsc() | 1;
    spdlog::warn("impairment on every port: rx {}, tx {}; seed {} (replay with --impair-seed {})",
                 cfg.impair_rx.str(), cfg.impair_tx.str(), dp->cfg.impair_seed, dp->cfg.impair_seed);
  }
  int rc = 0;
  try {
    unsigned lcore;
    RTE_LCORE_FOREACH_WORKER(lcore) dp->worker_lcores.push_back(lcore);
    if (dp->worker_lcores.empty())
      throw std::runtime_error("no worker lcore: give the EAL at least two lcores (main + worker), "
                               "e.g. -l 0-1");
    build_dataplane(*dp);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    teardown_dataplane(*dp);
    rte_eal_cleanup();
    return 1;
  }

  std::vector<WorkerContext> contexts;
  contexts.reserve(dp->worker_lcores.size());
  for (size_t w = 0; w < dp->worker_lcores.size(); ++w) contexts.push_back({dp.get(), w + 1});
  for (size_t w = 0; w < dp->worker_lcores.size(); ++w)
    rte_eal_remote_launch(worker_main, &contexts[w], dp->worker_lcores[w]);

  {
  SlowPath slow(*dp);  // destroyed (neighbour tables, queued frames) before the EAL goes
  std::unique_ptr<MainService> service;
  if (make_service) {
    try {
      service = make_service(*dp, slow);
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      g_stop = 1;
      rc = 1;
    }
  }
  attach_telemetry(dp.get());
  spdlog::info("chimneyd ready: {} port(s), {} worker lcore(s), telemetry: dpdk-telemetry.py -f {}",
               dp->ports.size(), dp->worker_lcores.size(), plan.file_prefix);

  const uint64_t hz = rte_get_tsc_hz();
  uint64_t next_tick = rte_get_tsc_cycles();
  IdleBackoff idle(cfg.idle_sleep_us);
  while (g_stop == 0) {
    const uint64_t now = rte_get_tsc_cycles();
    unsigned work = slow.poll(now);
    if (service) work += service->poll(now);
    if (now >= next_tick) {
      slow.tick(now);
      next_tick = now + hz / 10;
    }
    if (g_dump != 0) {
      g_dump = 0;
      log_counters(*dp);
    }
    idle.update(work);
  }

  spdlog::info("stopping");
  dp->stop.store(true);
  rte_eal_mp_wait_lcore();
  detach_telemetry();
  service.reset();  // after the workers: no engine touches host memory any more
  }
  log_counters(*dp);
  teardown_dataplane(*dp);
  if (rte_eal_cleanup() != 0) rc = 1;
  spdlog::info("stopped");
  return rc;
}

}  // namespace chimney::dataplane
