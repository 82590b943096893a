//! `isola logs` and `isola events`: what the running supervisor's services
//! print, and what happens to them.

use crate::cmd::common::SocketArg;
use crate::{client, Exit};

#[derive(clap::Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Keep printing new lines as they arrive.
    #[arg(short, long)]
    follow: bool,
    /// Lines of history to print first.
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
    /// Only lines since then: 30s, 10m, 2h, 1d, or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Show each line's time.
    #[arg(short, long)]
    timestamps: bool,
    /// The service [default: every service, as NAME | line].
    name: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// One JSON object per line: {"time", "service", "event"}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn logs(args: LogsArgs) -> Result<u8, Exit> {
    let LogsArgs {
        socket,
        follow,
        lines,
        since,
        timestamps,
        name,
    } = args;
    client::logs(
        &socket.path(),
        name.as_deref(),
        lines,
        follow,
        since.as_deref(),
        timestamps,
    )
}

pub(crate) fn events(args: EventsArgs) -> Result<u8, Exit> {
    client::events(&args.socket.path(), args.json)
}
