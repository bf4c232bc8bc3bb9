#!/usr/bin/env bash
# Builds the vpp image (default tag vpp:local) from binaries built on this
# machine, with no registry: FROM scratch plus the binaries and every shared
# library they link (deploy/Dockerfile says what goes in).
#
#   deploy/build-image.sh            image from target/release
#   deploy/build-image.sh --build    cargo build --release first
#
# Environment:
#   VPP_BIN          the vpp binary        [target/release/vpp]
#   VPP_LOADGEN_BIN  the vpp-loadgen binary [target/release/vpp-loadgen]
#   VPP_IMAGE        the tag               [vpp:local]
#   VPP_STRIP        0 keeps debug info in the image's binaries [1]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
image="${VPP_IMAGE:-vpp:local}"
vpp_bin="${VPP_BIN:-$root/target/release/vpp}"
loadgen_bin="${VPP_LOADGEN_BIN:-$root/target/release/vpp-loadgen}"

die() { echo "build-image: $*" >&2; exit 1; }

build=0
for arg in "$@"; do
  case "$arg" in
    --build) build=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $arg (try --help)" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 \
  || die "docker is not running (docker info failed; start the daemon, or check your access to its socket)"
command -v ldd >/dev/null 2>&1 || die "ldd is not installed (it lists the libraries to copy)"

if [ "$build" = 1 ]; then
  echo "== cargo build --release (vpp, vpp-loadgen)"
  (cd "$root" && cargo build --release -p vpp-runtime --bin vpp -p vpp-load-tests --bin vpp-loadgen)
fi

for bin in "$vpp_bin" "$loadgen_bin"; do
  [ -x "$bin" ] || die "no binary at $bin (build it with --build, or set VPP_BIN / VPP_LOADGEN_BIN)"
done

ctx="$(mktemp -d "${TMPDIR:-/tmp}/vpp-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs" "$ctx/data"
cp "$root/deploy/Dockerfile" "$ctx/Dockerfile"

echo "== binaries"
cp "$vpp_bin" "$ctx/rootfs/vpp"
cp "$loadgen_bin" "$ctx/rootfs/vpp-loadgen"
if [ "${VPP_STRIP:-1}" != 0 ] && command -v strip >/dev/null 2>&1; then
  # Keeps the symbols, so backtraces still name functions; drops line tables.
  strip --strip-debug "$ctx/rootfs/vpp" "$ctx/rootfs/vpp-loadgen"
fi
for f in vpp vpp-loadgen; do
  awk -v f="/$f" -v s="$(stat -c %s "$ctx/rootfs/$f")" 'BEGIN { printf "   %-13s %5.1f MB\n", f, s / 1e6 }'
done

echo "== shared libraries (ldd)"
# Lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
# `/lib64/ld-linux-x86-64.so.2 (0x…)`; linux-vdso has no file.
listing="$(ldd "$ctx/rootfs/vpp" "$ctx/rootfs/vpp-loadgen")" || die "ldd failed on the binaries"
if grep -q 'not found' <<<"$listing"; then
  die "a library the binaries need is missing on this machine: $(grep 'not found' <<<"$listing" | head -1 | xargs)"
fi
# Skips the `/path/to/binary:` headers ldd prints when given two files.
libs="$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' <<<"$listing" | sort -u)"
[ -n "$libs" ] || die "ldd listed no libraries (a static build?); this script expects dynamically linked binaries"
for lib in $libs; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  # -L: copy the file a symlink points to, under the name the loader asks for.
  cp -L "$lib" "$ctx/rootfs$lib"
  echo "   $lib"
done

echo "== docker build -t $image"
docker build -t "$image" "$ctx"
size="$(docker image inspect -f '{{.Size}}' "$image")"
echo "== built $image ($(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }'))"
