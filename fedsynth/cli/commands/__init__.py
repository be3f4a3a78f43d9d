"""The library's own commands, which need no role package.

``meta``, ``valmeta``, ``ca``, ``audit``, ``demo-data``, ``model``, ``health``,
``version``: none of them needs a role package.
"""
