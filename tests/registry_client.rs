//! The registry client (`oci_export::sink::registry`) against real registries on loopback:
//! Debian's docker-registry (distribution 2.8) plain, over TLS with htpasswd, and with the token
//! controller and a token server of our own; faults from a proxy of our own in front of it.
//! What is pushed is read back by skopeo, an independent client, byte for byte.

mod harness;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::docker_config;
use harness::fault_proxy::{Action, FaultProxy, Rule, Seen};
use harness::pki;
use harness::registry::{
    skopeo_copy_to_dir, skopeo_inspect_raw, token_registry, tools_present, Config, Login,
    RegistryServer, SkopeoAccess,
};
use harness::token_server::TokenServer;
use oci_export::digest::Digest;
use oci_export::sink::registry::{
    BlobSource, BytesBlob, ClientOptions, FileBlob, Registry, Repository, RetryPolicy,
    UploadOptions,
};

const MIB: usize = 1 << 20;
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const PASSWORD: &str = "pw-Zq81-never-shown";
const USER: &str = "alice";
const REFRESH_TOKEN: &str = "refresh-Kd02-never-shown";

/// Incompressible bytes, the same for the same seed.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small image: layers of the given sizes, a config naming them, a manifest.
struct TestImage {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
}

impl TestImage {
    fn new(sizes: &[usize], seed: u64) -> TestImage {
        let layers: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| random_bytes(*n, seed * 100 + i as u64))
            .collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"seed": seed.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).to_string(), "size": config.len(),
            },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": Digest::of(l).to_string(), "size": l.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        TestImage {
            config,
            layers,
            manifest,
        }
    }

    fn blobs(&self) -> Vec<&[u8]> {
        let mut all: Vec<&[u8]> = self.layers.iter().map(Vec::as_slice).collect();
        all.push(&self.config);
        all
    }
}

/// A push as `oci-export push` will make it: HEAD each blob, upload what is missing, the
/// manifest last. Stops at the first error, so a failed push leaves no tag.
fn push(repo: &Repository<'_>, image: &TestImage, tag: &str) -> anyhow::Result<Digest> {
    for blob in image.blobs() {
        let source = BytesBlob::new(blob);
        if repo.blob_size(&source.digest())? == Some(blob.len() as u64) {
            continue;
        }
        let sent = AtomicU64::new(0);
        repo.upload(&source, &|n| {
            sent.fetch_max(n, Ordering::Relaxed);
        })?;
        assert_eq!(
            sent.load(Ordering::Relaxed),
            blob.len() as u64,
            "progress reached the end"
        );
    }
    repo.put_manifest(tag, MANIFEST_TYPE, &image.manifest)
}

/// skopeo reads the image back: the manifest byte for byte, every blob byte for byte (skopeo
/// also checks each against its digest).
fn assert_pulled_back(scratch: &Path, image_ref: &str, access: &SkopeoAccess, image: &TestImage) {
    let raw = skopeo_inspect_raw(scratch, image_ref, access)
        .unwrap_or_else(|e| panic!("skopeo inspect {image_ref}: {e}"));
    assert!(
        raw == image.manifest,
        "the registry serves the manifest we pushed"
    );
    let dest = scratch.join(format!("pulled-{}", Digest::of(image_ref.as_bytes()).hex()));
    skopeo_copy_to_dir(scratch, image_ref, access, &dest)
        .unwrap_or_else(|e| panic!("skopeo copy {image_ref}: {e}"));
    assert!(std::fs::read(dest.join("manifest.json")).unwrap() == image.manifest);
    for blob in image.blobs() {
        let got = std::fs::read(dest.join(Digest::of(blob).hex())).expect("blob pulled");
        assert!(
            got == blob,
            "blob {} read back byte-identical",
            Digest::of(blob)
        );
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
    }
}

