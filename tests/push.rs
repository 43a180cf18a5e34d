//! `oci-export push`, the whole program, against real registries on loopback (Debian's
//! docker-registry: plain HTTP, htpasswd over TLS with a private CA, the token controller with
//! the tests' own token server) and the private engines scripts/test.sh starts.
//!
//! What a push put in the registry is read back three ways: the second engine pulls it by tag
//! and by digest and must get the first engine's image ID; skopeo inspects it; and the
//! registry's own storage must hold the engine's config byte for byte and, for every layer, one
//! compressed stream that decompresses to the layer's diff_id. Faults come from the tests'
//! proxy (harness/fault_proxy.rs), whose request log also shows what was sent and in which
//! order; every faulty push ends pushed and correct, or with one clear error and no tag.
//!
//! Retries wait 10 ms here, not 1 s: the binary reads `OCI_EXPORT_RETRY_DELAY_MS` (for tests
//! only; see src/main.rs). zstd pushes are read back by skopeo alone: Docker 20.10, the engine
//! these tests run, cannot pull zstd layers.

mod harness;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use harness::docker_config;
use harness::engine::{engine, Engine, Expected};
use harness::fault_proxy::{base64_encode, Action, FaultProxy, Rule, Seen};
use harness::pki;
use harness::registry::{
    skopeo_copy_to_oci, skopeo_inspect, skopeo_inspect_raw, token_registry, tools_present, Config,
    Login, RegistryServer, SkopeoAccess,
};
use harness::{skip, BIN};
use oci_export::digest::Digest;
use serde_json::Value;

const USER: &str = "oe-pusher";
const PASSWORD: &str = "pw-Push-6093-never-shown";
const WRONG_PASSWORD: &str = "pw-Wrong-2231-never-shown";
const REFRESH_TOKEN: &str = "refresh-Push-8812-never-shown";
const MIB: u64 = 1 << 20;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_GZIP_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Five layers from the classic builder, with whiteouts and an opaque directory: the image
/// most tests push (its layers go up in parallel).
const CLASSIC: &str = "oe-test/classic:latest";
/// One layer holding a 5 MiB incompressible file: for faults in the middle of a blob and caps
/// per request.
const BIGFILE: &str = "oe-test/load-bigfile:latest";

// ---------------------------------------------------------------------------------------
// Set-up

/// The engines (and the tools the tests need); `None` after [`skip`] when they are missing.
fn setup() -> Option<Engine> {
    if !tools_present(&["docker-registry", "skopeo"]) {
        return None;
    }
    engine()
}

/// What the engine knows of `tag`; a case make_images.py could not build is skipped (and fails
/// under CI, through [`engine`]).
fn expected<'e>(engine: &'e Engine, tag: &str) -> Option<&'e Expected> {
    let found = engine.images.get(tag);
    if found.is_none() {
        skip(&format!("the engine has no {tag}"));
    }
    found
}

/// The anonymous plain-HTTP registry the tests share, each in repositories of its own.
fn plain_registry() -> &'static RegistryServer {
    static REGISTRY: OnceLock<&'static RegistryServer> = OnceLock::new();
    REGISTRY.get_or_init(|| RegistryServer::start(&Config::default()).share())
}

/// A test's own directory: `HOME`, the docker config the push reads (`docker/`), its blob
/// cache (`cache/`), `TMPDIR` (`tmp/`) and an empty certs dir, so that no run reads or
/// writes anything of the machine's user.
struct Home {
    dir: tempfile::TempDir,
    /// A directory put first on the push's `PATH` (for `docker-credential-*` helpers).
    helpers: Option<PathBuf>,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("oe-push-test.")
            .tempdir()
            .unwrap();
        for sub in ["docker", "cache", "tmp", "certs.d", "docker-client"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Home { dir, helpers: None }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn docker_config(&self) -> PathBuf {
        self.path().join("docker")
    }

    fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
}

/// Every secret of these tests in every form a leak could take.
fn secrets() -> Vec<String> {
    let mut all = vec![
        PASSWORD.to_string(),
        WRONG_PASSWORD.to_string(),
        REFRESH_TOKEN.to_string(),
    ];
    for password in [PASSWORD, WRONG_PASSWORD] {
        all.push(base64_encode(format!("{USER}:{password}").as_bytes()));
    }
    all
}

/// Runs `oci-export push [extra] IMAGE DEST` on the first engine's data root, from `home`
/// (its blob cache unless `extra` chooses one or `--no-cache`, its empty certs dir unless
/// `extra` names one), and checks that no secret appears in what it printed.
fn push(engine: &Engine, home: &Home, image: &str, dest: &str, extra: &[&str]) -> Output {
    let mut args: Vec<OsString> = vec!["push".into(), "--data-root".into()];
    args.push(engine.data_root.clone().into());
    if !extra
        .iter()
        .any(|a| *a == "--no-cache" || *a == "--cache-dir")
    {
        args.push("--cache-dir".into());
        args.push(home.cache().into());
    }
    if !extra.contains(&"--certs-dir") {
        args.push("--certs-dir".into());
        args.push(home.path().join("certs.d").into());
    }
    args.extend(extra.iter().map(OsString::from));
    args.push(image.into());
    args.push(dest.into());
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .env("DOCKER_CONFIG", home.docker_config())
        .env("HOME", home.path())
        .env("XDG_CACHE_HOME", home.path().join("xdg-cache"))
        .env("TMPDIR", home.path().join("tmp"))
        .env("OCI_EXPORT_RETRY_DELAY_MS", "10")
        // Under sudo the push notes whose docker config it read; these runs name their own.
        .env_remove("SUDO_USER");
    if let Some(bin) = &home.helpers {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin.clone()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    let out = output_within(cmd, None);
    let printed = [
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    ];
    for secret in secrets() {
        for text in &printed {
            assert!(
                !text.contains(&secret),
                "push {dest} printed a secret:\n{text}"
            );
        }
    }
    out
}

/// Runs `cmd` with `stdin` as its input and returns its output; a run that takes more than
/// two minutes (a hang: these commands take seconds) is killed and fails the test.
fn output_within(mut cmd: Command, stdin: Option<&str>) -> Output {
    const LIMIT: Duration = Duration::from_secs(120);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: signalling our own child, not yet reaped (its waiter still waits).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish in {LIMIT:?}");
        }
    }
}

