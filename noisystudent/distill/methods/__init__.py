"""Every distillation method, one file each; importing this package imports (so registers) them all.

The files are discovered from this folder (:mod:`pkgutil`), so a new ``<name>.py`` with a
:func:`~noisystudent.distill.register_method` class is found with no list to keep in sync
(``tests/test_distill_registry.py`` checks that every file here registers a method).
"""

import importlib
import pkgutil

MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
