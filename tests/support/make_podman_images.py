#!/usr/bin/env python3
"""Build the oe-cs/* images that exercise oci-export's containers-storage source, in private
podman stores (never the system's): an overlay store, a vfs store, and a graph root whose
images sit on a base in an additional image store.

    python3 tests/support/make_podman_images.py --dir DIR --expect DIR/expect.json

DIR gets one subdirectory per store (`overlay/`, `vfs/`, `layered/`, `base/`), each with
`root/` (the graph root), `run/` (the run root) and `tmp/`. --expect gets JSON:

    {"stores": {"overlay": {"root", "runroot", "driver", "additional": [...],
                            "images": {name: {"id", "diff_ids", "covers", "short"}}}, ...},
     "skipped": {case: reason}}

`name` is the name as podman stores it (localhost/oe-cs/load-gnu:latest); `short` what a user
types for it. The crafted layers are the overlay2 tests' (make_images.py), in the same tar
dialects; each crafted image is checked against podman: its ID is sha256 of our config and its
RootFS.Layers the sha256 of our tars. Needs root (rootful overlay) and podman; only the Python
standard library is used.
"""

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_images as mi  # noqa: E402  (the overlay2 tests' tar dialects and layers)

PREFIX = "oe-cs"
BASE = f"localhost/{PREFIX}/busybox:base"


def log(msg):
    print(f"make_podman_images: {msg}", file=sys.stderr, flush=True)


