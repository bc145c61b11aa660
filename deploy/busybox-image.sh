#!/bin/sh
# Builds a busybox image as an OCI image archive (one uncompressed layer) from Debian's
# busybox-static: ./busybox-image.sh OUT.tar [docker]. With `docker`, a `docker save`
# archive of the same layer instead. No binary is committed: the image is made at test time.
set -eu
out=$1
kind=${2:-oci}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "busybox-image: $busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for name in $("$busybox" --list); do
  [ "$name" = busybox ] || ln -s busybox "$root/bin/$name"
done
printf 'root:x:0:0:root:/:/bin/sh\n' > "$root/etc/passwd"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
layer=$(sha "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$layer" > "$work/config.json"
config=$(sha "$work/config.json")
pack=$work/pack
mkdir -p "$pack"
if [ "$kind" = docker ]; then
  mkdir -p "$pack/$layer"
  cp "$work/layer.tar" "$pack/$layer/layer.tar"
  cp "$work/config.json" "$pack/$config.json"
  printf '[{"Config":"%s.json","RepoTags":["busybox:latest"],"Layers":["%s/layer.tar"]}]' "$config" "$layer" > "$pack/manifest.json"
else
  mkdir -p "$pack/blobs/sha256"
  cp "$work/layer.tar" "$pack/blobs/sha256/$layer"
  cp "$work/config.json" "$pack/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$(size "$work/config.json")" "$layer" "$(size "$work/layer.tar")" > "$work/manifest.json"
  manifest=$(sha "$work/manifest.json")
  cp "$work/manifest.json" "$pack/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"busybox"}}]}' \
    "$manifest" "$(size "$work/manifest.json")" > "$pack/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$pack/oci-layout"
fi
tar -C "$pack" -cf "$out" .
