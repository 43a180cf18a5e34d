#!/usr/bin/env python3
"""Write the image archives that fill a test containerd the way Docker 29 fills its store.

    DOCKER_HOST=unix://…/docker.sock python3 tests/support/containerd_archives.py --out DIR

Needs a *private* Docker engine holding the oe-test/* images (tests/support/make_images.py)
and skopeo. Only the Python standard library is used. Writes into DIR:

  docker.tar  `docker save` of oe-test/classic:latest and :second-tag (one image, two tags),
              oe-test/busybox:base and oe-test/load-whiteouts:latest: uncompressed layers
              (`…rootfs.diff.tar`), as `docker load` in containerd mode stores them
  oci-gzip.tar  oe-test/classic:latest as an OCI archive with gzip layers (skopeo), named
              docker.io/oe-test/classic:gzip
  oci-zstd.tar  oe-test/load-whiteouts:latest with zstd layers, docker.io/oe-test/load-whiteouts:zstd
  multi.tar   docker.io/oe-test/multi:latest, an OCI index of two platforms: linux/amd64
              (oe-test/busybox:base, gzip) and a tiny linux/arm64 image that exists only in
              this archive, so that `ctr images import` (host platform only) leaves it out
  archives.json  what each archive holds: names, and for the index which digests belong to
              which platform

Names inside the OCI archives are full references (`io.containerd.image.name` and
`org.opencontainers.image.ref.name` annotations), so `ctr images import` stores them as Docker
29 would: `docker.io/…`.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

DOCKER = os.environ.get("OE_DOCKER", "/usr/bin/docker")  # the Debian CLI, never /usr/local/bin
MTIME = 1700000000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def run(*args, env=None):
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, **(env or {})), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}… failed ({proc.returncode}):\n"
                           + proc.stderr.decode(errors="replace"))
    return proc.stdout


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_tar(path):
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def write_tar(path, members):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))


def oci_archive(docker_tar, source, out, name, compression):
    """`source` from the docker-save archive as an OCI archive with `compression` layers,
    named `name` (a full reference) in both annotations."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "oci.tar")
        run("skopeo", "copy", "-q", f"docker-archive:{docker_tar}:{source}",
            f"oci-archive:{plain}:{name}", "--dest-compress",
            "--dest-compress-format", compression)
        members = read_tar(plain)
    index = json.loads(members["index.json"])
    for m in index["manifests"]:
        m.setdefault("annotations", {})["io.containerd.image.name"] = name
    members["index.json"] = json.dumps(index).encode()
    write_tar(out, members)
    return index["manifests"][0]


def tiny_arm64_image():
    """Blobs of a one-layer linux/arm64 image, and its manifest descriptor."""
    blobs = {}

    def add(data):
        digest = sha256(data)
        blobs["blobs/sha256/" + digest[7:]] = data
        return digest, len(data)

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        data = b"arm64 only\n"
        info = tarfile.TarInfo("arch.txt")
        info.size = len(data)
        info.mtime = MTIME
        t.addfile(info, io.BytesIO(data))
    raw = layer.getvalue()
    layer_digest, layer_size = add(gzip.compress(raw, mtime=0))
    config = json.dumps({
        "architecture": "arm64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]},
    }, sort_keys=True).encode()
    config_digest, config_size = add(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    }, sort_keys=True).encode()
    manifest_digest, manifest_size = add(manifest)
    descriptor = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size,
                  "platform": {"architecture": "arm64", "os": "linux"}}
    return blobs, descriptor, {"manifest": manifest_digest, "config": config_digest,
                               "layers": [layer_digest]}


def multi_platform(docker_tar, out, name):
    with tempfile.TemporaryDirectory() as tmp:
        amd64_tar = os.path.join(tmp, "amd64.tar")
        amd64 = oci_archive(docker_tar, "oe-test/busybox:base", amd64_tar, name, "gzip")
        members = read_tar(amd64_tar)
    arm_blobs, arm64, arm64_digests = tiny_arm64_image()
    members.update(arm_blobs)
    amd64 = {k: amd64[k] for k in ("mediaType", "digest", "size")}
    amd64["platform"] = {"architecture": "amd64", "os": "linux"}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [amd64, arm64]}, sort_keys=True).encode()
    index_digest = sha256(index)
    members["blobs/sha256/" + index_digest[7:]] = index
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_INDEX, "digest": index_digest, "size": len(index),
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
    }]}).encode()
    write_tar(out, members)
    return {"index": index_digest, "amd64_manifest": amd64["digest"], "arm64": arm64_digests}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not os.environ.get("DOCKER_HOST", "").startswith("unix:///") or \
            os.environ["DOCKER_HOST"] == "unix:///var/run/docker.sock":
        sys.exit("containerd_archives: DOCKER_HOST must name a private engine's socket")
    os.makedirs(args.out, exist_ok=True)
    docker_tar = os.path.join(args.out, "docker.tar")
    saved = ["oe-test/classic:latest", "oe-test/classic:second-tag", "oe-test/busybox:base",
             "oe-test/load-whiteouts:latest"]
    run(DOCKER, "save", "-o", docker_tar, *saved)
    gzip_desc = oci_archive(docker_tar, "oe-test/classic:latest",
                            os.path.join(args.out, "oci-gzip.tar"),
                            "docker.io/oe-test/classic:gzip", "gzip")
    zstd_desc = oci_archive(docker_tar, "oe-test/load-whiteouts:latest",
                            os.path.join(args.out, "oci-zstd.tar"),
                            "docker.io/oe-test/load-whiteouts:zstd", "zstd")
    multi = multi_platform(docker_tar, os.path.join(args.out, "multi.tar"),
                           "docker.io/oe-test/multi:latest")
    summary = {
        "docker.tar": {"images": ["docker.io/" + s for s in saved]},
        "oci-gzip.tar": {"images": ["docker.io/oe-test/classic:gzip"],
                         "manifest": gzip_desc["digest"]},
        "oci-zstd.tar": {"images": ["docker.io/oe-test/load-whiteouts:zstd"],
                         "manifest": zstd_desc["digest"]},
        "multi.tar": {"images": ["docker.io/oe-test/multi:latest"], **multi},
    }
    with open(os.path.join(args.out, "archives.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
