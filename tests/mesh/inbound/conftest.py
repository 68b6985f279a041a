"""The in-process mesh helper lives with the outbound tests; make it importable here too."""

from __future__ import annotations

import sys
from pathlib import Path

_RIG = str(Path(__file__).resolve().parent.parent / "outbound")
if _RIG not in sys.path:
    sys.path.insert(0, _RIG)