class Podman:
    """podman on one private store: its own graph root, run root, temp dir and storage.conf,
    so that nothing of the host's storage configuration or storage is used."""

    def __init__(self, base, name, driver, additional=()):
        self.dir = os.path.join(base, name)
        self.root = os.path.join(self.dir, "root")
        self.runroot = os.path.join(self.dir, "run")
        self.tmp = os.path.join(self.dir, "tmp")
        for d in (self.root, self.runroot, self.tmp):
            os.makedirs(d, exist_ok=True)
        self.conf = os.path.join(self.dir, "storage.conf")
        with open(self.conf, "w") as f:
            f.write(f'[storage]\ndriver = "{driver}"\ngraphroot = "{self.root}"\n'
                    f'runroot = "{self.runroot}"\n')
        self.driver = driver
        self.additional = list(additional)
        self.images = {}
        self.arch = None

    def __call__(self, *args, data=None):
        cmd = ["podman", "--root", self.root, "--runroot", self.runroot,
               "--storage-driver", self.driver, "--tmpdir", self.tmp,
               "--events-backend", "none", "--cgroup-manager", "cgroupfs"]
        for store in self.additional:
            cmd += ["--storage-opt", f"{self.driver}.imagestore={store}"]
        env = dict(os.environ, TMPDIR=self.tmp, CONTAINERS_STORAGE_CONF=self.conf)
        proc = subprocess.run(cmd + list(args), input=data, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}... failed ({proc.returncode}):\n"
                               + proc.stderr.decode(errors="replace"))
        return proc.stdout.decode(errors="replace")

    def record(self, name, short, covers, expect_diff_ids=None, expect_id=None):
        info = json.loads(self("image", "inspect", name))[0]
        image_id = "sha256:" + info["Id"]
        layers = info["RootFS"].get("Layers") or []
        if expect_diff_ids is not None and layers != expect_diff_ids:
            raise RuntimeError(f"{name}: podman's layers {layers} != crafted {expect_diff_ids}")
        if expect_id is not None and image_id != expect_id:
            raise RuntimeError(f"{name}: image id {image_id} != sha256(config) {expect_id}")
        if name not in (info.get("RepoTags") or []):
            raise RuntimeError(f"{name}: podman names it {info.get('RepoTags')}")
        self.images[name] = {"id": image_id, "diff_ids": layers, "covers": covers,
                             "short": short}
        log(f"{self.driver} {name}: {len(layers)} layer(s), {image_id[:19]}")

    # -- podman import --------------------------------------------------------------------

    def import_tar(self, short, data, covers, gz=False):
        path = os.path.join(self.tmp, "import.tar" + (".gz" if gz else ""))
        with open(path, "wb") as f:
            f.write(gzip.compress(data, mtime=0) if gz else data)
        self("import", "--message", "oe-cs import", path, short)
        os.unlink(path)
        # import keeps the (decompressed) stream as it is: its diff_id is sha256(data).
        self.record(f"localhost/{short}", short, covers, expect_diff_ids=[mi.sha256(data)])

    def busybox_base(self):
        with open(mi.BUSYBOX, "rb") as f:
            busybox = f.read()
        t = mi.Tar()
        t.dir("bin").file("bin/busybox", busybox, mode=0o755)
        for applet in mi.APPLETS:
            t.symlink("bin/" + applet, "busybox")
        t.dir("tmp", mode=0o1777).dir("etc").dir("root", mode=0o700)
        self.import_tar(BASE[len("localhost/"):], t.bytes(),
                        "podman import of a tar with static busybox; FROM base of the builds")

    # -- podman load of a crafted docker-archive ------------------------------------------

    def load(self, short, layers, covers, *, gz_layers=()):
        """podman load of a docker-archive we write: manifest.json tagged `short`, a config
        with rootfs.diff_ids, one <hex>/layer.tar per distinct layer (repeats share a file).
        podman stores a short tag under localhost/."""
        if self.arch is None:
            self.arch = json.loads(self("info", "--format", "json"))["host"]["arch"]
        archive, diff_ids, image_id = mi.crafted_archive(
            self.tmp, short, layers, arch=self.arch, os_name="linux",
            author="oci-export containers-storage tests", history="oe-cs crafted layer",
            gz_layers=gz_layers)
        self("load", "-q", "-i", archive)
        os.unlink(archive)
        self.record(f"localhost/{short}", short, covers, expect_diff_ids=diff_ids,
                    expect_id=image_id)

    # -- podman build, commit, tag --------------------------------------------------------

    def build(self, short, containerfile, covers, files=None):
        ctx = tempfile.mkdtemp(dir=self.tmp, prefix="ctx.")
        for name, data in (files or {}).items():
            p = os.path.join(ctx, name)
            with open(p, "wb") as f:
                f.write(data)
            os.utime(p, (mi.MTIME, mi.MTIME))
        with open(os.path.join(ctx, "Containerfile"), "w") as f:
            f.write(containerfile)
        self("build", "-q", "--network=none", "-t", short, ctx)
        self.record(f"localhost/{short}", short, covers)

    def commit(self, short, script, covers):
        name = "oe-cs-commit"
        try:
            # Limits within ours: podman's defaults for a rootful container (nofile 1048576,
            # nproc unlimited) are more than a container running these tests may grant.
            limits = []
            for flag, which in (("nofile", resource.RLIMIT_NOFILE),
                                ("nproc", resource.RLIMIT_NPROC)):
                soft = resource.getrlimit(which)[0]
                n = 1024 if soft == resource.RLIM_INFINITY else min(1024, soft)
                limits += ["--ulimit", f"{flag}={n}:{n}"]
            self("run", "--name", name, "--network=none", *limits, BASE,
                 "/bin/sh", "-c", script)
            self("commit", "-q", name, short)
        finally:
            self("rm", "-f", name)
        self.record(f"localhost/{short}", short, covers)

    def tag(self, src, dst, short, covers):
        self("tag", src, dst)
        self.record(dst, short, covers)

    def check_idle(self):
        """No container is left to hold a layer mounted or being written."""
        left = self("ps", "-a", "-q").split()
        if left:
            raise RuntimeError(f"containers left in the {self.driver} store: {left}")

    def describe(self):
        return {"root": self.root, "runroot": self.runroot, "driver": self.driver,
                "additional": self.additional, "images": self.images}


CLASSIC = f"""FROM {BASE}
RUN mkdir -p /data/keep /data/opaque \\
 && echo keep > /data/keep/a.txt && echo old > /data/opaque/old.txt \\
 && echo bye > /data/todelete.txt && echo bye > /bin/todelete-too \\
 && ln -s keep/a.txt /data/link && ln /data/keep/a.txt /data/hard
RUN rm /data/todelete.txt /bin/todelete-too /bin/sync
RUN rm -rf /data/opaque && mkdir /data/opaque && echo x > /data/opaque/new
COPY f.txt /data/f.txt
ENV OE_TEST=classic
LABEL oe.test.case=build
"""
BUILD_COVERS = ("podman build: RUN-created files and a hardlink, RUN rm -> whiteouts (incl. of a "
                "base-layer file), rm -rf + mkdir -> opaque dir, COPY, ENV/LABEL steps")
