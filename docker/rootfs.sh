#!/usr/bin/env bash
# The complete root filesystem of one tollgate image — the one list of what each image holds. Both readings
# build from it: docker/Dockerfile (a stage runs this, each image is `FROM scratch` + a COPY of the result)
# and the test harness (tests/src/images.rs writes the result as an OCI image-layout archive).
#
#   docker/rootfs.sh IMAGE RELEASE_DIR OUT_DIR
#
# IMAGE is webhook, proxy, certs, cni, pause, example-analysis or ctl; RELEASE_DIR holds the built binaries
# (target/release); OUT_DIR must be absent or empty. The node tests' own images (docker/test-images.Dockerfile,
# never shipped) come from here too: coredns and flame-standins (a binary like the others), flame-analysis
# (python3 from this machine with its standard library, and tests/flame/analysis.py as /app/analysis.py). What it holds, and nothing else (no shell, no coreutils):
#   /usr/local/bin/<binary>                  0755
#   every shared library the binary needs    at the path ldd names (real files, symlinks followed);
#                                            the dynamic loader 0755, the others 0644
#   /etc/ssl/certs/ca-certificates.crt       the build machine's CA bundle
#   /usr/share/doc/tollgate/sbom.cdx.json    the binary's SBOM (RELEASE_DIR/<binary>.cdx.json; not in test images)
#   /etc/passwd, /etc/group                  root, nonroot (65532), and for the proxy tollgate-proxy (10001):
#                                            the webhook runs the proxy as 10001
#   /etc/nsswitch.conf                       "hosts: files dns": without it glibc asks DNS before /etc/hosts
# Everything is owned by root (when run as root, as in the Dockerfile) and every mtime is SOURCE_DATE_EPOCH
# (default 0), so equal binaries give equal layers.
set -euo pipefail
export LC_ALL=C
umask 022

die() {
  echo "rootfs.sh: $*" >&2
  exit 1
}

[ $# -eq 3 ] || die "usage: rootfs.sh IMAGE RELEASE_DIR OUT_DIR (IMAGE: webhook, proxy, certs, cni, pause, example-analysis, ctl; for tests: coredns, flame-standins, flame-analysis)"
image=$1
release=$2
out=$3

case "$image" in
  webhook) binary=tollgate-webhook ;;
  proxy) binary=tollgate-proxy ;;
  certs) binary=tollgate-certs ;;
  cni) binary=tollgate-cni ;;
  pause) binary=tollgate-pause ;;
  example-analysis) binary=tollgate-example-analysis ;;
  ctl) binary=tollgate ;;
  coredns) binary=coredns ;;
  flame-standins) binary=flame_standins ;;
  flame-analysis) binary=python3 ;;
  *) die "unknown image '$image' (webhook, proxy, certs, cni, pause, example-analysis, ctl)" ;;
esac

source_binary=$release/$binary
if [ "$image" = flame-analysis ]; then
  # This machine's python3 (Debian's: its prefix is /usr, where it finds its standard library).
  source_binary=$(readlink -f "$(command -v /usr/bin/python3 || command -v python3)") || die "no python3 on this machine"
fi
[ -f "$source_binary" ] && [ -x "$source_binary" ] || die "$source_binary is not an executable file; build it first"
if [ -e "$out" ]; then
  [ -d "$out" ] || die "$out exists and is not a directory"
  [ -z "$(ls -A "$out")" ] || die "$out is not empty"
fi
mkdir -p "$out"

# copy SOURCE DEST MODE: the contents of the real file behind SOURCE, at DEST inside the root filesystem.
copy() {
  local real
  real=$(readlink -f "$1") || die "cannot resolve $1"
  [ -f "$real" ] || die "$1 is not a regular file"
  mkdir -p "$out$(dirname "$2")"
  cp "$real" "$out$2"
  chmod "$3" "$out$2"
}

# Shared libraries of $1, from ldd: "name => /path (addr)" for libraries, "/path (addr)" for the dynamic loader;
# linux-vdso is the kernel's. A static binary needs none.
libraries() {
  local ldd_out kind path
  if ldd_out=$(ldd "$1" 2>&1); then
    if grep -q 'not found' <<<"$ldd_out"; then
      die "$1 needs libraries this machine lacks:"$'\n'"$ldd_out"
    fi
    while read -r kind path; do
      [ -n "$path" ] || continue
      [ -e "$out$path" ] && continue
      case "$kind" in
        loader) copy "$path" "$path" 0755 ;;
        library) copy "$path" "$path" 0644 ;;
      esac
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print "library", $3; next }
                  $1 ~ /^\// { print "loader", $1 }' <<<"$ldd_out" | sort -u)
  elif ! grep -q 'not a dynamic executable' <<<"$ldd_out"; then
    die "ldd $1 failed:"$'\n'"$ldd_out"
  fi
}

if [ "$image" = flame-analysis ]; then
  # The interpreter where its prefix expects it, the standard library without its tests, GUI, installers and
  # caches, the extension modules' libraries, and the analysis.
  version=$("$source_binary" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  copy "$source_binary" "/usr/bin/python$version" 0755
  libraries "$source_binary"
  stdlib=/usr/lib/python$version
  [ -f "$stdlib/os.py" ] || die "no standard library at $stdlib"
  mkdir -p "$out$stdlib"
  (cd "$stdlib" && find . \( -name __pycache__ -o -name test -o -name tests -o -name idlelib -o -name tkinter \
      -o -name turtledemo -o -name ensurepip -o -name lib2to3 -o -name site-packages -o -name dist-packages \
      -o -name 'config-*' \) -prune -o \( -type f -print \) | while read -r file; do
    mkdir -p "$out$stdlib/$(dirname "$file")"
    cp -L "$file" "$out$stdlib/$file"
  done)
  find "$out$stdlib" -type f -exec chmod 0644 {} +
  for module in "$out$stdlib"/lib-dynload/*.so; do
    [ -e "$module" ] && libraries "$module"
  done
  here=$(cd "$(dirname "$0")/.." && pwd)
  copy "$here/tests/flame/analysis.py" /app/analysis.py 0644
else
  copy "$source_binary" "/usr/local/bin/$binary" 0755
  libraries "$source_binary"
fi

copy /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt 0644

# The binary's SBOM (CycloneDX; `tollgate-images sbom` writes it beside the binary, `tollgate-images build` too):
# every image tollgate ships has one. The node tests' own images have none.
case "$image" in
  coredns | flame-standins | flame-analysis) ;;
  *)
    [ -f "$release/$binary.cdx.json" ] ||
      die "$release/$binary.cdx.json is missing: the SBOM of $binary (tollgate-images sbom --release-dir $release)"
    copy "$release/$binary.cdx.json" /usr/share/doc/tollgate/sbom.cdx.json 0644
    ;;
esac

passwd='root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin'
group='root:x:0:
nonroot:x:65532:'
if [ "$image" = proxy ]; then
  passwd+='
tollgate-proxy:x:10001:10001:tollgate-proxy:/nonexistent:/sbin/nologin'
  group+='
tollgate-proxy:x:10001:'
fi
printf '%s\n' "$passwd" >"$out/etc/passwd"
printf '%s\n' "$group" >"$out/etc/group"
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$out/etc/nsswitch.conf"
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"

find "$out" -type d -exec chmod 0755 {} +
if [ "$(id -u)" -eq 0 ]; then
  chown -R 0:0 "$out"
fi
find "$out" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