/// Options that read nothing of the machine's own configuration: an empty docker config
/// directory, no certs dirs, helpers only from `scratch/bin`.
fn options(scratch: &Path) -> ClientOptions {
    let docker = scratch.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    ClientOptions {
        certs_dirs: Vec::new(),
        docker_config_dir: Some(docker),
        credential_helper_path: Some(scratch.join("bin").into_os_string()),
        retry: fast_retry(),
        ..ClientOptions::default()
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oe-registry-test.")
        .tempdir()
        .unwrap()
}

fn plain() -> SkopeoAccess {
    SkopeoAccess {
        plain_http: true,
        ..Default::default()
    }
}

fn count(seen: &[Seen], f: impl Fn(&Seen) -> bool) -> usize {
    seen.iter().filter(|s| f(s)).count()
}

fn is_commit(s: &Seen, digest: &Digest) -> bool {
    s.method == "PUT"
        && s.target.contains(&format!(
            "digest={}",
            digest.to_string().replace(':', "%3A")
        ))
}

fn registry_tools() -> bool {
    tools_present(&["docker-registry", "skopeo"])
}

/// A plain registry behind a proxy with these rules, and a client for it.
fn proxied(rules: Vec<Rule>, relative_urls: bool) -> (RegistryServer, FaultProxy) {
    let registry = RegistryServer::start(&Config {
        relative_urls,
        ..Default::default()
    });
    let proxy = FaultProxy::start(&registry.addr, rules);
    (registry, proxy)
}

fn big_image(seed: u64) -> TestImage {
    TestImage::new(&[1024, 300 * 1024, 20 * MIB], seed)
}

#[test]
fn plain_http_push_reads_back_and_head_and_mount_behave() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let registry = RegistryServer::start(&Config::default());
    let client = Registry::connect(&registry.addr, &options(dir.path())).unwrap();
    assert_eq!(
        client.base_url(),
        format!("http://{}", registry.addr),
        "loopback without TLS: HTTP"
    );
    let image = big_image(1);
    let repo = client.repository("oe/app");
    let digest = push(&repo, &image, "v1").unwrap();
    assert_eq!(digest, Digest::of(&image.manifest));
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/app:v1", registry.addr),
        &plain(),
        &image,
    );
    // And by digest.
    let by_digest = skopeo_inspect_raw(
        dir.path(),
        &format!("{}/oe/app@{digest}", registry.addr),
        &plain(),
    )
    .unwrap();
    assert!(by_digest == image.manifest);

    let big = &image.layers[2];
    assert_eq!(
        repo.blob_size(&Digest::of(big)).unwrap(),
        Some(big.len() as u64)
    );
    assert_eq!(repo.blob_size(&Digest::of(b"never pushed")).unwrap(), None);

    // A cross-repository mount links the blob without uploading it; a blob the source does not
    // hold is refused (202) and reported as not mounted.
    let other = client.repository("oe/other");
    assert_eq!(other.blob_size(&Digest::of(big)).unwrap(), None);
    assert!(other.mount(&Digest::of(big), "oe/app"));
    assert_eq!(
        other.blob_size(&Digest::of(big)).unwrap(),
        Some(big.len() as u64)
    );
    assert!(!other.mount(&Digest::of(b"never pushed"), "oe/app"));
    assert!(
        !other.mount(&Digest::of(big), ""),
        "no mount without a source"
    );

    // A re-push uploads nothing and gives the same digest.
    assert_eq!(push(&repo, &image, "v1").unwrap(), digest);
}

#[test]
fn tls_with_htpasswd_credentials_from_auths_and_a_private_ca() {
    if !registry_tools() || !tools_present(&["htpasswd", "openssl"]) {
        return;
    }
    let dir = scratch();
    let pki = pki::make(dir.path());
    let registry = RegistryServer::start(&Config {
        login: Login::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        tls: Some(&pki),
        ..Default::default()
    });
    let certs = pki::certs_dir(&dir.path().join("certs.d"), &registry.addr, &pki.ca_cert);
    let mut opts = options(dir.path());
    docker_config::write_auths(
        opts.docker_config_dir.as_ref().unwrap(),
        &registry.addr,
        USER,
        PASSWORD,
    );

    // Loopback speaking TLS is verified: without the CA, no connection, and no fallback to HTTP.
    let err = format!(
        "{:#}",
        Registry::connect(&registry.addr, &opts).unwrap_err()
    );
    assert!(
        err.contains("not trusted") && err.contains("ca.crt"),
        "{err}"
    );

    opts.certs_dirs = vec![certs.clone()];
    let client = Registry::connect(&registry.addr, &opts).unwrap();
    assert_eq!(client.base_url(), format!("https://{}", registry.addr));
    let login = client.login();
    assert_eq!(
        login.config_file,
        Some(opts.docker_config_dir.as_ref().unwrap().join("config.json"))
    );
    assert!(login.config_found);
    assert_eq!(
        (login.source.as_str(), login.username.as_deref()),
        ("auths", Some(USER))
    );
    assert!(!format!("{client:?}").contains(PASSWORD));
    let image = big_image(2);
    push(&client.repository("oe/secure"), &image, "v1").unwrap();
    let access = SkopeoAccess {
        cert_dir: Some(certs.join(&registry.addr)),
        creds: Some(format!("{USER}:{PASSWORD}")),
        plain_http: false,
    };
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/secure:v1", registry.addr),
        &access,
        &image,
    );

    // --insecure accepts the certificate without the CA.
    let insecure = ClientOptions {
        insecure: true,
        certs_dirs: Vec::new(),
        ..opts.clone()
    };
    let client = Registry::connect(&registry.addr, &insecure).unwrap();
    let layer = Digest::of(&image.layers[0]);
    assert_eq!(
        client.repository("oe/secure").blob_size(&layer).unwrap(),
        Some(1024)
    );

    // A wrong password: a clear error that does not show what was sent.
    let wrong = "wrong-Pw-7731";
    docker_config::write_auths(
        opts.docker_config_dir.as_ref().unwrap(),
        &registry.addr,
        USER,
        wrong,
    );
    let client = Registry::connect(&registry.addr, &opts).unwrap();
    let err = format!(
        "{:#}",
        client
            .repository("oe/secure")
            .blob_size(&layer)
            .unwrap_err()
    );
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(PASSWORD), "{err}");
    // Anonymous: refused too.
    std::fs::remove_file(opts.docker_config_dir.as_ref().unwrap().join("config.json")).unwrap();
    let client = Registry::connect(&registry.addr, &opts).unwrap();
    let err = format!(
        "{:#}",
        push(&client.repository("oe/secure"), &image, "v2").unwrap_err()
    );
    assert!(err.contains("401"), "{err}");
}

