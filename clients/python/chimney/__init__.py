"""chimney: pure-standard-library Python helpers for the chimney offload target.

Modules:
  chimney.testing  run chimneyd inside a throw-away network namespace with its
                   TAP, talk to it over DPDK telemetry, clean everything up
                   (used by tests/integration and scripts/demo).

The control-socket client (offload, send, receive, completions) comes with the
control socket; it is not here yet.
"""

__all__ = ["testing"]
