//! `isola run SPEC` and `isola run -- CMD ARGS…`: one sandbox, attached;
//! its payload's exit status becomes ours.

use std::path::{Path, PathBuf};

use isola_images::Reference;
use isola_runtime::{cgroup, exit, init, sandbox, Plan, SpecError};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::image::ImageFlags;
use crate::placement::Placement;
use crate::quick::{self, Images, Prepared};
use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Sandbox name (cgroup directory, messages) [default: spec file stem + pid].
    #[arg(long)]
    name: Option<String>,
    /// Parent cgroup of the sandbox's group [default: /sys/fs/cgroup/isola;
    /// for a user, isola/ in the cgroup subtree delegated to them].
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Skip the cgroup (only for specs without linux.resources).
    #[arg(long)]
    no_cgroup: bool,
    #[command(flatten)]
    limits: quick::LimitFlags,
    #[command(flatten)]
    quick: quick::QuickFlags,
    #[command(flatten)]
    image: ImageFlags,
    /// The service spec (JSON), - for standard input, or an image
    /// (docker://HOST[:PORT]/NAME[:TAG], oci:PATH[:TAG], docker-archive:PATH,
    /// oci-archive:PATH).
    spec: Option<String>,
    /// A host command to run in the starter sandbox (after --).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `isola run`'s status for a payload the OOM killer took: SIGKILL's.
const OOM_KILLED: u8 = 128 + 9;

/// Characters of the spec's stem kept in a default sandbox name (a cgroup
/// name may hold 64, and the pid follows).
const NAME_STEM_MAX: usize = 48;

pub(crate) fn run(args: RunArgs) -> Result<u8, Exit> {
    let RunArgs {
        name,
        cgroup_root,
        no_cgroup,
        limits,
        quick,
        image,
        spec,
        command,
    } = args;
    let label = spec
        .clone()
        .or_else(|| command.first().cloned())
        .unwrap_or_default();
    let name = name.unwrap_or_else(|| default_name(&label));
    cgroup::check_name(&name).map_err(usage)?;
    let placement = Placement::choose(cgroup_root, no_cgroup)?;
    if quick.outbound() && !isola_runtime::plan::rootless::unprivileged() {
        // Debian's pasta drops root for nobody before it opens the
        // namespace, and root has better: stack networks.
        return Err(Exit(
            exit::USAGE,
            "--net pasta: for unprivileged users; as root, put the command on a stack network (isola up) or use --net host".into(),
        ));
    }
    let no_cgroup = placement.is_without();
    let images = Images {
        name: &name,
        flags: &image,
    };
    let prepared = match (&spec, command.is_empty()) {
        (Some(r), _) if Reference::looks_like(r) => {
            quick::image_command(r, &command, &limits, &quick, no_cgroup, &images)
        }
        (Some(s), true) if s != "-" && !Path::new(s).exists() => Err(Exit(
            exit::USAGE,
            format!(
                "{s}: no such spec file (an image is named with its transport: {}; there is no default registry)",
                isola_images::reference::FORMS
            ),
        )),
        (Some(s), true) => quick::load(s, &limits, &quick, &images),
        (None, false) => quick::command(&command, &limits, &quick, no_cgroup)
            .map(|plan| Prepared { plan, root: None }),
        (Some(_), false) => Err(Exit(
            exit::USAGE,
            "run: give a SPEC or -- CMD ARGS…, not both (an image takes -- CMD)".into(),
        )),
        (None, true) => Err(Exit(
            exit::USAGE,
            "run: give a SPEC (a file or -), an image, or -- CMD ARGS…".into(),
        )),
    }?;
    let Prepared { plan, root } = prepared;
    let outbound = quick.outbound();
    let refused = plan
        .has_resources()
        .then(|| placement.refuse_limits("linux.resources"))
        .flatten();
    let status = match refused {
        Some(e) => Err(e),
        None => attached(plan, name, &placement, outbound),
    };
    // A one-shot sandbox's writes go with it, as `podman run --rm`.
    if let Some(r) = root {
        r.remove().map_err(|e| Exit(exit::SETUP, e.to_string()))?;
    }
    status
}

fn usage(e: SpecError) -> Exit {
    Exit(exit::USAGE, e.to_string())
}

/// A sandbox name from the spec's file name (cgroup-safe) and our pid.
fn default_name(path: &str) -> String {
    let stem = Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| path != "-" && !s.is_empty())
        .unwrap_or_else(|| "run".to_string());
    let clean: String = cgroup::sanitize_name(&stem)
        .chars()
        .take(NAME_STEM_MAX)
        .collect();
    format!("{clean}-{}", std::process::id())
}

/// Start `plan`'s sandbox and wait for it, passing our signals on.
fn attached(plan: Plan, name: String, placement: &Placement, outbound: bool) -> Result<u8, Exit> {
    // Block the forwarded signals (and SIGCHLD) before the init is cloned:
    // it inherits the mask and takes them with sigwait; we read ours from a
    // signalfd and pass them on.
    let mask = init::signal_set();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| Exit(exit::SETUP, format!("sigprocmask: {e}")))?;
    let mut fwd = SigSet::empty();
    for s in init::FORWARDED {
        fwd.add(*s);
    }
    let mut sfd = SignalFd::with_flags(&fwd, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Exit(exit::SETUP, format!("signalfd: {e}")))?;

    let opts = sandbox::Options {
        pass_fds: &[],
        listen: isola_runtime::listen::Listen::default(),
        detach: None,
        hook_state: None,
        net: isola_runtime::net::Networking {
            interfaces: &[],
            hold: outbound,
        },
        name: &name,
        cgroup_root: placement.root().unwrap_or(Path::new(cgroup::DEFAULT_ROOT)),
        no_cgroup: placement.root().is_none(),
        stdio: None,
        sibling: false,
    };
    // pasta, when asked for, lives as long as the sandbox.
    let (mut sb, _pasta) = match outbound {
        true => {
            let (sb, pasta) = crate::outbound::start(&plan, &opts, &name)?;
            (sb, Some(pasta))
        }
        false => (
            sandbox::start(&plan, &opts).map_err(|e| {
                let code = u8::try_from(e.exit_code()).unwrap_or(exit::SETUP);
                Exit(code, format!("{name}: {e}"))
            })?,
            None,
        ),
    };
    let waited = sb.wait(Some(&mut sfd));
    let outcome = sb
        .finish()
        .map_err(|e| Exit(exit::SETUP, format!("{name}: {e}")))?;
    waited.map_err(|e| Exit(exit::SETUP, format!("{name}: {e}")))?;
    if outcome.oom_kills > 0 {
        eprintln!(
            "isola: {name}: killed by the OOM killer (memory.max={})",
            outcome.memory_max.as_deref().unwrap_or("max")
        );
        return Ok(OOM_KILLED);
    }
    Ok(u8::try_from(outcome.status.code()).unwrap_or(exit::SETUP))
}
