// Config parsing: every option from the command line and the file; bad values
// give one error naming the option and exit code 2.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

#include "dataplane/config.hpp"
#include "dataplane/eal.hpp"
#include "tcp/engine.hpp"

using namespace chimney::dataplane;

namespace {

// Parses with no config file unless one is named.
ParseOutcome parse(std::vector<std::string> args) {
  setenv("CHIMNEY_CONF", "/nonexistent/chimney.conf", 1);
  return parse_config(args);
}

Config ok(std::vector<std::string> args) {
  ParseOutcome o = parse(std::move(args));
  if (auto* e = std::get_if<Exit>(&o)) ADD_FAILURE() << "unexpected exit " << e->code << ": " << e->message;
  return std::holds_alternative<Config>(o) ? std::get<Config>(o) : Config{};
}

Exit fails(std::vector<std::string> args) {
  ParseOutcome o = parse(std::move(args));
  if (!std::holds_alternative<Exit>(o)) {
    ADD_FAILURE() << "expected an error";
    return {};
  }
  return std::get<Exit>(o);
}

std::string write_file(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST(Config, DefaultsAreOneTapPortAndOneWorker) {
  Config c = ok({});
  ASSERT_EQ(c.ports.size(), 1u);
  EXPECT_EQ(c.ports[0].kind, PortKind::tap);
  EXPECT_EQ(c.ports[0].iface, "chimney0");
  EXPECT_EQ(c.ports[0].address.str(), "198.18.0.2/24");
  EXPECT_EQ(c.ports[0].mtu, 1500);
  EXPECT_EQ(c.workers, 1u);
  EXPECT_EQ(c.log_level, "info");
  EXPECT_TRUE(c.config_file.empty());
}

TEST(Config, PortSpecWithEveryKey) {
  Config c = ok({"--port", "kind=tap,iface=t1,address=198.18.1.2/16,gateway=198.18.0.1,mtu=9000,"
                           "mac=02:00:00:00:00:07",
                 "--port", "kind=memif,role=server,path=/tmp/m.sock,address=198.19.0.2/24,devargs=id=3,zc=yes"});
  ASSERT_EQ(c.ports.size(), 2u);
  EXPECT_EQ(c.ports[0].iface, "t1");
  EXPECT_EQ(c.ports[0].address.len, 16);
  ASSERT_TRUE(c.ports[0].gateway.has_value());
  EXPECT_EQ(c.ports[0].gateway->str(), "198.18.0.1");
  EXPECT_EQ(c.ports[0].mtu, 9000);
  ASSERT_TRUE(c.ports[0].mac.has_value());
  EXPECT_EQ(c.ports[0].mac->addr_bytes[5], 7);
  EXPECT_EQ(c.ports[1].kind, PortKind::memif);
  EXPECT_EQ(c.ports[1].role, "server");
  EXPECT_EQ(c.ports[1].devargs, "id=3,zc=yes");
}

TEST(Config, BadPortValuesNameTheOption) {
  struct Case {
    const char* spec;
    const char* says;
  } cases[] = {
      {"kind=bogus,address=198.18.0.2/24", "kind 'bogus'"},
      {"kind=tap", "address= is required"},
      {"kind=tap,address=198.18.0.300/24", "address '198.18.0.300/24'"},
      {"kind=tap,address=198.18.0.2/33", "address"},
      {"kind=tap,address=198.18.0.2/24,mtu=100", "mtu '100'"},
      {"kind=tap,address=198.18.0.2/24,mtu=15x", "mtu"},
      {"kind=tap,address=198.18.0.2/24,mac=ff:ff:ff:ff:ff:ff", "mac"},
      {"kind=tap,address=198.18.0.2/24,mac=02:00:00:00:00", "mac"},
      {"kind=tap,address=198.18.0.2/24,speed=10", "unknown key 'speed'"},
      {"kind=tap,address=198.18.0.2/24,iface=abcdefghijklmnopq", "iface"},
      {"kind=tap,address=198.18.0.2/24,gateway=198.19.0.1", "gateway 198.19.0.1 is not inside"},
      {"kind=virtio_user,address=198.18.0.2/24", "needs path="},
      {"kind=pci,address=198.18.0.2/24", "needs pci="},
      {"kind=af_packet,address=198.18.0.2/24", "needs iface="},
      {"kind=tap,address", "not key=value"},
  };
  for (const auto& c : cases) {
    Exit e = fails({"--port", c.spec});
    EXPECT_EQ(e.code, 2) << c.spec;
    EXPECT_NE(e.message.find("option '--port'"), std::string::npos) << e.message;
    EXPECT_NE(e.message.find(c.says), std::string::npos) << e.message;
    EXPECT_EQ(e.message.find('\n'), std::string::npos) << "one line: " << e.message;
  }
}

TEST(Config, TwoPortsMayNotShareAnAddressOrInterface) {
  Exit e = fails({"--port", "kind=tap,iface=a,address=198.18.0.2/24", "--port",
                  "kind=tap,iface=b,address=198.18.0.2/24"});
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.message.find("share the address"), std::string::npos) << e.message;
  e = fails({"--port", "kind=tap,iface=a,address=198.18.0.2/24", "--port",
             "kind=tap,iface=a,address=198.18.1.2/24"});
  EXPECT_NE(e.message.find("share iface=a"), std::string::npos) << e.message;
}

TEST(Config, BadScalarValuesNameTheOption) {
  struct Case {
    std::vector<std::string> args;
    const char* option;
  } cases[] = {
      {{"--log-level", "loud"}, "log-level"},
      {{"--workers", "0"}, "workers"},
      {{"--workers", "many"}, "workers"},
      {{"--workers", "-1"}, "workers"},
      {{"--burst", "0"}, "burst"},
      {{"--burst", "70000"}, "burst"},
      {{"--huge", "maybe"}, "huge"},
      {{"--slowpath-ring", "1000"}, "slowpath-ring"},
      {{"--idle-sleep-us", "1000001"}, "idle-sleep-us"},
      {{"--neighbour-entries", "2"}, "neighbour-entries"},
      {{"--time-wait-entries", "0"}, "time-wait-entries"},
      {{"--time-wait-entries", "16777217"}, "time-wait-entries"},
      {{"--time-wait-entries", "some"}, "time-wait-entries"},
      {{"--ooo-segments", "0"}, "ooo-segments"},
      {{"--ooo-segments-per-connection", "65536"}, "ooo-segments-per-connection"},
      {{"--ooo-segments-per-connection", "0"}, "ooo-segments-per-connection"},
      {{"--impair-rx", "loss=2"}, "impair-rx"},
      {{"--impair-tx", "wobble=1%"}, "impair-tx"},
      {{"--impair-seed", "x"}, "impair-seed"},
  };
  for (const auto& c : cases) {
    Exit e = fails(c.args);
    EXPECT_EQ(e.code, 2) << c.args[0];
    EXPECT_NE(e.message.find(c.option), std::string::npos) << e.message;
  }
}

TEST(Config, ImpairmentPerDirectionWithASeed) {
  Config c = ok({"--impair-rx", "loss=1%,reorder=10%", "--impair-tx", "duplicate=0.02,delay-us=100",
                 "--impair-seed", "1234"});
  EXPECT_DOUBLE_EQ(c.impair_rx.loss, 0.01);
  EXPECT_DOUBLE_EQ(c.impair_rx.reorder, 0.10);
  EXPECT_FALSE(c.impair_rx.duplicate > 0);
  EXPECT_DOUBLE_EQ(c.impair_tx.duplicate, 0.02);
  EXPECT_EQ(c.impair_tx.delay_us, 100u);
  EXPECT_EQ(c.impair_seed, 1234u);
  Config none = ok({});
  EXPECT_FALSE(none.impair_rx.active());
  EXPECT_FALSE(none.impair_tx.active());
}

TEST(Config, UnknownOptionAndMissingValueFail) {
  Exit e = fails({"--frobnicate"});
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.message.find("frobnicate"), std::string::npos) << e.message;
  e = fails({"--workers"});
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.message.find("workers"), std::string::npos) << e.message;
}

