"""Optional dependencies ("extras"): a command checks its extra before doing any work and, when
a package is missing, says in one line what to install.

The packages of each extra are read from the installed distribution's metadata, so
pyproject.toml stays their one declaration. Only `importlib.util.find_spec` is used: nothing
is imported by the check.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from .errors import ConfigError

# distribution name -> import name, where they differ
_IMPORT_NAMES = {"scikit-image": "skimage", "pillow": "PIL", "simpleitk": "SimpleITK",
                 "pylibjpeg-libjpeg": "libjpeg", "onnxruntime-gpu": "onnxruntime", "numba-cuda": "numba.cuda",
                 "onnxconverter-common": "onnxconverter_common"}


def extra_packages(extra: str) -> list[str]:
    """Import names of the packages the extra ``extra`` adds (its own and its nested extras')."""
    try:
        reqs = importlib.metadata.requires("noduleflow") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    out = []
    for r in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[([^\]]*)\])?[^;]*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]", r)
        if not m or m.group(4) != extra:
            continue
        name = m.group(1).lower()
        if name == "noduleflow":  # e.g. dev = noduleflow[train,export,...]
            for sub in (m.group(3) or "").split(","):
                out += extra_packages(sub.strip())
        else:
            out.append(_IMPORT_NAMES.get(name, name.replace("-", "_")))
    return out


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False


def require_extra(extra: str, what: str) -> None:
    """Raise ConfigError naming the missing packages and the pip command when ``extra`` is not
    installed. ``what`` names the command or feature that needs it (for the message)."""
    missing = [m for m in extra_packages(extra) if not _present(m)]
    if missing:
        raise ConfigError(f"{what} needs the '{extra}' extra ({', '.join(missing)} missing): "
                          f"pip install 'noduleflow[{extra}]'")