#[test]
fn client_certificates_from_the_certs_dir_and_a_localhost_name() {
    if !registry_tools() || !tools_present(&["openssl"]) {
        return;
    }
    let dir = scratch();
    let pki = pki::make(dir.path());
    let registry = RegistryServer::start(&Config {
        tls: Some(&pki),
        require_client_cert: true,
        ..Default::default()
    });
    let port = registry.addr.rsplit(':').next().unwrap();
    // Named `localhost:<port>` (the server certificate's DNS name); its certs.d entry too.
    let domain = format!("localhost:{port}");
    let certs = pki::certs_dir(&dir.path().join("certs.d"), &domain, &pki.ca_cert);
    let mut opts = options(dir.path());
    opts.certs_dirs = vec![certs.clone()];
    // The CA alone is not enough: the registry wants a client certificate.
    let err = match Registry::connect(&domain, &opts) {
        Ok(client) => format!(
            "{:#}",
            client
                .repository("oe/mtls")
                .blob_size(&Digest::of(b"x"))
                .unwrap_err()
        ),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("without a client certificate: {err}");
    assert!(err.contains("Certificate"), "{err}");
    pki::add_client_cert(&certs, &domain, &pki);
    let client = Registry::connect(&domain, &opts).unwrap();
    assert_eq!(client.base_url(), format!("https://{domain}"));
    let image = TestImage::new(&[1024, MIB], 19);
    push(&client.repository("oe/mtls"), &image, "v1").unwrap();
    let access = SkopeoAccess {
        cert_dir: Some(certs.join(&domain)),
        ..Default::default()
    };
    assert_pulled_back(dir.path(), &format!("{domain}/oe/mtls:v1"), &access, &image);
}

#[test]
fn a_manifest_stored_under_another_digest_is_an_error() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let wrong = Digest::of(b"not the manifest");
    let (_registry, proxy) = proxied(
        vec![Rule::new(
            Some("PUT"),
            Some("/manifests/"),
            Action::AddResponseHeader("Docker-Content-Digest".into(), wrong.to_string()),
        )],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    let image = TestImage::new(&[100], 20);
    let err = format!(
        "{:#}",
        push(&client.repository("oe/digest"), &image, "v1").unwrap_err()
    );
    assert!(
        err.contains(&format!("the registry stored it as {wrong}")),
        "{err}"
    );
    assert!(
        err.contains(&Digest::of(&image.manifest).to_string()),
        "{err}"
    );
}

fn token_setup(dir: &Path) -> (TokenServer, RegistryServer) {
    token_registry(dir, USER, PASSWORD, REFRESH_TOKEN)
}

#[test]
fn bearer_tokens_with_credentials_from_a_helper() {
    if !registry_tools() || !tools_present(&["openssl"]) {
        return;
    }
    let dir = scratch();
    let (tokens, registry) = token_setup(dir.path());
    let opts = options(dir.path());
    let config_dir = opts.docker_config_dir.clone().unwrap();
    docker_config::install_helper(dir.path(), "oetest", &[(&registry.addr, USER, PASSWORD)]);
    docker_config::write_helpers(&config_dir, Some("oetest"), &[]);
    let client = Registry::connect(&registry.addr, &opts).unwrap();
    assert_eq!(
        client.login().source,
        "credsStore (docker-credential-oetest)"
    );
    assert_eq!(
        docker_config::helper_calls(dir.path(), "oetest"),
        vec![registry.addr.clone()]
    );
    let image = big_image(3);
    let repo = client.repository("oe/tok");
    push(&repo, &image, "v1").unwrap();
    let access = SkopeoAccess {
        creds: Some(format!("{USER}:{PASSWORD}")),
        ..plain()
    };
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/tok:v1", registry.addr),
        &access,
        &image,
    );
    let ours: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.scopes.iter().any(|s| s.contains("push")))
        .collect();
    assert!(!ours.is_empty());
    assert!(ours
        .iter()
        .all(|r| r.granted && r.user.as_deref() == Some(USER) && !r.refresh));
    // One token serves the whole push (it is cached per scope set).
    assert_eq!(ours.len(), 1, "{ours:?}");

    // A mount asks for pull on its source as well.
    let other = client.repository("oe/tok-copy");
    assert!(other.mount(&Digest::of(&image.layers[2]), "oe/tok"));
    let last = tokens.requests().pop().unwrap();
    assert_eq!(
        last.scopes,
        vec![
            "repository:oe/tok-copy:pull,push".to_string(),
            "repository:oe/tok:pull".to_string()
        ]
    );

    // credHelpers names a helper per registry; the Username <token> makes the Secret an
    // identity token, traded with a refresh-token grant (POST).
    docker_config::install_helper(
        dir.path(),
        "idtok",
        &[(&registry.addr, "<token>", REFRESH_TOKEN)],
    );
    docker_config::write_helpers(&config_dir, Some("oetest"), &[(&registry.addr, "idtok")]);
    let client = Registry::connect(&registry.addr, &opts).unwrap();
    assert_eq!(
        client.login().source,
        "credHelpers (docker-credential-idtok)"
    );
    let image2 = TestImage::new(&[4096], 33);
    push(&client.repository("oe/tok"), &image2, "v2").unwrap();
    let last = tokens.requests().pop().unwrap();
    assert!(
        last.refresh && last.granted && last.method == "POST",
        "{last:?}"
    );
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/tok:v2", registry.addr),
        &access,
        &image2,
    );

    // A helper that knows nothing of this registry: anonymous, and the token server grants no
    // push, so the registry refuses with a clear error.
    docker_config::write_helpers(&config_dir, Some("nobody"), &[]);
    docker_config::install_helper(dir.path(), "nobody", &[]);
    let client = Registry::connect(&registry.addr, &opts).unwrap();
    assert_eq!(client.login().username, None);
    let err = format!(
        "{:#}",
        push(
            &client.repository("oe/tok"),
            &TestImage::new(&[10], 34),
            "v3"
        )
        .unwrap_err()
    );
    assert!(err.contains("401") || err.contains("UNAUTHORIZED"), "{err}");
}

