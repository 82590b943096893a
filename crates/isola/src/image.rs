//! The command line's side of images: the flags that say where the store
//! is and how to reach registries, and a spec (or the starter sandbox)
//! turned into one whose root is an image: pulled as `--pull` says, its
//! config filled in, its sandbox root prepared in the store. The root is
//! held while the returned [`SandboxRoot`] lives.

use std::path::{Path, PathBuf};

use isola_images::config::{self, ImageConfig};
use isola_images::pull::{self, Policy};
use isola_images::root::SandboxRoot;
use isola_images::{source, store, Error, Reference, Store};
use isola_runtime::{exit, Plan};
use serde_json::{Map, Value};

use crate::Exit;

#[derive(clap::Args, Default, Clone)]
pub(crate) struct StoreArgs {
    /// The image store [default: /var/lib/isola/images; for a user,
    /// $XDG_DATA_HOME/isola/images].
    #[arg(long)]
    store: Option<PathBuf>,
}

#[derive(clap::Args, Default, Clone)]
pub(crate) struct RegistryArgs {
    /// A registry (HOST:PORT) spoken to over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure: Vec<String>,
}

#[derive(clap::Args, Default, Clone)]
pub(crate) struct ImageFlags {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) registry: RegistryArgs,
    /// When to pull an image: never, missing (the default) or always.
    #[arg(long, value_name = "WHEN")]
    pub(crate) pull: Option<String>,
}

impl StoreArgs {
    pub(crate) fn root(&self) -> PathBuf {
        self.store.clone().unwrap_or_else(store::default_root)
    }

    pub(crate) fn open(&self) -> Result<Store, Exit> {
        Store::open(&self.root()).map_err(|e| fail(e, exit::FAILURE))
    }
}

impl RegistryArgs {
    /// With the `insecureRegistries` a stack file or spec names.
    pub(crate) fn options(&self, from_file: &[String]) -> source::Options {
        let mut insecure = self.insecure.clone();
        insecure.extend(from_file.iter().cloned());
        source::Options { insecure }
    }
}

/// An image error as an exit: the user's input is 2, anything else `code`.
pub(crate) fn fail(e: Error, code: u8) -> Exit {
    Exit(if e.is_usage() { exit::USAGE } else { code }, e.to_string())
}

/// A line of pull progress, on a terminal only.
pub(crate) fn progress() -> impl FnMut(&str) {
    let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    move |line: &str| {
        if tty {
            eprintln!("isola: {line}");
        }
    }
}

/// `insecureRegistries` at the top of a spec or stack file, taken out.
pub(crate) fn take_insecure(obj: &mut Map<String, Value>) -> Result<Vec<String>, Exit> {
    match obj.remove("insecureRegistries") {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(a
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()),
        Some(_) => Err(Exit(
            exit::USAGE,
            "insecureRegistries: must be an array of HOST:PORT strings".into(),
        )),
    }
}

/// Make the spec object `spec` run image `r`: pulled as the flags say, its
/// root (named `name`) prepared, its config filled in. `entrypoint`
/// replaces the image's.
pub(crate) fn prepare(
    spec: &mut Map<String, Value>,
    r: &Reference,
    entrypoint: Option<&[String]>,
    name: &str,
    flags: &ImageFlags,
    insecure: &[String],
) -> Result<SandboxRoot, Exit> {
    let policy = match &flags.pull {
        Some(p) => Policy::parse(p).map_err(|e| fail(e, exit::USAGE))?,
        None => Policy::default(),
    };
    let store = flags.store.open()?;
    let opts = flags.registry.options(insecure);
    let image = pull::ensure(&store, r, &opts, policy, &mut progress())
        .map_err(|e| fail(e, exit::SETUP))?;
    let cfg = ImageConfig::load(&store, &image).map_err(|e| fail(e, exit::SETUP))?;
    let w = config::writable(spec);
    let root = SandboxRoot::prepare(&store, name, &image, w).map_err(|e| fail(e, exit::SETUP))?;
    // `isola run` runs no probes: the HEALTHCHECK's probe is not said.
    if let Err(e) = config::fill(spec, &cfg, entrypoint, root.layers(), "") {
        let _ = root.remove();
        return Err(fail(e, exit::USAGE));
    }
    Ok(root)
}

/// Point `plan`'s root at the prepared layers.
pub(crate) fn attach(plan: &mut Plan, root: &SandboxRoot) -> Result<(), Exit> {
    isola_supervisor::spec::images::attach(plan, root.layers())
        .map_err(|e| Exit(exit::USAGE, e.to_string()))
}

/// Pull what the stack file's services name (`services.*.image`), as
/// `--pull` says, before the supervisor starts anything. A file that does
/// not read is left for the supervisor to name the error.
pub(crate) fn pull_stack(path: &Path, flags: &ImageFlags) -> Result<(), Exit> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let Ok(Value::Object(mut file)) = serde_json::from_str::<Value>(&text) else {
        return Ok(());
    };
    let insecure = take_insecure(&mut file)?;
    let Some(Value::Object(services)) = file.get("services") else {
        return Ok(());
    };
    let wanted: Vec<(String, String)> = services
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s.get("image")?.as_str()?.to_string())))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let policy = match &flags.pull {
        Some(p) => Policy::parse(p).map_err(|e| fail(e, exit::USAGE))?,
        None => Policy::default(),
    };
    let store = flags.store.open()?;
    let opts = flags.registry.options(&insecure);
    let mut done = Vec::new();
    for (name, text) in wanted {
        let at = |e: Error, code| {
            let c = if e.is_usage() { exit::USAGE } else { code };
            let m = match e {
                Error::Usage { message, .. } => message,
                other => other.to_string(),
            };
            Exit(c, format!("{}: services.{name}.image: {m}", path.display()))
        };
        let r = Reference::parse(&text, "image").map_err(|e| at(e, exit::USAGE))?;
        if done.contains(&text) {
            continue;
        }
        pull::ensure(&store, &r, &opts, policy, &mut progress())
            .map_err(|e| at(e, exit::FAILURE))?;
        done.push(text);
    }
    Ok(())
}