TEST(Config, HelpAndVersionExitZero) {
  Exit e = fails({"--help"});
  EXPECT_EQ(e.code, 0);
  for (const char* opt : {"--port", "--workers", "--log-level", "--config", "--idle-sleep-us",
                          "--huge", "--neighbour-entries", "--eal", "--time-wait-entries"})
    EXPECT_NE(e.message.find(opt), std::string::npos) << opt;
  e = fails({"--version"});
  EXPECT_EQ(e.code, 0);
  EXPECT_NE(e.message.find("chimneyd"), std::string::npos);
}

TEST(Config, FileValuesApplyAndTheCommandLineWins) {
  std::string path = write_file("chimney_test.conf",
                                "# comment\n"
                                "log-level = debug\n"
                                "workers = 3\n"
                                "port = kind=tap,iface=f0,address=198.18.5.2/24\n"
                                "port = kind=tap,iface=f1,address=198.18.6.2/24\n"
                                "eal = --file-prefix=x --log-level=lib.eal:debug\n");
  Config c = ok({"--config", path, "--workers", "2"});
  EXPECT_EQ(c.config_file, path);
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.workers, 2u);  // command line wins
  ASSERT_EQ(c.ports.size(), 2u);
  EXPECT_EQ(c.ports[1].iface, "f1");
  EXPECT_EQ(c.eal_args, (std::vector<std::string>{"--file-prefix=x", "--log-level=lib.eal:debug"}));

  // Ports given on the command line replace the file's.
  c = ok({"--config", path, "--port", "kind=tap,iface=c0,address=198.18.7.2/24"});
  ASSERT_EQ(c.ports.size(), 1u);
  EXPECT_EQ(c.ports[0].iface, "c0");
}