#[test]
fn wrong_credentials_for_the_token_server_are_a_clear_error_without_them() {
    if !registry_tools() || !tools_present(&["openssl"]) {
        return;
    }
    let dir = scratch();
    let (_tokens, registry) = token_setup(dir.path());
    let opts = options(dir.path());
    let wrong = "wrong-Tk-5521";
    docker_config::write_auths(
        opts.docker_config_dir.as_ref().unwrap(),
        &registry.addr,
        USER,
        wrong,
    );
    let client = Registry::connect(&registry.addr, &opts).unwrap();
    let err = format!(
        "{:#}",
        push(
            &client.repository("oe/tok"),
            &TestImage::new(&[10], 35),
            "v1"
        )
        .unwrap_err()
    );
    assert!(
        err.contains("token server refused") && err.contains("\"alice\""),
        "{err}"
    );
    assert!(!err.contains(wrong), "{err}");
    assert!(!format!("{client:?}").contains(wrong));
}

#[test]
fn a_token_that_expires_mid_push_is_fetched_again() {
    if !registry_tools() || !tools_present(&["openssl"]) {
        return;
    }
    let dir = scratch();
    let (tokens, registry) = token_setup(dir.path());
    // Tokens die after 2 s (the answer still says 300): the manifest, held 3 s by the proxy,
    // reaches the registry with a dead token.
    tokens.set_lifetime(Duration::from_secs(2));
    let proxy = FaultProxy::start(
        &registry.addr,
        vec![Rule::new(
            Some("PUT"),
            Some("/manifests/"),
            Action::DelayRequest(Duration::from_secs(3)),
        )
        .window(0, 1)],
    );
    let opts = options(dir.path());
    docker_config::write_auths(
        opts.docker_config_dir.as_ref().unwrap(),
        proxy.addr(),
        USER,
        PASSWORD,
    );
    let client = Registry::connect(proxy.addr(), &opts).unwrap();
    let image = TestImage::new(&[1024, 2 * MIB], 4);
    push(&client.repository("oe/expiring"), &image, "v1").unwrap();
    let seen = proxy.seen();
    let manifests: Vec<u16> = seen
        .iter()
        .filter(|s| s.target.contains("/manifests/"))
        .map(|s| s.status)
        .collect();
    assert_eq!(manifests, vec![401, 201], "{}", proxy.log());
    assert!(tokens.requests().iter().filter(|r| r.granted).count() >= 2);
    let access = SkopeoAccess {
        creds: Some(format!("{USER}:{PASSWORD}")),
        ..plain()
    };
    tokens.set_lifetime(Duration::from_secs(300));
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/expiring:v1", registry.addr),
        &access,
        &image,
    );
}

