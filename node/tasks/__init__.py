"""Tasks: the local durable task engine (sqlite + trio) and the pure mesh task core.

Pure modules (no trio, sqlite, clock, sockets): :mod:`node.tasks.api` (handler registry
types), :mod:`node.tasks.schedule` (local scheduling decisions) and
:mod:`node.tasks.mesh` (the replicated mesh task application). Shells:
:mod:`node.tasks.store` (sqlite) and :mod:`node.tasks.engine` (trio service).
"""
