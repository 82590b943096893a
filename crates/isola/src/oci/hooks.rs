//! OCI hooks that run in the runtime's namespaces: `prestart` and
//! `createRuntime` (after `create` set the container up, before it
//! returns), `poststart` (after `start`), `poststop` (at `delete`). Each
//! gets the container's state on stdin, its `args` and `env`, and is
//! killed past its `timeout`. `createContainer` and `startContainer` run
//! inside the container's namespaces, by the init (`isola_runtime::hookrun`).

use isola_runtime::hookrun::HookRun;
use oci_spec::runtime::{Hook, Hooks};

use super::Failed;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::CreateRuntime => "createRuntime",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }

    fn of(self, h: &Hooks) -> Vec<Hook> {
        #[allow(deprecated)]
        let list = match self {
            Stage::Prestart => h.prestart(),
            Stage::CreateRuntime => h.create_runtime(),
            Stage::Poststart => h.poststart(),
            Stage::Poststop => h.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// Run one stage's hooks in order; the first failure is the error.
pub(crate) fn run(
    hooks: Option<&Hooks>,
    stage: Stage,
    state: &serde_json::Value,
) -> Result<(), Failed> {
    let Some(h) = hooks else { return Ok(()) };
    for (i, hook) in stage.of(h).iter().enumerate() {
        isola_runtime::hookrun::run_one(&HookRun::from_oci(hook), &state.to_string()).map_err(
            |e| {
                Failed::failure(format!(
                    "hooks.{}[{i}] {}: {e}",
                    stage.name(),
                    hook.path().display()
                ))
            },
        )?;
    }
    Ok(())
}
