# Sourced by scripts/demo and scripts/test: a virtualenv in .venv with vigie installed
# (with the extras named in $VIGIE_EXTRAS), creating it and installing Debian's python3-venv
# when needed. Re-installs only when pyproject.toml changed.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

apt_install() {
    log "installing $*"
    if [ -z "${_VIGIE_APT_UPDATED:-}" ]; then
        as_root apt-get update -qq
        _VIGIE_APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
    local py=${PYTHON:-python3}
    if ! command -v "$py" >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        if ! "$py" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            apt_install python3-venv
            "$py" -m venv .venv
        fi
    fi
    local stamp=".venv/.vigie-installed${VIGIE_EXTRAS:+-$VIGIE_EXTRAS}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "installing vigie${VIGIE_EXTRAS:+[$VIGIE_EXTRAS]} into .venv"
        .venv/bin/python -m pip install -q --disable-pip-version-check \
            -e ".${VIGIE_EXTRAS:+[$VIGIE_EXTRAS]}"
        touch "$stamp"
    fi
}
