#!/usr/bin/env python3
"""Build the oe-test/* images that exercise oci-export against a real Docker engine.

Needs DOCKER_HOST pointing at a *private* engine (see scripts/dockerd.sh); it refuses
the system socket. Only the Python standard library is used.

    eval "$(scripts/dockerd.sh start "$dir")"
    python3 tests/support/make_images.py --list "$dir/images.txt" [--expect "$dir/expect.json"]

--list   gets one tag per line.
--expect gets JSON {tag: {"id", "diff_ids", "covers"}} plus "skipped": {name: reason}.
         For crafted images "diff_ids" are the sha256 of the tars we wrote, checked
         against what the engine reports.

Each image is first checked against the engine: RootFS.Layers (and the image ID for
crafted configs) must be what we expect, and `docker save` must reproduce every layer
byte for byte (sha256 of each saved layer == its diff_id).
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
import time

DOCKER = os.environ.get("OE_DOCKER", "/usr/bin/docker")  # the Debian CLI, never /usr/local/bin
BUSYBOX = "/bin/busybox"  # from busybox-static: runs in an otherwise empty rootfs
MTIME = 1700000000  # 2023-11-14T22:13:20Z, fixed so crafted tars are reproducible
CREATED = "2023-11-14T22:13:20Z"
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
BASE = "oe-test/busybox:base"
APPLETS = ["sh", "rm", "mkdir", "echo", "cat", "ls", "ln", "touch", "cp", "mv", "chmod",
           "true", "sleep", "printf", "test", "find", "head", "sync"]


def log(msg):
    print(f"make_images: {msg}", file=sys.stderr, flush=True)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker(*args, data=None, env=None, stdout=subprocess.PIPE):
    """Run the Debian docker CLI; on failure show its stderr and raise."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([DOCKER, *args], input=data, stdout=stdout,
                          stderr=subprocess.PIPE, env=full_env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}... failed ({proc.returncode}):\n"
                           + proc.stderr.decode(errors="replace"))
    return proc.stdout.decode(errors="replace") if stdout is subprocess.PIPE else ""


def inspect(ref):
    out = json.loads(docker("image", "inspect", ref))[0]
    return out["Id"], out["RootFS"].get("Layers") or []


# ---------------------------------------------------------------------------------------
# Tar crafting


class Tar:
    """A tar built in memory with tarfile, with fixed metadata.

    Names may be bytes; they are mapped through surrogateescape so non-UTF-8 bytes are
    written raw (GNU/USTAR) or as a hdrcharset=BINARY PAX record (PAX).
    """

    def __init__(self, fmt=tarfile.PAX_FORMAT, global_pax=None):
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=fmt, encoding="utf-8",
                               errors="surrogateescape", pax_headers=global_pax or {})

    @staticmethod
    def _name(name):
        return os.fsdecode(name) if isinstance(name, bytes) else name

    def _add(self, name, kind, data=None, **attrs):
        ti = tarfile.TarInfo(self._name(name))
        ti.type = kind
        ti.mtime = attrs.pop("mtime", MTIME)
        ti.uid = attrs.pop("uid", 0)
        ti.gid = attrs.pop("gid", 0)
        ti.uname = attrs.pop("uname", "root")
        ti.gname = attrs.pop("gname", "root")
        ti.pax_headers = attrs.pop("pax", {})
        if "linkname" in attrs:
            attrs["linkname"] = self._name(attrs["linkname"])
        for key, value in attrs.items():
            setattr(ti, key, value)
        if data is not None:
            ti.size = len(data)
            self.tf.addfile(ti, io.BytesIO(data))
        else:
            self.tf.addfile(ti)
        return self

    def dir(self, name, mode=0o755, **kw):
        return self._add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def file(self, name, data=b"", mode=0o644, **kw):
        return self._add(name, tarfile.REGTYPE, data=data, mode=mode, **kw)

    def symlink(self, name, target, **kw):
        return self._add(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)

    def hardlink(self, name, target, **kw):
        return self._add(name, tarfile.LNKTYPE, linkname=target, mode=0o644, **kw)

    def chardev(self, name, major, minor, **kw):
        return self._add(name, tarfile.CHRTYPE, devmajor=major, devminor=minor, mode=0o666, **kw)

    def blockdev(self, name, major, minor, **kw):
        return self._add(name, tarfile.BLKTYPE, devmajor=major, devminor=minor, mode=0o660, **kw)

    def fifo(self, name, **kw):
        return self._add(name, tarfile.FIFOTYPE, mode=0o644, **kw)

    def bytes(self, pad=True):
        """The archive. pad=True keeps tarfile's 10240-byte record padding; pad=False ends
        right after the two 512-byte zero blocks, as many other writers do."""
        end = self.tf.offset
        self.tf.close()
        data = self.buf.getvalue()
        if pad:
            assert len(data) % tarfile.RECORDSIZE == 0
            return data
        return data[:end] + b"\0" * 1024


