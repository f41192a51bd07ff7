"""``python -m grpc_common.health_wait NAME=ADDRESS ...``: wait until every service answers
the gRPC health check with SERVING (plaintext), for ``dev.py run``.

Exit status 0 once all of them serve; 1, with a line naming each that did not, after
``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_SERVING = health_pb2.HealthCheckResponse.ServingStatus.Name(health_pb2.HealthCheckResponse.SERVING)


def status(stub: health_pb2_grpc.HealthStub) -> str:
    """The service's overall health status, or why it could not be had."""
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(services: dict[str, str], timeout: float) -> dict[str, str]:
    """Waits until each service (name -> address) serves; the last status of each that
    did not within ``timeout`` seconds (empty when all did)."""
    deadline = time.monotonic() + timeout
    channels = {name: grpc.insecure_channel(address) for name, address in services.items()}
    waiting = {name: "no answer yet" for name in services}
    try:
        while waiting:
            for name in list(waiting):
                found = status(health_pb2_grpc.HealthStub(channels[name]))
                if found == _SERVING:
                    del waiting[name]
                else:
                    waiting[name] = found
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for channel in channels.values():
            channel.close()
    return waiting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpc_common.health_wait")
    parser.add_argument("services", nargs="+", metavar="NAME=ADDRESS")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    services = {}
    for given in args.services:
        name, sep, address = given.rpartition("=")
        if not sep or not name or not address:
            parser.error(f"{given!r}: expected NAME=HOST:PORT")
        services[name] = address
    not_serving = wait_serving(services, args.timeout)
    for name, last in not_serving.items():
        print(
            f"{name} at {services[name]}: not SERVING after {args.timeout:g} s ({last})",
            file=sys.stderr,
        )
    return 1 if not_serving else 0


if __name__ == "__main__":
    sys.exit(main())
