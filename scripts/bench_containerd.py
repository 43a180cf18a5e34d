#!/usr/bin/env python3
"""containerd's image store: `ctr images export` against `oci-export --store containerd`, and
the floor (hashing the layer blobs), on the same images in one run.

    DOCKER_HOST=unix://…/docker.sock python3 scripts/bench_containerd.py \
        --binary target/release/oci-export --scratch DIR IMAGE...

Needs root, a *private* Docker engine holding IMAGE..., containerd and ctr, skopeo and openssl.
Each image is put into a private containerd (scripts/containerd.sh) twice, as Docker 29 fills
its store: `docker save` imported with `ctr images import` (layers stored uncompressed) and an
OCI archive with gzip layers made by skopeo (`<name>-gzip`). Then, warm, best of --runs:

  ctr      `ctr -n moby images export` (through the daemon, as `docker save` in containerd mode)
  stored   `oci-export --store containerd` (the blobs as stored, each verified by its digest)
  none     `oci-export --store containerd -c none` (uncompressed layers, verified by diff_id)
  floor    `openssl dgst -sha256` of the layer blobs, as many at a time as there are cores

Prints a Markdown table (and --json writes the numbers). Meant to be called from
scripts/bench.sh beside the overlay2 rows; standalone it needs only the engine.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

from bench import best, largest_first  # noqa: E402  (the main benchmark's timing helpers)
from containerd_archives import oci_archive  # noqa: E402  (the tests' archive maker)

DOCKER = "/usr/bin/docker"
NAMESPACE = "moby"


def run(*cmd, **kw):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if proc.returncode != 0:
        sys.exit(f"bench_containerd: {' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


class Containerd:
    def __init__(self, scratch):
        self.dir = os.path.join(scratch, "ctd")
        out = run(os.path.join(HERE, "containerd.sh"), "start", self.dir)
        self.address = out.strip().split("=", 1)[1]
        self.root = os.path.join(self.dir, "root")

    def ctr(self, *args):
        return run("ctr", "--address", self.address, "-n", NAMESPACE, *args)

    def stop(self):
        subprocess.run([os.path.join(HERE, "containerd.sh"), "stop", self.dir],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def blob(self, digest):
        return os.path.join(self.root, "io.containerd.content.v1.content/blobs/sha256",
                            digest.split(":", 1)[1])

    def layers(self, name):
        """The layer blobs of `name`'s manifest (a plain manifest: what these imports make)."""
        target = next(line.split()[2] for line in self.ctr("images", "ls").splitlines()[1:]
                      if line.split()[0] == name)
        with open(self.blob(target)) as f:
            manifest = json.load(f)
        return [{"path": self.blob(l["digest"]), "size": l["size"]} for l in manifest["layers"]]


def full_name(image):
    name, tag = image.rsplit(":", 1) if ":" in image.split("/")[-1] else (image, "latest")
    if "/" not in name:
        name = "library/" + name
    first = name.split("/")[0]
    if not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + name
    return f"{name}:{tag}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    if not os.environ.get("DOCKER_HOST", "").startswith("unix:///") or \
            os.environ["DOCKER_HOST"] == "unix:///var/run/docker.sock":
        sys.exit("bench_containerd: DOCKER_HOST must name a private engine's socket")
    cores = os.cpu_count()
    ctd = Containerd(args.scratch)
    out = os.path.join(args.scratch, "out.tar")
    results = []
    try:
        for image in args.images:
            saved = os.path.join(args.scratch, "saved.tar")
            run(DOCKER, "save", "-o", saved, image)
            ctd.ctr("images", "import", saved)
            gzip_name = full_name(image) + "-gzip"
            gzip_tar = os.path.join(args.scratch, "gzip.tar")
            oci_archive(saved, image, gzip_tar, gzip_name, "gzip")
            ctd.ctr("images", "import", gzip_tar)
            os.remove(saved)
            os.remove(gzip_tar)
            for name in (full_name(image), gzip_name):
                layers = ctd.layers(name)
                stored = sum(l["size"] for l in layers)
                row = {"image": name, "stored_bytes": stored}

                def clean():
                    if os.path.exists(out):
                        os.remove(out)
                oe = [args.binary, "-q", "--store", "containerd", "--data-root", ctd.root]
                row["ctr"] = best(args.runs, ["ctr", "--address", ctd.address, "-n", NAMESPACE,
                                              "images", "export", out, name], clean)[0]
                row["stored"] = best(args.runs, oe + [name, "-o", out], clean)[0]
                row["none"] = best(args.runs, oe + ["-c", "none", name, "-o", out], clean)[0]
                for layer in layers:  # warm, as the exports were
                    with open(layer["path"], "rb") as f:
                        while f.read(8 << 20):
                            pass
                row["floor"] = min(
                    largest_first(layers, cores, lambda l: ["openssl", "dgst", "-sha256", l["path"]])
                    for _ in range(args.runs))
                results.append(row)
    finally:
        ctd.stop()
    print(markdown(results, cores))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def markdown(results, cores):
    lines = [f"containerd store, warm cache, best of runs, {cores} cores:", "",
             "| image (as stored) | blobs | `ctr images export` | oci-export as stored | "
             "`-c none` | floor (SHA-256 of blobs) | as stored vs ctr | as stored vs floor |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['image']} | {r['stored_bytes'] / 1e6:.0f} MB | {r['ctr']:.2f} s | "
            f"{r['stored']:.2f} s | {r['none']:.2f} s | {r['floor']:.2f} s | "
            f"{r['ctr'] / r['stored']:.1f}× faster | {r['stored'] / r['floor']:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