/// A push that succeeded: exit 0, exactly one line on stdout, `<repository>@sha256:<hex>`, and
/// nothing on stderr (not a terminal: no progress, and no warning was due). Returns the digest.
fn pushed(out: &Output, repository: &str) -> Digest {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "push to {repository} failed: {stderr}"
    );
    assert_eq!(
        stderr, "",
        "a successful push writes nothing on a stderr that is no terminal"
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let line = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("stdout is one line: {stdout:?}"));
    assert!(!line.contains('\n'), "stdout is one line: {stdout:?}");
    let (name, digest) = line
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("{line:?} is <repository>@<digest>"));
    assert_eq!(name, repository, "{line}");
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{line}"
    );
    digest.parse().unwrap()
}

/// A push that failed: a non-zero exit, nothing on stdout, and on stderr one error line,
/// after warnings if any. Returns the error line.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(!out.status.success(), "the push should have failed");
    assert!(
        out.stdout.is_empty(),
        "a failed push prints no digest: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    let (error, before) = lines.split_last().expect("an error message");
    assert!(error.starts_with("oci-export: error: "), "{stderr}");
    for line in before {
        assert!(
            line.starts_with("oci-export: warning: "),
            "stderr holds warnings and one error only:\n{stderr}"
        );
    }
    error.to_string()
}

/// `HEAD /v2/<repository>/manifests/<tag>` on an anonymous plain registry: its status.
fn manifest_status(addr: &str, repository: &str, tag: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .head(format!("http://{addr}/v2/{repository}/manifests/{tag}"))
        .header("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"))
        .call()
        .expect("asking the registry for the tag")
        .status()
        .as_u16()
}

fn assert_no_tag(addr: &str, repository: &str, tag: &str) {
    assert_eq!(
        manifest_status(addr, repository, tag),
        404,
        "a failed push left no tag {repository}:{tag}"
    );
}

// ---------------------------------------------------------------------------------------
// What the registry holds

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layers {
    /// Docker schema2, gzip layers (the default, as `docker push` writes).
    Gzip,
    /// OCI, zstd layers (`-c zstd`).
    Zstd,
}

/// The image pushed as `<registry>/<repository>:<tag>`, as the registry has it.
struct InRegistry<'a> {
    registry: &'a RegistryServer,
    repository: &'a str,
    tag: &'a str,
    /// How skopeo reaches the registry (directly, never through a proxy).
    access: SkopeoAccess,
}

impl InRegistry<'_> {
    fn by_tag(&self) -> String {
        format!("{}/{}:{}", self.registry.addr, self.repository, self.tag)
    }

    fn by_digest(&self, digest: &Digest) -> String {
        format!("{}/{}@{digest}", self.registry.addr, self.repository)
    }
}

/// Checks the pushed image against the engine's: the tag names the printed digest (skopeo
/// reads it); the manifest is of the asked-for kind; the config is the engine's, byte for
/// byte (so the image ID is unchanged); each layer blob is stored, has the manifest's size and
/// digest, and is one compressed stream of the layer's diff_id. Returns the manifest.
fn assert_in_registry(
    engine: &Engine,
    expected: &Expected,
    image: &InRegistry<'_>,
    digest: &Digest,
    kind: Layers,
    home: &Home,
) -> Value {
    let raw = skopeo_inspect_raw(home.path(), &image.by_tag(), &image.access)
        .unwrap_or_else(|e| panic!("skopeo inspect --raw {}: {e}", image.by_tag()));
    assert_eq!(
        Digest::of(&raw),
        *digest,
        "{}: the tag names the printed digest",
        image.by_tag()
    );
    let summary = skopeo_inspect(home.path(), &image.by_digest(digest), &image.access)
        .unwrap_or_else(|e| panic!("skopeo inspect {}: {e}", image.by_digest(digest)));
    assert_eq!(summary["Digest"], digest.to_string());

    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    let (manifest_type, config_type, layer_type) = match kind {
        Layers::Gzip => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_GZIP_LAYER),
        Layers::Zstd => (OCI_MANIFEST, OCI_CONFIG, OCI_ZSTD_LAYER),
    };
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], manifest_type);
    assert_eq!(manifest["config"]["mediaType"], config_type);
    assert_eq!(manifest["config"]["digest"], expected.id.to_string());
    let engine_config = engine.stored_config(&expected.id);
    assert_eq!(manifest["config"]["size"], engine_config.len() as u64);
    let config = image
        .registry
        .stored_blob(&expected.id)
        .expect("the registry holds the config");
    assert!(
        config == engine_config,
        "the pushed config is the engine's, byte for byte"
    );

    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), expected.diff_ids.len(), "one blob per layer");
    let mut blobs = Vec::new();
    for (layer, diff_id) in layers.iter().zip(&expected.diff_ids) {
        assert_eq!(layer["mediaType"], layer_type);
        let blob_digest: Digest = layer["digest"].as_str().unwrap().parse().unwrap();
        let blob = image
            .registry
            .stored_blob(&blob_digest)
            .unwrap_or_else(|| panic!("the registry holds layer blob {blob_digest}"));
        assert_eq!(layer["size"], blob.len() as u64, "{blob_digest}: size");
        assert_eq!(Digest::of(&blob), blob_digest);
        assert_eq!(
            Digest::of(&decompress(kind, &blob)),
            *diff_id,
            "layer blob {blob_digest} decompresses to diff_id {diff_id}"
        );
        blobs.push(blob_digest);
    }
    let listed: Vec<String> = summary["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let ours: Vec<String> = blobs.iter().map(Digest::to_string).collect();
    assert_eq!(listed, ours, "skopeo lists the pushed layers");
    manifest
}

/// A layer blob's content: one gzip member (§ "one gzip stream per layer": a reader that
/// stops after the first member must get the whole layer), or one zstd stream.
fn decompress(kind: Layers, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        Layers::Gzip => {
            let mut decoder = flate2::bufread::GzDecoder::new(blob);
            decoder.read_to_end(&mut out).expect("a gzip layer");
            assert!(
                decoder.into_inner().is_empty(),
                "one gzip member, nothing after it"
            );
        }
        Layers::Zstd => {
            out = zstd::decode_all(blob).expect("a zstd layer");
        }
    }
    out
}

