//! `isola check`: would isola run this service spec or stack file?

use std::path::Path;

use isola_runtime::{exit, Plan};
use isola_supervisor::spec::images::ImageContext;
use isola_supervisor::supervisor;

use crate::image::{self, ImageFlags};
use crate::quick::{self, Images, LimitFlags, QuickFlags};
use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    /// Images are pulled as `isola up` and `isola run` would (--pull never:
    /// only what the store has).
    #[command(flatten)]
    images: ImageFlags,
    /// The service spec (JSON), or - for standard input.
    spec: String,
}

/// `isola check` names at most this many services of a stack (10,000
/// names made one 70 KB line).
const CHECK_NAMES_SHOWN: usize = 20;

/// A service spec, or a stack file (an object with `services`).
pub(crate) fn run(args: CheckArgs) -> Result<u8, Exit> {
    let path = args.spec.as_str();
    let is_stack = path != "-"
        && std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("services").is_some());
    if is_stack {
        image::pull_stack(Path::new(path), &args.images)?;
        let ctx = ImageContext::new(
            args.images.store.root(),
            supervisor::stack_name(Path::new(path)),
        );
        let stack = supervisor::load_stack_with(Path::new(path), &ctx)
            .map_err(|e| Exit(exit::USAGE, format!("{path}: {e}")))?;
        let n = stack.services.len();
        let names: Vec<&str> = stack
            .services
            .iter()
            .take(CHECK_NAMES_SHOWN)
            .map(|d| d.name.as_str())
            .collect();
        let more = match n.checked_sub(CHECK_NAMES_SHOWN) {
            Some(rest) if rest > 0 => format!(" and {rest} more"),
            _ => String::new(),
        };
        let scaled: Vec<String> = stack
            .autoscaled
            .iter()
            .filter_map(|d| {
                let a = d.policy.autoscale.as_ref()?;
                Some(format!("{} {}–{}", d.name, a.min, a.max))
            })
            .collect();
        let mut told = Vec::new();
        if !names.is_empty() {
            told.push(format!(
                "services in start order: {}{more}",
                names.join(", ")
            ));
        }
        if !scaled.is_empty() {
            told.push(format!("autoscaled: {}", scaled.join(", ")));
        }
        println!("{path}: ok ({})", told.join("; "));
        for d in stack
            .services
            .iter()
            .chain(&stack.replicated)
            .chain(&stack.autoscaled)
        {
            if let Some(i) = &d.image {
                println!("  {}: {} runs {}", d.name, i.reference, command(&d.plan));
            }
        }
    } else {
        let name = format!("check-{}", std::process::id());
        let images = Images {
            name: &name,
            flags: &args.images,
        };
        let prepared = quick::load(
            path,
            &LimitFlags::default(),
            &QuickFlags::default(),
            &images,
        )?;
        println!("{path}: ok");
        if let Some(root) = prepared.root {
            println!("  runs {}", command(&prepared.plan));
            root.remove()
                .map_err(|e| Exit(exit::FAILURE, e.to_string()))?;
        }
    }
    Ok(exit::OK)
}

/// The command a plan runs, as a shell would show it.
fn command(plan: &Plan) -> String {
    let words: Vec<String> = plan
        .args
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;&|".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.into_owned()
            }
        })
        .collect();
    words.join(" ")
}
