"""Optional PNG plots for ``sim run --plot DIR`` (needs matplotlib, not a dependency).

``latency_cdf.png``: the CDF of every latency recorder with samples.
``commits_timeline.png``: each honest decision as a dot (time, node), with partition
windows shaded.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = ["available", "write", "write_plots"]


def available() -> bool:
    """True when matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def write(directory: str, result: Any, decisions: list[tuple[float, int, int]]) -> list[str]:
    """Write the plots of ``result`` (a ``runner.RunResult``) into ``directory``.
    Returns the paths written. Raises ``ImportError`` without matplotlib."""
    return write_plots(directory, result.results.latencies, result.spec, decisions)


def write_plots(
    directory: str, latencies: dict[str, Any], spec: Any,
    decisions: list[tuple[float, int, int]] | None, prefix: str = "",
) -> list[str]:
    """``{prefix}latency_cdf.png`` of the recorders in ``latencies`` (name ->
    LatencyRecorder) and ``{prefix}commits_timeline.png`` of ``decisions`` ((time_s,
    node, seq)) with the partitions of ``spec`` (a RunSpec) shaded. Returns the paths.
    Raises ``ImportError`` without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rec in sorted(latencies.items()):
        samples = rec.samples()
        if samples:
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.step(samples, ys, where="post", label=name)
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction <= x")
    ax.legend(loc="lower right")
    paths.append(os.path.join(directory, f"{prefix}latency_cdf.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5))
    for part in spec.timeline.partitions:
        end = part.end_s if part.end_s is not None else spec.duration_s
        ax.axvspan(part.start_s, end, color="orange", alpha=0.2)
    if decisions:
        ax.scatter([d[0] for d in decisions], [d[1] for d in decisions], s=1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("node")
    ax.set_title("decisions per honest node (partitions shaded)")
    paths.append(os.path.join(directory, f"{prefix}commits_timeline.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
