"""The Django source tree (the sdist of the installed Django) and the suite's few requirements."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Test requirements (import name -> pip requirement) installed only when missing.
REQUIREMENTS = {"tblib": "tblib>=3.0.0"}  # pickles tracebacks of failures under --parallel


# -- the Django source -------------------------------------------------------------------------


def installed_django_version() -> str:
    import django

    return django.__version__


def django_source(version: str | None = None) -> Path:
    """The extracted sdist of Django ``version`` (default: the installed one).

    ``$LIDO_DJANGO_SRC`` may name an extracted Django tree (with ``tests/runtests.py``) to use
    as is, or the cache root in place of ``~/.cache/django-lido/django-src``; the sdist goes
    into ``<root>/<version>/`` and is reused once extracted.
    """
    version = version or installed_django_version()
    override = os.environ.get("LIDO_DJANGO_SRC")
    if override and (Path(override) / "tests" / "runtests.py").is_file():
        return Path(override)
    root = Path(override) if override else Path.home() / ".cache" / "django-lido" / "django-src"
    cache = root / version
    target = cache / f"django-{version}"
    if (target / "tests" / "runtests.py").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archives = list(cache.glob("[Dd]jango-*.tar.gz"))
    if not archives:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-d", str(cache), f"django=={version}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        archives = list(cache.glob("[Dd]jango-*.tar.gz"))
        if proc.returncode != 0 or len(archives) != 1:
            raise RuntimeError(
                f"pip download of the Django {version} sdist failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache))
    try:
        with tarfile.open(archives[0]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backports
                tar.extractall(staging)
        tops = [p for p in staging.iterdir() if (p / "tests" / "runtests.py").is_file()]
        if len(tops) != 1:
            raise RuntimeError(f"{archives[0]} does not hold one Django tree with tests/")
        with contextlib.suppress(OSError):  # another process may have won the race
            tops[0].rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (target / "tests" / "runtests.py").is_file():
        raise RuntimeError(f"extracting {archives[0]} did not produce {target}/tests")
    return target


def ensure_requirements() -> list[str]:
    """Install the few test requirements the suite needs if missing (with pip, into this
    interpreter's environment; the same for every module list); returns what was installed.
    Optional ones (numpy, PIL, geoip2, ...) are left out: Django skips the tests that need
    them, stock and ours."""
    missing = [req for mod, req in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *missing],
            check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
