"""Write constraints.txt: the exact versions of everything ``pip install -e .[test,plot]``
installed in this environment, and nothing else the environment happens to hold.

Run after the test suite passed in this environment (``python scripts/constraints.py``):
``scripts/test.sh`` and the Dockerfile install with ``-c constraints.txt``, so the image and
the tests get the versions that were tested, not whatever is newest that day.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version, for ``roots`` and all they require."""
    pinned: dict[str, str] = {}
    done: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements were added
    todo = [(r, "") for r in roots]  # a requirement and the extra of the dist that asked
    while todo:
        req, asked_with = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": asked_with}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            sys.exit(f"constraints: {req.name} is required but not installed; "
                     "run pip install -e '.[test,plot]' first")
        pinned[name] = dist.version
        for extra in ("", *sorted(req.extras)):
            if (name, extra) not in done:
                done.add((name, extra))
                todo += [(Requirement(child), extra) for child in dist.requires or ()]
    return pinned


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        roots += [Requirement(r) for r in extra]
    pinned = closure(roots)
    pinned.pop(canonicalize_name(project["name"]), None)
    lines = [
        "# What the test suite ran with: the closure of itx-triage[test,plot]'s requirements",
        "# as installed when it passed (written by scripts/constraints.py). Used by",
        "# scripts/test.sh and the Dockerfile: pip install -c constraints.txt ...",
        *(f"{name}=={version}" for name, version in sorted(pinned.items())),
    ]
    (ROOT / "constraints.txt").write_text("\n".join(lines) + "\n")
    print(f"constraints.txt: {len(pinned)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
