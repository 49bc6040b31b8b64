"""Where the shipped files are: ``data/`` (SLA policy, keyword rules, sample and training
mail) and ``templates/`` (acknowledgments, staff pages).

Both stay at the top of the source tree. ``triage/_resources/`` holds two relative symlinks
to them, so ``importlib.resources`` finds them in the same place whether ``triage`` is
imported from a checkout (editable install, ``PYTHONPATH``) or from a wheel, into which the
build copies the files the links point at (see ``[tool.setuptools.package-data]``). Every
path has a setting that overrides it; these are only the defaults.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(name: str) -> Path:
    """``data`` or ``templates`` as shipped with this installation of triage."""
    where = files("triage") / "_resources" / name
    # Jinja2's FileSystemLoader, glob() and open() need a real directory: triage is always
    # installed unzipped (pip never installs a zipped package).
    if not isinstance(where, Path) or not where.is_dir():
        raise FileNotFoundError(f"triage is installed without its {name}/ folder ({where}); "
                                "reinstall the itx-triage wheel")
    return where.resolve()  # in a checkout, the real folder (clearer in messages and logs)


DATA_DIR = shipped("data")
TEMPLATES_DIR = shipped("templates")
