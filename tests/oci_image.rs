//! Images made offline for the image tests: an OCI image layout written
//! here (busybox-static as the base layer, plus layers of our own with
//! whiteouts and opaque directories), and a real registry (Debian's
//! `docker-registry`, the CNCF distribution registry) on loopback that
//! `skopeo copy` pushes them to.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{isola, Scratch};
use sha2::{Digest, Sha256};
use std::process::Output;

/// One entry of a layer.
pub enum Entry {
    Dir(&'static str),
    /// A directory owned by a uid and gid.
    DirOf(&'static str, u64, u64),
    File(&'static str, Vec<u8>),
    Symlink(&'static str, &'static str),
}

/// busybox-static at /bin/busybox, `applets` linked to it, /etc/passwd and
/// /etc/group with a user `www` (33) in group `web` (44).
pub fn busybox_layer(applets: &[&'static str]) -> Vec<Entry> {
    let mut l = vec![
        Entry::Dir("bin"),
        Entry::File(
            "bin/busybox",
            std::fs::read("/bin/busybox").expect("busybox-static"),
        ),
        Entry::Dir("etc"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:44::/srv:/bin/sh\n".to_vec(),
        ),
        Entry::File("etc/group", b"root:x:0:\nweb:x:44:\n".to_vec()),
        Entry::DirOf("srv", 33, 44),
        Entry::Dir("tmp"),
    ];
    l.extend(applets.iter().map(|a| Entry::Symlink(a, "busybox")));
    l
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let (path, data): (&str, &[u8]) = match e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, &[])
            }
            Entry::DirOf(p, uid, gid) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_uid(*uid);
                h.set_gid(*gid);
                (p, &[])
            }
            Entry::File(p, d) => {
                h.set_mode(if p.starts_with("bin/") { 0o755 } else { 0o644 });
                (p, d)
            }
            Entry::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(t).unwrap();
                h.set_mode(0o777);
                let link = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("bin/{p}")
                };
                h.set_size(0);
                h.set_cksum();
                b.append_data(&mut h, link, &[][..]).unwrap();
                continue;
            }
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Write an OCI image layout at `dir` with one image tagged `tag`: the
/// layers gzip-compressed, `config` as the image's `config` object.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Vec<Entry>], config: Value) -> String {
    let (md, mn) = put_image(dir, layers, &config, "amd64");
    write_index(
        dir,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &md,
        mn,
    );
    md
}

/// An OCI layout whose tag names an image index of three images, for
/// arm64, amd64 and s390x (ours neither first nor last), each with
/// `/arch` saying which it is.
pub fn write_multi_platform(dir: &Path, tag: &str, base: Vec<Entry>, config: Value) {
    let mut entries = Vec::new();
    for arch in ["arm64", "amd64", "s390x"] {
        let layers = [
            tar_copy(&base),
            vec![Entry::File("arch", arch.as_bytes().to_vec())],
        ];
        let (d, n) = put_image(dir, &layers, &config, arch);
        entries.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": n,
                            "platform": {"architecture": arch, "os": "linux"}}));
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let (d, n) = put_blob(dir, index.to_string().as_bytes());
    write_index(dir, tag, "application/vnd.oci.image.index.v1+json", &d, n);
}

fn tar_copy(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .map(|e| match e {
            Entry::Dir(p) => Entry::Dir(p),
            Entry::DirOf(p, u, g) => Entry::DirOf(p, *u, *g),
            Entry::File(p, d) => Entry::File(p, d.clone()),
            Entry::Symlink(p, t) => Entry::Symlink(p, t),
        })
        .collect()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let h = hex(bytes);
    std::fs::write(blobs.join(&h), bytes).unwrap();
    (format!("sha256:{h}"), bytes.len())
}

/// The layers, config and manifest of one image into `dir`'s blobs: the
/// manifest's digest and size.
fn put_image(dir: &Path, layers: &[Vec<Entry>], config: &Value, arch: &str) -> (String, usize) {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let raw = tar_of(l);
        diff_ids.push(format!("sha256:{}", hex(&raw)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let (d, n) = put_blob(dir, &gz.finish().unwrap());
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n}));
    }
    let cfg = json!({"architecture": arch, "os": "linux", "config": config,
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cn) = put_blob(dir, cfg.to_string().as_bytes());
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs});
    put_blob(dir, manifest.to_string().as_bytes())
}

