//! What an image's config fills into a spec the spec leaves out, as
//! podman and docker read it: Entrypoint + Cmd become `process.args` (the
//! spec's `args` replace Cmd, its `entrypoint` replaces Entrypoint), Env
//! (the spec wins per variable), WorkingDir, User (a name resolved in the
//! image's own `/etc/passwd` and `/etc/group`), StopSignal; and the root
//! becomes the sandbox's overlay, with the mounts a container expects
//! (`/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys`) where
//! the spec mounts nothing of its own.

use serde_json::{json, Map, Value};

use crate::root::Layers;
use crate::store::ImageRecord;
use crate::{Error, Store};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image config a sandbox uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    /// Docker's `Healthcheck.Test` (`["CMD", …]` or `["CMD-SHELL", "…"]`).
    pub healthcheck: Option<Value>,
}

impl ImageConfig {
    pub fn load(store: &Store, image: &ImageRecord) -> Result<ImageConfig, Error> {
        let bytes = store.blob(&image.config)?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Store(format!("config {}: {e}", image.config)))?;
        Ok(ImageConfig::from_json(
            v.get("config").unwrap_or(&Value::Null),
        ))
    }

    fn from_json(c: &Value) -> ImageConfig {
        let strings = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |k: &str| {
            c.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        ImageConfig {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: text("WorkingDir"),
            user: text("User"),
            stop_signal: text("StopSignal"),
            healthcheck: c.get("Healthcheck").filter(|h| !h.is_null()).cloned(),
        }
    }
}

/// The spec fields only a spec with an image may carry, taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFields {
    pub image: String,
    /// Replaces the image's Entrypoint.
    pub entrypoint: Option<Vec<String>>,
}

/// Take `image` and `entrypoint` out of a spec object (`prefix` names it
/// in errors). None: the spec has no image (and then no `entrypoint`).
pub fn take_fields(
    obj: &mut Map<String, Value>,
    prefix: &str,
) -> Result<Option<ImageFields>, Error> {
    let image = obj.remove("image");
    let entrypoint = obj.remove("entrypoint");
    let Some(image) = image else {
        return match entrypoint {
            Some(_) => Err(Error::usage(
                format!("{prefix}entrypoint"),
                "only with `image`",
            )),
            None => Ok(None),
        };
    };
    let Value::String(image) = image else {
        return Err(Error::usage(
            format!("{prefix}image"),
            "must be a string (an image reference)",
        ));
    };
    if obj.get("root").and_then(|r| r.get("path")).is_some() {
        return Err(Error::usage(
            format!("{prefix}image"),
            "give `image` or `root.path`, not both",
        ));
    }
    let entrypoint = match entrypoint {
        None => None,
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Some(
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
        ),
        Some(_) => {
            return Err(Error::usage(
                format!("{prefix}entrypoint"),
                "must be an array of strings",
            ))
        }
    };
    Ok(Some(ImageFields { image, entrypoint }))
}

