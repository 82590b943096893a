//! OCI images for isola: what a reference names ([`reference`]), where an
//! image comes from (a registry, an OCI layout, a `docker save` or OCI
//! archive: [`source`]), the content-addressed store that keeps each layer
//! unpacked once ([`store`], [`unpack`]), what the image's config fills
//! into a spec ([`config`]), and a sandbox's overlay root ([`root`]).
//!
//! Pulling ([`pull::pull`]) verifies every blob by digest and size before
//! it is kept; a failed pull leaves nothing half-made in the store (the
//! whole layers it verified stay, for a prune to take unless an image
//! names them).

pub mod config;
pub mod digest;
mod error;
pub mod healthcheck;
pub mod pull;
pub mod reference;
pub mod root;
pub mod source;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::Error;
pub use reference::Reference;
pub use store::Store;
