//! `isola kube generate STACK`: the stack as Kubernetes objects (YAML on
//! stdout, what does not map as warnings on stderr). See `crate::kube`.

use std::path::Path;

use isola_runtime::exit;
use serde_json::{json, Value};

use crate::kube::{self, Options};
use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct KubeArgs {
    #[command(subcommand)]
    command: KubeCommand,
}

#[derive(clap::Subcommand)]
enum KubeCommand {
    /// Print a Deployment (a Job for `restart.policy: no`) per service and a
    /// Service per held TCP/UDP socket; notes on what does not map.
    Generate {
        /// The pods' runtimeClassName ('' for none).
        #[arg(long, default_value = "isola")]
        runtime_class: String,
        /// The stack file (JSON).
        stack: String,
    },
}

pub(crate) fn run(args: KubeArgs) -> Result<u8, Exit> {
    let KubeCommand::Generate {
        runtime_class,
        stack,
    } = args.command;
    let text =
        std::fs::read_to_string(&stack).map_err(|e| Exit(exit::USAGE, format!("{stack}: {e}")))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| Exit(exit::USAGE, format!("{stack}: {e}")))?;
    validate(&value, Path::new(&stack))?;
    let out = kube::generate(
        &value,
        &Options {
            runtime_class: Some(runtime_class).filter(|r| !r.is_empty()),
        },
    );
    for w in &out.warnings {
        eprintln!("isola: warning: {}", w.trim_start_matches("isola: "));
    }
    print!("{}", out.yaml);
    Ok(exit::OK)
}

/// The stack as `isola check` would judge it, but for images: Kubernetes
/// pulls and reads them itself, so a service's `image` is only parsed, not
/// pulled (its command comes from the image when `process.args` is unset).
pub(crate) fn validate(value: &Value, path: &Path) -> Result<(), Exit> {
    if value.get("services").and_then(Value::as_object).is_none() {
        return Err(Exit(
            exit::USAGE,
            format!(
                "{}: services: a stack file has a services object",
                path.display()
            ),
        ));
    }
    let mut checked = value.clone();
    let services = checked
        .get_mut("services")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|m| m.iter_mut());
    for (name, svc) in services {
        let Some(obj) = svc.as_object_mut() else {
            continue;
        };
        let Some(image) = obj.remove("image") else {
            continue;
        };
        let field = format!("services.{name}.image");
        let text = image.as_str().unwrap_or_default();
        isola_images::reference::Reference::parse(text, &field)
            .map_err(|e| Exit(exit::USAGE, format!("{}: {e}", path.display())))?;
        obj.remove("entrypoint");
        // The image is the root (`root.readonly` alone says: no writable
        // layer); checked here as the host's.
        if obj.get("root").and_then(|r| r.get("path")).is_none() {
            obj.remove("root");
        }
        // The command lives in the image, not on this host: any command
        // that exists here stands in for it.
        let process = obj.entry("process").or_insert_with(|| json!({}));
        let Some(process) = process.as_object_mut() else {
            return Err(Exit(
                exit::USAGE,
                format!(
                    "{}: services.{name}.process: must be an object",
                    path.display()
                ),
            ));
        };
        process.insert("args".into(), json!(["true"]));
    }
    isola_supervisor::stack::parse(&checked.to_string(), &isola_runtime::spec::base_dir(path))
        .map_err(|e| Exit(exit::USAGE, format!("{}: {e}", path.display())))?;
    Ok(())
}
