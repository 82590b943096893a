//! `isola check`: would isola run this service spec or stack file?

use std::path::Path;

use isola_runtime::exit;
use isola_supervisor::supervisor;

use crate::cmd::common;
use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct CheckArgs {
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
        let stack = supervisor::load_stack(Path::new(path))
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
    } else {
        common::load(path)?;
        println!("{path}: ok");
    }
    Ok(exit::OK)
}
