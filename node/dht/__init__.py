"""Kademlia discovery: pure routing table, lookups, wire codec, record store, handler.

Pure modules (no trio, libp2p, socket, time): ``keys``, ``routing_table``, ``lookup``,
``messages``, ``wire``, ``record_store``, ``handler``, ``core``. The node's trio shell
drives them over libp2p streams; the simulator drives the same code over its model.
"""
