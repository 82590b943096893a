//! `isola upgrade` and `isola info`: the running supervisor re-executes
//! itself from a new binary without touching a service, and says who it
//! is (`handover-check`, the new binary's side, is in `up.rs`).

use std::path::PathBuf;

use isola_runtime::exit;
use isola_supervisor::control::{Client, Info, Request};

use crate::cmd::common::SocketArg;
use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct UpgradeArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// The binary to re-execute [default: the path the supervisor was
    /// started from, read again: an install replaces the file there].
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn fail(e: impl std::fmt::Display) -> Exit {
    Exit(exit::FAILURE, e.to_string())
}

pub(crate) fn upgrade(args: UpgradeArgs) -> Result<u8, Exit> {
    let binary = match args.binary {
        Some(b) => Some(
            std::path::absolute(&b)
                .map_err(|e| Exit(exit::USAGE, format!("--binary {}: {e}", b.display())))?,
        ),
        None => None,
    };
    let mut c = Client::connect(&args.socket.path()).map_err(fail)?;
    let resp = c.request(&Request::Upgrade { binary }).map_err(fail)?;
    let (Some(info), Some(from)) = (resp.info, resp.upgraded_from) else {
        return Err(fail("upgrade: the supervisor's answer has no version"));
    };
    // (An upgrade from a binary whose snapshot does not say when it was taken.)
    let unwatched = resp
        .unwatched_ms
        .map(|ms| format!(", unwatched for {ms} ms"))
        .unwrap_or_default();
    println!(
        "upgraded: isola {from} → isola {} (pid {}, {} upgrades so far, {} services untouched{unwatched})",
        info.version, info.pid, info.upgrades, info.services
    );
    Ok(exit::OK)
}

pub(crate) fn info(args: InfoArgs) -> Result<u8, Exit> {
    let mut c = Client::connect(&args.socket.path()).map_err(fail)?;
    let resp = c.request(&Request::Info).map_err(fail)?;
    let info = resp
        .info
        .ok_or_else(|| fail("info: the supervisor's answer has no info"))?;
    if args.json {
        println!("{}", serde_json::to_string(&info).map_err(fail)?);
    } else {
        print_info(&info);
    }
    Ok(exit::OK)
}

fn print_info(i: &Info) {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(i.started_ms);
    let started = isola_supervisor::logs::timestamp(at);
    println!("pid:       {}", i.pid);
    println!("version:   isola {}", i.version);
    println!("started:   {started}");
    println!("upgrades:  {}", i.upgrades);
    match i.keeper {
        Some(k) => println!("keeper:    {k} (new supervisors so far: {})", i.recoveries),
        None => println!("keeper:    none (the services end with this supervisor)"),
    }
    println!("stack:     {}", i.stack.display());
    println!("services:  {}", i.services);
    println!("binary:    {}", i.binary.display());
}