COPY_FILE = {"f.txt": b"copied into the image\n"}
COMMIT_SCRIPT = ("mkdir -p /c/d && echo committed > /c/d/a && ln /c/d/a /c/d/hard "
                 "&& ln -s d/a /c/sym && rm /bin/true && touch /c/empty")
COMMIT_COVERS = "podman commit of a container: new files, a hardlink, a symlink, a whiteout"


def build_overlay(p, attempt):
    p.busybox_base()
    rootfs = mi.Tar()
    rootfs.dir("etc").file("etc/os-release", b"ID=oe-cs\n").file("etc/hostname", b"oe\n")
    rootfs.dir("usr").dir("usr/bin").file("usr/bin/hello", b"#!/bin/sh\necho hello\n", mode=0o755)
    rootfs.symlink("bin", "usr/bin").dir("var").dir("var/empty").file("var/empty-file", b"")
    p.import_tar(f"{PREFIX}/import-rootfs:latest", rootfs.bytes(),
                 "podman import of a plain rootfs-like tar")
    t = mi.Tar()
    t.dir("gz").file("gz/hello.txt", b"imported from a gzip stream\n")
    p.import_tar(f"{PREFIX}/import-gzip:latest", t.bytes(),
                 "podman import of a gzip-compressed tar; diff_id of the decompressed tar",
                 gz=True)

    loads = [
        ("load-gnu", [mi.layer_gnu()], "GNU format: L and K records, base-256 uid/gid"),
        ("load-pax", [mi.layer_pax(), mi.layer_pax_global()],
         "PAX format: path/linkpath records, user xattrs, UTF-8 names, a global header"),
        ("load-ustar", [mi.layer_ustar()], "USTAR format: a name split across prefix and name"),
        ("load-nonutf8", [mi.layer_nonutf8_gnu(), mi.layer_nonutf8_pax()],
         "non-UTF-8 names raw in GNU headers and as a PAX hdrcharset=BINARY path"),
        ("load-links", [mi.layer_links()], "hardlinks, symlinks, a file under a dir symlink"),
        ("load-abs-symlink-dir", [mi.layer_abs_dir_symlink()],
         "a file listed under an absolute dir symlink (content in diff/target/)"),
        ("load-devices", [mi.layer_devices()], "char and block devices and a FIFO"),
        ("load-dotslash", [mi.layer_dotslash()], "member names with a ./ prefix"),
        ("load-padded", [mi.small_tree("padded", True)], "a layer padded to 10240 bytes"),
        ("load-unpadded", [mi.small_tree("unpadded", False)], "a layer without record padding"),
        ("load-empty-files", [mi.layer_empty_files_only()], "only zero-byte regular files"),
        ("load-bigfile", [mi.layer_bigfile()], "a 5 MiB incompressible file"),
        ("load-whiteouts", [mi.layer_whiteouts_lower(), mi.layer_whiteouts_upper()],
         "foreign (GNU-format, mode 0) .wh. whiteout and opaque markers"),
    ]
    for name, layers, covers in loads:
        attempt(name, lambda: p.load(f"{PREFIX}/{name}:latest", layers, "podman load: " + covers))
    dup_a, dup_b = mi.small_tree("dup-a", True), mi.small_tree("dup-b", True)
    attempt("load-dup-layer", lambda: p.load(
        f"{PREFIX}/load-dup-layer:latest", [dup_a, dup_b, dup_a],
        "podman load: the same diff_id twice (layers A, B, A: three layer IDs)"))
    empty = b"\0" * 1024
    assert mi.sha256(empty) == mi.EMPTY_LAYER_DIFF_ID
    attempt("load-empty-layer", lambda: p.load(
        f"{PREFIX}/load-empty-layer:latest", [mi.small_tree("before-empty", True), empty],
        "podman load: an empty layer (1024 zero bytes) on a real one"))
    gz_tree = mi.Tar()
    gz_tree.dir("gzl").file("gzl/a.txt", b"layer stored gzip-compressed in the archive\n")
    attempt("load-gzip-layer", lambda: p.load(
        f"{PREFIX}/load-gzip-layer:latest", [mi.small_tree("plain", True), gz_tree.bytes()],
        "podman load: a docker-archive whose 2nd layer is gzip", gz_layers=(1,)))
    deep = mi.Tar()
    deep.dir("deep").file("deep/name.txt", b"oe-cs/org/deep:1.0\n")
    attempt("load-deep", lambda: p.load(
        f"{PREFIX}/org/deep:1.0", [deep.bytes()],
        "podman load: a multi-component repository name with a non-latest tag"))

    attempt("build", lambda: p.build(f"{PREFIX}/build:latest", CLASSIC, BUILD_COVERS,
                                     files=COPY_FILE))
    attempt("commit", lambda: p.commit(f"{PREFIX}/commit:latest", COMMIT_SCRIPT, COMMIT_COVERS))
    # Names as pulled images have them: normalized docker.io names and other registries.
    attempt("tag-docker", lambda: p.tag(
        f"localhost/{PREFIX}/load-links:latest", f"docker.io/library/{PREFIX}-links:1",
        f"{PREFIX}-links:1", "a docker.io name (podman normalizes it as Docker does)"))
    attempt("tag-registry", lambda: p.tag(
        f"localhost/{PREFIX}/load-pax:latest", f"quay.io/oe-cs-org/pax-tool:2",
        "pax-tool:2", "another registry's name, found by its repository's last part"))
    p.check_idle()


