//! `isola completions` and `isola manpages`: the command line described for
//! shells and for man(1), from the same clap definitions.

use std::path::PathBuf;

use isola_runtime::exit;

use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct CompletionsArgs {
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub(crate) struct ManpagesArgs {
    dir: PathBuf,
}

/// `cli`: the whole command line's definition.
pub(crate) fn completions(args: CompletionsArgs, mut cli: clap::Command) -> Result<u8, Exit> {
    clap_complete::generate(args.shell, &mut cli, "isola", &mut std::io::stdout());
    Ok(exit::OK)
}

/// Man pages: the command, each subcommand, and the OCI command line.
/// `cli`: the whole command line's definition.
pub(crate) fn manpages(args: ManpagesArgs, cli: clap::Command) -> Result<u8, Exit> {
    let dir = &args.dir;
    let fail = |e: std::io::Error| Exit(exit::FAILURE, format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    clap_mangen::generate_to(cli, dir).map_err(fail)?;
    clap_mangen::generate_to(crate::oci::command().name("isola-oci"), dir).map_err(fail)?;
    Ok(exit::OK)
}