def deterministic_bytes(n, seed):
    # SHAKE output looks random (incompressible) but is reproducible and fast.
    return hashlib.shake_256(seed.encode()).digest(n)


# ---------------------------------------------------------------------------------------
# Layers for the docker-load images

LONG_DIR = "long-" + "d" * 60 + "/" + "e" * 60  # > 100 bytes once a file name is added
LONG_FILE = LONG_DIR + "/" + "f" * 40 + ".txt"
LONG_TARGET = "/" + "t" * 120 + "/target"  # symlink target > 100 bytes


def layer_gnu():
    t = Tar(tarfile.GNU_FORMAT)
    t.dir("gnu").file("gnu/hello.txt", b"hello from a GNU tar\n")
    t.dir("long-" + "d" * 60).dir(LONG_DIR)
    t.file(LONG_FILE, b"long name via ././@LongLink 'L'\n")  # GNU L record
    t.symlink("gnu/long-symlink", LONG_TARGET)  # GNU K record
    t.hardlink(LONG_DIR + "/" + "h" * 50, LONG_FILE)  # both L and K
    # uid/gid beyond the 7-digit octal field: GNU base-256 numbers.
    t.file("gnu/big-uid", b"uid 3000000\n", uid=3000000, gid=3000001, uname="", gname="")
    t.file("gnu/setuid", b"#!/bin/sh\n", mode=0o4755)
    t.dir("gnu/sticky", mode=0o1777)
    return t.bytes()


def layer_pax():
    t = Tar(tarfile.PAX_FORMAT)
    t.dir("pax").file("pax/hello.txt", b"hello from a PAX tar\n")
    t.dir("long-" + "d" * 60).dir(LONG_DIR)
    t.file(LONG_FILE, b"long name via a PAX path record\n")
    t.symlink("pax/long-symlink", LONG_TARGET)  # PAX linkpath record
    t.hardlink(LONG_DIR + "/" + "h" * 50, LONG_FILE)
    t.file("pax/xattr.txt", b"has user xattrs\n",
           # An empty value is kept in the tar but Go's reader drops it on extract.
           pax={"SCHILY.xattr.user.oe": "value", "SCHILY.xattr.user.empty": ""})
    t.dir("pax/xattr-dir", pax={"SCHILY.xattr.user.dir": "d"})
    t.file("pax/utf8-\u00e9\u00e8-\u6f22\u5b57.txt", b"UTF-8 name, non-ASCII\n")
    t.file("pax/fractional-mtime", b"mtime has a fraction\n", mtime=MTIME + 0.5)
    t.file("pax/big-uid", b"uid 3000000\n", uid=3000000, gid=3000001)
    return t.bytes()


def layer_pax_global():
    # A 'g' global header first: Go's reader returns it as a member, Docker ignores it.
    t = Tar(tarfile.PAX_FORMAT, global_pax={"comment": "oci-export test global header"})
    t.dir("paxg").file("paxg/after-global.txt", b"after a global header\n")
    return t.bytes()