def build_vfs(p, attempt):
    p.busybox_base()
    attempt("vfs-load-links", lambda: p.load(f"{PREFIX}/load-links:latest", [mi.layer_links()],
                                             "vfs, podman load: hardlinks and symlinks"))
    attempt("vfs-load-nonutf8", lambda: p.load(
        f"{PREFIX}/load-nonutf8:latest", [mi.layer_nonutf8_gnu(), mi.layer_nonutf8_pax()],
        "vfs, podman load: non-UTF-8 names"))
    dup_a, dup_b = mi.small_tree("dup-a", True), mi.small_tree("dup-b", True)
    attempt("vfs-load-dup-layer", lambda: p.load(
        f"{PREFIX}/load-dup-layer:latest", [dup_a, dup_b, dup_a], "vfs: the same layer twice"))
    attempt("vfs-build", lambda: p.build(f"{PREFIX}/build:latest", CLASSIC,
                                         "vfs, " + BUILD_COVERS, files=COPY_FILE))
    p.check_idle()


def build_layered(base, layered, attempt):
    """A graph root whose image's base layer is in an additional image store."""
    base.busybox_base()
    attempt("layered-build", lambda: layered.build(
        f"{PREFIX}/on-base:latest",
        f"FROM {BASE}\nRUN mkdir /top && echo top > /top/a.txt && rm /bin/echo\n",
        "podman build in a graph root on a base in an additional image store: the base layer "
        "is the parent of a layer in another store"))
    layered.check_idle()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="where the stores are made (empty or new)")
    ap.add_argument("--expect", required=True, help="write what was built here, as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("make_podman_images: needs root (rootful overlay stores)")

    start = time.monotonic()
    skipped = {}

    def attempt(name, fn):
        try:
            fn()
        except RuntimeError as e:
            skipped[name] = " ".join(str(e).split())
            log(f"SKIPPED {name}: {e}")

    overlay = Podman(args.dir, "overlay", "overlay")
    build_overlay(overlay, attempt)
    vfs = Podman(args.dir, "vfs", "vfs")
    build_vfs(vfs, attempt)
    base = Podman(args.dir, "base", "overlay")
    layered = Podman(args.dir, "layered", "overlay", additional=[base.root])
    build_layered(base, layered, attempt)

    stores = {"overlay": overlay.describe(), "vfs": vfs.describe(),
              "layered": layered.describe(), "base": base.describe()}
    with open(args.expect, "w") as f:
        json.dump({"stores": stores, "skipped": skipped}, f, indent=1, sort_keys=True)
        f.write("\n")
    count = sum(len(s["images"]) for s in stores.values())
    log(f"{count} images in {time.monotonic() - start:.1f}s; skipped: "
        f"{', '.join(skipped) or 'none'}")


if __name__ == "__main__":
    main()