#[test]
fn a_reset_in_the_middle_of_a_blob_is_retried() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let image = big_image(5);
    let big = Digest::of(&image.layers[2]);
    let (registry, proxy) = proxied(
        vec![Rule::new(
            Some("PUT"),
            Some(&big.hex()),
            Action::ResetAfter(5 * MIB as u64),
        )
        .window(0, 1)],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    push(&client.repository("oe/reset"), &image, "v1").unwrap();
    let seen = proxy.seen();
    let commits: Vec<u16> = seen
        .iter()
        .filter(|s| is_commit(s, &big))
        .map(|s| s.status)
        .collect();
    assert_eq!(commits, vec![0, 201], "{}", proxy.log());
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/reset:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn server_errors_and_too_many_requests_are_retried_honouring_retry_after() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let reply = |status: u16, retry_after: Option<String>| Action::Reply {
        status,
        headers: retry_after
            .map(|v| vec![("Retry-After".to_string(), v)])
            .unwrap_or_default(),
        body: format!(r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {status}"}}]}}"#),
    };
    // An HTTP date 5 s ahead (whole seconds): whenever the manifest is refused, the retry
    // waits until then, 4 s at least from now.
    let date = httpdate_in(5);
    let (registry, proxy) = proxied(
        vec![
            Rule::new(Some("POST"), Some("/blobs/uploads/"), reply(503, None)).window(0, 1),
            Rule::new(Some("POST"), Some("/blobs/uploads/"), reply(408, None)).window(1, 1),
            Rule::new(Some("PUT"), Some("digest="), reply(500, None)).window(0, 1),
            Rule::new(Some("HEAD"), None, reply(429, Some("1".into()))).window(0, 1),
            Rule::new(Some("PUT"), Some("/manifests/"), reply(429, Some(date))).window(0, 1),
            Rule::new(Some("PUT"), Some("/manifests/"), reply(502, None)).window(1, 1),
        ],
        false,
    );
    let mut opts = options(dir.path());
    opts.retry.max_delay = Duration::from_secs(10);
    let client = Registry::connect(proxy.addr(), &opts).unwrap();
    let image = TestImage::new(&[1024, 3 * MIB], 6);
    let started = Instant::now();
    push(&client.repository("oe/flaky"), &image, "v1").unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "the manifest's Retry-After date honoured: {took:?}"
    );
    let head_retry = seen_gap(&proxy.seen(), "HEAD");
    assert!(
        head_retry >= Duration::from_secs(1),
        "the HEAD's Retry-After: 1 honoured: {head_retry:?}"
    );
    let seen = proxy.seen();
    let manifest: Vec<u16> = seen
        .iter()
        .filter(|s| s.target.contains("/manifests/"))
        .map(|s| s.status)
        .collect();
    assert_eq!(manifest, vec![429, 502, 201], "{}", proxy.log());
    let posts: Vec<u16> = seen
        .iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.status)
        .collect();
    assert_eq!(posts[..3], [503, 408, 202], "{}", proxy.log());
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/flaky:v1", registry.addr),
        &plain(),
        &image,
    );
}

