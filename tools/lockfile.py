"""The lock file that `make install` and `make test-distributed` install from (requirements/lock.txt).

    python tools/lockfile.py freeze VENV OUT   write VENV's packages (pip freeze, less posttrain) to OUT, pinned
    python tools/lockfile.py diff OLD NEW      say which packages moved, appeared or went between two lock files
    python tools/lockfile.py diff OLD NEW --common   only the packages both hold (NEW is a partial environment)

`make lock` uses both: it builds a venv from the newest releases of the day, runs the suites there, and only
then replaces the lock (docs/reliability.md, "Reproducible installs"). Standard library only: it runs before
anything is installed.
"""

from __future__ import annotations

import re
import subprocess
import sys

HEADER = """\
# posttrain's lock file: every package of the environment that `make install` and `make test-distributed` build
# (the dev, quantization and deepspeed extras on torch==2.13.0), pinned. pip uses it as constraints (-c), so the
# package's own dependency ranges in pyproject.toml stay loose. Refresh with `make lock` (docs/reliability.md): it
# installs the newest releases in a fresh venv, runs the suites there and rewrites this file only if they pass.
"""

_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines; comments and other lines are skipped."""
    pins = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def render(pins: dict[str, str]) -> str:
    """The lock file's text. A local version label (torch's ``+cpu``) is dropped: the same pin must also take the
    accelerator build of that release on a GPU machine."""
    lines = [f"{name}=={version.split('+')[0]}" for name, version in sorted(pins.items())]
    return HEADER + "\n".join(lines) + "\n"


def freeze(venv: str) -> dict[str, str]:
    out = subprocess.run([f"{venv}/bin/python", "-m", "pip", "freeze", "--exclude-editable", "--all",
                          "--disable-pip-version-check"], check=True, capture_output=True, text=True).stdout
    pins = parse(out)
    for tool in ("pip", "setuptools", "wheel", "posttrain"):  # the venv's own tools and the project itself
        pins.pop(tool, None)
    return pins


def diff(old: dict[str, str], new: dict[str, str], common: bool = False) -> list[str]:
    """One line per package whose pin changed: ``name old -> new``, ``name (new) version``, ``name version (gone)``;
    with ``common``, only the packages both hold."""
    lines = []
    for name in sorted(set(old) & set(new) if common else set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if a is None:
            lines.append(f"{name} (new) {b}")
        elif b is None:
            lines.append(f"{name} {a} (gone)")
        else:
            lines.append(f"{name} {a} -> {b}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "freeze":
        with open(argv[2], "w") as f:
            f.write(render(freeze(argv[1])))
        return 0
    if len(argv) in (3, 4) and argv[0] == "diff" and argv[3:] in ([], ["--common"]):
        with open(argv[1]) as f:
            old = parse(f.read())
        with open(argv[2]) as f:
            new = parse(f.read())
        moved = diff(old, new, common=argv[3:] == ["--common"])
        print("\n".join(moved) if moved else "nothing moved")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