/// The digests a manifest names: its config, then its layers.
fn manifest_blobs(manifest: &Value) -> Vec<Digest> {
    let mut all = vec![manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()];
    for layer in manifest["layers"].as_array().unwrap() {
        all.push(layer["digest"].as_str().unwrap().parse().unwrap());
    }
    all
}

fn layer_blobs(manifest: &Value) -> Vec<Digest> {
    manifest_blobs(manifest)[1..].to_vec()
}

// ---------------------------------------------------------------------------------------
// The second engine

/// The second engine pulls one image at a time, holding none of it before (other test
/// binaries load the same images there), so that every pull downloads and checks each layer:
/// Docker skips the layers of an image whose config it already has.
static ENGINE_B: Mutex<()> = Mutex::new(());

/// Runs the Debian docker CLI against an engine, with a client config of the test's own.
fn docker_cli(host: &str, config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("/usr/bin/docker");
    cmd.env("DOCKER_HOST", host)
        .arg("--config")
        .arg(config)
        .args(args);
    let out = output_within(cmd, stdin);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Logs the second engine's client (`config`, a directory of the test's own) in to `addr`.
fn docker_login(engine: &Engine, config: &Path, addr: &str) {
    docker_cli(
        &engine.second_host,
        config,
        &["login", "--username", USER, "--password-stdin", addr],
        Some(PASSWORD),
    );
}

/// The second engine pulls the image by tag and by digest, and both name the first engine's
/// image ID (Docker checks every layer against its digest and the config's diff_ids).
/// `config`: the client configuration (a `docker login` for registries that need one).
fn assert_engine_b_pulls(
    engine: &Engine,
    config: &Path,
    image: &InRegistry<'_>,
    digest: &Digest,
    id: &Digest,
) {
    let _one_at_a_time = ENGINE_B.lock().unwrap_or_else(|e| e.into_inner());
    let host = &engine.second_host;
    forget_image(host, config, id);
    let references = [image.by_tag(), image.by_digest(digest)];
    for reference in &references {
        docker_cli(host, config, &["pull", "--quiet", reference], None);
    }
    for reference in &references {
        let out = docker_cli(
            host,
            config,
            &["image", "inspect", "--format", "{{.Id}}", reference],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            id.to_string(),
            "the second engine pulled {reference} as the first engine's image"
        );
    }
    forget_image(host, config, id);
}

/// Removes image `id` (all its names) from an engine, if it holds it, and checks it is gone.
fn forget_image(host: &str, config: &Path, id: &Digest) {
    let id = id.to_string();
    let inspect = |cmd: &mut Command| {
        cmd.env("DOCKER_HOST", host)
            .arg("--config")
            .arg(config)
            .args(["image", "inspect", "--format", "{{.Id}}", &id]);
    };
    let mut probe = Command::new("/usr/bin/docker");
    inspect(&mut probe);
    if output_within(probe, None).status.success() {
        docker_cli(host, config, &["image", "rm", "--force", &id], None);
    }
    let mut probe = Command::new("/usr/bin/docker");
    inspect(&mut probe);
    assert!(
        !output_within(probe, None).status.success(),
        "{id} is gone from {host}"
    );
}

// ---------------------------------------------------------------------------------------
// The proxy's log

fn encoded(digest: &Digest) -> String {
    digest.to_string().replace(':', "%3A")
}

/// A request that sends blob bytes or opens an upload (what a push must not do for a blob the
/// registry has).
fn is_upload(s: &Seen) -> bool {
    matches!(s.method.as_str(), "POST" | "PUT" | "PATCH") && s.target.contains("/blobs/uploads/")
}

fn is_commit_of(s: &Seen, digest: &Digest) -> bool {
    s.method == "PUT"
        && s.target.contains("/blobs/uploads/")
        && s.target.contains(&format!("digest={}", encoded(digest)))
}

/// Whether this request, answered as it was, shows `digest` in `repository`: found (HEAD
/// 200), committed (PUT 201) or mounted (POST 201).
fn confirms(s: &Seen, repository: &str, digest: &Digest) -> bool {
    if !s.target.starts_with(&format!("/v2/{repository}/blobs/")) {
        return false;
    }
    match (s.method.as_str(), s.status) {
        ("HEAD", 200) => s.target.ends_with(&format!("/blobs/{digest}")),
        ("PUT", 201) => is_commit_of(s, digest),
        ("POST", 201) => s.target.contains(&format!("mount={}", encoded(digest))),
        _ => false,
    }
}

/// The tag was written last: the final request is the manifest's `PUT` (201), and no manifest
/// was sent before every blob it names was confirmed in the repository.
fn assert_tag_written_last(
    seen: &[Seen],
    repository: &str,
    tag: &str,
    manifest: &Value,
    log: &str,
) {
    let last = seen.last().expect("the push made requests");
    assert!(
        last.method == "PUT"
            && last.target == format!("/v2/{repository}/manifests/{tag}")
            && last.status == 201,
        "the manifest PUT is the last request:\n{log}"
    );
    let first_manifest = seen
        .iter()
        .position(|s| s.target.contains("/manifests/"))
        .unwrap();
    for digest in manifest_blobs(manifest) {
        assert!(
            seen[..first_manifest]
                .iter()
                .any(|s| confirms(s, repository, &digest)),
            "blob {digest} was confirmed before any manifest was sent:\n{log}"
        );
    }
}

/// The requests since `mark` (the log's length before a push).
fn since(proxy: &FaultProxy, mark: usize) -> Vec<Seen> {
    proxy.seen()[mark..].to_vec()
}