fn write_index(dir: &Path, tag: &str, media_type: &str, digest: &str, size: usize) {
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": media_type,
        "digest": digest, "size": size, "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// `skopeo copy --all FROM TO`: an index with every image it names.
pub fn skopeo_copy_all(from: &str, to: &str) {
    skopeo(&["--all", from, to]);
}

/// `skopeo copy FROM TO` (plain HTTP to a registry), bounded.
pub fn skopeo_copy(from: &str, to: &str) {
    skopeo(&[from, to]);
}

fn skopeo(args: &[&str]) {
    // Its temporary files go to /var/tmp, read-only in the VM.
    let tmp = std::env::temp_dir();
    let out = Command::new("timeout")
        .args([
            "-k",
            "5",
            "120",
            "skopeo",
            "--tmpdir",
            tmp.to_str().unwrap(),
        ])
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("skopeo (Debian package skopeo)");
    assert!(
        out.status.success(),
        "skopeo copy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How a test registry asks for a login.
pub enum Auth<'a> {
    None,
    /// `user:bcrypt-hash`, answered with Basic credentials.
    Htpasswd(&'a str),
    /// Bearer tokens from a token server.
    Token(&'a TokenServer),
}

const SERVICE: &str = "isola-test-registry";
const ISSUER: &str = "isola-test-issuer";

/// The token service of the distribution spec's auth (what Docker Hub's
/// `auth.docker.io` is), on 127.0.0.1:`port`: one RS256 token, signed by
/// a self-signed certificate the registry trusts (`openssl`), for whoever
/// logs in as `user:password` with Basic auth; a 401 for anyone else.
pub struct TokenServer {
    pub realm: String,
    pub cert: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TokenServer {
    pub fn start(dir: &Path, port: u16, login: &str, repository: &str) -> TokenServer {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine as _;
        std::fs::create_dir_all(dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=isola-test",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
            b"",
        );
        let der = openssl(
            &["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"],
            b"",
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [STANDARD.encode(&der)]});
        let claims = json!({"iss": ISSUER, "sub": "tester", "aud": SERVICE, "exp": now + 3600, "nbf": now - 60,
            "iat": now, "jti": "1", "access": [{"type": "repository", "name": repository, "actions": ["pull", "push"]}]});
        let signing = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = openssl(
            &["dgst", "-sha256", "-sign", key.to_str().unwrap()],
            signing.as_bytes(),
        );
        let token = format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig));
        let expected = format!("basic {}", STANDARD.encode(login)).to_lowercase();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => answer_token(c, &expected, &token),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TokenServer {
            realm: format!("http://127.0.0.1:{port}/token"),
            cert,
            stop,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One request: the token for the right Basic login, else 401.
fn answer_token(mut c: std::net::TcpStream, expected: &str, token: &str) {
    use std::io::{BufRead, BufReader};
    let _ = c.set_nonblocking(false);
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut authorized = false;
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
        let l = line.trim().to_lowercase();
        // Only the scheme's case may differ: compare the value as sent.
        if let Some(v) = l.strip_prefix("authorization:") {
            authorized = v.trim() == expected;
        }
        line.clear();
    }
    let reply = if authorized {
        let body = json!({"token": token}).to_string();
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    } else {
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = c.write_all(reply.as_bytes());
}

fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (Debian package openssl)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

/// A distribution registry on 127.0.0.1:`port`, storing under `dir`;
/// `htpasswd`: require that login. Stopped on drop.
pub struct Registry {
    child: Child,
    pub dir: PathBuf,
    pub host: String,
}

impl Registry {
    pub fn start(dir: &Path, port: u16, auth: Auth<'_>) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        match auth {
            Auth::None => {}
            Auth::Htpasswd(line) => {
                std::fs::write(dir.join("htpasswd"), format!("{line}\n")).unwrap();
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: isola-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                ));
            }
            Auth::Token(t) => cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                t.realm,
                t.cert.display()
            )),
        }
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", dir.join("config.yml").to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry on {host} did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            child,
            dir: dir.to_path_buf(),
            host,
        }
    }

    /// The file holding blob `digest` (`sha256:…`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let h = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&h[..2])
            .join(h)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const CALL: Duration = Duration::from_secs(120);

/// The test image: busybox, then a layer that deletes /data/a (a
/// whiteout) and replaces /dir (an opaque directory).
pub fn layout(s: &Scratch) -> PathBuf {
    let config = json!({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo from-image; id; pwd; env | sort"],
        "Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/srv", "User": "www", "StopSignal": "SIGINT",
        "Healthcheck": {"Test": ["CMD-SHELL", "test -e /srv/runs"], "Interval": 300_000_000u64, "Retries": 2}});
    layout_with(s, "layout", config)
}

/// The test image's layers with `config`, as an OCI layout `name`.
pub fn layout_with(s: &Scratch, name: &str, config: Value) -> PathBuf {
    let dir = s.path(name);
    let base = {
        let mut l = busybox_layer(&[
            "sh", "ls", "cat", "echo", "id", "pwd", "env", "sort", "sleep", "touch", "test",
            "httpd", "date",
        ]);
        l.extend([
            Entry::Dir("var"),
            Entry::Dir("var/log"),
            Entry::Dir("data"),
            Entry::File("data/a", b"a\n".to_vec()),
            Entry::File("data/b", b"b\n".to_vec()),
            Entry::Dir("dir"),
            Entry::File("dir/x", b"x\n".to_vec()),
        ]);
        l
    };
    let top = vec![
        Entry::Dir("data"),
        Entry::File("data/.wh.a", Vec::new()),
        Entry::Dir("dir"),
        Entry::File("dir/.wh..wh..opq", Vec::new()),
        Entry::File("dir/y", b"y\n".to_vec()),
    ];
    write_layout(&dir, "v1", &[base, top], config);
    dir
}

pub fn run(args: &[&str]) -> Output {
    isola(args, "", CALL)
}

pub fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "isola {args:?}: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
