"""What an account service that runs ExecuteSteps steps in order (``Step.after_step_id``)
says in the stream's initial metadata, and what the transfer service waits to hear before
it sends a sequence."""

from __future__ import annotations

STEP_ORDER_METADATA = ("bank-step-order", "after")
