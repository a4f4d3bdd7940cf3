#!/bin/sh
# Builds the Debian package: target/debian/clacks_VERSION_ARCH.deb.
#   src/package/deb.sh                 # release build (what to install)
#   src/package/deb.sh --profile dev   # the test build (tests/package.rs), quicker
# Needs cargo-deb (cargo install cargo-deb).
set -eu
cd "$(dirname "$0")/../.."
profile=release
extra=""
if [ "${1:-}" = "--profile" ]; then
  profile="$2"
  extra="--fast"
fi
dir=$profile
[ "$profile" = dev ] && dir=debug
target="${CARGO_TARGET_DIR:-target}"
cargo build --profile "$profile" --bin clacks
rm -rf "$target/$dir/generated"
"$target/$dir/clacks" generate "$target/$dir/generated"
gzip -9nf "$target/$dir/generated"/*.1
cargo deb --no-build --profile "$profile" $extra
