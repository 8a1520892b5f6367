"""`meshnode init|start|status|peers|propose|decision|audit|genesis` commands.

Registered on the main parser by :func:`register`; each command is ``cmd_*(args) ->
int``. Commands that talk to a running node use the control socket (node.control).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger("meshnode.cli")


# ---- helpers ----------------------------------------------------------------------------
def _home(args: argparse.Namespace) -> Path:
    from node.cli import default_home

    return (args.home or default_home()).expanduser()


def _control(args: argparse.Namespace, method: str, params: dict | None = None, **kw):
    from node import config
    from node.control import call

    cfg = config.load(_home(args))
    return call(cfg.path(cfg.control.socket), method, params, **kw)


def _print(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))
    else:
        for k, v in obj.items():
            print(f"{k:>16}: {v}")


# ---- init / start ----------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from identity.home import IdentityHome
    from node import config

    home = _home(args)
    ident = IdentityHome(home)
    if not ident.is_enrolled():
        ident.enroll(module=args.pkcs11_module, token_label=args.token_label,
                     pin_file=args.pin_file)
    if (home / config.CONFIG_NAME).exists() and not args.force:
        raise config.ConfigError(f"{home / config.CONFIG_NAME} exists (use --force to rewrite)")
    cfg = config.NodeConfig(home=home)
    if args.listen:
        cfg.network.listen = args.listen
    cfg.network.bootstrap = args.bootstrap or []
    if args.genesis:
        cfg.consensus.genesis = str(Path(args.genesis).resolve())
    if args.metrics is not None:
        cfg.metrics.listen = args.metrics
    path = config.save(cfg)
    info = ident.describe()
    log.info("initialised %s for %s", path, info["peer_id"])
    print(f"home {home}\npeer_id {info['peer_id']}\ndid {info['did']}\nconfig {path}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    import trio

    from node.runtime import NodeRuntime

    runtime = NodeRuntime(_home(args))

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                info = await nursery.start(runtime.run)
                print(f"peer_id {info['peer_id']}\ndid {info['did']}\nid {info['id']}")
                for addr in info["listen"]:
                    print(f"listen {addr}")
                sys.stdout.flush()
                async for signum in signals:
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0


# ---- talking to a running node ---------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    status = _control(args, "status")
    if args.json:
        _print(status, True)
    else:
        keys = ["peer_id", "chain", "n", "f", "view", "primary", "in_view_change",
                "last_decided", "state_digest"]
        _print({k: status[k] for k in keys} | {"peers": len(status["peers"])}, False)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _control(args, "peers")
    if args.json:
        _print(peers, True)
    else:
        for p in peers:
            print(f"{p['peer_id']}  {'member' if p['member'] else 'peer'}")
    return 0


def cmd_propose(args: argparse.Namespace) -> int:
    op = args.data.encode() if args.data != "-" else sys.stdin.buffer.read()
    result = _control(args, "propose", {"op": op}, timeout_s=args.timeout)
    _print(result, args.json)
    return 0


def cmd_decision_show(args: argparse.Namespace) -> int:
    from consensus.messages import decode_message

    result = _control(args, "decision", {"seq": args.seq})
    cert = decode_message(result["certificate"])
    if args.out:
        from identity.home import atomic_write

        atomic_write(Path(args.out), result["certificate"], mode=0o644)
    summary = {"seq": cert.seq, "view": cert.view, "primary": cert.batch.primary,
               "requests": len(cert.batch.requests),
               "submitted_by": sorted({r.origin for r in cert.batch.requests}),
               "signers": sorted(c.sender for c in cert.commits)}
    if args.ops:
        summary["ops"] = [r.op.decode("utf-8", "replace") for r in cert.batch.requests]
    _print(summary, args.json)
    return 0


def _members(args: argparse.Namespace) -> dict[str, bytes]:
    from node import config, genesis

    path = Path(args.genesis) if args.genesis else None
    if path is None:
        cfg = config.load(_home(args))
        path = cfg.path(cfg.consensus.genesis)
    return genesis.verify(path.read_bytes()).members_map()


def cmd_decision_verify(args: argparse.Namespace) -> int:
    from consensus import certificate
    from consensus.messages import decode_message

    data = Path(args.file).read_bytes()
    batch = certificate.verify(data, _members(args))
    cert = decode_message(data)
    print(f"valid: sequence {cert.seq}, view {cert.view}, {len(batch.requests)} requests, "
          f"{len({c.sender for c in cert.commits})} signers")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from identity import canonical
    from identity.home import atomic_write

    result = _control(args, "audit", {"start": args.start})
    data = canonical.encode({"v": 1, **result})
    atomic_write(Path(args.out), data, mode=0o644)
    print(f"wrote {len(result['entries'])} entries to {args.out}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from consensus import certificate
    from identity import canonical
    from node.runtime import decided_value
    from node.storage import AuditEntry, AuditError, verify_audit_chain

    try:
        doc = canonical.decode(Path(args.file).read_bytes())
        entries = [AuditEntry(*e) for e in doc["entries"]]
        members = doc["members"]
    except (canonical.DecodeError, KeyError, TypeError) as exc:
        raise AuditError(f"not an audit export: {exc}") from None
    if args.genesis or args.home:
        members = _members(args)  # trust the genesis, not the file's own member list
    head = verify_audit_chain(entries, decided_value)
    for e in entries:
        certificate.verify(e.certificate, members)
    print(f"valid: {len(entries)} decisions, head {head.hex()}")
    return 0


def cmd_dht_lookup(args: argparse.Namespace) -> int:
    result = _control(args, "dht_lookup", {"peer_id": args.peer_id}, timeout_s=args.timeout)
    _print(result, args.json)
    return 0


def cmd_members_list(args: argparse.Namespace) -> int:
    st = _control(args, "status")
    out = {"n": st["n"], "f": st["f"], "members": st["members"], "this_node_votes": st["member"]}
    if args.json:
        _print(out, True)
    else:
        for m in st["members"]:
            print(m + ("  (this node)" if m == st["peer_id"] else ""))
        print(f"n={st['n']} f={st['f']}")
    return 0


def cmd_members_endorse(args: argparse.Namespace) -> int:
    action = "remove" if args.remove else "add"
    out = _control(args, "members.endorse", {"action": action, "peer_id": args.peer_id})
    print(f"{out['endorser']}:{out['signature'].hex()}")
    return 0


def _endorsements(values: list[str]) -> dict[str, bytes]:
    from node.cli import _fail

    out: dict[str, bytes] = {}
    for v in values:
        peer, _, sig = v.partition(":")
        try:
            out[peer] = bytes.fromhex(sig)
        except ValueError:
            _fail(f"endorsement {v[:20]}... is not PEER_ID:HEX (from `members endorse`)")
    return out


def cmd_members_change(args: argparse.Namespace) -> int:
    params = {"action": args.members_cmd, "peer_id": args.peer_id,
              "endorsements": _endorsements(args.endorsement)}
    out = _control(args, "members.change", params, timeout_s=args.timeout)
    print(f"committed at sequence {out['seq']}: {out['result']}")
    return 0


def cmd_genesis_sign(args: argparse.Namespace) -> int:
    """Sign a genesis body with this home's current key (used by `meshnode testnet`)."""
    from identity.home import IdentityHome
    from identity.pkcs11 import Token
    from node import genesis

    ident = IdentityHome(_home(args))
    state = ident.state()
    body = Path(args.body).read_bytes()
    with Token.open(ident.hsm_config()) as token:
        sig = genesis.sign_body(token.signer(ident.current_key_label(state)), body)
    print(sig.hex())
    return 0


