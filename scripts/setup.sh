#!/usr/bin/env bash
# One-time (and idempotent) set-up for development, the demo and CI:
#   PostgreSQL server binaries (apt), a Python 3.11 venv in .venv with the tools,
#   the extension built once as an abi3 wheel and installed into .venv (and into
#   .venv313 when a Python 3.13 is available through pyenv).
# Safe to run again: each step is skipped when its result is already up to date.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Tools installed into .venv; the hash of this list is part of the venv's stamp.
DEV_REQS=(
  "maturin>=1.7,<2"
  "pytest>=8"
  "psycopg[binary]>=3.1"
  "psycopg-pool>=3.2"
  "SQLAlchemy>=2.0"
  "ruff>=0.4"
  "Django>=5.2,<5.3"
  "psycopg2-binary>=2.9.9"
  "tblib>=3"
  "django-db-connection-pool>=1.2"
  "PyMySQL>=1.1"
  "mysqlclient>=2.2"
  "gunicorn>=23"
  "uvicorn>=0.30"
  "daphne>=4.1"
  "hypothesis>=6.100"
  "mypy>=1.15"
  "django-stubs>=5.2,<5.3"
  "celery>=5.5,<6"
  "redis>=6.4,<8"
  "gevent>=24"
  "eventlet>=0.36"
  "psycogreen>=1.0.2"
  "django-db-geventpool>=4.0"
  "prometheus_client>=0.20"
  "opentelemetry-api>=1.25"
  "opentelemetry-sdk>=1.25"
  "selenium>=4.20"
)
# Python 3.13 runs the other supported Django (6.1, which needs Python >= 3.12).
PY313_REQS=(
  "pytest>=8"
  "gevent>=24"
  "eventlet>=0.36"
  "gunicorn>=23"
  "psycopg[binary]>=3.1"
  "psycopg-pool>=3.2"
  "Django>=6.1,<6.2"
  "django-db-connection-pool>=1.2"
  "psycopg2-binary>=2.9.9"
  "tblib>=3"
  "PyMySQL>=1.1"
  "mysqlclient>=2.2"
  "hypothesis>=6.100"
  "celery>=5.5,<6"
  "redis>=6.4,<8"
  "uvicorn>=0.30"
  "daphne>=4.1"
  "psycogreen>=1.0.2"
  "prometheus_client>=0.20"
  "opentelemetry-api>=1.25"
  "opentelemetry-sdk>=1.25"
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"
  fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
    apt_updated=1
  fi
  say "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    </dev/null >/dev/null
}

