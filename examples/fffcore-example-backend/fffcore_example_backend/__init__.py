"""An example out-of-tree fffcore backend (``example-loop``): one row, one tree, one level at a time.

It exists to show a backend author the whole path: a :class:`fffcore.Backend`
subclass (:mod:`.backend`), a plugin module with one hook (:mod:`.plugin`), and
an entry point in ``pyproject.toml``. ``fff check example-loop`` must pass.
"""