fn plain() -> SkopeoAccess {
    SkopeoAccess {
        plain_http: true,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Plain HTTP

#[test]
fn plain_http_pushes_pull_back_as_the_same_images() {
    let Some(engine) = setup() else { return };
    let registry = plain_registry();
    // Nothing injected: the proxy is here for its log (what was sent, in which order).
    let proxy = FaultProxy::start(&registry.addr, Vec::new());
    let home = Home::new();
    let images = [
        // Several layers; RUN rm (whiteouts, of a base-layer file too); rm -rf + mkdir (an
        // opaque directory); COPY; steps without a layer.
        CLASSIC,
        // BuildKit's cache-ids, a whiteout.
        "oe-test/buildkit:latest",
        // The same diff_id twice (layers A, B, A), and twice in a row from a real build.
        "oe-test/load-dup-layer:latest",
        "oe-test/classic-dupcopy:latest",
        // The empty layer (1024 zero bytes) on top of a real one.
        "oe-test/load-empty-layer:latest",
        // Foreign whiteout and opaque markers.
        "oe-test/load-whiteouts:latest",
        // A repository of several components, a tag other than latest.
        "oe-test/org/deep:1.0",
    ];
    for (n, tag) in images.iter().enumerate() {
        let Some(expected) = expected(&engine, tag) else {
            continue;
        };
        let repository = format!("plain/{n}/{}", tag.split(':').next().unwrap());
        let mark = proxy.seen().len();
        let out = push(
            &engine,
            &home,
            tag,
            &format!("{}/{repository}:v1", proxy.addr()),
            &[],
        );
        let digest = pushed(&out, &format!("{}/{repository}", proxy.addr()));
        let image = InRegistry {
            registry,
            repository: &repository,
            tag: "v1",
            access: plain(),
        };
        let manifest = assert_in_registry(&engine, expected, &image, &digest, Layers::Gzip, &home);
        let seen = since(&proxy, mark);
        let log = proxy.log();
        assert_tag_written_last(&seen, &repository, "v1", &manifest, &log);
        // A fresh repository: every distinct blob uploaded exactly once (a layer listed twice
        // included), none mounted.
        let mut distinct = manifest_blobs(&manifest);
        distinct.sort_by_key(|d| d.to_string());
        distinct.dedup();
        for digest in &distinct {
            let commits = seen
                .iter()
                .filter(|s| is_commit_of(s, digest) && s.status == 201)
                .count();
            assert_eq!(commits, 1, "{tag}: blob {digest} uploaded once:\n{log}");
        }
        assert!(
            !seen.iter().any(|s| s.target.contains("mount=")),
            "nothing to mount from:\n{log}"
        );
        assert_engine_b_pulls(
            &engine,
            &home.path().join("docker-client"),
            &image,
            &digest,
            &expected.id,
        );
    }
}

#[test]
fn zstd_pushes_an_oci_manifest_of_zstd_layers() {
    let Some(engine) = setup() else { return };
    let Some(expected) = expected(&engine, CLASSIC) else {
        return;
    };
    let registry = plain_registry();
    let home = Home::new();
    let repository = "zstd/classic";
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{}/{repository}:v1", registry.addr),
        &["-c", "zstd"],
    );
    let digest = pushed(&out, &format!("{}/{repository}", registry.addr));
    let image = InRegistry {
        registry,
        repository,
        tag: "v1",
        access: plain(),
    };
    let manifest = assert_in_registry(&engine, expected, &image, &digest, Layers::Zstd, &home);
    // skopeo copies it to an OCI layout, checking every blob's digest; there too each layer
    // decompresses to its diff_id. (Docker 20.10 cannot pull zstd layers: no engine pull.)
    let layout = home.path().join("oci-layout");
    skopeo_copy_to_oci(home.path(), &image.by_tag(), &plain(), &layout)
        .unwrap_or_else(|e| panic!("skopeo copy: {e}"));
    for (blob, diff_id) in layer_blobs(&manifest).iter().zip(&expected.diff_ids) {
        let bytes = std::fs::read(layout.join("blobs/sha256").join(blob.hex())).unwrap();
        assert_eq!(Digest::of(&decompress(Layers::Zstd, &bytes)), *diff_id);
    }
}

// ---------------------------------------------------------------------------------------
// TLS and logins

#[test]
fn tls_with_htpasswd_a_private_ca_and_credentials_from_config_or_a_helper() {
    let Some(engine) = setup() else { return };
    if !tools_present(&["openssl", "htpasswd"]) {
        return;
    }
    let (Some(classic), Some(bigfile)) = (expected(&engine, CLASSIC), expected(&engine, BIGFILE))
    else {
        return;
    };
    let home = Home::new();
    let pki_dir = home.path().join("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let pki = pki::make(&pki_dir);
    let registry = RegistryServer::start(&Config {
        login: Login::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        tls: Some(&pki),
        ..Default::default()
    });
    let addr = registry.addr.clone();
    let certs = pki::certs_dir(&home.path().join("certs-with-ca"), &addr, &pki.ca_cert);
    let certs_arg = certs.to_str().unwrap();
    docker_config::write_auths(&home.docker_config(), &addr, USER, PASSWORD);

    // Without the CA: a certificate error, and nothing reaches the registry.
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{addr}/tls/no-ca:v1"),
        &[],
    );
    let error = failed(&out);
    assert!(
        error.contains("certificate is not trusted") && error.contains("ca.crt"),
        "{error}"
    );
    assert!(!registry.has_repository("tls/no-ca"), "nothing was pushed");

    // --insecure accepts the certificate unverified (as docker's insecure-registries).
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{addr}/tls/insecure:v1"),
        &["--insecure"],
    );
    let insecure = pushed(&out, &format!("{addr}/tls/insecure"));
    assert!(registry.has_tag("tls/insecure", "v1"));

    // With the CA in a certs dir and the password from config.json's auths.
    let repository = "tls/classic";
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{addr}/{repository}:v1"),
        &["--certs-dir", certs_arg],
    );
    let digest = pushed(&out, &format!("{addr}/{repository}"));
    assert_eq!(digest, insecure, "the same image, pushed either way");
    let access = SkopeoAccess {
        cert_dir: Some(certs.join(&addr)),
        creds: Some(format!("{USER}:{PASSWORD}")),
        plain_http: false,
    };
    let image = InRegistry {
        registry: &registry,
        repository,
        tag: "v1",
        access: access.clone(),
    };
    assert_in_registry(&engine, classic, &image, &digest, Layers::Gzip, &home);
    // The engine treats 127.0.0.0/8 as insecure (no certificate check) but needs the login.
    let client = home.path().join("docker-client");
    docker_login(&engine, &client, &addr);
    assert_engine_b_pulls(&engine, &client, &image, &digest, &classic.id);

    // Wrong credentials: one clear error, no tag.
    docker_config::write_auths(&home.docker_config(), &addr, USER, WRONG_PASSWORD);
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{addr}/tls/wrong:v1"),
        &["--certs-dir", certs_arg],
    );
    let error = failed(&out);
    let config_json = home.docker_config().join("config.json");
    assert!(
        error.contains("401 Unauthorized")
            && error.contains(&format!(
                "the registry did not accept the login of \"{USER}\" (auths in {})",
                config_json.display()
            )),
        "{error}"
    );
    assert!(!registry.has_tag("tls/wrong", "v1"));

    // No credentials for this registry: the error says where they were looked for.
    std::fs::write(&config_json, r#"{"auths": {}}"#).unwrap();
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{addr}/tls/anonymous:v1"),
        &["--certs-dir", certs_arg],
    );
    let error = failed(&out);
    assert!(
        error.contains("401 Unauthorized")
            && error.contains(&format!(
                "no credentials for {addr} in {}: docker login {addr}",
                config_json.display()
            )),
        "{error}"
    );
    assert!(!registry.has_tag("tls/anonymous", "v1"));

    // The password from a `docker-credential-*` helper (credsStore) found on PATH.
    let mut home = home;
    home.helpers = Some(docker_config::install_helper(
        home.path(),
        "oepush",
        &[(&addr, USER, PASSWORD)],
    ));
    docker_config::write_helpers(&home.docker_config(), Some("oepush"), &[]);
    let repository = "tls/helper";
    let out = push(
        &engine,
        &home,
        BIGFILE,
        &format!("{addr}/{repository}:v1"),
        &["--certs-dir", certs_arg],
    );
    let digest = pushed(&out, &format!("{addr}/{repository}"));
    assert_eq!(
        docker_config::helper_calls(home.path(), "oepush"),
        vec![addr.clone()],
        "the helper was asked once, for this registry"
    );
    let image = InRegistry {
        registry: &registry,
        repository,
        tag: "v1",
        access,
    };
    assert_in_registry(&engine, bigfile, &image, &digest, Layers::Gzip, &home);
    assert_engine_b_pulls(&engine, &client, &image, &digest, &bigfile.id);
}