/// Whether the spec's root gets a writable layer (not `root.readonly`).
pub fn writable(spec: &Map<String, Value>) -> crate::root::Writable {
    let readonly = spec
        .get("root")
        .and_then(|r| r.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if readonly {
        crate::root::Writable::No
    } else {
        crate::root::Writable::Yes
    }
}

/// Fill `spec` from the image's config; its root is the image's, `root`.
pub fn fill(
    spec: &mut Map<String, Value>,
    cfg: &ImageConfig,
    entrypoint: Option<&[String]>,
    root: &Layers,
    prefix: &str,
) -> Result<Option<String>, Error> {
    let process = spec.entry("process").or_insert_with(|| json!({}));
    let Some(process) = process.as_object_mut() else {
        return Err(Error::usage(
            format!("{prefix}process"),
            "must be an object",
        ));
    };
    args(process, cfg, entrypoint, prefix)?;
    env(process, cfg);
    if !process.contains_key("cwd") {
        process.insert(
            "cwd".into(),
            json!(cfg.working_dir.as_deref().unwrap_or("/")),
        );
    }
    if !process.contains_key("user") {
        let u = match &cfg.user {
            Some(u) => user(u, root, prefix)?,
            None => json!({"uid": 0, "gid": 0}),
        };
        process.insert("user".into(), u);
    }
    home(process, root);
    if let Some(sig) = &cfg.stop_signal {
        let stop = spec.entry("stop").or_insert_with(|| json!({}));
        if let Some(stop) = stop.as_object_mut() {
            stop.entry("signal").or_insert_with(|| json!(sig));
        }
    }
    let readonly = spec
        .get("root")
        .and_then(|r| r.get("readonly"))
        .cloned()
        .unwrap_or(json!(false));
    // The top layer stands in for the root while the spec is checked; the
    // caller then points the plan at the overlay (`merged`).
    spec.insert(
        "root".into(),
        json!({"path": root.lower[0], "readonly": readonly}),
    );
    mounts(spec);
    Ok(healthcheck(spec, cfg, prefix))
}

/// The image's HEALTHCHECK as a liveness probe, when the spec has no
/// probes of its own; the warning that says so.
fn healthcheck(spec: &mut Map<String, Value>, cfg: &ImageConfig, prefix: &str) -> Option<String> {
    if spec.contains_key("probes") {
        return None;
    }
    let probe = crate::healthcheck::probe(cfg.healthcheck.as_ref()?)?;
    let said = format!(
        "{prefix}probes: none given: the image's HEALTHCHECK is the liveness probe ({})",
        probe["exec"]
    );
    spec.insert("probes".into(), json!({"liveness": probe}));
    Some(said)
}

fn args(
    process: &mut Map<String, Value>,
    cfg: &ImageConfig,
    entrypoint: Option<&[String]>,
    prefix: &str,
) -> Result<(), Error> {
    let mut args: Vec<String> = entrypoint
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| cfg.entrypoint.clone());
    match process.get("args").and_then(Value::as_array) {
        Some(own) => args.extend(own.iter().filter_map(|a| a.as_str().map(String::from))),
        None => args.extend(cfg.cmd.iter().cloned()),
    }
    if args.is_empty() {
        return Err(Error::usage(
            format!("{prefix}process.args"),
            "the image names no command (no Entrypoint or Cmd): give one",
        ));
    }
    process.insert("args".into(), json!(args));
    Ok(())
}

fn env(process: &mut Map<String, Value>, cfg: &ImageConfig) {
    let own: Vec<String> = process
        .get("env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let name = |e: &str| e.split('=').next().unwrap_or("").to_string();
    let mut env: Vec<String> = cfg
        .env
        .iter()
        .filter(|e| !own.iter().any(|o| name(o) == name(e)))
        .cloned()
        .collect();
    env.extend(own);
    if !env.iter().any(|e| name(e) == "PATH") {
        env.insert(0, DEFAULT_PATH.into());
    }
    process.insert("env".into(), json!(env));
}

/// HOME, when neither spec nor image sets it: the user's home in the
/// image's `/etc/passwd`, else `/` (as podman does).
fn home(process: &mut Map<String, Value>, root: &Layers) {
    let uid = process
        .get("user")
        .and_then(|u| u.get("uid"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .to_string();
    let Some(env) = process.get_mut("env").and_then(Value::as_array_mut) else {
        return;
    };
    if env
        .iter()
        .any(|e| e.as_str().is_some_and(|e| e.starts_with("HOME=")))
    {
        return;
    }
    let passwd = root.read_image_file("etc/passwd").unwrap_or_default();
    let dir = lookup(&passwd, |f| f[2] == uid && f.len() > 5)
        .map(|f| f[5].clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into());
    env.push(json!(format!("HOME={dir}")));
}

/// `User`: `name`, `uid`, `name:group` or `uid:gid`, names resolved in the
/// image's own files.
fn user(u: &str, root: &Layers, prefix: &str) -> Result<Value, Error> {
    let (who, group) = match u.split_once(':') {
        Some((w, g)) => (w, Some(g)),
        None => (u, None),
    };
    let bad = |m: String| {
        Error::usage(
            format!("{prefix}process.user"),
            format!("the image's User {u:?}: {m}"),
        )
    };
    let passwd = root.read_image_file("etc/passwd").unwrap_or_default();
    let (uid, primary) = match who.parse::<u32>() {
        Ok(n) => (
            n,
            lookup(&passwd, |f| f[2] == who)
                .and_then(|f| f[3].parse().ok())
                .unwrap_or(n),
        ),
        Err(_) => {
            let f = lookup(&passwd, |f| f[0] == who)
                .ok_or_else(|| bad(format!("no user {who} in the image's /etc/passwd")))?;
            (
                f[2].parse()
                    .map_err(|_| bad("bad uid in /etc/passwd".into()))?,
                f[3].parse()
                    .map_err(|_| bad("bad gid in /etc/passwd".into()))?,
            )
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = root.read_image_file("etc/group").unwrap_or_default();
                let f = lookup(&groups, |f| f[0] == g)
                    .ok_or_else(|| bad(format!("no group {g} in the image's /etc/group")))?;
                f[2].parse()
                    .map_err(|_| bad("bad gid in /etc/group".into()))?
            }
        },
    };
    Ok(json!({"uid": uid, "gid": gid}))
}

/// The fields (at least four) of the first line of a passwd or group file
/// that `pick` accepts.
fn lookup(file: &[u8], pick: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    String::from_utf8_lossy(file).lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && pick(&f)).then(|| f.iter().map(|s| s.to_string()).collect())
    })
}

