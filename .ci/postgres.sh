#!/usr/bin/env bash
# A throwaway PostgreSQL server for the storage contract tests.
#
#   eval "$(bash .ci/postgres.sh)"     # start; exports PROMPTBO_TEST_POSTGRES_URL
#   bash .ci/postgres.sh stop          # stop it and delete its files
#
# Installs Debian's postgresql when no server binaries are found, initializes a cluster
# in a temporary folder (trust authentication, listening on 127.0.0.1 only, its unix
# socket inside that folder), starts it and creates the database promptbo_test. Only the
# export lines go to stdout; progress goes to stderr. Starting twice reuses the server;
# PROMPTBO_PG_STARTED=1 is exported only by the start that created it, so a caller stops
# only a server it started (another run may be using a reused one).
# PROMPTBO_PG_PORT picks the port (default 54329).
set -euo pipefail

PORT="${PROMPTBO_PG_PORT:-54329}"
DB=promptbo_test
STATE_FILE="${TMPDIR:-/tmp}/promptbo-postgres-${PORT}.dir"
URL="postgresql://postgres@127.0.0.1:${PORT}/${DB}"

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

as_owner() {
    # initdb and the server refuse to run as root: use the postgres account then.
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

stop() {
    if [ ! -f "$STATE_FILE" ]; then
        log "no server started by this script on port ${PORT}"
        return 0
    fi
    local dir bin
    dir=$(cat "$STATE_FILE")
    bin=$(find_bin)
    if [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir" "$STATE_FILE"
    log "stopped and removed $dir"
}

start() {
    local bin dir
    bin=$(find_bin || true)
    if [ -z "$bin" ]; then
        log "installing postgresql"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
        bin=$(find_bin)
    fi

    if [ -f "$STATE_FILE" ]; then
        dir=$(cat "$STATE_FILE")
        if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
            log "reusing the server in $dir"
            echo "export PROMPTBO_TEST_POSTGRES_URL=${URL}"
            return 0
        fi
        rm -rf "$dir" "$STATE_FILE"
    fi

    dir=$(mktemp -d "${TMPDIR:-/tmp}/promptbo-pg.XXXXXX")
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    echo "$dir" >"$STATE_FILE"

    log "initializing a cluster in $dir with $bin"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >&2
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p ${PORT} -k $dir -c fsync=off" start >&2 || {
        cat "$dir/server.log" >&2
        exit 1
    }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
    log "running on 127.0.0.1:${PORT}, database ${DB}"
    echo "export PROMPTBO_TEST_POSTGRES_URL=${URL} PROMPTBO_PG_STARTED=1"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 [start|stop]" >&2
        exit 2
        ;;
esac
