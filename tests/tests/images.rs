//! Services from OCI images, against a real registry on loopback (Debian's
//! `docker-registry`) and archives written by `skopeo copy`: pulls by tag
//! and digest, a tampered blob refused, whiteouts and opaque directories,
//! the image's config applied, layers shared and writes private, `rmi`
//! refused while in use, and failures in one line with nothing kept. Run
//! in the VM (`make vm-test T=images`); stacks of image services are in
//! `image_stacks.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use isola_tests::oci_image::{entries, layout, ok, out, run, skopeo_copy, Auth, Registry, CALL};
use isola_tests::{isola_bin, require_vm, Scratch};
use serde_json::{json, Value};

#[test]
fn a_registry_image_pulls_by_tag_and_digest_and_runs_with_its_config() {
    require_vm();
    let s = Scratch::new("img-registry");
    let reg = Registry::start(&s.path("registry"), 5101, Auth::None);
    skopeo_copy(
        &format!("oci:{}:v1", layout(&s).display()),
        &format!("docker://{}/test/multi:1", reg.host),
    );
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let by_tag = format!("docker://{}/test/multi:1", reg.host);
    let digest = ok(&[
        "pull",
        "--store",
        st,
        "--insecure-registry",
        &reg.host,
        &by_tag,
    ]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    let by_digest = format!("docker://{}/test/multi@{digest}", reg.host);
    assert_eq!(
        ok(&[
            "pull",
            "--store",
            st,
            "--insecure-registry",
            &reg.host,
            &by_digest
        ]),
        digest
    );
    let listed: Value = serde_json::from_str(&ok(&["images", "--store", st, "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["names"], json!([by_tag, by_digest]));

    // The image's Entrypoint, Cmd, Env, WorkingDir and User (by name).
    let o = ok(&[
        "run",
        "--store",
        st,
        "--insecure-registry",
        &reg.host,
        &by_tag,
    ]);
    assert!(o.contains("from-image"), "{o}");
    assert!(o.contains("uid=33(www) gid=44(web)"), "{o}");
    assert!(o.lines().any(|l| l == "/srv"), "{o}");
    assert!(
        o.contains("GREETING=hello") && o.contains("HOME=/srv"),
        "{o}"
    );
    // A command replaces Cmd and keeps the Entrypoint; the upper layer's
    // whiteout hides /data/a, its opaque /dir hides /dir/x.
    let o = ok(&[
        "run",
        "--store",
        st,
        "--pull",
        "never",
        &by_tag,
        "--",
        "ls /data /dir",
    ]);
    assert_eq!(
        o.split_whitespace().collect::<Vec<_>>(),
        ["/data:", "b", "/dir:", "y"],
        "{o}"
    );
    // A one-shot sandbox's root goes with it.
    assert!(entries(&store.join("roots")).is_empty());
}

#[test]
fn a_tampered_blob_fails_the_pull_and_nothing_is_kept() {
    require_vm();
    let s = Scratch::new("img-tamper");
    let reg = Registry::start(&s.path("registry"), 5102, Auth::None);
    let dir = layout(&s);
    skopeo_copy(
        &format!("oci:{}:v1", dir.display()),
        &format!("docker://{}/test/multi:1", reg.host),
    );
    // Flip one byte of the top layer's blob where the registry keeps it.
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(m)).unwrap()).unwrap();
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let f = reg.blob_file(layer);
    let mut bytes = std::fs::read(&f).unwrap();
    // In the gzip header's MTIME: the layer still decompresses to the
    // same tar (its diff id holds), so only the blob's digest can tell.
    bytes[4] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();

    let store = s.path("store");
    let o = run(&[
        "pull",
        "--store",
        store.to_str().unwrap(),
        "--insecure-registry",
        &reg.host,
        &format!("docker://{}/test/multi:1", reg.host),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(layer) && err.contains("does not match its digest"),
        "{err}"
    );
    // The good lower layer may be kept (no image names it: a prune takes
    // it); the bad one never, nor anything half-done, nor an image.
    assert!(
        entries(&store.join("layers")).len() <= 1,
        "{:?}",
        entries(&store.join("layers"))
    );
    assert!(
        entries(&store.join("tmp")).is_empty(),
        "{:?}",
        entries(&store.join("tmp"))
    );
    assert_eq!(
        ok(&["images", "--store", store.to_str().unwrap(), "--json"]),
        "[]"
    );
}

#[test]
fn pull_failures_are_one_line_each() {
    require_vm();
    let s = Scratch::new("img-fail");
    // tester:secret (bcrypt, as `htpasswd -B` writes it).
    let login = "tester:$2b$05$GxNwAC60rvW6B.Wp.DgsVeBpgeeHYfUZHDYBJGv0cYga18hxfpyF6";
    let reg = Registry::start(&s.path("registry"), 5103, Auth::Htpasswd(login));
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let pull = |reference: &str, auth: Option<&Path>| {
        let mut c = Command::new(isola_bin());
        c.args([
            "pull",
            "--store",
            st,
            "--insecure-registry",
            &reg.host,
            "--insecure-registry",
            "127.0.0.1:5199",
            reference,
        ]);
        c.env_remove("REGISTRY_AUTH_FILE")
            .env("HOME", s.path("home"))
            .stdin(Stdio::null());
        if let Some(a) = auth {
            c.env("REGISTRY_AUTH_FILE", a);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(err.lines().count(), 1, "{reference}: {err}");
        (o.status.code(), err)
    };
    let (code, err) = pull("docker://127.0.0.1:5199/x:1", None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("127.0.0.1:5199: registry unreachable"),
        "{err}"
    );
    let (code, err) = pull(&format!("docker://{}/x:1", reg.host), None);
    assert_eq!(code, Some(1));
    assert!(err.contains("asks for a login"), "{err}");
    let bad = s.write(
        "bad.json",
        &format!(
            r#"{{"auths":{{"{}":{{"auth":"dGVzdGVyOndyb25n"}}}}}}"#,
            reg.host
        ),
    );
    let (code, err) = pull(&format!("docker://{}/x:1", reg.host), Some(&bad));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("denied (HTTP 401; credentials of tester"),
        "{err}"
    );
    // With the right login: the registry answers, and the image is absent.
    let good = s.write(
        "good.json",
        &format!(
            r#"{{"auths":{{"{}":{{"auth":"dGVzdGVyOnNlY3JldA=="}}}}}}"#,
            reg.host
        ),
    );
    let (code, err) = pull(&format!("docker://{}/x:1", reg.host), Some(&good));
    assert_eq!(code, Some(1));
    assert!(err.contains("not found (HTTP 404"), "{err}");
    let (code, err) = pull("busybox:1", None);
    assert_eq!(code, Some(2));
    assert!(err.contains("there is no default registry"), "{err}");
    assert!(entries(&store.join("layers")).is_empty());
    assert!(entries(&store.join("tmp")).is_empty());
}

#[test]
fn archives_and_layouts_are_sources_too() {
    require_vm();
    let s = Scratch::new("img-archives");
    let dir = layout(&s);
    let from = format!("oci:{}:v1", dir.display());
    let docker = s.path("image-docker.tar");
    let oci = s.path("image-oci.tar");
    skopeo_copy(
        &from,
        &format!("docker-archive:{}:test/multi:1", docker.display()),
    );
    skopeo_copy(&from, &format!("oci-archive:{}:v1", oci.display()));
    let store = s.path("store");
    let st = store.to_str().unwrap();
    for r in [
        from.clone(),
        format!("docker-archive:{}", docker.display()),
        format!("oci-archive:{}", oci.display()),
    ] {
        let o = ok(&[
            "run",
            "--store",
            st,
            &r,
            "--",
            "cat /data/b; test -e /data/a || echo gone",
        ]);
        assert_eq!(o, "b\ngone", "{r}: {o}");
    }
    // Same layers from three sources: each unpacked once.
    assert_eq!(
        entries(&store.join("layers")).len(),
        2,
        "{:?}",
        entries(&store.join("layers"))
    );
    assert_eq!(ok(&["images", "--store", st]).lines().count(), 4);
}

#[test]
fn sandboxes_of_one_image_share_its_layers_and_not_their_writes() {
    require_vm();
    let s = Scratch::new("img-share");
    let dir = layout(&s);
    let r = format!("oci:{}:v1", dir.display());
    let store = s.path("store");
    let st = store.to_str().unwrap();
    ok(&["pull", "--store", st, &r]);
    let layers_before = ok(&["images", "--store", st, "--json"]);
    let script = "echo mine > /srv/$ID; sleep 3; ls /srv";
    let spawn = |id: &str| {
        Command::new(isola_bin())
            .args([
                "run",
                "--store",
                st,
                "--name",
                &format!("share-{id}"),
                &r,
                "--",
                &format!("ID={id}; {script}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    // Both run at once; each root's upper holds its own write only.
    std::thread::sleep(Duration::from_millis(1500));
    let roots = entries(&store.join("roots"));
    assert_eq!(roots, ["share-a", "share-b"]);
    // While they run, the image cannot be removed.
    let o = run(&["rmi", "--store", st, &r]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains("in use by the running sandbox share-"),
        "{}",
        out(&o)
    );
    let (oa, ob) = (
        isola_tests::wait_output(a, CALL),
        isola_tests::wait_output(b, CALL),
    );
    assert_eq!(
        String::from_utf8_lossy(&oa.stdout).trim(),
        "a",
        "{}",
        out(&oa)
    );
    assert_eq!(
        String::from_utf8_lossy(&ob.stdout).trim(),
        "b",
        "{}",
        out(&ob)
    );
    // The layers were not written.
    assert_eq!(ok(&["images", "--store", st, "--json"]), layers_before);
    for l in entries(&store.join("layers")) {
        assert!(entries(&store.join("layers").join(&l).join("srv")).is_empty());
    }
    ok(&["rmi", "--store", st, &r]);
    assert!(entries(&store.join("layers")).is_empty());
    ok(&["image", "prune", "--store", st]);
}

#[test]
fn bad_image_input_is_refused_before_anything_is_made() {
    require_vm();
    let s = Scratch::new("img-bad");
    let store = s.path("store");
    let st = store.to_str().unwrap();
    let both = s.write(
        "both.json",
        &json!({"image": "oci:/nonexistent", "root": {"path": "/"}, "process": {"args": ["true"]}})
            .to_string(),
    );
    let entry = s.write(
        "entry.json",
        &json!({"entrypoint": ["/bin/sh"], "process": {"args": ["true"]}}).to_string(),
    );
    for (args, want) in [
        (
            vec!["run", "--store", st, "busybox:1"],
            "no default registry",
        ),
        (
            vec!["run", "--store", st, "docker://busybox"],
            "docker://HOST[:PORT]/NAME",
        ),
        (
            vec!["run", "--store", st, both.to_str().unwrap()],
            "image: give `image` or `root.path`, not both",
        ),
        (
            vec!["run", "--store", st, entry.to_str().unwrap()],
            "entrypoint: only with `image`",
        ),
        (
            vec!["run", "--store", st, "--pull", "sometimes", "oci:/x"],
            "--pull: sometimes",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let o = run(&["run", "--store", st, "oci:/nonexistent"]);
    assert_eq!(o.status.code(), Some(125), "{}", out(&o));
    assert!(
        out(&o).contains("/nonexistent/index.json: not an OCI image layout"),
        "{}",
        out(&o)
    );
    assert!(entries(&store.join("roots")).is_empty());
    assert!(entries(&store.join("layers")).is_empty());
}

#[test]
fn an_image_of_fifty_layers_runs() {
    require_vm();
    let s = Scratch::new("img-fifty");
    // Fifty layers named by absolute path would not fit overlayfs's one
    // page of options; by name from the layers' directory they do.
    let mut layers = vec![isola_tests::oci_image::busybox_layer(&["sh", "ls"])];
    let names: Vec<&'static str> = (0..49)
        .map(|i| &*Box::leak(format!("n/f{i}").into_boxed_str()))
        .collect();
    for n in &names {
        layers.push(vec![
            isola_tests::oci_image::Entry::Dir("n"),
            isola_tests::oci_image::Entry::File(n, b"x".to_vec()),
        ]);
    }
    let dir = s.path("fifty");
    isola_tests::oci_image::write_layout(&dir, "v1", &layers, json!({"Cmd": ["/bin/ls", "/n"]}));
    let store = s.path("store");
    let o = ok(&[
        "run",
        "--store",
        store.to_str().unwrap(),
        &format!("oci:{}:v1", dir.display()),
    ]);
    assert_eq!(o.lines().count(), 49, "{o}");
}

#[test]
fn an_index_resolves_to_this_machines_image() {
    use isola_tests::oci_image::{busybox_layer, skopeo_copy_all, write_multi_platform};
    require_vm();
    let s = Scratch::new("img-index");
    let dir = s.path("multi");
    write_multi_platform(
        &dir,
        "v1",
        busybox_layer(&["sh", "cat"]),
        json!({"Cmd": ["/bin/cat", "/arch"]}),
    );
    let reg = Registry::start(&s.path("registry"), 5104, Auth::None);
    skopeo_copy_all(
        &format!("oci:{}:v1", dir.display()),
        &format!("docker://{}/test/multi:1", reg.host),
    );
    let store = s.path("store");
    let st = store.to_str().unwrap();
    // From a layout's index and from a registry's manifest list alike.
    assert_eq!(
        ok(&["run", "--store", st, &format!("oci:{}:v1", dir.display())]),
        "amd64"
    );
    let r = format!("docker://{}/test/multi:1", reg.host);
    assert_eq!(
        ok(&["run", "--store", st, "--insecure-registry", &reg.host, &r]),
        "amd64"
    );
}

#[test]
fn a_registry_with_token_auth_is_pulled_with_the_users_login() {
    use isola_tests::oci_image::TokenServer;
    require_vm();
    let s = Scratch::new("img-token");
    let tokens = TokenServer::start(&s.path("tokens"), 5106, "tester:secret", "test/multi");
    let reg = Registry::start(&s.path("registry"), 5105, Auth::Token(&tokens));
    let dir = layout(&s);
    let push = Command::new("skopeo")
        .args([
            "--tmpdir",
            s.0.to_str().unwrap(),
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .args([
            "--dest-creds",
            "tester:secret",
            &format!("oci:{}:v1", dir.display()),
        ])
        .arg(format!("docker://{}/test/multi:1", reg.host))
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let store = s.path("store");
    let pull = |login: Option<&str>| {
        let mut c = Command::new(isola_bin());
        c.args([
            "pull",
            "--store",
            store.to_str().unwrap(),
            "--insecure-registry",
            &reg.host,
        ])
        .arg(format!("docker://{}/test/multi:1", reg.host))
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", s.path("home"))
        .stdin(Stdio::null());
        if let Some(l) = login {
            use base64::Engine as _;
            let auth = base64::engine::general_purpose::STANDARD.encode(l);
            let f = s.write(
                "auth.json",
                &json!({"auths": {reg.host.clone(): {"auth": auth}}}).to_string(),
            );
            c.env("REGISTRY_AUTH_FILE", f);
        }
        c.output().unwrap()
    };
    // The registry's challenge names the token realm; the login is
    // spent there, and the token on the registry.
    let o = pull(Some("tester:wrong"));
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains("token from http://127.0.0.1:5106/token: HTTP 401"),
        "{}",
        out(&o)
    );
    let o = pull(None);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let o = pull(Some("tester:secret"));
    assert!(o.status.success(), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("sha256:"));
}
