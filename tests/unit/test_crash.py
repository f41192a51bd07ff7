"""Crash points armed from the environment: off by default, exact about when they fire."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shared_kernel.crash import (
    ACCOUNT_AFTER_APPEND,
    CRASH_EXIT_CODE,
    crash_point_from_env,
    no_crash,
)
from transfer_service.process import POINTS


def test_unarmed_is_the_no_op():
    assert crash_point_from_env(POINTS, environ={}) is no_crash
    assert crash_point_from_env(POINTS, environ={"BANK_CRASH_POINT": ""}) is no_crash


def test_a_point_of_the_other_service_is_ignored(caplog):
    hook = crash_point_from_env(POINTS, environ={"BANK_CRASH_POINT": ACCOUNT_AFTER_APPEND})
    assert hook is no_crash
    assert "not a crash point of this service" in caplog.text


@pytest.mark.parametrize("after", ["0", "-1", "two"])
def test_a_malformed_count_is_refused(after):
    with pytest.raises(ValueError, match="BANK_CRASH_AFTER"):
        crash_point_from_env(
            POINTS, environ={"BANK_CRASH_POINT": POINTS[0], "BANK_CRASH_AFTER": after}
        )


def _run(after: str | None, calls: list[str]) -> subprocess.CompletedProcess[str]:
    environ = {"BANK_CRASH_POINT": "after-credit-answered"}
    if after is not None:
        environ["BANK_CRASH_AFTER"] = after
    script = textwrap.dedent(
        f"""
        import sys
        from shared_kernel.crash import crash_point_from_env
        from transfer_service.process import POINTS
        hook = crash_point_from_env(POINTS, environ={environ!r})
        for n, point in enumerate({calls!r}, 1):
            hook(point)
            print(n, flush=True)
        sys.stdout.write("finished")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


def test_armed_dies_at_once_on_reaching_the_point():
    done = _run(None, ["after-record-requested", "after-credit-answered", "after-record-credited"])
    assert done.returncode == CRASH_EXIT_CODE
    assert done.stdout.split() == ["1"]
    assert "crash point 'after-credit-answered' reached" in done.stderr


def test_armed_with_a_count_dies_on_the_nth_time():
    point = "after-credit-answered"
    done = _run("3", [point, "after-record-credited", point, point, point])
    assert done.returncode == CRASH_EXIT_CODE
    assert done.stdout.split() == ["1", "2", "3"]


def test_armed_but_never_reached_lets_the_process_finish():
    done = _run("2", ["after-credit-answered"])
    assert done.returncode == 0
    assert done.stdout.endswith("finished")
