#!/usr/bin/env python3
"""`podman save` against `oci-export --store containers-storage`, side by side on the same
images of one private podman store, in one run (warm: best of --runs; cold: page cache dropped
before each run). Run as root.

For scripts/bench.sh, after the bench/* images are built in its private engine:

    podman_dir=$(mktemp -d "$scratch/podman.XXXXXX")
    for image in bench/rootfs:1 bench/manyfiles:1 bench/bigfiles:1 bench/layered:1; do
        $docker save "$image" | python3 "$root/scripts/bench_podman.py" --dir "$podman_dir" --load
    done
    python3 "$root/scripts/bench_podman.py" --dir "$podman_dir" \\
        --binary "$root/target/release/oci-export" --scratch "$scratch" \\
        --json "$root/benches/podman.json" --markdown "$root/benches/podman.md" \\
        localhost/bench/rootfs:1 localhost/bench/manyfiles:1 localhost/bench/bigfiles:1 \\
        localhost/bench/layered:1

(`podman load` names a docker-archive's `bench/rootfs:1` localhost/bench/rootfs:1.) For a
smoke run without Docker, --import DIR:NAME imports a tar of a host directory as an image:

    python3 scripts/bench_podman.py --dir /var/tmp/pm --import usr/sbin:bench/small:1 \\
        --binary target/release/oci-export localhost/bench/small:1
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time


def podman_cmd(store):
    """podman on the private store under `store` (its own graph root, run root, temp dir and
    storage.conf: nothing of the host's storage is used or touched)."""
    root, run, tmp = (os.path.join(store, d) for d in ("root", "run", "tmp"))
    for d in (root, run, tmp):
        os.makedirs(d, exist_ok=True)
    conf = os.path.join(store, "storage.conf")
    with open(conf, "w") as f:
        f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}"\nrunroot = "{run}"\n')
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=conf, TMPDIR=tmp)
    cmd = ["podman", "--root", root, "--runroot", run, "--storage-driver", "overlay",
           "--tmpdir", tmp, "--events-backend", "none", "--cgroup-manager", "cgroupfs"]
    return cmd, env, root


def timed(cmd, env=None, stdout=subprocess.DEVNULL):
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_podman: {' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
    return wall


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def archive_facts(path):
    """The exported image's config digest, layer count and total layer bytes."""
    with tarfile.open(path) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))[0]
        size = sum(tf.getmember(p).size for p in dict.fromkeys(manifest["Layers"]))
        return manifest["Config"].rsplit("/", 1)[-1].removesuffix(".json"), len(manifest["Layers"]), size


def bench_image(args, podman, env, root, image):
    out_podman = os.path.join(args.scratch, "podman-save.tar")
    out_oe = os.path.join(args.scratch, "oci-export.tar")
    save = podman + ["save", "--format", "docker-archive", "-o", out_podman, image]
    oe_env = dict(os.environ, CONTAINERS_STORAGE_CONF="/nonexistent")
    oe = [args.binary, "--store", "containers-storage", "--data-root", root, "-q", image]

    def clear():
        for p in (out_podman, out_oe):
            if os.path.exists(p):
                os.remove(p)

    # Each output is removed before the next command runs: a 3 GB archive left behind is
    # still being written back to disk, and would throttle the writes of whatever runs next.
    runs = {"podman_file": [], "oe_file": [], "oe_null": []}
    for _ in range(args.runs):
        runs["podman_file"].append(timed(save, env))
        theirs = archive_facts(out_podman)
        clear()
        runs["oe_file"].append(timed(oe + ["-o", out_oe], oe_env))
        ours = archive_facts(out_oe)
        clear()
        with open(os.devnull, "wb") as null:
            runs["oe_null"].append(timed(oe, oe_env, stdout=null))
    # The same image, by both: the config each wrote has the same digest.
    if theirs[0] != ours[0]:
        sys.exit(f"bench_podman: {image}: podman save wrote config {theirs[0]}, "
                 f"oci-export {ours[0]}")
    result = {"image": image, "layers": ours[1], "bytes": ours[2]}
    result.update({k: min(v) for k, v in runs.items()})
    if args.cold:
        drop_caches()
        result["podman_cold"] = timed(save, env)
        drop_caches()
        result["oe_cold"] = timed(oe + ["-o", out_oe], oe_env)
        clear()
    return result


def markdown(results, cold):
    head = ("| image | size | layers | `podman save` → file | oci-export → file | speed-up | "
            "oci-export → /dev/null |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| `{r['image']}` | {r['bytes'] / 1e6:.0f} MB | {r['layers']} | "
                    f"{r['podman_file']:.2f} s | {r['oe_file']:.2f} s | "
                    f"{r['podman_file'] / r['oe_file']:.1f}× | {r['oe_null']:.2f} s |")
    if cold:
        rows += ["", "| image | `podman save` cold | oci-export cold | speed-up |",
                 "|---|---:|---:|---:|"]
        for r in results:
            rows.append(f"| `{r['image']}` | {r['podman_cold']:.2f} s | {r['oe_cold']:.2f} s | "
                        f"{r['podman_cold'] / r['oe_cold']:.1f}× |")
    return "\n".join(rows) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="the private podman store (made if new)")
    ap.add_argument("--load", action="store_true", help="podman load an archive from stdin")
    ap.add_argument("--import", dest="imports", action="append", default=[],
                    metavar="DIR:NAME", help="import a tar of host directory DIR as NAME")
    ap.add_argument("--binary", help="oci-export (a release build)")
    ap.add_argument("--scratch", help="where outputs go [default: --dir]")
    ap.add_argument("--runs", type=int, default=3, help="warm runs; the best counts")
    ap.add_argument("--cold", action="store_true", help="also one cold run each")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("images", nargs="*")
    args = ap.parse_args()
    podman, env, root = podman_cmd(args.dir)
    if args.load:
        subprocess.run(podman + ["load", "-q"], env=env, stdin=sys.stdin, check=True,
                       stdout=subprocess.DEVNULL)
    for spec in args.imports:
        directory, name = spec.split(":", 1)
        tar = subprocess.Popen(["tar", "-C", "/", "--numeric-owner", "-cf", "-", directory],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        subprocess.run(podman + ["import", "-q", "-", name], env=env, stdin=tar.stdout,
                       check=True, stdout=subprocess.DEVNULL)
        tar.wait()
    if not args.images:
        return
    if not args.binary:
        sys.exit("bench_podman: --binary is needed to measure")
    args.scratch = args.scratch or args.dir
    results = [bench_image(args, podman, env, root, image) for image in args.images]
    table = markdown(results, args.cold)
    print(table, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
