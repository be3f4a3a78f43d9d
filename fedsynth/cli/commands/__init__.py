"""The library's own commands, which need no role package.

The library's own commands (``meta``, ``ca``, ``audit``, ``demo-data``, ``health``,
``version``): none of them needs a role package.
"""