/// `{"auths": {...}}` with the password for each of these registries.
fn write_auths_for(config_dir: &Path, registries: &[&str]) {
    let auth = base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
    let auths: serde_json::Map<String, Value> = registries
        .iter()
        .map(|r| (r.to_string(), serde_json::json!({ "auth": auth })))
        .collect();
    std::fs::write(
        config_dir.join("config.json"),
        serde_json::json!({ "auths": auths }).to_string(),
    )
    .unwrap();
}

#[test]
fn bearer_tokens_from_a_token_server_even_when_one_expires_mid_push() {
    let Some(engine) = setup() else { return };
    if !tools_present(&["openssl"]) {
        return;
    }
    let Some(classic) = expected(&engine, CLASSIC) else {
        return;
    };
    let home = Home::new();
    let pki_dir = home.path().join("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let (tokens, registry) = token_registry(&pki_dir, USER, PASSWORD, REFRESH_TOKEN);
    let proxy = FaultProxy::start(&registry.addr, Vec::new());
    write_auths_for(&home.docker_config(), &[&registry.addr, proxy.addr()]);
    let access = SkopeoAccess {
        creds: Some(format!("{USER}:{PASSWORD}")),
        ..plain()
    };
    let client = home.path().join("docker-client");
    docker_login(&engine, &client, &registry.addr);

    // A token for push on the repository, from the password, serves the whole push, its
    // parallel uploads included.
    let repository = "token/classic";
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{}/{repository}:v1", registry.addr),
        &[],
    );
    let digest = pushed(&out, &format!("{}/{repository}", registry.addr));
    let asked: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.scopes.iter().any(|s| s.contains(repository)))
        .collect();
    assert_eq!(asked.len(), 1, "one token for the push: {asked:?}");
    assert!(asked[0].granted && asked[0].user.as_deref() == Some(USER));
    let image = InRegistry {
        registry: &registry,
        repository,
        tag: "v1",
        access: access.clone(),
    };
    assert_in_registry(&engine, classic, &image, &digest, Layers::Gzip, &home);
    assert_engine_b_pulls(&engine, &client, &image, &digest, &classic.id);

    // Tokens now die 2 s after they are issued (the answer still says 300 s), and the first
    // uploads of the layers, in parallel, are held 2.5 s on their way: they all reach the
    // registry with the same dead token.
    tokens.set_lifetime(Duration::from_secs(2));
    proxy.set_rules(vec![Rule::new(
        Some("POST"),
        Some("/blobs/uploads/"),
        Action::DelayRequest(Duration::from_millis(2500)),
    )
    .window(0, 3)]);
    let repository = "token/expiring";
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{}/{repository}:v1", proxy.addr()),
        &[],
    );
    let digest = pushed(&out, &format!("{}/{repository}", proxy.addr()));
    let seen = proxy.seen();
    let log = proxy.log();
    let refused = seen
        .iter()
        .filter(|s| s.method == "POST" && s.status == 401 && s.authorization.is_some())
        .count();
    assert!(
        refused >= 2,
        "the delayed uploads were refused for their expired token:\n{log}"
    );
    let granted = tokens
        .requests()
        .iter()
        .filter(|r| r.granted && r.scopes.iter().any(|s| s.contains(repository)))
        .count();
    assert!(granted >= 2, "a new token was fetched mid-push ({granted})");
    tokens.set_lifetime(Duration::from_secs(300));
    let image = InRegistry {
        registry: &registry,
        repository,
        tag: "v1",
        access,
    };
    let manifest = assert_in_registry(&engine, classic, &image, &digest, Layers::Gzip, &home);
    assert_tag_written_last(&seen, repository, "v1", &manifest, &log);
    assert_engine_b_pulls(&engine, &client, &image, &digest, &classic.id);
}

// ---------------------------------------------------------------------------------------
// What a push does not send again

