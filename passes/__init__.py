"""Built-in passes, one per module. Importing this package registers them all.

Write a pass as described in docs/pass-authors.md: a function decorated with
`homec.registry.register_pass`, taking (graph, ctx, *, options) and returning statistics.
"""

import importlib
import pkgutil


def _register_builtin_passes() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_register_builtin_passes()
