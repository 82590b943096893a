//! The commands that act on one service of the running supervisor: `stop`,
//! `start`, `restart`, `scale` and `update`.

use isola_supervisor::control::{Auto, Request, ScaleTo};

use crate::cmd::common::SocketArg;
use crate::{client, quick, Exit};

// `stop`, `start` and `restart` take the same arguments.
#[derive(clap::Args)]
pub(crate) struct ServiceArgs {
    #[command(flatten)]
    socket: SocketArg,
    name: String,
}

#[derive(clap::Args)]
pub(crate) struct ScaleArgs {
    #[command(flatten)]
    socket: SocketArg,
    name: String,
    /// How many replicas, or `auto` (an autoscaled service decides again).
    #[arg(value_parser = parse_scale)]
    replicas: ScaleTo,
}

/// `3` or `auto`.
fn parse_scale(s: &str) -> Result<ScaleTo, String> {
    match s {
        "auto" => Ok(ScaleTo::Auto(Auto::Auto)),
        n => n
            .parse()
            .map(ScaleTo::Count)
            .map_err(|_| format!("{n}: a number of replicas or auto")),
    }
}

#[derive(clap::Args)]
pub(crate) struct UpdateArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    limits: quick::LimitFlags,
    name: String,
}

pub(crate) fn stop(args: ServiceArgs) -> Result<u8, Exit> {
    let name = args.name;
    client::lifecycle(&args.socket.path(), Request::Stop { name })
}

pub(crate) fn start(args: ServiceArgs) -> Result<u8, Exit> {
    let name = args.name;
    client::lifecycle(&args.socket.path(), Request::Start { name })
}

pub(crate) fn restart(args: ServiceArgs) -> Result<u8, Exit> {
    let name = args.name;
    client::lifecycle(&args.socket.path(), Request::Restart { name })
}

pub(crate) fn scale(args: ScaleArgs) -> Result<u8, Exit> {
    client::scale(&args.socket.path(), &args.name, args.replicas)
}

pub(crate) fn update(args: UpdateArgs) -> Result<u8, Exit> {
    let UpdateArgs {
        socket,
        limits,
        name,
    } = args;
    quick::resources(&limits).and_then(|r| client::update(&socket.path(), &name, r))
}
