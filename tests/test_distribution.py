"""What a user installs: the installed wheel's contents and metadata, and the sdist built,
installed and imported in a clean virtualenv that has only pip (and this machine's Rust)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = {"psycopg", "psycopg2", "mysqlclient", "pymysql"}


def _check_metadata(meta: metadata.PackageMetadata) -> None:
    requires = meta.get_all("Requires-Dist") or []
    assert "django>=5.2" in [r.replace(" ", "").lower() for r in requires], requires
    assert set(meta.get_all("Provides-Extra") or []) >= EXTRAS
    assert meta["License-Expression"] == "BSD-3-Clause"
    classifiers = meta.get_all("Classifier") or []
    for c in ("Framework :: Django :: 5.2", "Programming Language :: Python :: 3.13"):
        assert c in classifiers


def test_installed_wheel_has_metadata_and_no_test_harness() -> None:
    _check_metadata(metadata.metadata("django-lido"))
    files = [str(f) for f in metadata.files("django-lido") or []]
    assert any(f.endswith("django_lido/pool.py") for f in files)
    leaked = [f for f in files if "/testing/" in f or f.startswith("harness") or "tests/" in f]
    assert not leaked, f"dev-only files in the wheel: {leaked}"


@pytest.mark.slow
def test_sdist_builds_and_installs_in_a_clean_virtualenv(tmp_path: Path) -> None:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent))
    if maturin is None:
        pytest.skip("maturin is not installed next to this interpreter (it builds the sdist)")
    out = tmp_path / "dist"
    subprocess.run([maturin, "sdist", "-o", str(out)], cwd=ROOT, check=True, capture_output=True)
    (sdist,) = out.glob("django_lido-*.tar.gz")
    names = subprocess.run(
        ["tar", "tzf", str(sdist)], check=True, capture_output=True, text=True
    ).stdout.split()
    # Top-level dev folders stay out (the Rust crates' own tests are part of their source).
    assert not [n for n in names if n.split("/")[1:2] in (["harness"], ["tests"], ["bench"])]

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # A faster build than the release profile's fat LTO: this checks that it builds and
    # installs, not how fast it runs. The target dir is kept so that later runs reuse it.
    env |= {
        "CARGO_TARGET_DIR": str(ROOT / "target" / "sdist-check"),
        "CARGO_PROFILE_RELEASE_LTO": "false",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    subprocess.run(
        [py, "-m", "pip", "install", "-q", str(sdist)], env=env, check=True, timeout=1200
    )
    probe = (
        "import django, django_lido, json; from importlib import metadata; "
        "m = metadata.metadata('django-lido'); "
        "print(json.dumps([django_lido.__file__, django.VERSION[:2], "
        "django_lido.PoolOptions(max_size=3)['max_size'], m.get_all('Requires-Dist')]))"
    )
    shown = subprocess.run(
        [py, "-c", probe], cwd="/", env=env, check=True, capture_output=True, text=True
    ).stdout
    where, django_version, max_size, requires = json.loads(shown)
    assert where.startswith(str(env_dir)), where
    assert tuple(django_version) >= (5, 2)
    assert max_size == 3
    assert any(r.replace(" ", "").lower() == "django>=5.2" for r in requires)
