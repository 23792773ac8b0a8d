#!/usr/bin/env bash
# Checks deploy/ with the tools that are not Go (`make deploy-check` runs it; `make test`
# depends on that). The Go side — every metric name and label against a running sidecar,
# the dashboard's structure and PromQL, framebus.toml — is TestDeploy* in test/deploy_test.go.
#
#   PROMTOOL=/path/to/promtool deploy/check.sh
#
# promtool comes with Debian's prometheus package (apt-get install prometheus; the package
# enables a prometheus service: `systemctl disable --now prometheus` where only promtool is
# wanted). systemd-analyze is optional: without it the units are not verified, and the
# script says so.
set -euo pipefail
cd "$(dirname "$0")"

PROMTOOL=${PROMTOOL:-promtool}
if ! command -v "$PROMTOOL" >/dev/null; then
	echo "deploy/check.sh: $PROMTOOL not found: apt-get install prometheus (it provides promtool), or set PROMTOOL" >&2
	exit 1
fi

echo "== promtool check rules"
"$PROMTOOL" check rules prometheus/framebus-rules.yml
echo "== promtool test rules"
"$PROMTOOL" test rules prometheus/framebus-rules.test.yml
echo "== promtool check config"
"$PROMTOOL" check config prometheus/prometheus.yml

echo "== systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
	# verify wants the ExecStart= binaries to exist: check copies that start /bin/true.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	for unit in systemd/*.service; do
		sed -E 's|^ExecStart=[^ ]+|ExecStart=/bin/true|' "$unit" >"$tmp/$(basename "$unit")"
	done
	# verify exits 0 on an unknown or misplaced key (a typo): any output is a failure.
	if ! out=$(systemd-analyze verify "$tmp"/*.service 2>&1) || [ -n "$out" ]; then
		echo "$out"
		echo "  FAILED: systemd-analyze verify"
		exit 1
	fi
	echo "  SUCCESS:" systemd/*.service
else
	echo "  SKIPPED: systemd-analyze not found (apt-get install systemd); the units are not verified"
fi