/// The time between the first two requests with this method.
fn seen_gap(seen: &[Seen], method: &str) -> Duration {
    let times: Vec<Instant> = seen
        .iter()
        .filter(|s| s.method == method)
        .map(|s| s.at)
        .collect();
    times[1] - times[0]
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, `secs` from now.
fn httpdate_in(secs: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%a, %d %b %Y %H:%M:%S GMT"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn retry_after_is_capped_by_the_policy() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let (_registry, proxy) = proxied(
        vec![Rule::new(
            Some("POST"),
            None,
            Action::Reply {
                status: 429,
                headers: vec![("Retry-After".into(), "3600".into())],
                body: r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.into(),
            },
        )
        .window(0, 2)],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    let started = Instant::now();
    push(
        &client.repository("oe/capped"),
        &TestImage::new(&[100], 7),
        "v1",
    )
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// The upload session (its UUID) in an upload URL.
fn session_of(target: &str) -> &str {
    let rest = target.split("/blobs/uploads/").nth(1).unwrap_or("");
    rest.split('?').next().unwrap_or("")
}

/// The blob's committed session received it in order, in accepted chunks of `min..=max` bytes
/// (the last may be shorter), each with a Content-Length equal to its Content-Range.
fn assert_chunks_cover(seen: &[Seen], digest: &Digest, size: usize, min: u64, max: u64) {
    let commit = seen
        .iter()
        .rfind(|s| is_commit(s, digest) && s.status == 201)
        .unwrap_or_else(|| panic!("blob {digest} was committed"));
    let session = session_of(&commit.target);
    let mut next = 0u64;
    for p in seen.iter().filter(|s| {
        s.method == "PATCH" && matches!(s.status, 201 | 202) && session_of(&s.target) == session
    }) {
        let range = p
            .content_range
            .as_deref()
            .expect("every PATCH has a Content-Range");
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(a, next, "chunks in order without gaps");
        assert_eq!(
            p.content_length,
            b - a + 1,
            "Content-Length matches Content-Range"
        );
        assert!(
            p.content_length <= max,
            "chunk of {} above {max}",
            p.content_length
        );
        if b + 1 != size as u64 {
            assert!(
                p.content_length >= min,
                "chunk of {} below {min}",
                p.content_length
            );
        }
        next = b + 1;
    }
    assert_eq!(next, size as u64, "blob {digest} sent to its end in chunks");
}

#[test]
fn a_body_cap_switches_to_chunks_the_registry_accepts() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let cap = 4 * MIB as u64;
    let (registry, proxy) = proxied(
        vec![
            Rule::new(
                Some("PUT"),
                None,
                Action::CapBody {
                    max: cap,
                    status: 413,
                },
            ),
            Rule::new(
                Some("PATCH"),
                None,
                Action::CapBody {
                    max: cap,
                    status: 416,
                },
            ),
        ],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    let image = big_image(8);
    push(&client.repository("oe/capped-body"), &image, "v1").unwrap();
    let seen = proxy.seen();
    let big = Digest::of(&image.layers[2]);
    assert!(
        count(&seen, |s| s.status == 413) >= 1 && count(&seen, |s| s.status == 416) >= 1,
        "{}",
        proxy.log()
    );
    assert_chunks_cover(&seen, &big, 20 * MIB, 0, cap);
    assert!(count(&seen, |s| s.method == "PATCH" && s.status == 202) >= 5);
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/capped-body:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn chunks_honour_the_registry_minimum() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let (min, cap) = (6 * MIB as u64, 8 * MIB as u64);
    let (registry, proxy) = proxied(
        vec![
            Rule::new(
                Some("POST"),
                None,
                Action::AddResponseHeader("OCI-Chunk-Min-Length".into(), min.to_string()),
            ),
            Rule::new(
                None,
                Some("/blobs/uploads/"),
                Action::CapBody {
                    max: cap,
                    status: 413,
                },
            ),
        ],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    let image = TestImage::new(&[20 * MIB], 9);
    push(&client.repository("oe/minimum"), &image, "v1").unwrap();
    let seen = proxy.seen();
    assert_chunks_cover(&seen, &Digest::of(&image.layers[0]), 20 * MIB, min, cap);
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/minimum:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn created_instead_of_accepted_and_relative_locations() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    // The registry writes relative Locations itself (http.relativeurls); the proxy answers
    // PATCH with ECR's 201.
    let (registry, proxy) = proxied(
        vec![Rule::new(Some("PATCH"), None, Action::Created202As201)],
        true,
    );
    let mut opts = options(dir.path());
    opts.upload = UploadOptions {
        chunked: true,
        chunk_size: 4 * MIB as u64,
    };
    let client = Registry::connect(proxy.addr(), &opts).unwrap();
    let image = big_image(10);
    push(&client.repository("oe/ecr"), &image, "v1").unwrap();
    let seen = proxy.seen();
    assert!(
        count(&seen, |s| s.method == "PATCH" && s.status == 201) >= 5,
        "{}",
        proxy.log()
    );
    assert_chunks_cover(
        &seen,
        &Digest::of(&image.layers[2]),
        20 * MIB,
        4 * MIB as u64,
        4 * MIB as u64,
    );
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/ecr:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn a_chunked_upload_resumes_from_the_registry_range() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let image = TestImage::new(&[20 * MIB], 11);
    // The third chunk is cut off; the proxy also makes every Location relative.
    let (registry, proxy) = proxied(
        vec![
            Rule::new(Some("PATCH"), None, Action::ResetAfter(MIB as u64)).window(2, 1),
            Rule::new(None, None, Action::RelativeLocation),
        ],
        false,
    );
    let mut opts = options(dir.path());
    opts.upload = UploadOptions {
        chunked: true,
        chunk_size: 4 * MIB as u64,
    };
    let client = Registry::connect(proxy.addr(), &opts).unwrap();
    push(&client.repository("oe/resume"), &image, "v1").unwrap();
    let seen = proxy.seen();
    let log = proxy.log();
    assert_eq!(
        count(&seen, |s| s.method == "POST"),
        2,
        "one session for the layer, one for the config:\n{log}"
    );
    assert_eq!(
        count(&seen, |s| s.method == "GET"
            && s.target.contains("/blobs/uploads/")),
        1,
        "{log}"
    );
    let ranges: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == "PATCH")
        .filter_map(|s| s.content_range.as_deref())
        .collect();
    let m = MIB;
    assert_eq!(
        ranges[..4],
        [
            format!("0-{}", 4 * m - 1),
            format!("{}-{}", 4 * m, 8 * m - 1),
            format!("{}-{}", 8 * m, 12 * m - 1),
            format!("{}-{}", 8 * m, 12 * m - 1)
        ],
        "the cut chunk is sent again from the registry's Range:\n{log}"
    );
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/resume:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn mounts_refused_with_401_or_202_are_uploaded_instead() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    // Harbor answers 401 to a mount whose source it cannot read.
    let (registry, proxy) = proxied(
        vec![Rule::new(
            Some("POST"),
            Some("mount="),
            Action::Reply {
                status: 401,
                headers: Vec::new(),
                body: r#"{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized to access repository"}]}"#.into(),
            },
        )
        .window(0, 1)],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    let image = TestImage::new(&[2 * MIB], 12);
    let source_repo = client.repository("oe/source");
    push(&source_repo, &image, "v1").unwrap();
    let target = client.repository("oe/target");
    let layer = BytesBlob::new(&image.layers[0]);
    assert!(
        !target.mount(&layer.digest(), "oe/source"),
        "401: not mounted"
    );
    assert_eq!(target.blob_size(&layer.digest()).unwrap(), None);
    target.upload(&layer, &|_| {}).unwrap();
    assert_eq!(
        target.blob_size(&layer.digest()).unwrap(),
        Some(2 * MIB as u64)
    );
    // Refused with 202 (the source lacks it): not mounted, and the session it opened is closed.
    assert!(!target.mount(&Digest::of(b"absent"), "oe/source"));
    let seen = proxy.seen();
    assert_eq!(
        count(&seen, |s| s.method == "DELETE" && s.status == 204),
        1,
        "{}",
        proxy.log()
    );
    // A mount works when allowed, and none was ever sent without its source.
    let third = client.repository("oe/third");
    assert!(third.mount(&layer.digest(), "oe/source"));
    assert!(!third.mount(&layer.digest(), ""));
    let seen = proxy.seen();
    assert_eq!(
        count(&seen, |s| s.target.contains("mount=")),
        3,
        "{}",
        proxy.log()
    );
    assert!(seen
        .iter()
        .filter(|s| s.target.contains("mount="))
        .all(|s| s.target.contains("&from=")));
    let _ = registry;
}

#[test]
fn a_commit_that_times_out_is_checked_with_head_not_sent_again() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let image = TestImage::new(&[5 * MIB], 13);
    let layer = Digest::of(&image.layers[0]);
    let (registry, proxy) = proxied(
        vec![Rule::new(
            Some("PUT"),
            Some(&layer.hex()),
            Action::DelayResponse(Duration::from_secs(3)),
        )
        .window(0, 1)],
        false,
    );
    let mut opts = options(dir.path());
    opts.timeouts.read = Duration::from_millis(1500);
    let client = Registry::connect(proxy.addr(), &opts).unwrap();
    push(&client.repository("oe/slow-commit"), &image, "v1").unwrap();
    let seen = proxy.seen();
    assert_eq!(
        count(&seen, |s| is_commit(s, &layer)),
        1,
        "the blob was not sent twice:\n{}",
        proxy.log()
    );
    assert!(
        count(&seen, |s| s.method == "HEAD"
            && s.target.contains(&layer.hex())
            && s.status == 200)
            >= 1
    );
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/slow-commit:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn an_upload_session_gone_after_the_blob_landed_is_not_uploaded_again() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let image = TestImage::new(&[3 * MIB], 14);
    let layer = Digest::of(&image.layers[0]);
    let gone = r#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}"#;
    let (registry, proxy) = proxied(
        vec![Rule::new(
            Some("PUT"),
            Some(&layer.hex()),
            Action::ReplaceAnswer {
                status: 404,
                body: gone.into(),
            },
        )
        .window(0, 1)],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    push(&client.repository("oe/gone-after"), &image, "v1").unwrap();
    let seen = proxy.seen();
    assert_eq!(count(&seen, |s| is_commit(s, &layer)), 1, "{}", proxy.log());
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/gone-after:v1", registry.addr),
        &plain(),
        &image,
    );

    // Gone before it landed (answered without reaching the registry): a new session.
    let image = TestImage::new(&[3 * MIB], 15);
    let layer = Digest::of(&image.layers[0]);
    proxy.set_rules(vec![Rule::new(
        Some("PUT"),
        Some(&layer.hex()),
        Action::Reply {
            status: 404,
            headers: Vec::new(),
            body: gone.into(),
        },
    )
    .window(0, 1)]);
    push(&client.repository("oe/gone-before"), &image, "v1").unwrap();
    let seen = proxy.seen();
    assert_eq!(count(&seen, |s| is_commit(s, &layer)), 2, "{}", proxy.log());
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/gone-before:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn a_blob_the_registry_keeps_refusing_fails_clearly_and_no_tag_appears() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let image = TestImage::new(&[1024, 2 * MIB], 16);
    let layer = Digest::of(&image.layers[1]);
    let (registry, proxy) = proxied(
        vec![Rule::new(
            Some("PUT"),
            Some(&layer.hex()),
            Action::Reply {
                status: 503,
                headers: Vec::new(),
                body: r#"{"errors":[{"code":"UNAVAILABLE","message":"storage backend down"}]}"#
                    .into(),
            },
        )],
        false,
    );
    let client = Registry::connect(proxy.addr(), &options(dir.path())).unwrap();
    let err = format!(
        "{:#}",
        push(&client.repository("oe/broken"), &image, "v1").unwrap_err()
    );
    assert!(err.contains(&layer.to_string()), "names the blob: {err}");
    assert!(
        err.contains("503 Service Unavailable") && err.contains("after 5 failed attempts"),
        "{err}"
    );
    assert_eq!(
        err.matches("UNAVAILABLE: storage backend down").count(),
        1,
        "said once: {err}"
    );
    assert_eq!(count(&proxy.seen(), |s| is_commit(s, &layer)), 5);
    assert!(skopeo_inspect_raw(
        dir.path(),
        &format!("{}/oe/broken:v1", registry.addr),
        &plain()
    )
    .is_err());
    assert_eq!(
        count(&proxy.seen(), |s| s.target.contains("/manifests/")),
        0
    );
}

#[test]
fn credentials_never_go_to_another_host() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    // The registry host (the proxy's main listener) wants Basic auth; upload Locations point at
    // another host, and the manifest is redirected there.
    let (registry, proxy) = proxied(
        vec![
            Rule::new(
                None,
                None,
                Action::RequireBasic {
                    user: USER.into(),
                    password: PASSWORD.into(),
                },
            )
            .on("main"),
            Rule::new(Some("POST"), None, Action::LocationToOther).on("main"),
            Rule::new(Some("PUT"), Some("/manifests/"), Action::RedirectToOther).on("main"),
        ],
        false,
    );
    let opts = options(dir.path());
    docker_config::write_auths(
        opts.docker_config_dir.as_ref().unwrap(),
        proxy.addr(),
        USER,
        PASSWORD,
    );
    let client = Registry::connect(proxy.addr(), &opts).unwrap();
    let image = TestImage::new(&[1024, 3 * MIB], 17);
    push(&client.repository("oe/elsewhere"), &image, "v1").unwrap();
    let seen = proxy.seen();
    let log = proxy.log();
    let on_other: Vec<&Seen> = seen.iter().filter(|s| s.listener == "other").collect();
    assert!(
        on_other
            .iter()
            .any(|s| s.method == "PUT" && s.target.contains("digest=")),
        "{log}"
    );
    assert!(
        on_other
            .iter()
            .any(|s| s.target.contains("/manifests/") && s.status == 201),
        "{log}"
    );
    assert!(
        on_other.iter().all(|s| s.authorization.is_none()),
        "no Authorization to another host:\n{log}"
    );
    assert!(seen
        .iter()
        .filter(|s| s.listener == "main" && s.status != 401)
        .all(|s| s.authorization.is_some()));
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/elsewhere:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn blobs_upload_in_parallel_through_one_client_from_files() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let registry = RegistryServer::start(&Config::default());
    let client = Registry::connect(&registry.addr, &options(dir.path())).unwrap();
    let image = TestImage::new(&[MIB, 2 * MIB, 3 * MIB, 4 * MIB], 18);
    let files: Vec<FileBlob> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let path = dir.path().join(format!("layer{i}"));
            std::fs::write(&path, layer).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            FileBlob::new(file, Digest::of(layer), layer.len() as u64)
        })
        .collect();
    let repo = client.repository("oe/parallel");
    std::thread::scope(|s| {
        for blob in &files {
            let repo = &repo;
            s.spawn(move || repo.upload(blob, &|_| {}).unwrap());
        }
    });
    for (blob, layer) in files.iter().zip(&image.layers) {
        assert_eq!(
            repo.blob_size(&blob.digest()).unwrap(),
            Some(layer.len() as u64)
        );
    }
    push(&repo, &image, "v1").unwrap();
    assert_pulled_back(
        dir.path(),
        &format!("{}/oe/parallel:v1", registry.addr),
        &plain(),
        &image,
    );
}

