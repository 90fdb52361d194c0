#!/usr/bin/env bash
# Packs a root filesystem directory into a single-layer OCI image layout tar
# that `ctr images import` accepts (no registry needed).
#
# usage: oci-layout.sh <rootfs-dir> <image-name> <out.tar> <entrypoint-json-array>
#   e.g. oci-layout.sh /tmp/rootfs localhost/busybox:local busybox.tar '["/bin/sh"]'
set -euo pipefail

rootfs=$1 name=$2 out=$3 cmd=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"

# A reproducible, uncompressed layer.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$rootfs" -cf "$work/layer.tar" .
layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$work/blobs/sha256/$layer_digest"

# put writes stdin as a blob and prints "<digest> <size>".
put() {
	local tmp="$work/blob.tmp" digest
	cat >"$tmp"
	digest=$(sha256sum "$tmp" | cut -d' ' -f1)
	mv "$tmp" "$work/blobs/sha256/$digest"
	echo "$digest $(stat -c %s "$work/blobs/sha256/$digest")"
}

read -r config_digest config_size < <(jq -cn --argjson cmd "$cmd" --arg diff "sha256:$layer_digest" '{
	architecture: "amd64", os: "linux",
	config: {Cmd: $cmd, Env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], WorkingDir: "/"},
	rootfs: {type: "layers", diff_ids: [$diff]},
	history: [{created_by: "husk scripts/images/oci-layout.sh"}]
}' | put)

read -r manifest_digest manifest_size < <(jq -cn \
	--arg cd "sha256:$config_digest" --argjson cs "$config_size" \
	--arg ld "sha256:$layer_digest" --argjson ls "$layer_size" '{
	schemaVersion: 2,
	mediaType: "application/vnd.oci.image.manifest.v1+json",
	config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
	layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $ld, size: $ls}]
}' | put)

jq -cn --arg md "sha256:$manifest_digest" --argjson ms "$manifest_size" --arg name "$name" '{
	schemaVersion: 2,
	manifests: [{
		mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms,
		platform: {architecture: "amd64", os: "linux"},
		annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": ($name | split(":") | last)}
	}]
}' >"$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$work" -cf "$out" oci-layout index.json blobs
