#!/usr/bin/env bash
# A release of tollgate: what an admin installs, and what lets them check it.
#
#   scripts/release.sh [OUT]     everything, into OUT (default target/dist/; its parts are replaced):
#     OUT/bin/<binary>                           the release binaries, as the images hold them (tollgate-cni static)
#     OUT/bin/<binary>.cdx.json                  each binary's SBOM (CycloneDX: the crates cargo resolves for it
#                                                from Cargo.lock, tollgate-images sbom)
#     OUT/images/<image>.tar                     the images, OCI image-layout archives (tollgate-images build)
#     OUT/images/<image>.cdx.json                each image's SBOM, also in the image as
#                                                /usr/share/doc/tollgate/sbom.cdx.json
#     OUT/images/digests.txt                     name, reference and digest of every image, for mirroring
#                                                (tollgate-images list --out)
#     OUT/images/image-digests.yaml              the chart's images' digests as Helm values (image.digests)
#     OUT/charts/tollgate-<version>.tgz          the chart (helm package), its images pinned to those digests
#     OUT/charts/index.yaml                      the Helm repository index of OUT/charts (helm repo index)
#     OUT/SHA256SUMS
#
#   scripts/release.sh chart OUT [--digests FILE] [--url URL]
#                                only the chart's package and the repository index, into OUT (kept: other
#                                versions there stay in the index). --digests pins the chart's images: FILE is
#                                a `tollgate-images list --out DIR` listing. --url makes the index's links
#                                absolute; by default they are relative, so OUT can be served from anywhere.
#
# Publish OUT/charts as it is (any static HTTP server: `helm repo add tollgate https://…`), and push the image
# archives unchanged (e.g. `skopeo copy oci-archive:OUT/images/webhook.tar docker://REGISTRY/…`): an image
# rebuilt or recompressed on the way gets another digest than the one the chart pins.
# Needs helm: on PATH, in $TOLLGATE_BIN_DIR, or built by tests/control-plane/provision.sh.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHART=$ROOT/charts/tollgate
# The images the chart references (image.<name>); the other images (pause, example-analysis) are the node's.
CHART_IMAGES=(webhook certs cni proxy ctl)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

die() {
  echo "release.sh: $*" >&2
  exit 1
}

helm_bin() {
  if [[ -n ${TOLLGATE_BIN_DIR:-} && -x $TOLLGATE_BIN_DIR/helm ]]; then
    echo "$TOLLGATE_BIN_DIR/helm"
  elif command -v helm >/dev/null; then
    command -v helm
  else
    echo "$("$ROOT/tests/control-plane/provision.sh")/helm"
  fi
}

# chart OUT DIGESTS URL: the chart, pinned to DIGESTS (a file, or empty), packaged into OUT and indexed.
chart() {
  local out=$1 digests=$2 url=$3 helm work name reference digest
  helm=$(helm_bin)
  [[ -x $helm ]] || die "no helm at $helm"
  work=$WORK/chart
  rm -rf "$work"
  mkdir -p "$work"
  cp -r "$CHART" "$work/tollgate"
  if [[ -n $digests ]]; then
    [[ -f $digests ]] || die "$digests: no such file"
    declare -A pinned=()
    while IFS=$'\t' read -r name reference digest; do
      [[ -n $name ]] || continue
      [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || die "$digests: '$name $reference $digest' is not name, reference, digest"
      pinned[$name]=$digest
    done <"$digests"
    local block="  digests:"
    for name in "${CHART_IMAGES[@]}"; do
      [[ -n ${pinned[$name]:-} ]] || die "$digests names no digest for the image $name"
      block+=$'\n'"    $name: ${pinned[$name]}"
    done
    grep -qx '  digests: {}' "$work/tollgate/values.yaml" || die "charts/tollgate/values.yaml has no '  digests: {}' line to pin"
    awk -v block="$block" '$0 == "  digests: {}" { print block; next } { print }' "$CHART/values.yaml" >"$work/tollgate/values.yaml"
  fi
  "$helm" lint --strict "$work/tollgate" >/dev/null || die "helm lint --strict failed on the chart to package"
  mkdir -p "$out"
  "$helm" package "$work/tollgate" --destination "$out" >&2
  "$helm" repo index "$out" ${url:+--url "$url"}
  echo "release.sh: $out: $(cd "$out" && ls -- *.tgz | tr '\n' ' ')and index.yaml" >&2
}

if [[ ${1:-} == chart ]]; then
  shift
  [[ $# -ge 1 && $1 != -* ]] || die "usage: release.sh chart OUT [--digests FILE] [--url URL]"
  out=$1
  shift
  digests="" url=""
  while (($#)); do
    case $1 in
      --digests) digests=${2:?--digests needs a file}; shift 2 ;;
      --url) url=${2:?--url needs a URL}; shift 2 ;;
      *) die "unknown argument $1 (release.sh chart OUT [--digests FILE] [--url URL])" ;;
    esac
  done
  chart "$out" "$digests" "$url"
  exit 0
fi

[[ $# -le 1 ]] || die "usage: release.sh [OUT] | release.sh chart OUT [--digests FILE] [--url URL]"
out=${1:-$ROOT/target/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
helm_bin >/dev/null
rm -rf "$out/bin" "$out/images" "$out/charts" "$out/SHA256SUMS"

cd "$ROOT"
target=${CARGO_TARGET_DIR:-$ROOT/target}
echo "release.sh: building the release binaries" >&2
# As docker/Dockerfile builds them: these together (tests/src/images.rs RELEASE_BUILD, what the SBOMs resolve).
cargo build --release --locked \
  --bin tollgate-webhook --bin tollgate-proxy --bin tollgate-certs \
  --bin tollgate-pause --bin tollgate-example-analysis --bin tollgate --bin tollgate-images
# The CNI plugin runs on the node against the node's glibc: static, as docker/Dockerfile builds it.
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p tollgate-cni --target "$host"
mkdir -p "$out/bin"
cp "$target"/release/tollgate{-webhook,-proxy,-certs,-pause,-example-analysis,} "$target/$host/release/tollgate-cni" \
  "$out/bin/"

echo "release.sh: the images and their SBOMs" >&2
"$target/release/tollgate-images" build --release-dir "$out/bin" --out "$out/images" >/dev/null
"$target/release/tollgate-images" list --out "$out/images" >"$out/images/digests.txt"
{
  echo "# The digests of the images of this release: helm install … -f image-digests.yaml"
  echo "image:"
  echo "  digests:"
  for name in "${CHART_IMAGES[@]}"; do
    awk -F'\t' -v name="$name" '$1 == name { print "    " name ": " $3 }' "$out/images/digests.txt"
  done
} >"$out/images/image-digests.yaml"

echo "release.sh: the chart and its repository index" >&2
chart "$out/charts" "$out/images/digests.txt" ""

(cd "$out" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | sort | xargs sha256sum >SHA256SUMS)
echo "release.sh: $out" >&2
cat "$out/images/digests.txt"
