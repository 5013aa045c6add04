"""The harness itself (chimney.testing): it refuses addresses outside
198.18.0.0/15 and leaves no namespace, process or runtime directory behind,
whether chimneyd starts or not."""

import os
import stat
import subprocess

import pytest

from chimney.testing import (TargetInNamespace, TargetStartError, dpdk_runtime_dir,
                             _namespaces)
from conftest import ROOT


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that nobody reaped yet would still count: check its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("kw", [{"target_ip": "203.0.113.2"}, {"peer_ip": "100.64.1.1"},
                                {"target_ip": "198.20.0.2", "peer_ip": "198.20.0.1"},
                                {"peer_ip": "198.18.1.1"}],
                         ids=["target-testnet3", "peer-cgnat", "outside-198.18/15", "peer-off-prefix"])
def test_refuses_addresses_outside_the_test_network(chimneyd, kw):
    with pytest.raises(ValueError):
        TargetInNamespace(chimneyd, **kw)


def test_early_exit_raises_with_the_log_and_cleans_up(chimneyd, tmp_path):
    h = TargetInNamespace(chimneyd, cwd=str(ROOT), log_dir=str(tmp_path),
                          extra_args=["--log-level", "loud"])
    with pytest.raises(TargetStartError) as err:
        with h:
            pass
    assert "exited with code 2" in str(err.value)
    assert "log-level" in str(err.value)  # the log's tail is in the message
    assert h.netns not in _namespaces()
    assert not os.path.exists(dpdk_runtime_dir(h.file_prefix))


def test_failure_inside_the_block_still_cleans_up(chimneyd, tmp_path):
    h = TargetInNamespace(chimneyd, cwd=str(ROOT), log_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"):
        with h as t:
            pid = t.pid
            assert t.alive()
            sleeper = t.popen(["sleep", "60"])
            raise RuntimeError("boom")
    assert not process_exists(pid), f"chimneyd {pid} still running"
    assert not process_exists(sleeper.pid), f"child {sleeper.pid} still running"
    assert h.netns not in _namespaces()
    assert not os.path.exists(dpdk_runtime_dir(h.file_prefix))
    assert "stopped" in open(h.log_path).read()


def test_target_that_ignores_sigterm_is_killed(chimneyd, tmp_path):
    """stop_timeout passes, then SIGKILL: the context manager never hangs."""
    h = TargetInNamespace(chimneyd, cwd=str(ROOT), log_dir=str(tmp_path), stop_timeout=0.0)
    with h as t:
        pid = t.pid
    assert not process_exists(pid)
    assert h.netns not in _namespaces()


def test_control_socket_is_private_and_answers(target):
    # Its own socket per target, 0600 in a 0700 directory (issue 4).
    st = os.stat(target.control_socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(target.control_socket)).st_mode) == 0o700
    stats = target.target.stats()
    assert stats["sessions"] >= 1


def test_run_executes_inside_the_namespace(target):
    links = target.run(["ip", "-o", "link", "show"]).stdout
    assert target.iface in links
    assert target.iface not in subprocess.run(["ip", "-o", "link", "show"], text=True,
                                              capture_output=True).stdout
