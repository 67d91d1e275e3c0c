# Shared helpers for scripts/quickstart.sh and scripts/test.sh (sourced, not run).

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found: install $* by hand" >&2; return 1; }
    if [ -z "${BASTION_APT_UPDATED:-}" ]; then
        as_root apt-get update -qq
        export BASTION_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pick_python() {
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$py"; return 0
        fi
    done
    echo "Python 3.11 or newer is required" >&2
    return 1
}

ensure_python_venv() {
    PYTHON=$(pick_python)
    if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv python3-pip
    fi
}

make_venv() {
    if [ ! -x "$1/bin/python" ]; then
        "$PYTHON" -m venv "$1"
    fi
}

# Native libraries Bastion itself loads: libarchive (archive unpacking, through libarchive-c).
ensure_native_libs() {
    if ! ldconfig -p 2>/dev/null | grep -q 'libarchive\.so'; then
        echo "== installing libarchive13"
        apt_install libarchive13
    fi
    # openssl checks ClamAV 1.5 detached .sign signatures of CVD files
    command -v openssl >/dev/null 2>&1 || apt_install openssl
}

ensure_debian_peers() {
    local missing=()
    command -v clamscan >/dev/null 2>&1 || missing+=(clamav)
    command -v clamd >/dev/null 2>&1 || [ -x /usr/sbin/clamd ] || missing+=(clamav-daemon)
    command -v clamdscan >/dev/null 2>&1 || missing+=(clamdscan)
    [ -d /usr/share/clamav-testfiles ] || missing+=(clamav-testfiles)
    command -v yara >/dev/null 2>&1 || missing+=(yara)
    command -v zip >/dev/null 2>&1 || missing+=(zip)
    # qemu's user-mode emulator: compiled databases are checked byte-identical on other CPU families
    command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)
    # the arj tool makes real ARJ archives (every method) for the ARJ unpacker's tests
    command -v arj >/dev/null 2>&1 || missing+=(arj)
    ensure_native_libs
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "== installing Debian peers: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}
