"""Crash points for crash-recovery tests: make a service die at a named place, like ``kill -9``.

A service calls its crash-point hook at every place where dying leaves a different state
behind (after a record, after a call was answered but before its outcome is recorded, ...).
Normally the hook does nothing. With ``BANK_CRASH_POINT=<name>`` in its environment the
service dies the first time it reaches that point — or the N-th time, with
``BANK_CRASH_AFTER=N`` — by ``os._exit``: no cleanup, no flush, no reply, exit code
``CRASH_EXIT_CODE``. Only tests set these variables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping

log = logging.getLogger(__name__)

CrashPoint = Callable[[str], None]

POINT_VARIABLE = "BANK_CRASH_POINT"
AFTER_VARIABLE = "BANK_CRASH_AFTER"

# Distinct from every code a service exits with by itself, so a test can tell the
# planned crash from any other death.
CRASH_EXIT_CODE = 86

# The account service's one point: its events are committed and the caller not yet answered.
ACCOUNT_AFTER_APPEND = "account-after-append"
ACCOUNT_POINTS = (ACCOUNT_AFTER_APPEND,)


def no_crash(point: str) -> None:
    return None


class CrashCountdown:
    """Dies on the ``after``-th time ``point`` is reached; other points pass."""

    def __init__(self, point: str, after: int = 1) -> None:
        if after < 1:
            raise ValueError(f"{AFTER_VARIABLE} must be at least 1, got {after}")
        self.point = point
        self.remaining = after

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        self.remaining -= 1
        if self.remaining > 0:
            return
        # os.write, not print or logging: nothing buffered may delay or survive the exit.
        os.write(2, f"crash point {point!r} reached: exiting with {CRASH_EXIT_CODE}\n".encode())
        os._exit(CRASH_EXIT_CODE)


def crash_point_from_env(
    points: Collection[str], environ: Mapping[str, str] = os.environ
) -> CrashPoint:
    """The hook for a service whose crash points are ``points``, as the environment arms it.

    Unset: a no-op. A name that is not one of ``points`` may belong to the other service
    (both can share one environment), so it is ignored here with a warning rather than
    refused. A malformed ``BANK_CRASH_AFTER`` is refused with ``ValueError``.
    """
    point = environ.get(POINT_VARIABLE, "")
    if not point:
        return no_crash
    raw_after = environ.get(AFTER_VARIABLE, "") or "1"
    try:
        after = int(raw_after)
    except ValueError:
        raise ValueError(f"{AFTER_VARIABLE} must be a whole number, got {raw_after!r}") from None
    if point not in points:
        log.warning(
            "%s=%s is not a crash point of this service (%s); ignored",
            POINT_VARIABLE,
            point,
            ", ".join(points),
        )
        return no_crash
    countdown = CrashCountdown(point, after)
    log.warning("armed: crash at %r on reaching it %d time(s)", point, after)
    return countdown
