"""Kademlia cost on an in-memory network: join convergence, lookup messages and hops.

For each ``--nodes`` N, all N DhtNode cores bootstrap through one peer at the same
instant (a self-lookup each, then the join refresh) and we report the virtual time until every
bootstrap finished and the share of each node's true 20 closest peers in its routing
table. Then ``--lookups`` FIND_NODE lookups run from random nodes for random PeerIds:
requests sent per lookup, hops, virtual duration (``--latency`` seconds per message
hop) and how often the result equals the true 20 closest peers (brute force;
``recall``: the mean share of them in the result). Every message goes through the wire
codec; background bucket refreshes keep running. ``--loss P`` drops each request and
each answer with probability P (join and lookups alike).
Usage: ``python bench/dht.py --nodes 200 1000 [--loss 0.02] [--seed S] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from node.dht.keys import kad_key, xor_distance
from node.dht.memnet import MemNet
from node.dht.record_store import NamespacedValidator, PublicKeyValidator
from node.dht.routing_table import K


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _all_finished(net: MemNet, pending: dict[bytes, int]) -> bool:
    """True once every (peer, query id) in ``pending`` has a result; finished entries
    are removed, so repeated calls stay cheap."""
    for peer in list(pending):
        if (peer, pending[peer]) not in net.results:
            return False
        del pending[peer]
    return True


def run(nodes: int, lookups: int, seed: int, latency: float, loss: float = 0.0) -> dict:
    started = time.perf_counter()
    net = MemNet(seed=seed, validator=NamespacedValidator({"pk": PublicKeyValidator()}),
                 latency=latency, loss=loss)
    rng = random.Random(seed)
    ids = [rng.randbytes(38) for _ in range(nodes)]
    for peer in ids:
        net.add_node(peer)
    via = net.nodes[ids[0]].local
    joins = {p: net.start_query(p, lambda n: n.bootstrap([via], now=0.0)) for p in ids[1:]}
    net.run_until(lambda: _all_finished(net, joins))
    join_virtual_s, join_messages = net.now, net.messages
    present = 0
    for peer in ids:
        nearest = sorted((p for p in ids if p != peer),
                         key=lambda p: xor_distance(kad_key(p), kad_key(peer)))[:K]
        present += sum(p in net.nodes[peer].table for p in nearest)
    built = time.perf_counter()
    queries, hops, durations, exact, recall = [], [], [], 0, 0.0
    for _ in range(lookups):
        origin = rng.choice(ids)
        target = rng.randbytes(38)
        t0 = net.now
        result = net.run_query(origin, lambda n, t=target: n.find_node(t, now=net.now))
        want = sorted((p for p in ids if p != origin),
                      key=lambda p: xor_distance(kad_key(p), kad_key(target)))[:K]
        got = [p.peer_id for p in result.closest]
        exact += got == want
        recall += len(set(got) & set(want)) / len(want)
        queries.append(result.stats.queries)
        hops.append(result.stats.hops)
        durations.append(net.now - t0)
    table_sizes = [len(n.table) for n in net.nodes.values()]
    return {
        "nodes": nodes, "lookups": lookups, "seed": seed, "latency_s": latency, "loss": loss,
        "join_virtual_s": join_virtual_s,
        "join_messages_per_node": join_messages / nodes,
        "tables_hold_true_k_closest": present / (nodes * K),
        "messages_per_lookup": {"mean": statistics.mean(queries), "p50": _pct(queries, 0.5),
                                "p95": _pct(queries, 0.95), "max": max(queries)},
        "hops": {"mean": statistics.mean(hops), "p50": _pct(hops, 0.5), "max": max(hops)},
        "lookup_virtual_s": {"p50": _pct(durations, 0.5), "p95": _pct(durations, 0.95),
                             "p99": _pct(durations, 0.99), "max": max(durations)},
        "exact_k_closest": exact / lookups,
        "recall_k_closest": recall / lookups,
        "table_size": {"mean": statistics.mean(table_sizes), "min": min(table_sizes)},
        "wall_s": {"build": built - started, "lookups": time.perf_counter() - built},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--loss", type=float, default=0.0,
                        help="probability that a request or an answer is lost")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reports = [run(n, args.lookups, args.seed, args.latency, args.loss) for n in args.nodes]
    if args.json:
        print(json.dumps(reports, indent=2))
        return
    for r in reports:
        m, h = r["messages_per_lookup"], r["hops"]
        print(f"{r['nodes']:>5} nodes: join {r['join_virtual_s']:.2f} s virtual, "
              f"{r['join_messages_per_node']:.0f} msgs/node, tables hold "
              f"{r['tables_hold_true_k_closest']:.1%} of true 20 closest, table "
              f"{r['table_size']['mean']:.0f} contacts | lookup {m['mean']:.1f} msgs "
              f"(p50 {m['p50']}, p95 {m['p95']}, max {m['max']}), hops mean {h['mean']:.2f} "
              f"max {h['max']}, p50 {r['lookup_virtual_s']['p50']:.2f} s p99 "
              f"{r['lookup_virtual_s']['p99']:.2f} s virtual, exact "
              f"{r['exact_k_closest']:.0%} (recall {r['recall_k_closest']:.1%}) | wall join "
              f"{r['wall_s']['build']:.1f} s, "
              f"lookups {r['wall_s']['lookups']:.1f} s")


if __name__ == "__main__":
    main()
