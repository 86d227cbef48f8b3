#!/usr/bin/env bash
# Checks the Prometheus alert rules and runs their unit tests with Debian's promtool,
# installing the `prometheus` package when it is missing (as root). The package's service is
# not started: the tests start their own servers.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "installing Debian's prometheus package (promtool, prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's service from starting while it installs.
  no_start=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    no_start=1
  fi
  apt-get install -y -q --no-install-recommends prometheus \
    || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }
  if [ "$no_start" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
fi

promtool --version | head -n 1
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
promtool check config deploy/prometheus/prometheus.yml
