# Shared helpers for scripts/test and scripts/run. Source, do not execute.
# shellcheck shell=bash

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Install Debian packages that are missing (apt-get update only when needed).
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run as root, or install them)"
  log "installing ${missing[*]} with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# clamd_ping SOCKET: true when clamd answers PING on that Unix socket now.
clamd_ping() {
  python3 - "$1" <<'PY'
import socket, sys
try:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(sys.argv[1])
    s.sendall(b"zPING\0")
    sys.exit(0 if s.recv(16).startswith(b"PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

# wait_for_clamd SOCKET SECONDS [PID]: wait until clamd answers PING on
# SOCKET; give up after SECONDS, or as soon as process PID (when given) dies.
wait_for_clamd() {
  local socket=$1 seconds=${2:-60} pid=${3:-} deadline
  deadline=$(($(date +%s) + seconds))
  while :; do
    clamd_ping "$socket" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# run_clamd_conf DIR DATABASE_DIR FOREGROUND: print the clamd.conf that
# scripts/run starts its clamd with (socket DIR/clamd.sock, log
# DIR/clamd.log, spool DIR/tmp; FOREGROUND yes or no). scripts/test starts
# a second clamd from this very function, and a test uploads 30 MiB
# through it, so a change here that breaks large uploads fails the suite.
# The limits scan every upload otadepot accepts whole: AlertExceedsMax yes,
# and StreamMaxLength, MaxScanSize and MaxFileSize of 2000M, above
# otadepot's largest upload (http.max_upload_bytes, at most 1984 MiB with
# the scanner on). No `User`: clamd keeps the identity it was started
# with, which owns DIR.
run_clamd_conf() {
  local dir=$1 database=$2 foreground=$3
  cat <<CONF
LocalSocket $dir/clamd.sock
DatabaseDirectory $database
TemporaryDirectory $dir/tmp
PidFile $dir/clamd.pid
LogFile $dir/clamd.log
LogTime yes
Foreground $foreground
AlertExceedsMax yes
StreamMaxLength 2000M
MaxScanSize 2000M
MaxFileSize 2000M
CONF
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup, or put ~/.cargo/bin on PATH)"
  # The C parts of the build: a compiler and linker, and make for
  # jemalloc (the server's allocator).
  command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || apt_install build-essential
}
