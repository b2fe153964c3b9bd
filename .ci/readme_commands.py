"""Prints commands from the README's fenced blocks, so CI runs them as written (never copies).

A block is picked by the HTML comment on the line before its opening fence, which the rendered
README does not show. The comment names each line of the block, in order:

    <!-- ci: install test train -->
    ```bash
    pip install -e ".[dev]"    # a comment
    python -m pytest -q
    python train.py
    ```

    python .ci/readme_commands.py install       # prints: pip install -e '.[dev]'
    python .ci/readme_commands.py --list        # every name, with its command

A line's trailing comment is dropped (so CI can append arguments) and its words are printed
quoted for the shell (shlex: the same words, perhaps quoted differently).

Fails (exit 1) if the name is not in the README, is named twice, or a marked block's line count
differs from its names, so a README edit cannot silently drop a command from CI.
"""
import re
import shlex
import sys
from pathlib import Path

MARK = re.compile(r"^<!--\s*ci:\s*(.*?)\s*-->\s*$")
README = Path(__file__).resolve().parent.parent / "README.md"


def commands(text: str) -> dict:
    """{name: command line} from every marked block of `text`."""
    lines = text.splitlines()
    found = {}
    for i, line in enumerate(lines):
        mark = MARK.match(line)
        if not mark:
            continue
        names = mark.group(1).split()
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise SystemExit(f"README.md:{i + 1}: a ci: marker must stand right above a fenced block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise SystemExit(f"README.md:{i + 2}: unterminated fenced block")
        body = [ln for ln in lines[i + 2:end] if ln.strip()]
        if len(body) != len(names):
            raise SystemExit(f"README.md:{i + 1}: the marker names {len(names)} commands ({' '.join(names)}) "
                             f"but its block has {len(body)} lines")
        for name, command in zip(names, body):
            if name in found:
                raise SystemExit(f"README.md:{i + 1}: command name {name!r} is marked twice")
            found[name] = shlex.join(shlex.split(command, comments=True))
    return found


def main(argv) -> int:
    found = commands(README.read_text())
    if argv == ["--list"]:
        for name, command in found.items():
            print(f"{name}: {command}")
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] not in found:
        print(f"README.md marks no command {argv[0]!r}; it marks {sorted(found)}", file=sys.stderr)
        return 1
    print(found[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
