//! `isola pull`, `isola images`, `isola rmi` and `isola image prune`: the
//! image store by hand (`isola run` and `isola up` pull what they need).

use isola_images::{pull, store, Reference};
use isola_runtime::exit;
use serde_json::json;

use crate::image::{fail, progress, RegistryArgs, StoreArgs};
use crate::Exit;

#[derive(clap::Args)]
pub(crate) struct PullArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    /// docker://HOST[:PORT]/NAME[:TAG|@DIGEST], oci:PATH[:TAG],
    /// docker-archive:PATH or oci-archive:PATH.
    reference: String,
}

#[derive(clap::Args)]
pub(crate) struct ImagesArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct RmiArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A reference as pulled, or a digest (12 hex digits or more).
    image: String,
}

#[derive(clap::Args)]
pub(crate) struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// Remove the layers no image uses and the roots no sandbox holds.
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
}

pub(crate) fn pull(a: PullArgs) -> Result<u8, Exit> {
    let r = Reference::parse(&a.reference, "REFERENCE").map_err(|e| fail(e, exit::USAGE))?;
    let store = a.store.open()?;
    let image = pull::pull(&store, &r, &a.registry.options(&[]), &mut progress())
        .map_err(|e| fail(e, exit::FAILURE))?;
    println!("{}", image.digest);
    Ok(exit::OK)
}

pub(crate) fn images(a: ImagesArgs) -> Result<u8, Exit> {
    let store = a.store.open()?;
    let all = store.images().map_err(|e| fail(e, exit::FAILURE))?;
    if a.json {
        let rows: Vec<_> = all
            .iter()
            .map(|i| {
                let disk: u64 = i
                    .layers
                    .iter()
                    .map(|l| store::disk_usage(&store.layer_dir(l)))
                    .sum();
                json!({"names": i.names, "digest": i.digest, "config": i.config,
                       "layers": i.layers, "size": i.size, "diskBytes": disk, "pulled": i.pulled})
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(exit::OK);
    }
    println!("{:<60} {:<12} {:>6} {:>12}", "NAME", "ID", "LAYERS", "SIZE");
    for i in &all {
        let names = if i.names.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.names.clone()
        };
        for n in names {
            println!(
                "{n:<60} {:<12} {:>6} {:>12}",
                i.digest.short(),
                i.layers.len(),
                i.size
            );
        }
    }
    Ok(exit::OK)
}

pub(crate) fn rmi(a: RmiArgs) -> Result<u8, Exit> {
    let store = a.store.open()?;
    let gone = store.remove(&a.image).map_err(|e| fail(e, exit::FAILURE))?;
    println!("{}", gone.digest);
    Ok(exit::OK)
}

pub(crate) fn image(a: ImageArgs) -> Result<u8, Exit> {
    match a.command {
        ImageCommand::Prune(p) => {
            let store = p.store.open()?;
            let n = store.prune().map_err(|e| fail(e, exit::FAILURE))?;
            println!("removed {n} entries");
            Ok(exit::OK)
        }
    }
}