def cmd_testnet(args: argparse.Namespace) -> int:
    from node.testnet import create

    out = create(Path(args.out), args.nodes, base_port=args.base_port,
                 metrics_base_port=args.metrics_base_port, chain=args.chain, ip=args.ip,
                 checkpoint_interval=args.checkpoint_interval)
    print(f"testnet of {args.nodes} nodes in {out}; start each with:")
    for k in range(1, args.nodes + 1):
        print(f"  meshnode start --home {out / f'node{k}'}")
    return 0


# ---- parser ----------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction, add_home) -> None:
    p = sub.add_parser("init", help="create a node home: identity (if missing) and config.toml")
    add_home(p)
    p.add_argument("--listen", action="append", metavar="MULTIADDR",
                   help="listen multiaddr (repeatable; default /ip4/0.0.0.0/tcp/4001)")
    p.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                   help="bootstrap peer multiaddr ending in /p2p/<PeerId> (repeatable)")
    p.add_argument("--genesis", metavar="FILE", help="genesis file of the mesh to join")
    p.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus endpoint ('' disables)")
    p.add_argument("--pkcs11-module", metavar="PATH", help="see `identity enroll`")
    p.add_argument("--token-label", metavar="LABEL")
    p.add_argument("--pin-file", metavar="FILE")
    p.add_argument("--force", action="store_true", help="rewrite an existing config.toml")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("start", help="run the node until SIGINT/SIGTERM")
    add_home(p)
    p.set_defaults(func=cmd_start)

    for name, func, helptext in [("status", cmd_status, "view, primary, last decision, peers"),
                                 ("peers", cmd_peers, "connected peers")]:
        p = sub.add_parser(name, help=helptext)
        add_home(p)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("propose", help="submit an operation and wait for its decision")
    add_home(p)
    p.add_argument("data", metavar="DATA", help="the operation (UTF-8 text; - reads stdin)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_propose)

    dec = sub.add_parser("decision", help="show or verify commit certificates")
    dsub = dec.add_subparsers(dest="decision_cmd", required=True, metavar="COMMAND")
    p = dsub.add_parser("show", help="the decision at a sequence number")
    add_home(p)
    p.add_argument("seq", type=int, metavar="SEQ")
    p.add_argument("--out", metavar="FILE", help="also write the certificate to FILE")
    p.add_argument("--ops", action="store_true", help="list the operations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_decision_show)
    p = dsub.add_parser("verify", help="verify a certificate offline (exit 0 only if valid)")
    add_home(p)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--genesis", metavar="FILE", help="member set (default: the home's genesis)")
    p.set_defaults(func=cmd_decision_verify)

    aud = sub.add_parser("audit", help="export or verify the hash-chained decided log")
    asub = aud.add_subparsers(dest="audit_cmd", required=True, metavar="COMMAND")
    p = asub.add_parser("export", help="write the decided log with its certificates")
    add_home(p)
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--start", type=int, default=0, metavar="SEQ")
    p.set_defaults(func=cmd_audit_export)
    p = asub.add_parser("verify", help="verify an export offline: chain and every certificate")
    add_home(p)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--genesis", metavar="FILE", help="member set to trust (default: the file's)")
    p.set_defaults(func=cmd_audit_verify)

    dht = sub.add_parser("dht", help="the Kademlia DHT (/ipfs/kad/1.0.0)")
    dsub2 = dht.add_subparsers(dest="dht_cmd", required=True, metavar="COMMAND")
    p = dsub2.add_parser("lookup", help="find and verify a peer's signed identity in the DHT")
    add_home(p)
    p.add_argument("peer_id", metavar="PEER_ID")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dht_lookup)

    mem = sub.add_parser(
        "members", help="the member (validator) set: list, endorse, add, remove",
        description="Members change only by a committed operation that carries endorsements "
        "(HSM signatures) from a quorum of the current members; the change takes effect at a "
        "checkpoint boundary. Each member's operator runs `members endorse` on their own "
        "node; anyone then submits the change with the collected endorsements.")
    msub = mem.add_subparsers(dest="members_cmd", required=True, metavar="COMMAND")
    p = msub.add_parser("list", help="current members, n and f")
    add_home(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_members_list)
    p = msub.add_parser("endorse", help="sign an endorsement of adding (or removing) PEER_ID")
    add_home(p)
    p.add_argument("peer_id", metavar="PEER_ID")
    p.add_argument("--remove", action="store_true", help="endorse removing it instead")
    p.set_defaults(func=cmd_members_endorse)
    for action in ("add", "remove"):
        p = msub.add_parser(action, help=f"propose to {action} PEER_ID (needs a quorum of "
                                         "endorsements)")
        add_home(p)
        p.add_argument("peer_id", metavar="PEER_ID")
        p.add_argument("--endorsement", action="append", default=[], metavar="PEER_ID:HEX",
                       help="an endorsement printed by `members endorse` (repeat for a quorum)")
        p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
        p.set_defaults(func=cmd_members_change)

    gen = sub.add_parser("genesis", help="genesis file tools")
    gsub = gen.add_subparsers(dest="genesis_cmd", required=True, metavar="COMMAND")
    p = gsub.add_parser("sign", help="print this identity's signature over a genesis body")
    add_home(p)
    p.add_argument("body", metavar="BODY_FILE")
    p.set_defaults(func=cmd_genesis_sign)

    p = sub.add_parser("testnet", help="create N node homes and a genesis on 127.0.0.1")
    p.add_argument("--nodes", type=int, default=4, metavar="N")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--base-port", type=int, default=4101, metavar="PORT",
                   help="node k listens on 127.0.0.1:PORT+k-1 (default 4101; 0 picks a "
                        "free range)")
    p.add_argument("--metrics-base-port", type=int, default=0, metavar="PORT",
                   help="node k serves metrics on PORT+k-1 (default: metrics off)")
    p.add_argument("--chain", default="testnet", help="chain name in the genesis")
    p.add_argument("--checkpoint-interval", type=int, default=16, metavar="K",
                   help="PBFT checkpoint interval K written into the genesis (window 4K; "
                        "default 16)")
    p.add_argument("--ip", default="127.0.0.1", metavar="TEMPLATE",
                   help="listen IPv4 address; {k} is replaced by the node number "
                        "(e.g. 10.199.0.{k} with one network namespace per node)")
    p.set_defaults(func=cmd_testnet)
