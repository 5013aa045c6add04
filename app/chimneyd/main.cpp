// chimneyd: the offload target. DPDK convention: [EAL options --] [options].
#include <unistd.h>

#include <cstdio>
#include <string>
#include <variant>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "control/server.hpp"
#include "dataplane/config.hpp"
#include "dataplane/eal.hpp"
#include "dataplane/runtime.hpp"

using namespace chimney::dataplane;

int main(int argc, char** argv) {
  // Without `--` every argument is chimneyd's; with it, what precedes is the EAL's.
  std::vector<std::string> eal_args;
  std::vector<std::string> app_args;
  int split = -1;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--") {
      split = i;
      break;
    }
  for (int i = 1; i < argc; ++i) {
    if (i == split) continue;
    (split > 0 && i < split ? eal_args : app_args).emplace_back(argv[i]);
  }

  ParseOutcome outcome = parse_config(app_args);
  if (auto* exit = std::get_if<Exit>(&outcome)) {
    std::fprintf(exit->code == 0 ? stdout : stderr, "%s\n", exit->message.c_str());
    return exit->code;
  }
  const Config& cfg = std::get<Config>(outcome);

  auto logger = spdlog::stderr_color_mt("chimneyd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  spdlog::flush_on(spdlog::level::trace);
  route_dpdk_log_to_spdlog();

  const EalPlan plan =
      plan_eal(argv[0], eal_args, cfg, detect_hugepages(), static_cast<int>(getpid()), usable_cpus());
  return run_target(cfg, plan, [](Dataplane& dp, SlowPath& slow) -> std::unique_ptr<MainService> {
    return std::make_unique<chimney::control::Server>(dp, slow);
  });
}