# --- PostgreSQL server binaries (the test harness starts its own throwaway clusters) ---------
if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  say "PostgreSQL: $(ls -d /usr/lib/postgresql/*/bin | tail -n1)"
else
  # Only the binaries are needed; keep Debian's own cluster from starting where possible.
  if [ -d /usr/sbin ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt_install postgresql
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
    die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
  as_root rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi

# --- PostGIS (the postgis backend's tests), GDAL/GEOS for GeoDjango, PgBouncer --------------
# Debian names the PostGIS package after the server's major version.
PG_MAJOR=$(ls -d /usr/lib/postgresql/*/bin | sed -E 's|.*/postgresql/([0-9]+)/bin|\1|' | sort -n | tail -n1)
missing=()
[ -f "/usr/share/postgresql/$PG_MAJOR/extension/postgis.control" ] ||
  missing+=("postgresql-$PG_MAJOR-postgis-3")
ldconfig -p | grep -q 'libgdal\.so' || missing+=(gdal-bin)
ldconfig -p | grep -q 'libgeos_c\.so' || missing+=(libgeos-c1v5)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
# MariaDB server binaries for the MySQL harness; headers to build mysqlclient.
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v mariadb_config >/dev/null || command -v mysql_config >/dev/null ||
  missing+=(default-libmysqlclient-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# ip and tc (network namespaces and the blackhole qdisc of the dead-network tests, see
# harness/netns.py); socat forwards into the namespace (a Python forwarder stands in).
{ command -v ip >/dev/null && command -v tc >/dev/null; } || missing+=(iproute2)
command -v socat >/dev/null || missing+=(socat)
# A throwaway Redis broker for the Celery workers (harness/redis.py).
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
# Headless Chromium and its WebDriver for the dashboard's browser test (Selenium drives it).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
say "PostGIS, GDAL, GEOS, PgBouncer, MariaDB, iproute2, socat, Redis, Chromium: present"

# --- Rust toolchain ----------------------------------------------------------------------------
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null ||
  die "cargo not found: install Rust (https://rustup.rs) and make sure cargo is on PATH"
say "Rust: $(cargo --version)"

# --- Python interpreters -----------------------------------------------------------------------
# Prints the path of an interpreter for version $1 (e.g. 3.11), or nothing.
find_python() {
  local want=$1 cand root
  # pyenv installs (the shims only run the active version, so look in versions/ directly).
  root=${PYENV_ROOT:-$HOME/.pyenv}
  if command -v pyenv >/dev/null; then root=$(pyenv root); fi
  cand=$(ls -d "$root/versions/$want".* 2>/dev/null | grep -E "/$want\.[0-9]+$" | sort -V | tail -n1 || true)
  if [ -n "$cand" ] && [ -x "$cand/bin/python$want" ]; then
    echo "$cand/bin/python$want"
    return
  fi
  for cand in "python$want" python3; do
    if command -v "$cand" >/dev/null &&
      [ "$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]; then
      command -v "$cand"
      return
    fi
  done
}

# make_venv DIR PYTHON: creates DIR if it is missing or broken.
make_venv() {
  local dir=$1 py=$2
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import pip' 2>/dev/null; then
    return
  fi
  rm -rf "$dir"
  say "creating $dir with $("$py" --version 2>&1)"
  if ! "$py" -m venv "$dir" 2>/dev/null; then
    # Debian's system Python keeps venv/ensurepip in a separate package.
    rm -rf "$dir"
    apt_install python3-venv
    "$py" -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -U pip
}

# install_reqs DIR REQ...: installs the requirements unless this exact list already was.
install_reqs() {
  local dir=$1; shift
  local want have
  want=$(printf '%s\n' "$@" | sha1sum | cut -c1-40)
  have=$(cat "$dir/.lido-reqs" 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    say "installing into $dir: $*"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
    echo "$want" >"$dir/.lido-reqs"
  fi
}

PY311=$(find_python 3.11)
[ -n "$PY311" ] || die "Python 3.11 not found (tried pyenv, python3.11, python3)"
make_venv .venv "$PY311"
install_reqs .venv "${DEV_REQS[@]}"

# --- the extension, built once as an abi3 wheel -------------------------------------------------
# The stamp hashes the content of every file (tracked or not, ignored ones excepted) that goes
# into the wheel, so both Rust and pure-Python edits trigger a rebuild.
source_hash() {
  {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      git ls-files -co --exclude-standard -- crates python Cargo.toml Cargo.lock pyproject.toml
    else
      find crates python Cargo.toml Cargo.lock pyproject.toml -type f \
        ! -path '*/__pycache__/*' ! -name '*.so' ! -name '*.pyc'
    fi
  } | LC_ALL=C sort | while IFS= read -r f; do
    if [ -f "$f" ]; then printf '%s  %s\n' "$(sha1sum <"$f" | cut -c1-40)" "$f"; fi
  done | sha1sum | cut -c1-40
}

HASH=$(source_hash)
WHEEL_STAMP=target/wheels/.lido-build-stamp
wheel=""
if [ -f "$WHEEL_STAMP" ]; then
  read -r stamp_hash stamp_wheel <"$WHEEL_STAMP" || true
  if [ "${stamp_hash:-}" = "$HASH" ] && [ -f "${stamp_wheel:-/nonexistent}" ]; then
    wheel=$stamp_wheel
    say "wheel up to date: $wheel"
  fi
fi
if [ -z "$wheel" ]; then
  say "building the wheel (release, abi3); this takes a minute or two"
  mkdir -p target/wheels
  rm -f "$WHEEL_STAMP"
  t0=$SECONDS
  .venv/bin/maturin build --release -i .venv/bin/python -o target/wheels -q
  wheel=$(ls -t target/wheels/django_lido-*.whl 2>/dev/null | head -n1 || true)
  [ -n "$wheel" ] || die "maturin build produced no wheel in target/wheels"
  echo "$HASH $wheel" >"$WHEEL_STAMP"
  say "built $wheel in $((SECONDS - t0)) s"
fi

# install_wheel DIR: installs the wheel unless this build is already installed and importable.
install_wheel() {
  local dir=$1 stamp=$1/.lido-wheel
  if [ "$(cat "$stamp" 2>/dev/null || true)" = "$HASH" ] &&
    (cd / && "$ROOT/$dir/bin/python" -c 'import django_lido._lido' 2>/dev/null); then
    return
  fi
  say "installing $wheel into $dir"
  rm -f "$stamp"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    "$wheel"
  # Import from / so that nothing from the source tree can be picked up by accident.
  (cd / && "$ROOT/$dir/bin/python" -c 'import django_lido, sys; print(
    "[setup] " + sys.argv[1] + ": django_lido " + django_lido.__version__ + " from " +
    django_lido.__file__)' "$dir")
  echo "$HASH" >"$stamp"
}

install_wheel .venv

# --- optional: Python 3.13 ---------------------------------------------------------------------
PY313=$(find_python 3.13)
if [ -n "$PY313" ]; then
  make_venv .venv313 "$PY313"
  install_reqs .venv313 "${PY313_REQS[@]}"
  install_wheel .venv313
else
  say "notice: no Python 3.13 found (pyenv or python3.13); skipping .venv313"
fi

say "ready"
