"""Prints the requirements of extras of the installed marsops, one per line, from its metadata
(setup.py's extras_require), so CI installs an extra's packages without reinstalling marsops:

    python -m pip install $(python .ci/extra_requirements.py docs)
"""
import re
import sys
from importlib.metadata import requires

wanted = set(sys.argv[1:])
for req in requires("marsops") or []:
    name, _, marker = req.partition(";")
    extra = re.search(r'extra\s*==\s*"([^"]+)"', marker)
    if extra and extra.group(1) in wanted:
        rest = re.sub(r'(and\s+)?extra\s*==\s*"[^"]+"', "", marker).strip()
        rest = re.sub(r"^and\s+|\s+and$", "", rest).strip()
        print(name.strip() + (f"; {rest}" if rest else ""))