/// The blob cache's listing (`oci-export cache ls`), as the push would see it from `home`.
fn cache_listing(home: &Home, cache_dir: Option<&Path>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("cache").arg("ls");
    if let Some(dir) = cache_dir {
        cmd.arg("--cache-dir").arg(dir);
    }
    let out = cmd
        .env("HOME", home.path())
        .env("XDG_CACHE_HOME", home.path().join("xdg-cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// How many blobs `cache ls` lists (its last line: "N blobs, … bytes in DIR").
fn cached_blobs(listing: &str) -> usize {
    let last = listing.lines().last().unwrap();
    last.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_re_push_uploads_nothing_and_no_cache_pushes_the_same_bytes_and_keeps_none() {
    let Some(engine) = setup() else { return };
    let Some(expected) = expected(&engine, CLASSIC) else {
        return;
    };
    let registry = plain_registry();
    let proxy = FaultProxy::start(&registry.addr, Vec::new());
    let home = Home::new();
    let repository = "again/classic";
    let dest = |tag: &str| format!("{}/{repository}:{tag}", proxy.addr());
    let name = format!("{}/{repository}", proxy.addr());

    let first = pushed(&push(&engine, &home, CLASSIC, &dest("v1"), &[]), &name);
    let distinct = {
        let mut d = expected.diff_ids.clone();
        d.sort_by_key(|d| d.to_string());
        d.dedup();
        d.len()
    };
    assert_eq!(
        cached_blobs(&cache_listing(&home, Some(&home.cache()))),
        distinct,
        "each layer's blob was kept in the cache"
    );

    // Again, same tag and another: only HEADs and the tag; the same manifest.
    for tag in ["v1", "v2"] {
        let mark = proxy.seen().len();
        let again = pushed(&push(&engine, &home, CLASSIC, &dest(tag), &[]), &name);
        assert_eq!(again, first, "an unchanged image pushes the same manifest");
        let seen = since(&proxy, mark);
        let log = proxy.log();
        assert!(
            !seen.iter().any(is_upload),
            "a re-push uploads nothing:\n{log}"
        );
        let heads = seen
            .iter()
            .filter(|s| s.method == "HEAD" && s.status == 200)
            .count();
        assert!(heads > distinct, "every layer and the config found:\n{log}");
        let manifest: Value = serde_json::from_slice(
            &skopeo_inspect_raw(
                home.path(),
                &format!("{}/{repository}:{tag}", registry.addr),
                &plain(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_tag_written_last(&seen, repository, tag, &manifest, &log);
    }

    // --no-cache: a first push to another repository works, with the same bytes (compression
    // is deterministic), and leaves no cache entry anywhere, nor a file in TMPDIR.
    let default_cache = cache_listing(&home, None);
    let ours = cache_listing(&home, Some(&home.cache()));
    let repository = "again/no-cache";
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{}/{repository}:v1", registry.addr),
        &["--no-cache"],
    );
    let digest = pushed(&out, &format!("{}/{repository}", registry.addr));
    assert_eq!(digest, first, "the same blobs, made again");
    assert_eq!(cache_listing(&home, None), default_cache);
    assert_eq!(cache_listing(&home, Some(&home.cache())), ours);
    assert_eq!(
        std::fs::read_dir(home.path().join("tmp")).unwrap().count(),
        0,
        "no scratch file left in TMPDIR"
    );
    let image = InRegistry {
        registry,
        repository,
        tag: "v1",
        access: plain(),
    };
    assert_in_registry(&engine, expected, &image, &digest, Layers::Gzip, &home);
    assert_engine_b_pulls(
        &engine,
        &home.path().join("docker-client"),
        &image,
        &digest,
        &expected.id,
    );
}

#[test]
fn layers_the_engine_pushed_are_mounted_from_their_repository_not_uploaded() {
    let Some(engine) = setup() else { return };
    let tag = "oe-test/load-pax:latest";
    let Some(expected) = expected(&engine, tag) else {
        return;
    };
    let registry = plain_registry();
    let proxy = FaultProxy::start(&registry.addr, Vec::new());
    let home = Home::new();
    let client = home.path().join("docker-client");

    // The first engine pushes the image itself (its own gzip, so blobs we never made) and
    // records, for each layer, the blob and the repository (v2metadata). It records nothing
    // for images it neither pulled nor pushed, and a pull of an image it holds is a no-op.
    let source_repository = "mount/source";
    let source = format!("{}/{source_repository}:v1", proxy.addr());
    docker_cli(&engine.host, &client, &["tag", tag, &source], None);
    docker_cli(&engine.host, &client, &["push", "--quiet", &source], None);
    docker_cli(&engine.host, &client, &["image", "rm", &source], None);
    let theirs: Value = serde_json::from_slice(
        &skopeo_inspect_raw(
            home.path(),
            &format!("{}/{source_repository}:v1", registry.addr),
            &plain(),
        )
        .unwrap(),
    )
    .unwrap();
    let docker_layers = layer_blobs(&theirs);
    for (diff_id, blob) in expected.diff_ids.iter().zip(&docker_layers) {
        let record = std::fs::read_to_string(
            engine
                .data_root
                .join("image/overlay2/distribution/v2metadata-by-diffid/sha256")
                .join(diff_id.hex()),
        )
        .expect("the engine recorded the pushed layer");
        assert!(
            record.contains(&blob.to_string())
                && record.contains(&format!("{}/{source_repository}", proxy.addr())),
            "{record}"
        );
    }

    // A push to another repository, with an empty blob cache: each layer is mounted from the
    // source repository; nothing is compressed, and only the config is uploaded.
    let cache = home.path().join("cache-mounted");
    let repository = "mount/target";
    let mark = proxy.seen().len();
    let digest = pushed(
        &push(
            &engine,
            &home,
            tag,
            &format!("{}/{repository}:v1", proxy.addr()),
            &["--cache-dir", cache.to_str().unwrap()],
        ),
        &format!("{}/{repository}", proxy.addr()),
    );
    let seen = since(&proxy, mark);
    let log = proxy.log();
    let image = InRegistry {
        registry,
        repository,
        tag: "v1",
        access: plain(),
    };
    let manifest = assert_in_registry(&engine, expected, &image, &digest, Layers::Gzip, &home);
    assert_eq!(
        layer_blobs(&manifest),
        docker_layers,
        "the manifest names the engine's blobs"
    );
    for layer in &docker_layers {
        assert!(
            seen.iter().any(|s| s.method == "POST"
                && s.status == 201
                && s.target
                    .contains(&format!("mount={}&from=mount%2Fsource", encoded(layer)))),
            "layer {layer} mounted from {source_repository}:\n{log}"
        );
    }
    let uploads: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains("/blobs/uploads/"))
        .collect();
    assert!(
        uploads.len() == 1 && is_commit_of(uploads[0], &expected.id),
        "only the config was uploaded:\n{log}"
    );
    assert!(!seen.iter().any(|s| s.method == "PATCH"), "{log}");
    assert_eq!(
        cached_blobs(&cache_listing(&home, Some(&cache))),
        0,
        "nothing was compressed"
    );
    assert_tag_written_last(&seen, repository, "v1", &manifest, &log);
    assert_engine_b_pulls(&engine, &client, &image, &digest, &expected.id);

    // A registry that answers 401 to the mount (Harbor, for a source it will not show): the
    // layers are made and uploaded instead.
    proxy.set_rules(vec![Rule::new(
        Some("POST"),
        Some("mount="),
        Action::Reply {
            status: 401,
            headers: Vec::new(),
            body: r#"{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}"#.into(),
        },
    )]);
    let repository = "mount/refused";
    let mark = proxy.seen().len();
    let digest = pushed(
        &push(
            &engine,
            &home,
            tag,
            &format!("{}/{repository}:v1", proxy.addr()),
            &[
                "--cache-dir",
                home.path().join("cache-refused").to_str().unwrap(),
            ],
        ),
        &format!("{}/{repository}", proxy.addr()),
    );
    let seen = since(&proxy, mark);
    let log = proxy.log();
    for layer in &docker_layers {
        assert!(
            seen.iter().any(
                |s| s.status == 401 && s.target.contains(&format!("mount={}", encoded(layer)))
            ),
            "the mount of {layer} was tried:\n{log}"
        );
    }
    let image = InRegistry {
        registry,
        repository,
        tag: "v1",
        access: plain(),
    };
    let manifest = assert_in_registry(&engine, expected, &image, &digest, Layers::Gzip, &home);
    for layer in layer_blobs(&manifest) {
        assert!(
            seen.iter()
                .any(|s| is_commit_of(s, &layer) && s.status == 201),
            "layer {layer} uploaded instead:\n{log}"
        );
    }
    assert_tag_written_last(&seen, repository, "v1", &manifest, &log);
    assert_engine_b_pulls(&engine, &client, &image, &digest, &expected.id);
}

// ---------------------------------------------------------------------------------------
// Faults

/// A push of `tag` through a proxy with `rules` in front of the shared registry, into a
/// repository of its own; checks that it succeeded, is correct and pulls back, and that the
/// tag was written last. Returns the proxy's log of the push.
fn push_through_faults(tag: &str, repository: &str, rules: Vec<Rule>) -> Option<Vec<Seen>> {
    let engine = setup()?;
    let expected = expected(&engine, tag)?;
    let registry = plain_registry();
    let proxy = FaultProxy::start(&registry.addr, rules);
    let home = Home::new();
    let out = push(
        &engine,
        &home,
        tag,
        &format!("{}/{repository}:v1", proxy.addr()),
        &[],
    );
    let digest = pushed(&out, &format!("{}/{repository}", proxy.addr()));
    let seen = proxy.seen();
    let image = InRegistry {
        registry,
        repository,
        tag: "v1",
        access: plain(),
    };
    let manifest = assert_in_registry(&engine, expected, &image, &digest, Layers::Gzip, &home);
    assert_tag_written_last(&seen, repository, "v1", &manifest, &proxy.log());
    assert_engine_b_pulls(
        &engine,
        &home.path().join("docker-client"),
        &image,
        &digest,
        &expected.id,
    );
    Some(seen)
}

fn log_of(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            format!(
                "{} {} -> {} (len {})",
                s.method, s.target, s.status, s.content_length
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn reply(status: u16, headers: &[(&str, &str)]) -> Action {
    Action::Reply {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: String::new(),
    }
}

#[test]
fn a_connection_reset_in_the_middle_of_a_blob_is_retried() {
    // The layer (5 MiB) is the first blob sent, streamed as it is compressed; the connection is
    // reset 1 MiB into it. The stream cannot be sent again: its session is deleted, and the
    // finished blob goes up whole.
    let Some(seen) = push_through_faults(
        BIGFILE,
        "faults/reset",
        vec![Rule::new(
            Some("PATCH"),
            Some("/blobs/uploads/"),
            Action::ResetAfter(MIB),
        )
        .window(0, 1)],
    ) else {
        return;
    };
    let log = log_of(&seen);
    let patch = seen.iter().position(|s| s.method == "PATCH").expect(&log);
    assert_eq!(seen[patch].status, 0, "the stream was cut:\n{log}");
    assert!(
        seen[patch + 1..]
            .iter()
            .any(|s| s.method == "PUT" && s.status == 201 && s.content_length > 4 * MIB),
        "sent again, whole:\n{log}"
    );
    let cut = upload_session(&seen[patch].target);
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PUT" && s.status == 201 && upload_session(&s.target) == cut),
        "the cut stream's session was never committed:\n{log}"
    );
}

/// The upload session a request went to: the id after `/blobs/uploads/`.
fn upload_session(target: &str) -> &str {
    target
        .split_once("/blobs/uploads/")
        .map_or("", |(_, rest)| rest.split('?').next().unwrap_or(""))
}

#[test]
fn a_refused_stream_falls_back_to_an_ordinary_upload() {
    // The streamed upload (a layer sent while it is compressed) is answered 401, as a
    // registry whose token expired between the session's start and its body might: a stream
    // cannot be sent twice, so the finished blob goes up whole, in a new session.
    let Some(seen) = push_through_faults(
        BIGFILE,
        "faults/stream-401",
        vec![Rule::new(Some("PATCH"), Some("/blobs/uploads/"), reply(401, &[])).window(0, 1)],
    ) else {
        return;
    };
    let log = log_of(&seen);
    let patch = seen.iter().position(|s| s.method == "PATCH").expect(&log);
    assert_eq!(seen[patch].status, 401, "{log}");
    assert!(
        seen[patch + 1..]
            .iter()
            .any(|s| s.method == "PUT" && s.status == 201 && s.content_length > 4 * MIB),
        "uploaded whole after the refusal:\n{log}"
    );
}

#[test]
fn a_connection_reset_in_a_monolithic_upload_is_retried() {
    // A registry that refuses streamed bodies (a 4 MiB cap on requests without a length is
    // what some proxies do) gets the finished blob in one PUT; that connection is reset 1 MiB
    // in, and the PUT is sent again.
    let Some(seen) = push_through_faults(
        BIGFILE,
        "faults/reset-put",
        vec![
            Rule::new(Some("PATCH"), Some("/blobs/uploads/"), reply(413, &[])).window(0, 1),
            Rule::new(
                Some("PUT"),
                Some("/blobs/uploads/"),
                Action::ResetAfter(MIB),
            )
            .window(0, 1),
        ],
    ) else {
        return;
    };
    let puts: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains("/blobs/uploads/"))
        .collect();
    assert!(
        puts[0].status == 0 && puts[0].content_length > 4 * MIB,
        "{}",
        log_of(&seen)
    );
    assert_eq!(puts[1].status, 201, "sent again:\n{}", log_of(&seen));
}

#[test]
fn server_errors_are_retried() {
    let rule =
        |method, contains, status| Rule::new(Some(method), Some(contains), reply(status, &[]));
    let Some(seen) = push_through_faults(
        CLASSIC,
        "faults/5xx",
        vec![
            rule("HEAD", "/blobs/", 500).window(0, 2),
            rule("POST", "/blobs/uploads/", 503).window(0, 2),
            rule("PUT", "/blobs/uploads/", 502).window(0, 1),
            rule("PUT", "/manifests/", 500).window(0, 1),
        ],
    ) else {
        return;
    };
    for status in [500, 502, 503] {
        assert!(
            seen.iter().any(|s| s.status == status),
            "{status} was answered:\n{}",
            log_of(&seen)
        );
    }
}

#[test]
fn too_many_requests_waits_as_long_as_retry_after_says() {
    let Some(seen) = push_through_faults(
        BIGFILE,
        "faults/429",
        vec![Rule::new(
            Some("POST"),
            Some("/blobs/uploads/"),
            reply(429, &[("Retry-After", "1")]),
        )
        .window(0, 1)],
    ) else {
        return;
    };
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts[0].status, 429, "{}", log_of(&seen));
    let waited = posts[1].at.duration_since(posts[0].at);
    // The retry delay is 10 ms here: only Retry-After makes it a second.
    assert!(
        waited >= Duration::from_millis(950),
        "waited {waited:?} after a 429 with Retry-After: 1"
    );
}

#[test]
fn a_4_mib_cap_per_request_is_met_with_chunks() {
    let Some(seen) = push_through_faults(
        BIGFILE,
        "faults/cap",
        vec![Rule::new(
            None,
            Some("/blobs/uploads/"),
            Action::CapBody {
                max: 4 * MIB,
                status: 413,
            },
        )],
    ) else {
        return;
    };
    let log = log_of(&seen);
    // First the stream (a body of unknown length, over the cap), then the monolithic PUT are
    // refused; then chunks within the cap.
    let refused_put = seen
        .iter()
        .position(|s| s.method == "PUT" && s.status == 413)
        .unwrap_or_else(|| panic!("the monolithic upload was refused:\n{log}"));
    assert!(
        seen[..refused_put]
            .iter()
            .any(|s| s.method == "PATCH" && s.status == 413),
        "the streamed upload was refused first:\n{log}"
    );
    let patches: Vec<&Seen> = seen[refused_put..]
        .iter()
        .filter(|s| s.method == "PATCH")
        .collect();
    assert!(patches.len() >= 2, "{log}");
    assert!(
        patches
            .iter()
            .all(|p| p.status == 202 && p.content_length <= 4 * MIB),
        "chunks within the cap:\n{log}"
    );
}

#[test]
fn created_for_a_chunk_and_relative_locations_are_followed() {
    // Chunks (a 2 MiB cap), each answered 201 as ECR does, and every Location relative.
    let Some(seen) = push_through_faults(
        BIGFILE,
        "faults/ecr",
        vec![
            Rule::new(
                None,
                Some("/blobs/uploads/"),
                Action::CapBody {
                    max: 2 * MIB,
                    status: 413,
                },
            ),
            Rule::new(Some("PATCH"), None, Action::Created202As201),
            Rule::new(None, None, Action::RelativeLocation),
        ],
    ) else {
        return;
    };
    let log = log_of(&seen);
    // A 4 MiB chunk is refused too; the 1 MiB ones that follow are all answered 201.
    let patches: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.status != 413)
        .collect();
    assert!(patches.len() >= 3, "{log}");
    assert!(
        patches
            .iter()
            .all(|p| p.status == 201 && p.content_length <= 2 * MIB),
        "{log}"
    );
}

#[test]
fn uploads_that_always_fail_end_with_one_error_naming_the_layer_and_no_tag() {
    let Some(engine) = setup() else { return };
    if expected(&engine, CLASSIC).is_none() {
        return;
    }
    let home = Home::new();

    // A registry in read-only maintenance: every upload is refused (405), at once.
    let readonly = RegistryServer::start(&Config {
        readonly: true,
        ..Default::default()
    });
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{}/faults/readonly:v1", readonly.addr),
        &[],
    );
    let error = failed(&out);
    assert!(
        error.contains("pushing layer sha256:") && error.contains("405"),
        "{error}"
    );
    assert!(
        !error.contains("attempts"),
        "refused for cause, not retried: {error}"
    );
    assert_no_tag(&readonly.addr, "faults/readonly", "v1");

    // A registry that answers every upload 503: tried as often as allowed, then one error.
    let registry = plain_registry();
    let proxy = FaultProxy::start(
        &registry.addr,
        vec![Rule::new(
            Some("POST"),
            Some("/blobs/uploads/"),
            reply(503, &[]),
        )],
    );
    let out = push(
        &engine,
        &home,
        CLASSIC,
        &format!("{}/faults/unavailable:v1", proxy.addr()),
        &[],
    );
    let error = failed(&out);
    assert!(
        error.contains("pushing layer sha256:")
            && error.contains("503")
            && error.contains("after 5 failed attempts"),
        "{error}"
    );
    assert!(
        !proxy
            .seen()
            .iter()
            .any(|s| s.target.contains("/manifests/")),
        "no manifest sent:\n{}",
        proxy.log()
    );
    assert_no_tag(&registry.addr, "faults/unavailable", "v1");
}
