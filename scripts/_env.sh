# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/demo. Source this file; do not run it.
#
# Provides:
#   KQ_ROOT                 absolute path of the repository root
#   KQ_VENV                 the project virtualenv (default: $KQ_ROOT/.venv)
#   kq_section TITLE        print a section header
#   kq_info / kq_die        messages on stderr
#   kq_sudo CMD...          run CMD as root (directly, or through sudo)
#   kq_ensure_redis_server  make sure `redis-server` is on PATH, installing it if needed
#   kq_ensure_chromium      make sure a headless Chromium is on PATH (the dashboard's
#                           browser tests), installing Debian's `chromium` if needed
#   kq_ensure_venv [EXTRA]  create/refresh the virtualenv and install the package
#                           (editable, with optional extra such as "dev"); reinstalls only
#                           when pyproject.toml changed since the last successful install

KQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KQ_VENV="${KQ_VENV:-$KQ_ROOT/.venv}"
export KQ_ROOT KQ_VENV

kq_section() {
    printf '\n==== %s ====\n' "$*" >&2
}

kq_info() {
    printf '%s\n' "$*" >&2
}

kq_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

kq_sudo() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        kq_die "need root to run '$*' (not root and sudo is not available)"
    fi
}

# ---------------------------------------------------------------- redis-server

kq_ensure_redis_server() {
    # Some distributions install it in an sbin directory that is not on a user's PATH.
    if ! command -v redis-server >/dev/null 2>&1; then
        local d
        for d in /usr/sbin /usr/local/sbin /opt/homebrew/bin /usr/local/bin; do
            if [ -x "$d/redis-server" ]; then
                PATH="$PATH:$d"
                export PATH
                break
            fi
        done
    fi

    if ! command -v redis-server >/dev/null 2>&1; then
        kq_info "redis-server not found; installing it with the system package manager"
        if command -v apt-get >/dev/null 2>&1; then
            kq_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
            kq_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
        elif command -v dnf >/dev/null 2>&1; then
            kq_sudo dnf install -y redis
        elif command -v yum >/dev/null 2>&1; then
            kq_sudo yum install -y redis
        elif command -v brew >/dev/null 2>&1; then
            brew install redis
        else
            kq_die "redis-server is not installed and no supported package manager \
(apt-get, dnf, yum, brew) was found; install Redis >= 6.2 so that 'redis-server' is on PATH"
        fi
        hash -r
        if ! command -v redis-server >/dev/null 2>&1 && [ -x /usr/sbin/redis-server ]; then
            PATH="$PATH:/usr/sbin"
            export PATH
        fi
        command -v redis-server >/dev/null 2>&1 \
            || kq_die "redis-server is still not on PATH after installing it"
    fi
    kq_info "redis-server: $(command -v redis-server) ($(redis-server --version | head -n 1))"
}

# ---------------------------------------------------------------- chromium

kq_find_chromium() {
    local name
    for name in chromium chromium-browser google-chrome; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

# The dashboard's end-to-end tests drive a real headless Chromium through Playwright
# with executable_path: the system's browser, never one Playwright downloads.
kq_ensure_chromium() {
    export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
    if ! kq_find_chromium >/dev/null; then
        kq_info "chromium not found; installing it with the system package manager"
        if command -v apt-get >/dev/null 2>&1; then
            kq_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
            kq_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
        elif command -v dnf >/dev/null 2>&1; then
            kq_sudo dnf install -y chromium
        else
            kq_die "chromium is not installed and no supported package manager (apt-get, \
dnf) was found; install Chromium so that 'chromium' is on PATH"
        fi
        hash -r
        kq_find_chromium >/dev/null || kq_die "chromium is still not on PATH after installing it"
    fi
    # The browser tests fail (rather than skip) when the browser is missing.
    export KQ_REQUIRE_BROWSER=1
    kq_info "chromium: $(kq_find_chromium)"
}

# ---------------------------------------------------------------- virtualenv

# Python interpreter used to create the virtualenv (override with KQ_PYTHON).
kq_base_python() {
    local candidate
    if [ -n "${KQ_PYTHON:-}" ]; then
        # Asked for by name: that one, or a clear stop (never another one silently).
        if command -v "$KQ_PYTHON" >/dev/null 2>&1 \
            && "$KQ_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            command -v "$KQ_PYTHON"
            return 0
        fi
        kq_die "KQ_PYTHON=$KQ_PYTHON is not a working Python >= 3.10 (give its full path)"
    fi
    for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    kq_die "Python >= 3.10 is required (set KQ_PYTHON to its path)"
}

kq_venv_ok() {
    [ -x "$KQ_VENV/bin/python" ] \
        && "$KQ_VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 10))' \
            >/dev/null 2>&1
}

kq_create_venv() {
    local py
    py="$(kq_base_python)"
    kq_info "creating virtualenv $KQ_VENV with $py"
    rm -rf "$KQ_VENV"
    if ! "$py" -m venv "$KQ_VENV" 2>/dev/null; then
        # Debian/Ubuntu ship venv/ensurepip separately.
        rm -rf "$KQ_VENV"
        if command -v apt-get >/dev/null 2>&1; then
            local ver
            ver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            kq_info "python venv support missing; installing python3-venv"
            kq_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
            kq_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv \
                || kq_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python${ver}-venv"
        fi
        "$py" -m venv "$KQ_VENV" || kq_die "could not create virtualenv at $KQ_VENV"
    fi
}

# Fingerprint of everything that decides what gets installed.
kq_install_fingerprint() {
    local extra="$1"
    {
        printf 'extra=%s\n' "$extra"
        "$KQ_VENV/bin/python" -c 'import sys; print(sys.version)'
        cat "$KQ_ROOT/pyproject.toml"
    } | if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi \
      | cut -d' ' -f1
}

kq_stamp_file() {
    printf '%s/.kitium-queue-install%s' "$KQ_VENV" "${1:+-$1}"
}

# kq_ensure_venv [EXTRA]
kq_ensure_venv() {
    local extra="${1:-}"
    local spec="."
    [ -n "$extra" ] && spec=".[$extra]"

    kq_venv_ok || kq_create_venv

    local want stamp
    want="$(kq_install_fingerprint "$extra")"
    stamp="$(kq_stamp_file "$extra")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        kq_info "virtualenv up to date ($KQ_VENV, install '$spec')"
        return 0
    fi
    # A plain install is satisfied by an up-to-date dev install (a superset).
    if [ -z "$extra" ]; then
        local dev_stamp
        dev_stamp="$(kq_stamp_file dev)"
        if [ -f "$dev_stamp" ] && [ "$(cat "$dev_stamp")" = "$(kq_install_fingerprint dev)" ]; then
            kq_info "virtualenv up to date ($KQ_VENV, install '.[dev]')"
            return 0
        fi
    fi

    kq_info "installing '$spec' (editable) into $KQ_VENV"
    rm -f "$KQ_VENV"/.kitium-queue-install*
    (cd "$KQ_ROOT" && "$KQ_VENV/bin/python" -m pip install -qq --disable-pip-version-check \
        -e "$spec") || kq_die "pip install -e '$spec' failed"
    printf '%s\n' "$want" >"$stamp"
}
