#!/usr/bin/env bash
# Installs the system packages and service set-up the test suite needs (Debian, as root):
# openssl and xmlsec1 (independent implementations we test against), prometheus for its
# promtool (the alert rules docs/OPERATIONS.md gives are run by Prometheus' own rule engine;
# the package starts no server here), and checks PostgreSQL.
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(openssl xmlsec1 prometheus)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# PostgreSQL: the machine runs it; start it if it has stopped.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
echo "system dependencies ready"
