#!/usr/bin/env bash
# The main job, end to end on a real journal: activate the bundled fixture plugin, reject a
# broken candidate while the old generation keeps serving, dry-run, roll back, show status,
# history and a verified journal. Everything lives in a temporary state directory.
set -uo pipefail
cd "$(dirname "$0")/.."

# Build, and ask cargo where it put the binaries (CARGO_TARGET_DIR, build.target-dir, …).
built=$(cargo build --quiet --bin tryswap --bin tryswap-fixture-plugin --message-format=json) || {
  echo "demo: cargo build failed" >&2
  exit 1
}
executable() { # the path cargo reported for binary $1
  printf '%s\n' "$built" | sed -n "s|.*\"executable\":\"\([^\"]*/$1\)\".*|\1|p" | tail -n 1
}
tryswap_bin=$(executable tryswap)
plugin=$(executable tryswap-fixture-plugin)
if [ ! -x "$tryswap_bin" ] || [ ! -x "$plugin" ]; then
  echo "demo: cargo did not report the binaries (tryswap: '$tryswap_bin', fixture: '$plugin')" >&2
  exit 1
fi
demo=$(mktemp -d "${TMPDIR:-/tmp}/tryswap-demo.XXXXXX")
tryswap() { "$tryswap_bin" --config "$demo/tryswap.toml" "$@"; }
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

# step EXPECTED-EXIT ARGS…: runs `tryswap ARGS…`, shows its exit code, and remembers every
# step whose exit code is not the one the demo expects.
failed=()
step() {
  local want=$1
  shift
  printf '\n$ tryswap %s\n' "$*"
  tryswap "$@"
  local got=$?
  echo "(exit $got)"
  if [ "$got" -ne "$want" ]; then
    echo "demo: expected exit $want from 'tryswap $*', got $got" >&2
    failed+=("tryswap $* (exit $got, expected $want)")
  fi
}

step 0 activate demo "$plugin" --config-file "$demo/v1.toml"
step 0 activate demo "$plugin" --config-file "$demo/v2.toml"
step 2 activate demo "$plugin" --config-file "$demo/wrong-version.toml"
step 2 try demo "$plugin" --config-file "$demo/sick.toml"
step 0 status
step 0 rollback demo
step 0 history demo
step 0 --json status
step 0 journal verify

if [ "${#failed[@]}" -ne 0 ]; then
  printf '\ndemo: FAILED, %d step(s) did not exit as expected:\n' "${#failed[@]}" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\ndemo: every step exited as expected\n'
