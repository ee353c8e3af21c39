# shellcheck shell=bash
# Sourced by the scripts: one persistent cargo target dir, so the demo, the tests and CI reuse
# one build (a clean build of the dependencies is slow on small machines).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/target}"
mkdir -p "$CARGO_TARGET_DIR"