TEST(Config, BadFileValuesNameTheOptionAndFile) {
  std::string path = write_file("chimney_bad.conf", "workers = lots\n");
  Exit e = fails({"--config", path});
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.message.find("workers"), std::string::npos) << e.message;

  path = write_file("chimney_unknown.conf", "colour = blue\n");
  e = fails({"--config", path});
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.message.find("colour"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find(path), std::string::npos) << e.message;

  e = fails({"--config", "/nonexistent/x.conf"});
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.message.find("--config"), std::string::npos) << e.message;
}

// The TIME_WAIT table: an eighth of max-connections unless given, no fewer
// than 1024 entries, and no more than max-connections below that.
TEST(Config, TimeWaitEntriesDefaultToAnEighthOfMaxConnections) {
  EXPECT_EQ(ok({}).time_wait_entries, 2048u);  // max-connections 16384
  EXPECT_EQ(ok({"--max-connections", "1000000"}).time_wait_entries, 125000u);
  EXPECT_EQ(ok({"--max-connections", "4000"}).time_wait_entries, 1024u);
  EXPECT_EQ(ok({"--max-connections", "100"}).time_wait_entries, 100u);
  EXPECT_EQ(ok({"--max-connections", "1000000", "--time-wait-entries", "5"}).time_wait_entries, 5u);
  EXPECT_EQ(ok({"--time-wait-entries", "16777216"}).time_wait_entries, 16777216u);
  std::string path = write_file("chimney_tw.conf", "max-connections = 800000\ntime-wait-entries = 300000\n");
  Config c = ok({"--config", path});
  EXPECT_EQ(c.max_connections, 800000u);
  EXPECT_EQ(c.time_wait_entries, 300000u);
  EXPECT_EQ(ok({"--config", path, "--time-wait-entries", "7"}).time_wait_entries, 7u);  // command line wins
}

