"""chimney: pure-standard-library Python helpers for the chimney offload target.

Modules:
  chimney.testing  run chimneyd inside a throw-away network namespace with its
                   TAP, talk to it over DPDK telemetry, clean everything up
                   (used by tests/integration and scripts/demo).
  chimney.protocol the control protocol's messages and codec
                   (docs/CONTROL_PROTOCOL.md), mirroring lib/control/protocol.cpp.
  chimney.client   the control-socket client: Target (a session: HELLO, one
                   shared-memory region), Connection (connect, listen/accept,
                   offload; send, post_receive, disconnect, terminate), Request
                   and its Completion, events.
"""

from .client import ChimneyError, Completion, Connection, Event, RegionFull, Request, Target, region_memfd

__all__ = ["testing", "protocol", "client", "Target", "Connection", "Request", "Completion", "Event",
           "ChimneyError", "RegionFull", "region_memfd"]
