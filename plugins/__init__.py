"""meshnode plugins: the SDK authors use, signed manifests and capabilities, the host.

For authors: ``plugins.sdk`` (Plugin, task_handler, TaskContext, TaskFailed, ...) and
``plugins.testing`` (in-process Harness). For the node: ``plugins.host.PluginHost``
(discovery, verification, one supervised process per plugin), its hooks in
``plugins.bridge`` and its config section in ``plugins.config``. What runs inside a
plugin process: ``plugins.runner`` and ``plugins.sandbox``. See docs/plugins.md.
Nothing is imported here.
"""
