"""Result Codes, Error Codes and Stop reasons of RFC 2637 §2, as readable text.

Rules: this module owns the code tables, one per message, with the meanings the RFC gives them,
and the functions that turn a (result, error) pair into one sentence for logs and events. It knows
nothing else. Unknown codes are reported as such, never raised.
"""

from __future__ import annotations

from typing import Final

# General Error Codes (RFC 2637 §2.16), shared by every message that carries an Error Code.
GENERAL_ERRORS: Final[dict[int, str]] = {
    0: "no general error",
    1: "not connected (no control connection exists for this request)",
    2: "bad format (length or magic cookie wrong)",
    3: "bad value (a field was out of range or a reserved field was nonzero)",
    4: "no resource (insufficient resources to handle this command)",
    5: "bad call ID (the Call ID is invalid in this context)",
    6: "PAC error (a generic vendor-specific error occurred in the PAC)",
}

# Result Code of Start-Control-Connection-Reply (§2.2).
START_CONTROL_CONNECTION_RESULTS: Final[dict[int, str]] = {
    1: "successful channel establishment",
    2: "general error",
    3: "command channel already exists",
    4: "requester is not authorized to establish a command channel",
    5: "the protocol version of the requester is not supported",
}

# Reason of Stop-Control-Connection-Request (§2.3).
STOP_CONTROL_CONNECTION_REASONS: Final[dict[int, str]] = {
    1: "none (general request to clear the control connection)",
    2: "stop-protocol (cannot support the peer's version of the protocol)",
    3: "stop-local-shutdown (the requester is being shut down)",
}

# Result Code of Stop-Control-Connection-Reply (§2.4).
STOP_CONTROL_CONNECTION_RESULTS: Final[dict[int, str]] = {
    1: "OK (control connection closed)",
    2: "general error (control connection not closed)",
}

# Result Code of Echo-Reply (§2.6).
ECHO_RESULTS: Final[dict[int, str]] = {
    1: "OK (the Echo-Reply is valid)",
    2: "general error (Echo-Request not accepted)",
}

# Result Code of Outgoing-Call-Reply (§2.8).
OUTGOING_CALL_RESULTS: Final[dict[int, str]] = {
    1: "connected",
    2: "general error",
    3: "no carrier (the outgoing call failed for lack of a carrier)",
    4: "busy",
    5: "no dial tone",
    6: "time-out (the call was not established within the time allotted by the PAC)",
    7: "do not accept (the outgoing call was administratively prohibited)",
}

# Result Code of Incoming-Call-Reply (§2.10).
INCOMING_CALL_RESULTS: Final[dict[int, str]] = {
    1: "connect (the PAC should answer the incoming call)",
    2: "general error",
    3: "do not accept (the PAC should not accept the incoming call)",
}

# Result Code of Call-Disconnect-Notify (§2.13).
CALL_DISCONNECT_RESULTS: Final[dict[int, str]] = {
    1: "lost carrier",
    2: "general error",
    3: "admin shutdown",
    4: "request (the call was cleared by a Call-Clear-Request)",
}

GENERAL_ERROR_RESULT: Final = 2  # every reply table uses 2 for "see the Error Code"


def general_error(code: int) -> str:
    """Text of a General Error Code."""
    return GENERAL_ERRORS.get(code, f"unknown general error code {code}")


def describe(table: dict[int, str], result_code: int, error_code: int = 0) -> str:
    """One sentence for a Result Code (from ``table``) and its Error Code.

    The Error Code is only meaningful with Result Code 2 ("general error"), but a nonzero one is
    shown whatever the result, since a peer that sets it wants it read.
    """
    text = table.get(result_code, f"unknown result code {result_code}")
    if result_code == GENERAL_ERROR_RESULT or error_code != 0:
        text = f"{text}: {general_error(error_code)}"
    return text


def stop_reason(code: int) -> str:
    """Text of a Stop-Control-Connection-Request Reason."""
    return STOP_CONTROL_CONNECTION_REASONS.get(code, f"unknown reason code {code}")
