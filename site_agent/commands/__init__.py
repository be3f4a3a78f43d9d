"""The site agent's commands: ``site estimate``, ``site run``, ``site pending``, ``site approve``.

Registered with the ``fedsynth`` command line through the ``fedsynth.commands`` entry
point (see :func:`fedsynth.cli.discover_commands`), so the library never imports this role.
"""
