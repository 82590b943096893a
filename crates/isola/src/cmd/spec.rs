//! `isola spec` and `isola schema`: what a spec looks like, as a starter
//! spec and as a JSON Schema.

use isola_runtime::{exit, starter};

use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct SpecArgs;

#[derive(clap::Args)]
pub(crate) struct SchemaArgs {
    #[arg(value_enum)]
    kind: crate::schema::Kind,
}

/// The starter spec on stdout.
pub(crate) fn spec(_args: SpecArgs) -> Result<u8, Exit> {
    let text = serde_json::to_string_pretty(&starter::starter_spec())
        .map_err(|e| Exit(exit::FAILURE, format!("serialise starter spec: {e}")))?;
    println!("{text}");
    Ok(exit::OK)
}

/// The schema of a service spec or of a stack file on stdout.
pub(crate) fn schema(args: SchemaArgs) -> Result<u8, Exit> {
    Ok(crate::schema::print(args.kind))
}
