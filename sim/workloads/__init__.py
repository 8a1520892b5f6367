"""Workloads: the protocol a run simulates, behind one small interface.

The engine, network and CPU model know nothing about PBFT or Kademlia. A *workload*
attaches one :class:`sim.process.Process` per node, registers invariant checkers and
latency recorders, schedules the load, gives meaning to adversary names, and at the
end hands back its measurements and targets. ``sim run --workload NAME`` looks the
name up in :data:`WORKLOADS` and imports the module lazily, so a workload whose
protocol core is not wired yet gives a clear error instead of a fake run.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Protocol

from sim.report import LatencyRecorder, Target

if TYPE_CHECKING:
    from sim.scenario import RunSpec
    from sim.world import World

__all__ = ["WORKLOADS", "Workload", "WorkloadMissing", "WorkloadResults", "load_workload"]

#: name -> ("module", "Class", what it needs). The PBFT entry is wired by the lead.
WORKLOADS: dict[str, tuple[str, str, str]] = {
    "pbft": ("sim.workloads.pbft", "PbftWorkload",
             "the PBFT consensus adapter (sim/workloads/pbft.py, class PbftWorkload)"),
    "discovery": ("sim.workloads.discovery", "DiscoveryWorkload",
                  "the Kademlia discovery workload (sim/workloads/discovery.py)"),
    "identity": ("sim.workloads.identity", "IdentityWorkload",
                 "the identity registry workload (sim/workloads/identity.py)"),
    "tasks": ("sim.workloads.tasks", "TasksWorkload",
              "the mesh task workload over PBFT (sim/workloads/tasks.py)"),
    "selftest-echo": ("sim.workloads.echo", "EchoWorkload", "the engine self-test workload"),
}


class WorkloadMissing(RuntimeError):
    """The named workload is unknown or its module is not there yet."""


@dataclasses.dataclass
class WorkloadResults:
    """What a workload measured. ``latencies`` maps report field names
    (``commit_latency_s``, ``discovery_latency_s``, ``identity_verify_latency_s``, or
    workload-specific ones) to recorders; ``decisions`` is the number of sequence
    numbers decided by every honest node."""

    decisions: int
    latencies: dict[str, LatencyRecorder]
    targets: list[Target]
    extra: dict[str, object] = dataclasses.field(default_factory=dict)


class Workload(Protocol):
    """A protocol under simulation (see the module doc)."""

    #: Adversary strategy names this workload implements itself.
    adversaries: frozenset[str]

    def setup(self, world: World, spec: RunSpec) -> None:
        """Attach a process to every node of ``world`` (``world.attach``), register
        checkers (``world.invariants.register(checker, world)``), schedule the load in
        ``spec.timeline.load`` and apply the adversaries whose strategy is in
        :attr:`adversaries`. Raise ``ValueError`` for bad adversary parameters."""
        ...

    def results(self) -> WorkloadResults:
        """Measurements and targets after the run."""
        ...


def load_workload(name: str) -> Workload:
    """Instantiate workload ``name``. Raises :class:`WorkloadMissing` (one-line message)
    when the name is unknown or its module does not exist yet."""
    if name not in WORKLOADS:
        raise WorkloadMissing(f"unknown workload {name!r} (known: {', '.join(sorted(WORKLOADS))})")
    module_name, class_name, what = WORKLOADS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, *_parents(module_name)):
            raise
        raise WorkloadMissing(
            f"workload {name!r} is not wired yet: {what} is missing "
            "(run `sim run --workload selftest-echo` to exercise the engine)"
        ) from None
    return getattr(module, class_name)()


def _parents(module_name: str) -> list[str]:
    parts = module_name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
