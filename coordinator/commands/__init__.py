"""The coordinator's commands.

``coordinator serve``, ``round``, ``sites``, ``report``, ``simulate`` and ``demo``,
registered with the ``fedsynth`` command line through the ``fedsynth.commands`` entry
point (see :func:`fedsynth.cli.discover_commands`), so the library never imports this role.
"""
