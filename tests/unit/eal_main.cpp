// googletest main for the unit suites: brings up a minimal EAL (no hugepages,
// no devices, private runtime directory) so tests use real mbufs and mempools.
#include <gtest/gtest.h>

#include <rte_eal.h>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::vector<std::string> eal = {argv[0],      "--no-huge", "-m",         "1024",
                                  "--no-pci",   "--no-shconf", "-l",       "0",
                                  "--log-level=lib.eal:error", "--no-telemetry"};
  std::vector<char*> eal_argv;
  for (auto& s : eal) eal_argv.push_back(s.data());
  if (rte_eal_init(static_cast<int>(eal_argv.size()), eal_argv.data()) < 0) {
    std::fprintf(stderr, "unit tests: rte_eal_init failed\n");
    return 1;
  }
  int rc = RUN_ALL_TESTS();
  rte_eal_cleanup();
  return rc;
}