/// The mounts every container gets (runc's and podman's defaults), each
/// unless the spec mounts something at that place.
fn mounts(spec: &mut Map<String, Value>) {
    let defaults = [
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    let own: Vec<Value> = spec
        .get("mounts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |d: &Value| own.iter().any(|m| m.get("destination") == Some(d));
    let mut all: Vec<Value> = defaults
        .into_iter()
        .filter(|m| !has(&m["destination"]))
        .collect();
    all.extend(own);
    spec.insert("mounts".into(), Value::Array(all));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_read() {
        let c = ImageConfig::from_json(&json!({
            "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["A=1"],
            "WorkingDir": "/srv", "User": "nobody", "StopSignal": "SIGINT"
        }));
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.cmd, ["echo hi"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("nobody"));
    }

    #[test]
    fn spec_args_replace_cmd_and_keep_the_entrypoint() {
        let cfg = ImageConfig {
            entrypoint: vec!["/e".into()],
            cmd: vec!["c".into()],
            ..Default::default()
        };
        let mut p = Map::new();
        args(&mut p, &cfg, None, "").unwrap();
        assert_eq!(p["args"], json!(["/e", "c"]));
        let mut p = json!({"args": ["x"]}).as_object().cloned().unwrap();
        args(&mut p, &cfg, None, "").unwrap();
        assert_eq!(p["args"], json!(["/e", "x"]));
        let mut p = Map::new();
        args(&mut p, &cfg, Some(&["/other".to_string()]), "").unwrap();
        assert_eq!(p["args"], json!(["/other", "c"]));
        let e = args(
            &mut Map::new(),
            &ImageConfig::default(),
            None,
            "services.a.",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("services.a.process.args: "),
            "{e}"
        );
    }

    #[test]
    fn the_spec_wins_per_variable() {
        let cfg = ImageConfig {
            env: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        };
        let mut p = json!({"env": ["B=3"]}).as_object().cloned().unwrap();
        env(&mut p, &cfg);
        assert_eq!(p["env"], json!([DEFAULT_PATH, "A=1", "B=3"]));
    }

    #[test]
    fn image_fields_are_taken_and_checked() {
        let mut o = json!({"image": "oci:/x", "entrypoint": ["/a"]})
            .as_object()
            .cloned()
            .unwrap();
        let f = take_fields(&mut o, "").unwrap().unwrap();
        assert_eq!(f.entrypoint, Some(vec!["/a".to_string()]));
        assert!(o.is_empty());
        let mut o = json!({"entrypoint": ["/a"]}).as_object().cloned().unwrap();
        assert_eq!(
            take_fields(&mut o, "s.").unwrap_err().to_string(),
            "s.entrypoint: only with `image`"
        );
        let mut o = json!({"image": "oci:/x", "root": {"path": "r"}})
            .as_object()
            .cloned()
            .unwrap();
        assert!(take_fields(&mut o, "").is_err());
    }

    #[test]
    fn passwd_lines_are_looked_up() {
        let f = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        assert_eq!(lookup(f, |l| l[0] == "nobody").unwrap()[2], "65534");
        assert!(lookup(f, |l| l[0] == "www").is_none());
    }
}
