"""The library's own commands (``meta``, ``ca``, ``audit``, ``demo-data``, ``model``,
``health``, ``version``): none of them needs a role package."""
