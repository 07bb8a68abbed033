"""What a data load kept and dropped, as text for people and one JSON line for programs.

>>> s = DataSummary(source="sample", split="train", pairs_mode="safedpo", rows=10, pairs=7,
...                 swapped=2, truncated=1, truncated_responses=1,
...                 dropped={"both_unsafe": 3})
>>> s.to_json()
'{"dropped": {"both_unsafe": 3}, "pairs": 7, "pairs_mode": "safedpo", "rows": 10, "source":
"sample", "split": "train", "swapped": 2, "truncated": 1, "truncated_responses": 1}'
>>> print(s.to_text())
source: sample (split train)
pairs: safedpo
rows read: 10
pairs kept: 7
swapped by SafeDPO's T (unsafe winner, safe loser): 2
truncated (EOS cut off): 1 pair(s), 1 response(s)
dropped: 3
  both_unsafe: 3
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DataSummary", "merge_counts"]


def merge_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """Sum count dicts key by key, keys sorted.

    >>> merge_counts({"a": 1}, {"a": 2, "b": 1})
    {'a': 3, 'b': 1}
    """
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class DataSummary:
    """Counts of one load.

    rows: rows read from the source. pairs: examples kept for training (pairs, or SFT
    examples when ``pairs_mode`` starts with ``sft``). swapped: kept pairs that SafeDPO's
    T will swap (unsafe winner, safe loser; 0 for other modes). truncated: kept pairs (or
    examples) with a response cut at ``max_length`` (EOS not appended), and
    truncated_responses the responses cut; both None when nothing was tokenized.
    dropped: reason -> count.
    """

    source: str
    split: str
    pairs_mode: str
    rows: int
    pairs: int
    swapped: int = 0
    truncated: int | None = None
    truncated_responses: int | None = None
    dropped: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict."""
        out = asdict(self)
        out["dropped"] = dict(sorted(self.dropped.items()))
        return out

    def to_json(self) -> str:
        """One line of JSON, keys sorted."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_text(self) -> str:
        """Human-readable, one count per line."""
        if self.truncated is None:
            truncated = "not tokenized"
        else:
            truncated = f"{self.truncated} pair(s), {self.truncated_responses} response(s)"
        lines = [
            f"source: {self.source} (split {self.split})",
            f"pairs: {self.pairs_mode}",
            f"rows read: {self.rows}",
            f"pairs kept: {self.pairs}",
            f"swapped by SafeDPO's T (unsafe winner, safe loser): {self.swapped}",
            f"truncated (EOS cut off): {truncated}",
            f"dropped: {sum(self.dropped.values())}",
        ]
        lines += [f"  {k}: {v}" for k, v in sorted(self.dropped.items())]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()