// The reassembly budgets reach the engine as given; the defaults are the engine's.
TEST(Config, ReassemblyBudgets) {
  EXPECT_EQ(ok({}).ooo_segments, chimney::tcp::EngineConfig{}.ooo_segments);
  EXPECT_EQ(ok({}).ooo_segments_per_connection, chimney::tcp::EngineConfig{}.ooo_segments_per_connection);
  const Config c = ok({"--ooo-segments", "100000", "--ooo-segments-per-connection", "256"});
  EXPECT_EQ(c.ooo_segments, 100000u);
  EXPECT_EQ(c.ooo_segments_per_connection, 256u);
}

TEST(Config, ShippedConfigFileParses) {
  Config c = ok({"--config", CHIMNEY_SOURCE_DIR "/config/chimney.conf"});
  EXPECT_EQ(c.ports.size(), 1u);
  EXPECT_EQ(c.idle_sleep_us, 50u);
}

TEST(Eal, DefaultsAddLcoresMemoryPrefixAndOneVdevPerPort) {
  Config c = ok({"--port", "kind=tap,iface=t0,address=198.18.0.2/24", "--port",
                 "kind=virtio_user,path=/tmp/v.sock,address=198.18.1.2/24", "--workers", "2"});
  EalPlan p = plan_eal("chimneyd", {}, c, HugepageInfo{false, 0}, 42);
  auto has = [&](const std::string& a) {
    return std::find(p.args.begin(), p.args.end(), a) != p.args.end();
  };
  EXPECT_EQ(p.args[0], "chimneyd");
  EXPECT_TRUE(has("-l0-2"));
  EXPECT_TRUE(has("--no-huge"));
  EXPECT_FALSE(p.hugepages);
  EXPECT_NE(p.memory_note.find("no hugetlbfs mounted"), std::string::npos) << p.memory_note;
  EXPECT_TRUE(has("--file-prefix=chimney-42"));
  EXPECT_EQ(p.file_prefix, "chimney-42");
  EXPECT_TRUE(has("--vdev=net_tap0,iface=t0"));
  EXPECT_TRUE(has("--vdev=virtio_user1,path=/tmp/v.sock,queues=3"));
  EXPECT_TRUE(has("--no-pci"));
}

TEST(Eal, HugepagesUsedWhenEnoughAreFree) {
  Config c = ok({});
  EalPlan p = plan_eal("chimneyd", {}, c, HugepageInfo{true, uint64_t{1} << 30}, 1);
  EXPECT_TRUE(p.hugepages);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "--no-huge"), 0);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "--huge-unlink"), 1);
  // Too few free: fall back.
  p = plan_eal("chimneyd", {}, c, HugepageInfo{true, 64u << 20}, 1);
  EXPECT_FALSE(p.hugepages);
  EXPECT_NE(p.memory_note.find("64 MiB free"), std::string::npos) << p.memory_note;
}

TEST(Eal, VirtioUserOnHugepagesGetsSingleFileSegments) {
  // vhost-user takes at most 8 memory files; --no-huge memory is one memfd.
  Config c = ok({"--port", "kind=virtio_user,path=/tmp/v.sock,address=198.18.0.2/24"});
  EalPlan p = plan_eal("chimneyd", {}, c, HugepageInfo{true, uint64_t{1} << 30}, 1);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "--single-file-segments"), 1);
  p = plan_eal("chimneyd", {}, c, HugepageInfo{false, 0}, 1);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "--single-file-segments"), 0);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "--no-huge"), 1);
  Config tap = ok({});
  p = plan_eal("chimneyd", {}, tap, HugepageInfo{true, uint64_t{1} << 30}, 1);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "--single-file-segments"), 0);
}

TEST(Eal, UserOptionsAreKept) {
  Config c = ok({"--port", "kind=pci,pci=0000:01:00.0,address=198.18.0.2/24"});
  EalPlan p = plan_eal("chimneyd", {"-l", "2-5", "--file-prefix", "mine"}, c, HugepageInfo{}, 1);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "-l0-1"), 0);
  EXPECT_EQ(p.file_prefix, "mine");
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "0000:01:00.0"), 1);
  EXPECT_EQ(std::count(p.args.begin(), p.args.end(), "--no-pci"), 0);
}
