//! `isola status`, `isola top` and `isola metrics`: the running
//! supervisor's services, as a table (or JSON), full-screen, or as
//! Prometheus metrics.

use crate::cmd::common::SocketArg;
use crate::{client, Exit};

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct MetricsArgs {
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(clap::Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    socket: SocketArg,
}

pub(crate) fn status(args: StatusArgs) -> Result<u8, Exit> {
    client::status(&args.socket.path(), args.json)
}

pub(crate) fn top(args: TopArgs) -> Result<u8, Exit> {
    crate::top::top(&args.socket.path())
}

/// The metrics in the Prometheus text format, through the control socket
/// (for node_exporter's textfile collector).
pub(crate) fn metrics(args: MetricsArgs) -> Result<u8, Exit> {
    client::metrics(&args.socket.path())
}
