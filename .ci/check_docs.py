"""After a docs build: every public module, function, class and method of marsops is in the built
inventory (docs/_build/html/objects.inv), so nothing public goes undocumented.

Public: every module whose dotted name has no part starting with "_"; in it, every function and
class it defines whose name does not start with "_"; in those classes, every method they define
whose name does not start with "_". A name that ``marsops`` re-exports may be documented as
``marsops.NAME`` instead. Exit 1 with the missing names.
"""
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

from sphinx.util.inventory import InventoryFile

import marsops

inv_path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html/objects.inv")
with open(inv_path, "rb") as f:
    inventory = InventoryFile.load(f, "", lambda base, uri: uri)
documented = set()
for kind, entries in (inventory.data if hasattr(inventory, "data") else inventory).items():
    if kind.startswith("py:"):
        documented.update(entries)

exported = {id(getattr(marsops, n)): n for n in marsops.__all__}
modules = ["marsops"] + [m.name for m in pkgutil.walk_packages(marsops.__path__, "marsops.")
                         if not any(p.startswith("_") for p in m.name.split(".")[1:])]
missing, checked = [], 0


def need(*names):
    global checked
    checked += 1
    if not any(n in documented for n in names):
        missing.append(names[0])


for name in marsops.__all__:
    need(f"marsops.{name}")
for modname in sorted(modules):
    module = importlib.import_module(modname)
    need(modname)
    for attr, obj in vars(module).items():
        if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != modname:
            continue
        alias = f"marsops.{exported[id(obj)]}" if id(obj) in exported else None
        need(f"{modname}.{attr}", *([alias] if alias else []))
        if inspect.isclass(obj):
            for meth, fn in vars(obj).items():
                if not meth.startswith("_") and (inspect.isfunction(fn) or isinstance(fn, (property, staticmethod,
                                                                                              classmethod))):
                    need(f"{modname}.{attr}.{meth}", *([f"{alias}.{meth}"] if alias else []))

if missing:
    print(f"check_docs: {len(missing)} of {checked} public names are not in the API reference:")
    for name in missing:
        print("  ", name)
    sys.exit(1)
print(f"check_docs: all {checked} public modules, functions, classes and methods are documented")
