#!/usr/bin/env bash
# The test job behind `make test`: lint, start a throw-away PostgreSQL on loopback (when the
# server binaries are installed) and Chromium for the browser tests (when tests need it), run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
# OpenMP threads that spin while waiting steal the cores other test processes need (servers,
# workers); passive waiting keeps torch timings honest on a 2-core machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

echo "== ruff"
ruff check .
ruff format --check .

# --- PostgreSQL: a private cluster on 127.0.0.1, removed on exit ------------------------------
PGDIR=""
stop_pg() {
  if [ -n "$PGDIR" ] && [ -d "$PGDIR" ]; then
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "pg_ctl -D '$PGDIR/data' -m immediate stop" >/dev/null 2>&1 || true
    else pg_ctl -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$PGDIR"
  fi
}
trap stop_pg EXIT
if [ -z "${LENSLAB_TEST_POSTGRES_URL:-}" ] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
  PGDIR=$(mktemp -d /tmp/lenslab-pg.XXXXXX)
  PGPORT=${LENSLAB_TEST_PGPORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
  if as_pg "initdb -D '$PGDIR/data' -U postgres -A trust --no-sync >'$PGDIR/initdb.log' 2>&1" \
     && as_pg "pg_ctl -D '$PGDIR/data' -l '$PGDIR/server.log' -w -o \"-h 127.0.0.1 -p $PGPORT -k '$PGDIR' -c fsync=off -c max_connections=200\" start >/dev/null"; then
    export LENSLAB_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
    echo "== PostgreSQL on 127.0.0.1:$PGPORT"
  else
    echo "!! could not start PostgreSQL; PostgreSQL tests will be skipped"; cat "$PGDIR"/*.log 2>/dev/null | tail -20 || true
  fi
fi

# --- Chromium for the browser tests ----------------------------------------------------------
if [ -d tests/browser ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing chromium"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "!! chromium could not be installed; browser tests will be skipped"
fi

echo "== pytest"
set +e
# The slowest tests are listed in every log, so a test that grows past its share is seen.
python -m pytest --durations=15 "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": a failure here, never a silent pass.
exit $rc
