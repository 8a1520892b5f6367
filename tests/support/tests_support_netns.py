"""Shared check: can this process create network namespaces? (tests only)"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid


def netns_unavailable() -> str | None:
    """None when `ip netns add` works here, else the reason a test should skip."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN)"
    probe = f"mn-probe-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`ip netns add` is not permitted here: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None