def layer_ustar():
    t = Tar(tarfile.USTAR_FORMAT)
    t.dir("ustar").file("ustar/hello.txt", b"hello from a USTAR tar\n")
    # > 100 bytes, fits the ustar prefix (155) + name (100) split.
    t.dir("long-" + "d" * 60).dir(LONG_DIR)
    t.file(LONG_FILE, b"long name via the ustar prefix field\n")
    t.symlink("ustar/link", "hello.txt")
    return t.bytes()


NONUTF8 = b"\xff\xfe"


def layer_nonutf8_gnu():
    t = Tar(tarfile.GNU_FORMAT)
    t.dir(b"nonutf8-gnu-" + NONUTF8)
    t.file(b"nonutf8-gnu-" + NONUTF8 + b"/file-" + NONUTF8 + b".txt", b"raw bytes in a GNU header\n")
    t.file(b"latin1-caf\xe9.txt", b"ISO-8859-1 name\n")
    t.symlink(b"link-to-" + NONUTF8, b"latin1-caf\xe9.txt")
    t.hardlink(b"hard-" + NONUTF8, b"latin1-caf\xe9.txt")
    # A long non-UTF-8 name goes through ././@LongLink.
    t.file(b"x" * 110 + NONUTF8, b"long non-UTF-8 name\n")
    return t.bytes()


def layer_nonutf8_pax():
    t = Tar(tarfile.PAX_FORMAT)
    t.file(b"nonutf8-pax-" + NONUTF8[::-1] + b".txt", b"hdrcharset=BINARY path record\n")
    return t.bytes()


def layer_links():
    t = Tar()
    t.file("file.txt", b"hardlink and symlink target\n")
    t.hardlink("hard.txt", "file.txt")
    t.dir("sub").hardlink("sub/hard2.txt", "file.txt")
    t.symlink("link-rel", "file.txt")
    t.symlink("sub/link-up", "../file.txt")
    t.symlink("link-abs", "/file.txt")
    t.symlink("dangling", "/does/not/exist")
    t.dir("target").file("target/in-target.txt", b"real file in target/\n")
    t.symlink("rel-dir", "target")
    t.file("rel-dir/under-rel.txt", b"written through a relative dir symlink\n")
    return t.bytes()


def layer_abs_dir_symlink():
    # Docker extracts inside a chroot of the diff dir, so "abs-dir/x" lands in target/x,
    # while a host-side join(diff, "abs-dir/x") would follow the symlink to /target.
    t = Tar()
    t.dir("target")
    t.symlink("abs-dir", "/target")
    t.file("abs-dir/under-abs.txt", b"written through an absolute dir symlink\n")
    return t.bytes()


def layer_devices():
    t = Tar()
    t.dir("dev")
    t.chardev("dev/null-copy", 1, 3)  # never 0:0, that is an overlay whiteout
    t.chardev("dev/tty-like", 5, 0)
    t.blockdev("dev/loop-like", 7, 0)
    t.fifo("dev/fifo")
    t.file("dev/regular.txt", b"a regular file among devices\n")
    return t.bytes()


