// Worker lcores: how many the EAL gets, and on which CPUs (lib/dataplane/eal.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "dataplane/config.hpp"
#include "dataplane/eal.hpp"

namespace chimney::dataplane {
namespace {

Config with_workers(unsigned workers) {
  Config c;
  c.workers = workers;
  return c;
}

bool has(const EalPlan& p, const std::string& arg) {
  return std::find(p.args.begin(), p.args.end(), arg) != p.args.end();
}

TEST(WorkerLcores, OneCpuEachWhenThereAreEnough) {
  EXPECT_TRUE(has(plan_eal("chimneyd", {}, with_workers(2), HugepageInfo{}, 1, {0, 1, 2, 3}), "-l0-2"));
  EXPECT_TRUE(has(plan_eal("chimneyd", {}, with_workers(1), HugepageInfo{}, 1, {0, 1}), "-l0-1"));
  EXPECT_TRUE(has(plan_eal("chimneyd", {}, with_workers(3), HugepageInfo{}, 1), "-l0-3"));  // CPUs unknown
}

// Two workers on a 2-CPU machine (this one): -l0-2 would name a CPU that
// does not exist; the lcores share the CPUs in turn instead.
TEST(WorkerLcores, MoreLcoresThanCpusShareThem) {
  EXPECT_TRUE(has(plan_eal("chimneyd", {}, with_workers(2), HugepageInfo{}, 1, {0, 1}), "--lcores=0@0,1@1,2@0"));
  EXPECT_TRUE(has(plan_eal("chimneyd", {}, with_workers(3), HugepageInfo{}, 1, {2, 5}), "--lcores=0@2,1@5,2@2,3@5"));
  // CPUs that are not 0..N (taskset) are mapped too
  EXPECT_TRUE(has(plan_eal("chimneyd", {}, with_workers(1), HugepageInfo{}, 1, {4, 6}), "--lcores=0@4,1@6"));
}

TEST(WorkerLcores, AnLcoreListGivenIsKept) {
  const EalPlan p = plan_eal("chimneyd", {"--lcores", "0@0,1@0,2@1"}, with_workers(2), HugepageInfo{}, 1, {0, 1});
  EXPECT_EQ(std::count_if(p.args.begin(), p.args.end(),
                          [](const std::string& a) { return a.rfind("--lcores", 0) == 0 || a.rfind("-l", 0) == 0; }),
            1);
}

TEST(WorkerLcores, UsableCpusListsThisProcesssCpus) {
  const auto cpus = usable_cpus();
  EXPECT_FALSE(cpus.empty());
  EXPECT_TRUE(std::is_sorted(cpus.begin(), cpus.end()));
}

}  // namespace
}  // namespace chimney::dataplane
