#!/usr/bin/env bash
# The main job, end to end on a real journal: activate the bundled fixture plugin, reject a
# broken candidate while the old generation keeps serving, dry-run, roll back, show status,
# history and a verified journal. Everything lives in a temporary state directory.
set -uo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin tryswap --bin tryswap-fixture-plugin || exit 1
bin="$PWD/target/debug"
demo=$(mktemp -d "${TMPDIR:-/tmp}/tryswap-demo.XXXXXX")
tryswap() { "$bin/tryswap" --config "$demo/tryswap.toml" "$@"; }
cleanup() { tryswap stop demo >/dev/null 2>&1; rm -rf "$demo"; }
trap cleanup EXIT

cat >"$demo/tryswap.toml" <<TOML
state_dir = "state"

[[slot]]
name = "demo"
args = ["--config", "{config}", "--cookie-key", "TRYSWAP_PLUGIN", "--cookie-value", "demo"]
start_timeout = "5s"
drain_timeout = "2s"
stop_timeout = "2s"

[slot.handshake]
magic_cookie_key = "TRYSWAP_PLUGIN"
magic_cookie_value = "demo"
app_protocol_versions = [1]
protocols = ["grpc"]

[slot.probe]
kind = "grpc"
period = "50ms"
timeout = "1s"
success_threshold = 1
failure_threshold = 3
TOML
echo 'message = "v1"' >"$demo/v1.toml"
echo 'message = "v2"' >"$demo/v2.toml"
echo 'app_version_override = 9' >"$demo/wrong-version.toml"
echo 'never_healthy = true' >"$demo/sick.toml"
plugin="$bin/tryswap-fixture-plugin"

step() { printf '\n$ tryswap %s\n' "$*"; tryswap "$@"; echo "(exit $?)"; }

step activate demo "$plugin" --config-file "$demo/v1.toml"
step activate demo "$plugin" --config-file "$demo/v2.toml"
step activate demo "$plugin" --config-file "$demo/wrong-version.toml"
step try demo "$plugin" --config-file "$demo/sick.toml"
step status
step rollback demo
step history demo
step --json status
step journal verify
