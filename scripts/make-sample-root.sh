#!/usr/bin/env bash
# Regenerate tests/data/sample-root: the smallest read-only slice of a Docker overlay2
# data root from which oci-export can export the image `sample` (tags latest and 1.0).
#
#   scripts/make-sample-root.sh          # needs root; starts and stops its own engine
#
# The image has three layers, all tiny:
#   1. docker load of a crafted tar: files, an empty file, a symlink, a hardlink and a
#      non-UTF-8 name (data/caf\xe9-\xff\xfe.txt), so tar-split stores it as name_raw;
#   2. a container that ran `busybox rm` plus an echo, then `docker commit` (exactly what
#      a classic RUN step does; busybox is bind-mounted so it is not part of the image):
#      a whiteout plus a new file;
#   3. a classic-builder COPY, followed by ENV/LABEL steps (empty_layer history).
# Copied: repositories.json (only sample's tags), the config, its imagedb metadata, each
# layer's layerdb dir and the files/dirs/symlinks of each overlay2/<cache-id>/diff.
# Whiteout char devices are left out: reassembly only reads size>0 regular files.
# tests/data/sample-root/EXPECTED gets the image ID, then each diff_id, one per line.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/tests/data/sample-root
DOCKER=/usr/bin/docker

work=$(mktemp -d /tmp/oe.XXXXXX)
cleanup() {
	"$repo/scripts/dockerd.sh" stop "$work" || true
	rm -rf "$work"
}
trap cleanup EXIT

eval "$("$repo/scripts/dockerd.sh" start "$work")"
export DOCKER_HOST

# Layer 1, through the same crafted-archive code as the full image set.
base=$(PYTHONDONTWRITEBYTECODE=1 python3 - "$repo/tests/support" "$work" <<'EOF'
import sys, tempfile
sys.path.insert(0, sys.argv[1])
import make_images as mi

t = mi.Tar()
t.dir("data").file("data/hello.txt", b"hello from the sample image\n")
t.file("data/todelete.txt", b"removed in layer 2\n")
t.file(b"data/caf\xe9-\xff\xfe.txt", b"non-UTF-8 file name\n")
t.file("data/empty", b"")
t.hardlink("data/hello-hard.txt", "data/hello.txt")
t.symlink("data/hello-link", "hello.txt")
t.dir("mnt")  # existing mount point, so layer 2 does not record a new directory
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as w:
    b = mi.Builder(w, check_save=True)
    image_id, _ = b.load("sample-base:crafted", [t.bytes()], "sample layer 1")
print(image_id)
EOF
)

# Layer 2: what a classic `RUN rm ...` does, without putting busybox in the image.
mkdir "$work/bb"
cp /bin/busybox "$work/bb/busybox"
cid=$("$DOCKER" create --network none -v "$work/bb:/mnt:ro" "$base" \
	/mnt/busybox sh -c '/mnt/busybox rm /data/todelete.txt && echo new > /data/new.txt')
"$DOCKER" start -a "$cid" >/dev/null
mid=$("$DOCKER" commit -c 'LABEL sample.step=rm' "$cid")
"$DOCKER" rm "$cid" >/dev/null

# Layer 3: classic builder COPY, then metadata-only steps.
ctx=$work/ctx
mkdir "$ctx"
printf 'copied by COPY\n' >"$ctx/copied.txt"
touch -d @1700000000 "$ctx/copied.txt"
cat >"$ctx/Dockerfile" <<EOF
FROM $mid
COPY copied.txt /data/copied.txt
ENV SAMPLE=1
LABEL sample.step=copy
EOF
DOCKER_BUILDKIT=0 "$DOCKER" build -q --network=none -t sample:latest "$ctx" >/dev/null
"$DOCKER" tag sample:latest sample:1.0

# Copy the minimum subset out of the (root-only) data root.
src=$work/data
rm -rf "$out"
mkdir -p "$out"
python3 - "$src" "$out" >"$work/diffs" <<'EOF'
import hashlib, json, os, shutil, sys

src, out = sys.argv[1], sys.argv[2]
img = os.path.join(src, "image/overlay2")
repos = json.load(open(os.path.join(img, "repositories.json")))["Repositories"]
refs = {"sample": repos["sample"]}
image_id = refs["sample"]["sample:latest"]
assert set(refs["sample"]) == {"sample:latest", "sample:1.0"}, refs
assert refs["sample"]["sample:1.0"] == image_id

def copy(rel):
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    shutil.copy2(os.path.join(src, rel), os.path.join(out, rel))

os.makedirs(os.path.join(out, "image/overlay2"))
with open(os.path.join(out, "image/overlay2/repositories.json"), "w") as f:
    json.dump({"Repositories": refs}, f, separators=(",", ":"))  # as Docker writes it

hexid = image_id.split(":", 1)[1]
copy(f"image/overlay2/imagedb/content/sha256/{hexid}")
meta = f"image/overlay2/imagedb/metadata/sha256/{hexid}"
if os.path.isdir(os.path.join(src, meta)):
    for name in sorted(os.listdir(os.path.join(src, meta))):
        copy(f"{meta}/{name}")

config = json.load(open(os.path.join(img, "imagedb/content/sha256", hexid)))
diff_ids = config["rootfs"]["diff_ids"]
chain = None
for diff_id in diff_ids:
    chain = diff_id if chain is None else \
        "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    layer = f"image/overlay2/layerdb/sha256/{chain.split(':', 1)[1]}"
    for name in ("cache-id", "diff", "parent", "size", "tar-split.json.gz"):
        if os.path.exists(os.path.join(src, layer, name)):
            copy(f"{layer}/{name}")
    cache_id = open(os.path.join(src, layer, "cache-id")).read().strip()
    print(f"overlay2/{cache_id}/diff")

with open(os.path.join(out, "EXPECTED"), "w") as f:
    f.write("\n".join([image_id, *diff_ids]) + "\n")
EOF

while read -r diff; do
	mkdir -p "$out/$(dirname "$diff")"
	# No --preserve=xattr: overlay's trusted.* xattrs mean nothing outside the engine.
	cp -dR --preserve=mode,timestamps,links "$src/$diff" "$out/$diff"
	# Whiteouts (char 0:0) and other special files cannot live in git and are never read.
	find "$out/$diff" \( -type c -o -type b -o -type p -o -type s \) -delete
done <"$work/diffs"
chmod -R a+rX,u+w "$out"

# Prove the subset suffices: rebuild every layer from tar-split + its diff dir.
{
	read -r _
	chain=
	while read -r diff_id; do
		if [ -z "$chain" ]; then
			chain=$diff_id
		else
			chain=sha256:$(printf '%s %s' "$chain" "$diff_id" | sha256sum | cut -d' ' -f1)
		fi
		layer=$out/image/overlay2/layerdb/sha256/${chain#sha256:}
		# tar-split logs each run on stderr; keep it for the failure message only.
		got=sha256:$(tar-split asm --input "$layer/tar-split.json.gz" \
			--path "$out/overlay2/$(cat "$layer/cache-id")/diff" 2>"$work/asm.log" |
			sha256sum | cut -d' ' -f1)
		if [ "$got" != "$diff_id" ]; then
			echo "make-sample-root: layer $diff_id rebuilt as $got" >&2
			cat "$work/asm.log" >&2
			exit 1
		fi
	done
} <"$out/EXPECTED"

echo "wrote ${out#"$repo"/} ($(du -sk "$out" | cut -f1) KiB):"
cat "$out/EXPECTED"