def layer_dotslash():
    t = Tar()
    t.dir("./")
    t.dir("./etc").file("./etc/hostname", b"dotslash\n")
    t.dir("./usr").dir("./usr/bin").file("./usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755)
    t.hardlink("./usr/bin/tool-hard", "./usr/bin/tool")
    t.symlink("./usr/bin/tool-link", "tool")
    return t.bytes()


def small_tree(tag, pad):
    t = Tar()
    t.dir("data").file("data/" + tag + ".txt", f"{tag}\n".encode())
    t.file("data/empty", b"")
    return t.bytes(pad=pad)


def layer_empty_files_only():
    t = Tar()
    for name in ("empty-1", "empty-2", ".hidden-empty", "empty-3.txt"):
        t.file(name, b"")
    return t.bytes()


def layer_bigfile():
    t = Tar()
    t.dir("big").file("big/5MiB.bin", deterministic_bytes(5 * 1024 * 1024, "oe-bigfile"))
    t.file("big/after.txt", b"a small file after the big one\n")
    return t.bytes()


def layer_whiteouts_lower():
    t = Tar()
    t.dir("wh").file("wh/keep.txt", b"keep\n").file("wh/gone.txt", b"to be deleted\n")
    t.dir("wh/opaque").file("wh/opaque/old.txt", b"hidden by opaque\n")
    return t.bytes()


def layer_whiteouts_upper():
    # Whiteouts written by a foreign tool (GNU format, odd modes), not by Docker.
    t = Tar(tarfile.GNU_FORMAT)
    t.dir("wh").file("wh/.wh.gone.txt", b"", mode=0o000)
    t.dir("wh/opaque").file("wh/opaque/.wh..wh..opq", b"", mode=0o000)
    t.file("wh/opaque/new.txt", b"new in opaque dir\n")
    return t.bytes()


# ---------------------------------------------------------------------------------------
# Image builders


def crafted_archive(workdir, tag, layers, *, arch, os_name, author, history, gz_layers=()):
    """Writes a docker-archive of our own into workdir/load.tar: manifest.json tagged `tag`, a
    config with rootfs.diff_ids and one <hex>/layer.tar (or layer.tar.gz for the indexes in
    gz_layers) per distinct layer, repeats sharing a file. Returns (path, diff_ids, image ID)."""
    diff_ids = [sha256(layer) for layer in layers]
    config = {
        "architecture": arch,
        "os": os_name,
        "created": CREATED,
        "author": author,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"], "Labels": {"oe.test.case": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": f"{history} {i}"}
                    for i in range(len(layers))],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = sha256(config_bytes)
    arc = Tar()
    arc.file(image_id[7:] + ".json", config_bytes)
    paths = []
    for i, (layer, diff_id) in enumerate(zip(layers, diff_ids)):
        path = diff_id[7:] + ("/layer.tar.gz" if i in gz_layers else "/layer.tar")
        if path not in paths:
            arc.dir(diff_id[7:])
            arc.file(path, gzip.compress(layer, mtime=0) if i in gz_layers else layer)
        paths.append(path)
    manifest = [{"Config": image_id[7:] + ".json", "RepoTags": [tag], "Layers": paths}]
    arc.file("manifest.json", json.dumps(manifest).encode())
    archive = os.path.join(workdir, "load.tar")
    with open(archive, "wb") as f:
        f.write(arc.bytes())
    return archive, diff_ids, image_id


