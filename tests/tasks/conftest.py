"""Make the task test helpers (meshkit) and the in-memory PBFT harness importable."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent / "consensus"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
