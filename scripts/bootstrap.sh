#!/usr/bin/env bash
# Install SJE and its development tools into .venv. SJE itself needs nothing else: with no broker
# configured it keeps its queue in an embedded SQLite file.
# With --test, also make sure what the test suite talks to is there: Redis and RabbitMQ reachable
# (installed with apt-get and started when they are not) and Debian's chromium.
# Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
FOR_TESTS=0
case "${1:-}" in
  --test) FOR_TESTS=1 ;;
  "") ;;
  *) echo "usage: scripts/bootstrap.sh [--test]   (--test: also the servers the tests need)" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
REDIS_URL_HOST=127.0.0.1
REDIS_PORT=${SJE_REDIS_PORT:-6379}
AMQP_HOST=127.0.0.1
AMQP_PORT=5672

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

"$PYTHON" - <<'PY' || { echo "SJE needs Python >= 3.10 (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import sje, pytest, ruff, mypy" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.sje-installed ]; then
  say "installing SJE and its development tools into .venv"
  .venv/bin/python -m pip install -q --upgrade "pip>=25.1"
  .venv/bin/python -m pip install -q -e . --group dev
  touch .venv/.sje-installed
fi

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "Cannot install $* automatically (no apt-get): install it with your package manager." >&2
    exit 1
  fi
  say "installing $* with apt-get"
  apt-get update -q >/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

amqp_up() {
  .venv/bin/python - "$AMQP_HOST" "$AMQP_PORT" <<'PY'
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        s.settimeout(2)
        s.sendall(b"AMQP\x00\x00\x09\x01")  # a server answers with connection.start
        sys.exit(0 if s.recv(1) == b"\x01" else 1)
except OSError:
    sys.exit(1)
PY
}

redis_up() {
  .venv/bin/python - "$REDIS_URL_HOST" "$REDIS_PORT" <<'PY'
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

if [ "$FOR_TESTS" -eq 0 ]; then
  say "ready: .venv is installed (run .venv/bin/sje up --example)"
  exit 0
fi

# the test suite starts private Redis servers (AOF, TLS) of its own, so the binary is needed
# even when a Redis already answers; openssl makes the TLS tests' certificates
command -v redis-server >/dev/null || apt_install redis-server
command -v openssl >/dev/null || apt_install openssl
# the dashboard tests (tests/browser) drive Debian's Chromium; Playwright's own download is not used
[ -x /usr/bin/chromium ] || apt_install chromium

if ! redis_up; then
  say "starting redis-server on $REDIS_URL_HOST:$REDIS_PORT (append-only file in .sje-data/redis)"
  mkdir -p .sje-data/redis
  redis-server --daemonize yes --bind "$REDIS_URL_HOST" --port "$REDIS_PORT" \
    --appendonly yes --dir "$PWD/.sje-data/redis" --logfile "$PWD/.sje-data/redis/redis.log"
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "redis-server did not come up; see .sje-data/redis/redis.log" >&2; exit 1; }
fi

# the amqp:// backend's tests (tests/integration/test_amqp_queue.py) need RabbitMQ
command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
if ! amqp_up; then
  say "starting rabbitmq-server on $AMQP_HOST:$AMQP_PORT"
  rabbitmq-server -detached || true
  for _ in $(seq 1 600); do amqp_up && break; sleep 0.1; done
  amqp_up || { echo "rabbitmq-server did not come up; see /var/log/rabbitmq" >&2; exit 1; }
fi
say "ready: .venv is installed, Redis answers on $REDIS_URL_HOST:$REDIS_PORT and RabbitMQ on $AMQP_HOST:$AMQP_PORT"
