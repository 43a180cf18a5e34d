#!/usr/bin/env python3
"""Measures oci-export against `docker save` and the SHA-256 floor; writes the README table.

Called by scripts/bench.sh with a running private engine (DOCKER_HOST) and built images.
Every number for an image comes from the same run, so the ratios compare like with like.
Warm-cache numbers are the best of several runs; cold-cache runs drop the page cache first.
"""

import argparse
import json
import shlex
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time

DOCKER = "/usr/bin/docker"


def timed(cmd, stdout=subprocess.DEVNULL, cpu=False):
    """Runs cmd; returns (wall seconds, peak RSS in bytes of that process), plus its CPU
    seconds (user + system, its children included) when `cpu` is set."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}): {stderr}")
    if cpu:
        return wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss * 1024


def best(runs, cmd, cleanup=None):
    results = []
    for _ in range(runs):
        results.append(timed(cmd))
        if cleanup:
            cleanup()
    wall = min(r[0] for r in results)
    rss = max(r[1] for r in results)
    return wall, rss


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def remove(path):
    def go():
        if os.path.exists(path):
            os.remove(path)
    return go


def layer_facts(archive, scratch):
    """Extracts each layer blob to a file (for the floor) and counts its member files."""
    layers = []
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]
        for path in dict.fromkeys(manifest["Layers"]):
            member = outer.getmember(path)
            dest = os.path.join(scratch, os.path.basename(path))
            with outer.extractfile(member) as src, open(dest, "wb") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
            with tarfile.open(dest) as inner:
                names = [m.name for m in inner if m.isreg() and m.size > 0]
            # The layer's files in tar order, for reading them from the engine's storage.
            listing = dest + ".files"
            with open(listing, "wb") as f:
                f.write(b"".join(os.fsencode(n) + b"\0" for n in names))
            layers.append({"path": dest, "size": member.size, "files": len(names), "list": listing})
    return layers


def largest_first(layers, cores, command):
    """Runs `command(layer)` for every layer, largest first, at most `cores` at a time; returns
    the wall time."""
    todo = sorted(layers, key=lambda l: -l["size"])
    start = time.perf_counter()
    running = []
    while todo or running:
        while todo and len(running) < cores:
            running.append(subprocess.Popen(command(todo.pop(0)), stdout=subprocess.DEVNULL))
        running[0].wait()
        running = [p for p in running if p.poll() is None]
    return time.perf_counter() - start


def floor_seconds(layers, cores):
    """SHA-256 of every layer with OpenSSL (SHA-NI), layers in parallel on all cores, warm.

    The wall time is the floor a verified export cannot beat, because SHA-256 is sequential
    within a layer."""
    for layer in layers:  # warm the page cache
        with open(layer["path"], "rb") as f:
            while f.read(8 << 20):
                pass
    return largest_first(layers, cores, lambda l: ["openssl", "dgst", "-sha256", l["path"]])


def disk_floor_seconds(layers, cores):
    """The same layer bytes read cold, each file front to back, layers in parallel: what the
    disk allows a cold export at best (an export reads thousands of files, not one stream)."""
    subprocess.run(["sync"], check=True)
    drop_caches()
    return largest_first(layers, cores, lambda l: ["cat", l["path"]])


def layer_diff_dirs(image):
    """Each layer's directory in the engine's storage, bottom layer first (overlay2 lists the
    lower layers top first, then the top layer as the upper one)."""
    data = json.loads(subprocess.run(
        [DOCKER, "image", "inspect", "--format", "{{json .GraphDriver.Data}}", image],
        check=True, capture_output=True, text=True).stdout)
    lower = data.get("LowerDir", "")
    return list(reversed(lower.split(":"))) + [data["UpperDir"]] if lower else [data["UpperDir"]]


def files_read_seconds(layers, cores, readers=128):
    """Every non-empty regular file of every layer read cold from the engine's storage, in the
    layer tar's order, by `readers` parallel `cat`s per layer, layers in parallel: what reading
    the scattered files themselves costs this disk, whatever the reader. Not a strict bound
    (an engine that gets its reads merged better can beat it), but far nearer the truth for a
    layer of many small files than one contiguous read."""
    drop_caches()
    return largest_first(layers, cores, lambda l: [
        "bash", "-c", f"cd {shlex.quote(l['dir'])} && xargs -0 -r -P {readers} -n 64 cat "
                      f"< {shlex.quote(l['list'])} > /dev/null"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="only rewrite the tables and chart in --out from an earlier results.json")
    ap.add_argument("--binary")
    ap.add_argument("--data-root")
    ap.add_argument("--scratch")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compress", action="append", default=[],
                    help="also benchmark compressed exports of this image")
    ap.add_argument("--push", action="append", default=[],
                    help="also benchmark pushes of this image to a loopback registry")
    ap.add_argument("--podman", metavar="DIR",
                    help="a private podman store holding the images as localhost/<image> "
                         "(bench_podman.py --load): also benchmark podman save against them")
    ap.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", ""))
    ap.add_argument("images", nargs="*")
    ap.add_argument("--merge", metavar="RESULTS_JSON",
                    help="keep the sections of an earlier results.json that this run does not "
                         "measure (without images, the export tables and the facts the other "
                         "sections need come from it)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        write_outputs(args.out, saved["cores"], saved["results"], saved["compressed"],
                      saved.get("pushed", []), saved.get("podman", []))
        return
    saved = {}
    if args.merge and os.path.exists(args.merge):
        with open(args.merge) as f:
            saved = json.load(f)
    if not (args.binary and args.data_root and args.scratch and (args.images or saved)):
        ap.error("measuring needs --binary, --data-root, --scratch and images (or --merge)")
    cores = os.cpu_count()
    oe = [args.binary, "--data-root", args.data_root, "--quiet"]
    out_file = os.path.join(args.scratch, "out.tar")
    results = [] if args.images else saved["results"]
    for image in args.images:
        print(f"bench: {image}", file=sys.stderr)
        # A first export checks the image and yields the layers for the floor.
        timed(oe + [image, "-o", out_file])
        floor_dir = os.path.join(args.scratch, "floor")
        os.makedirs(floor_dir, exist_ok=True)
        layers = layer_facts(out_file, floor_dir)
        os.remove(out_file)
        for layer, diff in zip(layers, layer_diff_dirs(image)):
            layer["dir"] = diff
        r = {
            "image": image,
            "bytes": sum(l["size"] for l in layers),
            "layers": len(layers),
            "files": sum(l["files"] for l in layers),
        }
        r["floor"] = min(floor_seconds(layers, cores) for _ in range(args.runs))
        r["disk_floor"] = disk_floor_seconds(layers, cores)
        r["files_read"] = files_read_seconds(layers, cores)
        for layer in layers:
            os.remove(layer["path"])
            os.remove(layer["list"])

        r["docker_null"], _ = best(2, [DOCKER, "save", image])
        r["docker_file"], _ = best(2, [DOCKER, "save", "-o", out_file, image], remove(out_file))
        r["oe_null"], r["oe_null_rss"] = best(args.runs, oe + [image])
        r["oe_file_uring"], r["oe_file_rss"] = best(
            args.runs, oe + ["--io", "uring", image, "-o", out_file], remove(out_file))
        r["oe_file_sync"], _ = best(args.runs, oe + ["--io", "sync", image, "-o", out_file], remove(out_file))
        r["oe_null_sync"], _ = best(args.runs, oe + ["--io", "sync", image])

        drop_caches()
        r["docker_cold"], _ = timed([DOCKER, "save", "-o", out_file, image])
        remove(out_file)()
        drop_caches()
        r["oe_cold"], _ = timed(oe + [image, "-o", out_file])
        remove(out_file)()
        results.append(r)
        print(json.dumps(r), file=sys.stderr)

    facts = {r["image"]: r for r in results}
    compressed = [compress_bench(args, oe, image, facts[image], cores) for image in args.compress]
    pushed = [push_bench(args, args.binary, args.data_root, image, facts[image])
              for image in args.push]
    podman = podman_bench(args, results) if args.podman else []
    if saved:  # what this run did not measure, as it was
        compressed = compressed or saved.get("compressed", [])
        pushed = pushed or saved.get("pushed", [])
        podman = podman or saved.get("podman", [])

    write_outputs(args.out, cores, results, compressed, pushed, podman)


def write_outputs(out, cores, results, compressed, pushed, podman):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"cores": cores, "results": results, "compressed": compressed,
                   "pushed": pushed, "podman": podman}, f, indent=1)
    text = markdown(results, cores)
    if compressed:
        text += "\n" + compress_markdown(compressed, cores)
    if pushed:
        text += "\n" + push_markdown(pushed, cores)
    if podman:
        text += "\n" + podman_markdown(podman, cores)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "throughput.svg"), "w") as f:
        f.write(svg(results))
    print(text)


def shell(script):
    return ["bash", "-o", "pipefail", "-c", script]


def compress_bench(args, oe, image, facts, cores):
    """Compressed exports against the routes users take today, one run each (they are long)."""
    print(f"bench: compressed {image}", file=sys.stderr)
    scratch = args.scratch
    out_file = os.path.join(scratch, "out.tar")
    layout = os.path.join(scratch, "layout")
    cache = os.path.join(scratch, "cache")
    r = {"image": image, "bytes": facts["bytes"]}

    def run(key, cmd, cleanup):
        wall, _, cpu = timed(cmd, cpu=True)
        r[key], r[key + "_cpu"] = wall, cpu
        r[key + "_size"] = output_size(out_file, layout)
        cleanup()

    rm_out = remove(out_file)
    rm_layout = lambda: subprocess.run(["rm", "-rf", layout], check=True)
    for alg in ("gzip", "zstd"):
        run(f"oe_{alg}", oe + ["-c", alg, "--no-cache", image, "-o", out_file], rm_out)
    run("oe_zlib", oe + ["-c", "gzip", "--gzip-encoder", "zlib", "--no-cache", image, "-o", out_file],
        rm_out)
    run("oe_isal", oe + ["-c", "gzip", "--gzip-encoder", "isal", "--no-cache", image, "-o", out_file],
        rm_out)
    # A warm blob cache: the second export only reads the cached blobs.
    run("oe_zstd_first", oe + ["-c", "zstd", "--cache-dir", cache, image, "-o", out_file], rm_out)
    run("oe_zstd_cached", oe + ["-c", "zstd", "--cache-dir", cache, image, "-o", out_file], rm_out)
    subprocess.run(["rm", "-rf", cache], check=True)
    run("skopeo_gzip", ["skopeo", "copy", "--quiet", "--src-daemon-host", args.docker_host,
                        f"docker-daemon:{image}", f"oci:{layout}:bench"], rm_layout)
    run("docker_pigz", shell(f"{DOCKER} save {image} | pigz > {out_file}"), rm_out)
    run("docker_zstd", shell(f"{DOCKER} save {image} | zstd -q -T0 -3 > {out_file}"), rm_out)
    # The codec's own ceiling: libzstd's CLI alone on the same layer bytes, from the page cache.
    layers_file = os.path.join(scratch, "layers.tar")
    subprocess.run(oe + [image, "-o", out_file], check=True)
    with tarfile.open(out_file) as archive, open(layers_file, "wb") as f:
        manifest = json.load(archive.extractfile("manifest.json"))
        for path in dict.fromkeys(p for m in manifest for p in m["Layers"]):
            shutil.copyfileobj(archive.extractfile(path), f)
    rm_out()
    subprocess.run(["cat", layers_file], stdout=subprocess.DEVNULL, check=True)
    run("zstd_alone", shell(f"zstd -q -T0 -3 -c {layers_file} > /dev/null"), lambda: None)
    # What a faster deflate would allow: ISA-L's igzip at its level 1, one core (see README).
    run("igzip_alone", shell(f"igzip -1 -c {layers_file} > /dev/null"), remove(layers_file))
    print(json.dumps(r), file=sys.stderr)
    return r


class Registry:
    """Debian's docker-registry on loopback, emptied (stopped, storage removed, restarted)
    before every push so that each route uploads everything."""

    def __init__(self, scratch):
        self.dir = os.path.join(scratch, "registry")
        self.port = free_port()
        self.proc = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def empty(self):
        self.stop()
        subprocess.run(["rm", "-rf", self.dir], check=True)
        os.makedirs(self.dir)
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n"
                    f"http:\n  addr: {self.host}\nlog:\n  level: error\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        sys.exit("bench: the registry did not start")

    def stored_bytes(self):
        total = 0
        for d, _, fs in os.walk(os.path.join(self.dir, "data")):
            total += sum(os.path.getsize(os.path.join(d, f)) for f in fs)
        return total

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def push_bench(args, oe_binary, data_root, image, facts):
    """Pushes to an emptied loopback registry by every route users take, one run each, the
    same image; then the re-pushes, which find everything there."""
    print(f"bench: push {image}", file=sys.stderr)
    registry = Registry(args.scratch)
    archive = os.path.join(args.scratch, "push.tar")
    cache = os.path.join(args.scratch, "push-cache")
    export = [oe_binary, "--data-root", data_root]
    push = [oe_binary, "push", "--data-root", data_root]
    r = {"image": image, "bytes": facts["bytes"]}
    name = image.split(":")[0].replace("/", "-")

    def dest(route):
        return f"{registry.host}/{name}/{route}:1"

    def run(key, cmd, empty=True):
        if empty:
            registry.empty()
        wall, rss = timed(cmd)
        r[key], r[key + "_rss"] = wall, rss
        r[key + "_stored"] = registry.stored_bytes()

    subprocess.run([DOCKER, "tag", image, dest("docker")], check=True)
    run("docker_push", [DOCKER, "push", "-q", dest("docker")])
    run("docker_repush", [DOCKER, "push", "-q", dest("docker")], empty=False)
    run("skopeo_push", ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        "--src-daemon-host", args.docker_host, f"docker-daemon:{image}",
                        f"docker://{dest('skopeo')}"])
    run("archive_skopeo_push", shell(
        f"{shlex.join(export + ['--quiet', image, '-o', archive])} && skopeo copy --quiet "
        f"--dest-tls-verify=false docker-archive:{archive} docker://{dest('archive')}"))
    os.remove(archive)
    subprocess.run(["rm", "-rf", cache], check=True)
    run("oe_push", push + ["--quiet", "--cache-dir", cache, image, dest("oe")])
    run("oe_repush", push + ["--quiet", "--cache-dir", cache, image, dest("oe")], empty=False)
    # The two halves of a push, each alone: compressing (to /dev/null, nothing uploaded), and
    # the registry taking the same gzip blobs from curl (nothing compressed, blobs in parallel).
    # A push on these cores costs about their sum, as both share them.
    # (A one-layer archive needs its blob's size before the blob, so the blob is staged in a
    # scratch file: in memory here, so that the disk, which the registry's half uses, is not.)
    r["compress_only"], r["compress_only_rss"] = timed(
        ["env", "TMPDIR=/dev/shm"] + export + ["--quiet", "--no-cache", "-c", "gzip", image])
    layout = os.path.join(args.scratch, "push-layout")
    timed(export + ["--quiet", "--cache-dir", cache, "-c", "gzip", "--format", "oci-dir",
                    image, "-o", layout])
    registry.empty()
    r["intake_floor"] = upload_blobs(registry, f"{name}/floor", layout)
    r["intake_floor_stored"] = registry.stored_bytes()
    subprocess.run(["rm", "-rf", cache, layout], check=True)
    run("oe_push_nocache", push + ["--quiet", "--no-cache", image, dest("oe")])
    run("oe_push_zstd", push + ["--quiet", "--no-cache", "-c", "zstd", image, dest("oe-zstd")])
    subprocess.run([DOCKER, "rmi", dest("docker")], check=True, stdout=subprocess.DEVNULL)
    registry.stop()
    subprocess.run(["rm", "-rf", registry.dir], check=True)
    print(json.dumps(r), file=sys.stderr)
    return r


def upload_blobs(registry, repo, layout):
    """Uploads every blob of an OCI layout to the registry with curl (a POST, then one
    streamed PUT each), as many at a time as there are cores; returns the wall time. Every
    blob is then checked to be there, so a failed upload cannot pass for a fast one."""
    blobs_dir = os.path.join(layout, "blobs", "sha256")
    blobs = [{"path": os.path.join(blobs_dir, d), "digest": d,
              "size": os.path.getsize(os.path.join(blobs_dir, d))} for d in os.listdir(blobs_dir)]
    base = f"http://{registry.host}"
    upload = ('loc=$(curl -sSf -X POST -D - -o /dev/null "$1/v2/$2/blobs/uploads/" '
              '| tr -d "\\r" | sed -n "s/^[Ll]ocation: *//p"); '
              'case $loc in /*) loc="$1$loc";; esac; '
              'case $loc in *\\?*) sep="&";; *) sep="?";; esac; '
              'exec curl -sSf -o /dev/null -X PUT -H "Expect:" '
              '-H "Content-Type: application/octet-stream" -T "$3" "$loc${sep}digest=sha256:$4"')
    wall = largest_first(blobs, os.cpu_count(), lambda b: [
        "bash", "-c", upload, "upload", base, repo, b["path"], b["digest"]])
    for b in blobs:
        subprocess.run(["curl", "-sSfI", "-o", "/dev/null",
                        f"{base}/v2/{repo}/blobs/sha256:{b['digest']}"], check=True)
    return wall


def push_markdown(rows, cores):
    lines = [
        f"Push to an emptied Debian docker-registry on loopback (same machine, {cores} cores), one "
        "run each. MB/s of uncompressed image; \"stored\" is what the registry holds after the "
        "push, in MB; re-pushes find every blob already there. The two floors are the halves "
        "of a push, each alone on the same cores: compressing the layers, and the registry "
        "taking their gzip blobs.",
        "",
        "| image | route | seconds | MB/s | stored | peak RSS | speed-up vs `docker push` |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mb = r["bytes"] / 1e6
        def row(label, key, base="docker_push"):
            t = r.get(key)
            if t is None:  # a run from before this row existed
                return
            speed = f"**{r[base] / t:.1f}×**" if base and key != base else ""
            stored = f"{r[key + '_stored'] / 1e6:.0f}" if key + "_stored" in r else "–"
            rss = f"{r[key + '_rss'] / 2**20:.0f} MiB" if key + "_rss" in r else "–"
            lines.append(f"| {r['image']} | {label} | {t:.2f} | {mb / t:.0f} "
                         f"| {stored} | {rss} | {speed} |")
        row("`docker push`", "docker_push")
        row("`skopeo copy docker-daemon: docker://`", "skopeo_push")
        row("`oci-export -o a.tar && skopeo copy docker-archive:a.tar docker://`", "archive_skopeo_push")
        row("oci-export push (gzip, cache cold)", "oe_push")
        row("oci-export push (gzip, `--no-cache`)", "oe_push_nocache")
        row("oci-export push `-c zstd`", "oe_push_zstd")
        row("`docker push` again (re-push)", "docker_repush", base=None)
        row("oci-export push again (re-push, cache warm)", "oe_repush", base="docker_repush")
        row("*floor:* oci-export `-c gzip` → /dev/null (compressing alone)", "compress_only", base=None)
        row("*floor:* the registry taking the same gzip blobs from curl", "intake_floor", base=None)
    return "\n".join(lines) + "\n"


def podman_bench(args, results):
    """`podman save` against `oci-export --store containers-storage` on the same images, loaded
    into a private podman store; the SHA-256 floor is the overlay2 run's, the layers being the
    same bytes."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_podman
    podman, env, root = bench_podman.podman_cmd(args.podman)
    bench_args = argparse.Namespace(binary=args.binary, scratch=args.scratch, runs=args.runs,
                                    cold=True)
    rows = []
    for r in results:
        print(f"bench: podman {r['image']}", file=sys.stderr)
        row = bench_podman.bench_image(bench_args, podman, env, root, f"localhost/{r['image']}")
        row["floor"] = r["floor"]
        rows.append(row)
    return rows


