"""meshnode simulator: seeded discrete-event engine, network and CPU models, scenarios,
invariant checkers and reports (``sim`` command). Start with ``sim/README.md``."""
