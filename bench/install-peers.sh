#!/usr/bin/env bash
# Installs what the benchmark peers need on Debian: Postfix (which also ships smtp-source and
# smtp-sink) without configuring or starting it, Dovecot's POP3 server (dovecot-pop3d, whose
# dovecot-core also gives the relay bench's Postfix its SASL) without starting it, and into the
# project's venv: aiosmtpd, uvloop (taube's `fast` extra) and py-spy (for --profile; optional:
# without it the benches fall back to cProfile).
# Run as root; non-interactive; never starts a system service on port 25, 110 or 143.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_PY="${VENV_PY:-$REPO_DIR/.venv/bin/python}"
POLICY_RC=/usr/sbin/policy-rc.d

log() { printf 'install-peers: %s\n' "$*" >&2; }

have_postfix() {
    command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ]
}

# policy-rc.d exiting 101 tells invoke-rc.d not to start any daemon during the install.
block_service_starts() {
    if [ -e "$POLICY_RC" ]; then
        log "$POLICY_RC already exists; leaving it as it is"
        return 1
    fi
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
    chmod 755 "$POLICY_RC"
}

install_postfix() {
    if have_postfix; then
        log "postfix already installed"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "not root: skipping postfix (the bench will skip the Postfix peers)"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    local created_policy=0
    if block_service_starts; then created_policy=1; fi
    local status=0
    apt-get update -q && apt-get install -y -q --no-install-recommends postfix || status=$?
    if [ "$created_policy" -eq 1 ]; then rm -f "$POLICY_RC"; fi
    if [ "$status" -ne 0 ]; then
        log "apt-get failed (status $status): the bench will skip the Postfix peers"
    fi
}

have_dovecot_pop3() {
    { command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; } &&
        [ -e /usr/share/dovecot/protocols.d/pop3d.protocol ]
}

install_dovecot_pop3() {
    if have_dovecot_pop3; then
        log "dovecot-pop3d already installed"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "not root: skipping dovecot-pop3d (the bench will skip the Dovecot peer)"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    local created_policy=0
    if block_service_starts; then created_policy=1; fi
    local status=0
    apt-get update -q && apt-get install -y -q --no-install-recommends dovecot-pop3d || status=$?
    if [ "$created_policy" -eq 1 ]; then rm -f "$POLICY_RC"; fi
    if [ "$status" -ne 0 ]; then
        log "apt-get failed (status $status): the bench will skip the Dovecot peer"
    fi
}

install_venv_packages() {
    if [ ! -x "$VENV_PY" ]; then
        log "no venv python at $VENV_PY: skipping aiosmtpd, uvloop and py-spy"
        return 0
    fi
    "$VENV_PY" -m pip install -q 'aiosmtpd>=1.4' 'uvloop>=0.19'
    "$VENV_PY" -m pip install -q 'py-spy>=0.3' ||
        log "py-spy could not be installed: --profile will use cProfile"
}

install_postfix
install_dovecot_pop3
install_venv_packages
log "done"
