"""A client in another language: Node.js (@grpc/grpc-js) moves money with the same .proto files.

``tests/e2e/node/transfer.js`` loads ``protos/bank/v1`` with ``@grpc/proto-loader`` and
runs a whole transfer against both services. Without ``node`` the test is skipped, unless
``REQUIRE_NODE=1`` makes that a failure; a missing ``node_modules/`` is installed with
``npm ci`` first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "node" / "transfer.js"
NODE_PACKAGES = ("@grpc/grpc-js", "@grpc/proto-loader")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        message = "node is not installed: the Node.js client test did not run"
        if os.environ.get("REQUIRE_NODE") == "1":
            pytest.fail(message)
        pytest.skip(f"{message}; set REQUIRE_NODE=1 to make this a failure")
    return node


def _install_node_packages() -> None:
    """``npm ci`` from package-lock.json, when the client's packages are not installed."""
    if all((ROOT / "node_modules" / name / "package.json").exists() for name in NODE_PACKAGES):
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node_modules/ is missing and npm is not installed: run `npm ci`")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"


def test_node_client_moves_money_with_the_same_protos(bank):
    node = _node()
    _install_node_packages()

    done = subprocess.run(
        [node, str(SCRIPT), bank.account.address, bank.transfer.address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    transfer, source, target = result["transfer"], result["from"], result["to"]
    assert transfer["state"] == "TRANSFER_STATE_COMPLETED"
    assert transfer["from_account_id"] == source["account_id"]
    assert transfer["to_account_id"] == target["account_id"]
    assert (transfer["amount"], transfer["currency"], transfer["failure_reason"]) == (
        "250",
        "EUR",
        "",
    )
    assert (source["balance"], source["reserved"], source["available"]) == ("750", "0", "750")
    assert (target["balance"], target["reserved"], target["available"]) == ("250", "0", "250")
    assert source["reservations"] == [] and target["reservations"] == []