def podman_markdown(rows, cores):
    lines = [
        f"containers-storage (a private podman 4.3 store, overlay driver), warm page cache, best "
        f"of runs, then one cold run; {cores} cores. The floor is the SHA-256 floor of the same "
        "layers (first table).",
        "",
        "| image | `podman save` → file | oci-export → file | speed-up | oci-export / floor "
        "| `podman save` cold | oci-export cold | speed-up cold |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['podman_file']:.2f} | {r['oe_file']:.2f} "
            f"| **{r['podman_file'] / r['oe_file']:.1f}×** | {r['oe_file'] / r['floor']:.2f}× "
            f"| {r['podman_cold']:.2f} | {r['oe_cold']:.2f} "
            f"| **{r['podman_cold'] / r['oe_cold']:.1f}×** |")
    return "\n".join(lines) + "\n"


def output_size(out_file, layout):
    """Bytes a route wrote: its archive, or its OCI layout directory; None if neither."""
    if os.path.exists(out_file):
        return os.path.getsize(out_file)
    if os.path.isdir(layout):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(layout) for f in fs)
    return None


def compress_markdown(rows, cores):
    lines = [
        f"Compressed exports, warm page cache, one run each; {cores} cores. Seconds, and MB/s of "
        "uncompressed input. \"per core\" divides by the CPU time oci-export used; \"output\" is "
        "the archive (or layout) written, in MB.",
        "",
        "| image | route | seconds | MB/s | MB/s per core | output | oci-export speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mb = r["bytes"] / 1e6
        def size(key):
            out = r.get(key + "_size")
            return f"{out / 1e6:.0f}" if out else "–"
        def row(label, key, versus=None, per_core=True):
            t = r[key]
            pc = f"{mb / r[key + '_cpu']:.0f}" if per_core else "–"
            speed = f"**{r[versus] / t:.1f}×**" if versus else ""
            lines.append(f"| {r['image']} | {label} | {t:.2f} | {mb / t:.0f} | {pc} | {size(key)} | {speed} |")
        def oe_row(label, key, speed):
            lines.append(f"| {r['image']} | {label} | {r[key]:.2f} | {mb / r[key]:.0f} "
                         f"| {mb / r[key + '_cpu']:.0f} | {size(key)} | {speed} |")
        def versus(key, route, name):
            return f"**{r[route] / r[key]:.1f}×** vs {name}"
        row("`skopeo copy docker-daemon: oci:` (gzip)", "skopeo_gzip", per_core=False)
        row("`docker save \\| pigz`", "docker_pigz", per_core=False)
        row("`docker save \\| zstd -T0 -3`", "docker_zstd", per_core=False)
        row("`zstd -T0 -3` alone on the layer tar (the codec's ceiling)", "zstd_alone", per_core=False)
        row("`igzip -1` (ISA-L, one core) alone on the layer tar", "igzip_alone", per_core=False)
        oe_row("oci-export `-c gzip` (sirocco, level 1)", "oe_gzip", versus("oe_gzip", "skopeo_gzip", "skopeo")
               + ", " + versus("oe_gzip", "docker_pigz", "pigz"))
        oe_row("oci-export `-c gzip --gzip-encoder zlib` (level 6)", "oe_zlib",
               versus("oe_zlib", "skopeo_gzip", "skopeo"))
        if "oe_isal" in r:
            oe_row("oci-export `-c gzip --gzip-encoder isal` (level 1)", "oe_isal",
                   versus("oe_isal", "skopeo_gzip", "skopeo") + ", " + versus("oe_isal", "docker_pigz", "pigz"))
        oe_row("oci-export `-c zstd` (level 3)", "oe_zstd", versus("oe_zstd", "docker_zstd", "zstd"))
        oe_row("oci-export `-c zstd`, blob cache warm", "oe_zstd_cached",
               versus("oe_zstd_cached", "docker_zstd", "zstd"))
    return "\n".join(lines) + "\n"


def mbps(r, key):
    return r["bytes"] / r[key] / 1e6


def markdown(results, cores):
    lines = [
        f"Warm page cache, best of runs; {cores} cores. Times in seconds; MB/s of uncompressed image.",
        "",
        "| image | size | layers | files | `docker save` → file | oci-export → file | speed-up | oci-export → stdout (/dev/null) | floor (SHA-256, all cores) | oci-export / floor | floor's speed-up | files/s | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['image']} | {r['bytes'] / 1e9:.2f} GB | {r['layers']} | {r['files']:,} "
            f"| {r['docker_file']:.2f} ({mbps(r, 'docker_file'):.0f} MB/s) "
            f"| {r['oe_file_uring']:.2f} ({mbps(r, 'oe_file_uring'):.0f} MB/s) "
            f"| **{r['docker_file'] / r['oe_file_uring']:.1f}×** "
            f"| {r['oe_null']:.2f} ({mbps(r, 'oe_null'):.0f} MB/s) "
            f"| {r['floor']:.2f} ({mbps(r, 'floor'):.0f} MB/s) "
            f"| {r['oe_file_uring'] / r['floor']:.2f}× "
            f"| {r['docker_file'] / r['floor']:.1f}× "
            f"| {r['files'] / r['oe_file_uring']:,.0f} "
            f"| {max(r['oe_file_rss'], r['oe_null_rss']) / 2**20:.0f} MiB |")
    lines += [
        "",
        "I/O engines and destinations (seconds, warm):",
        "",
        "| image | `docker save` → /dev/null | io_uring → file | sync → file | io_uring → /dev/null | sync → /dev/null |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['image']} | {r['docker_null']:.2f} | {r['oe_file_uring']:.2f} | {r['oe_file_sync']:.2f} "
            f"| {r['oe_null']:.2f} | {r['oe_null_sync']:.2f} |")
    lines += [
        "",
        "Cold page cache (caches dropped before each run), to a file. The *disk floor* reads the "
        "same layer bytes cold as one contiguous file per layer, front to back, layers in parallel. "
        "An export reads the layer's files instead, scattered over the disk: *files read* is every "
        "one of them read cold from the engine's storage, in tar order, by 128 parallel `cat`s per "
        "layer. The *cold floor* is the slower of that and the SHA-256 floor above, and "
        "`docker save` ÷ cold floor is about the most a verified export could gain here (not a "
        "strict bound: an engine whose reads the disk merges better can beat the `cat`s).",
        "",
        "| image | `docker save` | oci-export | speed-up | disk floor | files read | cold floor | oci-export / cold floor | cold floor's speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        # Results from before the files-read column fall back to the disk floor.
        files_read = r.get("files_read")
        cold_floor = max(files_read or r["disk_floor"], r["floor"])
        files_cell = f"{files_read:.2f} ({r['files'] / files_read:,.0f} files/s)" if files_read else "–"
        lines.append(
            f"| {r['image']} | {r['docker_cold']:.2f} ({mbps(r, 'docker_cold'):.0f} MB/s) "
            f"| {r['oe_cold']:.2f} ({mbps(r, 'oe_cold'):.0f} MB/s) | **{r['docker_cold'] / r['oe_cold']:.1f}×** "
            f"| {r['disk_floor']:.2f} ({mbps(r, 'disk_floor'):.0f} MB/s) "
            f"| {files_cell} | {cold_floor:.2f} "
            f"| {r['oe_cold'] / cold_floor:.2f}× | {r['docker_cold'] / cold_floor:.1f}× |")
    return "\n".join(lines) + "\n"


def svg(results):
    """A grouped horizontal bar chart of warm throughput per image."""
    series = [("docker save → file", "docker_file", "#9e9e9e"),
              ("oci-export → file", "oe_file_uring", "#1e88e5"),
              ("SHA-256 floor", "floor", "#43a047")]
    top = max(mbps(r, k) for r in results for _, k, _ in series)
    bar, gap, left, width = 16, 14, 170, 520
    height = 40 + len(results) * (len(series) * bar + gap) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-weight="bold">Throughput, warm cache (MB/s of uncompressed image)</text>']
    y = 36
    for r in results:
        out.append(f'<text x="{left - 8}" y="{y + bar * 1.8}" text-anchor="end">{r["image"]}</text>')
        for label, key, color in series:
            v = mbps(r, key)
            w = max(1, v / top * width)
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{color}"/>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 5}">{v:,.0f}</text>')
            y += bar
        y += gap
    lx = left
    for label, _, color in series:
        out.append(f'<rect x="{lx}" y="{y + 4}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{y + 14}">{label}</text>')
        lx += 170
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
