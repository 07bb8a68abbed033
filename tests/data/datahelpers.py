"""Hand-made rows for the data tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any


def record(
    prompt: str,
    r0: str,
    r1: str,
    safe0: Any,
    safe1: Any,
    better: Any,
    safer: Any,
    **extra: Any,
) -> dict[str, Any]:
    """One row in the PKU-SafeRLHF-30K schema."""
    return {
        "prompt": prompt,
        "response_0": r0,
        "response_1": r1,
        "is_response_0_safe": safe0,
        "is_response_1_safe": safe1,
        "better_response_id": better,
        "safer_response_id": safer,
        **extra,
    }


# Every (h_w, h_l) cell of the safety table in helpfulness order, with both orders of ids.
TABLE = [
    record("p0", "a0", "b0", True, True, 0, 0),  # safe > safe
    record("p1", "a1", "b1", False, True, 0, 1),  # unsafe > safe (T swaps)
    record("p2", "a2", "b2", False, True, 1, 1),  # safe > unsafe
    record("p3", "a3", "b3", False, False, 1, 0),  # unsafe > unsafe (T drops)
    record("p4", "a4", "b4", True, False, 1, 0),  # unsafe > safe (T swaps)
]