class Builder:
    def __init__(self, workdir, check_save):
        self.workdir = workdir
        self.check_save = check_save
        self.images = {}  # tag -> {"id", "diff_ids", "covers"}
        self.order = []
        self.skipped = {}
        self.arch = docker("version", "--format", "{{.Server.Arch}}").strip()
        self.engine_os = docker("version", "--format", "{{.Server.Os}}").strip()

    def record(self, tag, covers, expect_diff_ids=None, expect_id=None, save_may_fail=False):
        image_id, layers = inspect(tag)
        if expect_diff_ids is not None and layers != expect_diff_ids:
            raise RuntimeError(f"{tag}: engine layers {layers} != crafted {expect_diff_ids}")
        if expect_id is not None and image_id != expect_id:
            raise RuntimeError(f"{tag}: image id {image_id} != sha256(config) {expect_id}")
        save = "unchecked"
        if self.check_save:
            try:
                self.verify_save(tag, layers)
                save = "ok"
            except RuntimeError as e:
                if not save_may_fail:
                    raise
                save = "fails: " + " ".join(str(e).split())
                log(f"{tag}: docker save fails, as this case expects")
        self.images[tag] = {"id": image_id, "diff_ids": layers, "covers": covers,
                            "docker_save": save}
        self.order.append(tag)
        log(f"{tag}: {len(layers)} layer(s), {image_id[:19]}")
        return image_id, layers

    def verify_save(self, tag, diff_ids):
        """docker save rebuilds each layer from tar-split; it must hash to its diff_id."""
        path = os.path.join(self.workdir, "save.tar")
        with open(path, "wb") as out:
            docker("save", tag, stdout=out)
        with tarfile.open(path) as tf:
            manifest = json.load(tf.extractfile("manifest.json"))
            saved = []
            for name in manifest[0]["Layers"]:
                h = hashlib.sha256()
                with tf.extractfile(name) as f:  # follows the symlinks 20.10 uses for dups
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                saved.append("sha256:" + h.hexdigest())
        os.unlink(path)
        if saved != diff_ids:
            raise RuntimeError(f"{tag}: docker save layers {saved} != diff_ids {diff_ids}")

    # -- docker import ------------------------------------------------------------------

    def import_tar(self, tag, data, covers, gz=False):
        payload = gzip.compress(data, mtime=0) if gz else data
        docker("import", "--message", "oe-test import", "-", tag, data=payload)
        # import stores the (decompressed) stream as-is, so its diff_id is sha256(data).
        return self.record(tag, covers, expect_diff_ids=[sha256(data)])

    def busybox_base(self):
        with open(BUSYBOX, "rb") as f:
            busybox = f.read()
        t = Tar()
        t.dir("bin").file("bin/busybox", busybox, mode=0o755)
        for applet in APPLETS:
            t.symlink("bin/" + applet, "busybox")
        t.dir("tmp", mode=0o1777).dir("etc").dir("root", mode=0o700)
        return self.import_tar(BASE, t.bytes(), "docker import of a tar with static busybox; "
                               "FROM base of the build images")

    # -- docker load --------------------------------------------------------------------

    def load(self, tag, layers, covers, *, gz_layers=(), save_may_fail=False):
        """docker load a docker-archive we write ourselves: manifest.json, a config with
        rootfs.diff_ids and one <hex>/layer.tar per distinct layer (repeats share a file)."""
        archive, diff_ids, image_id = crafted_archive(
            self.workdir, tag, layers, arch=self.arch, os_name=self.engine_os,
            author="oci-export tests", history="oe-test crafted layer", gz_layers=gz_layers)
        docker("load", "-q", "-i", archive)
        os.unlink(archive)
        return self.record(tag, covers, expect_diff_ids=diff_ids, expect_id=image_id,
                           save_may_fail=save_may_fail)

    # -- docker build -------------------------------------------------------------------

    def build(self, tag, dockerfile, covers, *, buildkit=False, files=None):
        ctx = tempfile.mkdtemp(dir=self.workdir, prefix="ctx.")
        for name, data in (files or {}).items():
            p = os.path.join(ctx, name)
            with open(p, "wb") as f:
                f.write(data)
            os.utime(p, (MTIME, MTIME))  # COPY keeps the source mtime
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(dockerfile)
        env = {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
        # --network=none: the engine runs with --bridge=none, so there is no default network.
        docker("build", "-q", "--network=none", "-t", tag, ctx, env=env)
        return self.record(tag, covers)

    def tag(self, src, dst, covers):
        docker("tag", src, dst)
        return self.record(dst, covers)


def build_all(b):
    def attempt(name, fn):
        try:
            fn()
        except RuntimeError as e:
            b.skipped[name] = str(e).strip()
            log(f"SKIPPED {name}: {e}")

    # a. docker import
    b.busybox_base()
    rootfs = Tar()
    rootfs.dir("etc").file("etc/os-release", b"ID=oe-test\n").file("etc/hostname", b"oe\n")
    rootfs.dir("usr").dir("usr/bin").file("usr/bin/hello", b"#!/bin/sh\necho hello\n", mode=0o755)
    rootfs.symlink("bin", "usr/bin").dir("var").dir("var/empty").file("var/empty-file", b"")
    rootfs_tar = rootfs.bytes()
    b.import_tar("oe-test/import-rootfs:latest", rootfs_tar,
                 "docker import of a plain rootfs-like tar (dirs, files, symlink, empty file)")
    t = Tar()
    t.dir("gz").file("gz/hello.txt", b"imported from a gzip stream\n")
    b.import_tar("oe-test/import-gzip:latest", t.bytes(),
                 "docker import of a gzip-compressed tar; diff_id is of the decompressed tar",
                 gz=True)

    # b. docker load of crafted docker-archives
    b.load("oe-test/load-gnu:latest", [layer_gnu()],
           "GNU format: ././@LongLink L and K records, base-256 uid/gid, setuid, sticky dir")
    b.load("oe-test/load-pax:latest", [layer_pax(), layer_pax_global()],
           "PAX format: path/linkpath records, SCHILY.xattr.user.* (one empty-valued), "
           "UTF-8 names, fractional mtime, big uid; 2nd layer starts with a PAX global header")
    b.load("oe-test/load-ustar:latest", [layer_ustar()],
           "USTAR format: long name split across prefix and name fields")
    b.load("oe-test/load-nonutf8:latest", [layer_nonutf8_gnu(), layer_nonutf8_pax()],
           "non-UTF-8 names (\\xff\\xfe, latin-1) raw in GNU headers, in a GNU long name, in "
           "link targets, and as a PAX hdrcharset=BINARY path (tar-split name_raw)")
    b.load("oe-test/load-links:latest", [layer_links()],
           "hardlinks (incl. into a subdir), relative/absolute/dangling symlinks, a file "
           "written through a relative dir symlink")
    # Docker 20.10's own `docker save` reads join(diff, name) on the host and fails here
    # (open .../diff/abs-dir/under-abs.txt: no such file), so the save check may fail.
    b.load("oe-test/load-abs-symlink-dir:latest", [layer_abs_dir_symlink()],
           "a file listed under an absolute dir symlink (abs-dir -> /target): content lives "
           "in diff/target/, a host-side join(diff, name) escapes to /target; docker save "
           "of 20.10 fails on it", save_may_fail=True)
    b.load("oe-test/load-devices:latest", [layer_devices()],
           "char and block devices and a FIFO (size-0 members that are not files)")
    b.load("oe-test/load-dotslash:latest", [layer_dotslash()],
           "member names with a ./ prefix, including the ./ root entry")
    b.load("oe-test/load-padded:latest", [small_tree("padded", True)],
           "layer tar padded to a 10240-byte record (extra zero blocks after end-of-archive)")
    b.load("oe-test/load-unpadded:latest", [small_tree("unpadded", False)],
           "layer tar ending right after the two 512-byte zero blocks (no record padding)")
    b.load("oe-test/load-empty-files:latest", [layer_empty_files_only()],
           "a layer whose only members are zero-byte regular files")
    b.load("oe-test/load-bigfile:latest", [layer_bigfile()],
           "a 5 MiB incompressible file followed by a small one")
    dup_a, dup_b = small_tree("dup-a", True), small_tree("dup-b", True)
    b.load("oe-test/load-dup-layer:latest", [dup_a, dup_b, dup_a],
           "the same diff_id twice in rootfs.diff_ids (layers A, B, A; 3 distinct chain IDs)")
    empty = b"\0" * 1024
    assert sha256(empty) == EMPTY_LAYER_DIFF_ID
    b.load("oe-test/load-empty-layer:latest", [small_tree("before-empty", True), empty],
           "an empty layer (1024 zero bytes, diff_id sha256:5f70bf18...) on top of a real one")
    b.load("oe-test/load-whiteouts:latest", [layer_whiteouts_lower(), layer_whiteouts_upper()],
           "foreign (GNU-format, mode 0) .wh. whiteout and .wh..wh..opq opaque markers")
    gz_tree = Tar()
    gz_tree.dir("gzl").file("gzl/a.txt", b"layer stored gzip-compressed in the archive\n")
    b.load("oe-test/load-gzip-layer:latest", [small_tree("plain", True), gz_tree.bytes()],
           "docker-archive whose 2nd layer file is gzip; engine stores the uncompressed tar",
           gz_layers=(1,))

    # c. classic builder
    copy_file = {"f.txt": b"copied into the image\n"}
    b.build("oe-test/classic:latest", f"""FROM {BASE}
RUN mkdir -p /data/keep /data/opaque \\
 && echo keep > /data/keep/a.txt && echo old > /data/opaque/old.txt \\
 && echo bye > /data/todelete.txt && echo bye > /bin/todelete-too \\
 && ln -s keep/a.txt /data/link && ln /data/keep/a.txt /data/hard
RUN rm /data/todelete.txt /bin/todelete-too /bin/sync
RUN rm -rf /data/opaque && mkdir /data/opaque && echo x > /data/opaque/new
COPY f.txt /data/f.txt
ENV OE_TEST=classic
LABEL oe.test.case=classic
""", "classic builder: RUN-created files, RUN rm -> whiteouts (incl. of a base-layer file), "
        "rm -rf + mkdir -> opaque dir, COPY, ENV/LABEL-only steps (empty_layer history)",
        files=copy_file)
    b.build("oe-test/classic-dupcopy:latest", f"""FROM {BASE}
COPY f.txt /f.txt
COPY f.txt /f.txt
""", "classic builder: two identical COPY steps", files=copy_file)
    dup = b.images["oe-test/classic-dupcopy:latest"]
    if dup["diff_ids"][-1] == dup["diff_ids"][-2]:
        dup["covers"] += " -> the same diff_id twice in a row, from a real build"
    else:
        dup["covers"] += " (the engine gave distinct diff_ids: no repeated layer)"

    # d. BuildKit
    attempt("buildkit", lambda: b.build("oe-test/buildkit:latest", f"""FROM {BASE}
RUN mkdir /bk && echo buildkit > /bk/run.txt && rm /bin/sync
COPY f.txt /bk/f.txt
""", "BuildKit build: layers with 25-char base-36 cache-ids, a whiteout, a COPY",
        buildkit=True, files=copy_file))

    # e. names and tags
    b.tag("oe-test/classic:latest", "oe-test/classic:second-tag",
          "second tag on the same image ID as oe-test/classic:latest")
    deep = Tar()
    deep.dir("deep").file("deep/name.txt", b"oe-test/org/deep:1.0\n")
    b.load("oe-test/org/deep:1.0", [deep.bytes()],
           "multi-component repository name (oe-test/org/deep) with a non-latest tag")
    reg = Tar()
    reg.dir("reg").file("reg/name.txt", b"localhost:5000/oe-test/reg:v2\n")
    b.import_tar("localhost:5000/oe-test/reg:v2", reg.bytes(),
                 "reference with a registry host:port (not normalized like docker.io)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", required=True, help="write the created tags here, one per line")
    ap.add_argument("--expect", help="write tag -> id/diff_ids/covers JSON here")
    ap.add_argument("--no-save-check", action="store_true",
                    help="skip the docker save round-trip check of every layer")
    args = ap.parse_args()

    host = os.environ.get("DOCKER_HOST", "")
    if not host.startswith("unix://") or host in ("unix:///var/run/docker.sock",
                                                  "unix:///run/docker.sock"):
        sys.exit("make_images: DOCKER_HOST must point at a private engine "
                 "(eval \"$(scripts/dockerd.sh start DIR)\")")

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="oe-images.") as workdir:
        b = Builder(workdir, check_save=not args.no_save_check)
        build_all(b)
    with open(args.list, "w") as f:
        f.writelines(tag + "\n" for tag in b.order)
    if args.expect:
        with open(args.expect, "w") as f:
            json.dump({"images": b.images, "skipped": b.skipped}, f, indent=1, sort_keys=True)
            f.write("\n")
    log(f"{len(b.order)} images in {time.monotonic() - start:.1f}s; skipped: "
        f"{', '.join(b.skipped) or 'none'}")


if __name__ == "__main__":
    main()