#[test]
fn a_chunked_upload_that_keeps_breaking_fails_with_one_clear_error() {
    if !registry_tools() {
        return;
    }
    let dir = scratch();
    let image = TestImage::new(&[9 * MIB], 21);
    let layer = Digest::of(&image.layers[0]);
    let (registry, proxy) = proxied(
        vec![Rule::new(Some("PATCH"), None, Action::ResetAfter(1000)).window(1, usize::MAX)],
        false,
    );
    let mut opts = options(dir.path());
    opts.upload = UploadOptions {
        chunked: true,
        chunk_size: 4 * MIB as u64,
    };
    let client = Registry::connect(proxy.addr(), &opts).unwrap();
    let err = format!(
        "{:#}",
        push(&client.repository("oe/breaking"), &image, "v1").unwrap_err()
    );
    assert!(
        err.starts_with(&format!(
            "uploading blob {layer} ({} bytes) to {}/oe/breaking: ",
            9 * MIB,
            proxy.addr()
        )),
        "{err}"
    );
    assert!(
        err.contains("PATCH") && err.ends_with("(after 5 failed attempts)"),
        "{err}"
    );
    let seen = proxy.seen();
    assert_eq!(count(&seen, |s| s.target.contains("/manifests/")), 0);
    assert!(
        count(&seen, |s| s.method == "PATCH") <= 10,
        "bounded: {}",
        proxy.log()
    );
    assert!(skopeo_inspect_raw(
        dir.path(),
        &format!("{}/oe/breaking:v1", registry.addr),
        &plain()
    )
    .is_err());
}
