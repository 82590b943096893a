//! A service from an image (`"image": REF`): the image is found in the
//! store (`isola up` pulled it before starting anything; a reload or the
//! spawner never pulls, so the loop never waits on a registry), its
//! config fills the service's spec, and its plan runs on an overlay of
//! the image's layers with a writable layer of the service's own: the
//! root `<stack>.<service>` in the store, one per replica.

use std::path::PathBuf;
use std::sync::Arc;

use isola_images::config::{self, ImageConfig};
use isola_images::root::{Layers, Writable};
use isola_images::store::ImageRecord;
use isola_images::{Reference, Store};
use isola_runtime::root_layers::RootLayers;
use isola_runtime::{Plan, SpecError};
use serde_json::{Map, Value};

/// Where image services' roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageContext {
    pub store: PathBuf,
    /// The stack's name: roots are `<stack>.<service>`.
    pub stack: String,
}

impl Default for ImageContext {
    fn default() -> ImageContext {
        ImageContext {
            store: isola_images::store::default_root(),
            stack: "stack".into(),
        }
    }
}

impl ImageContext {
    /// The store's name for service `name`'s root.
    pub fn root_name(&self, name: &str) -> String {
        format!("{}.{name}", self.stack)
    }

    /// Roots of this stack start with this.
    pub fn root_prefix(&self) -> String {
        format!("{}.", self.stack)
    }
}

/// A service's image, resolved.
#[derive(Debug, Clone)]
pub struct ImageUse {
    pub reference: String,
    pub record: ImageRecord,
    pub writable: Writable,
    pub ctx: ImageContext,
    /// What the image added that the user should hear of (its
    /// HEALTHCHECK as the liveness probe).
    pub warning: Option<String>,
}

impl ImageUse {
    /// Point `plan` (of the service or replica `name`) at its root.
    pub fn apply(&self, name: &str, plan: &mut Plan) -> Result<(), SpecError> {
        let store = self.store()?;
        let layers = Layers::of(
            &store,
            &self.ctx.root_name(name),
            &self.record,
            self.writable,
        )
        .map_err(|e| SpecError::new("image", e.to_string()))?;
        attach(plan, &layers)
    }

    pub fn store(&self) -> Result<Store, SpecError> {
        Store::open(&self.ctx.store).map_err(|e| SpecError::new("image", e.to_string()))
    }
}

/// Run `plan` on `layers`.
pub fn attach(plan: &mut Plan, layers: &Layers) -> Result<(), SpecError> {
    let upper = layers
        .upper
        .as_ref()
        .map(|(u, w)| (u.as_path(), w.as_path()));
    RootLayers::new(&layers.lower, upper)?.attach(plan, layers.merged.clone());
    Ok(())
}

/// Take the image fields out of a service's JSON and fill it from the
/// image's config. None: no image.
pub fn resolve(
    obj: &mut Map<String, Value>,
    name: &str,
    ctx: &ImageContext,
    prefix: &str,
) -> Result<Option<Arc<ImageUse>>, SpecError> {
    let bad =
        |f: &str, e: &dyn std::fmt::Display| SpecError::new(format!("{prefix}{f}"), e.to_string());
    let Some(fields) =
        config::take_fields(obj, prefix).map_err(|e| SpecError::new("", e.to_string()))?
    else {
        return Ok(None);
    };
    let r = Reference::parse(&fields.image, "image").map_err(|e| bad("image", &strip_field(&e)))?;
    let store = Store::open(&ctx.store).map_err(|e| bad("image", &e))?;
    let record = store
        .find(&r.to_string())
        .map_err(|e| bad("image", &e))?
        .ok_or_else(|| bad("image", &format!("{r}: not in the image store {} (isola up pulls before starting; isola pull {r})", ctx.store.display())))?;
    let cfg = ImageConfig::load(&store, &record).map_err(|e| bad("image", &e))?;
    let readonly = obj
        .get("root")
        .and_then(|r| r.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let writable = if readonly {
        Writable::No
    } else {
        Writable::Yes
    };
    let layers = Layers::of(&store, &ctx.root_name(name), &record, writable)
        .map_err(|e| bad("image", &e))?;
    let warning = config::fill(obj, &cfg, fields.entrypoint.as_deref(), &layers, prefix)
        .map_err(|e| SpecError::new("", e.to_string()))?;
    Ok(Some(Arc::new(ImageUse {
        reference: r.to_string(),
        record,
        writable,
        ctx: ctx.clone(),
        warning,
    })))
}

/// A writable root cannot be mounted twice at once: an image service
/// restarted with `restart.mode: overlap` (its successor starts while
/// it runs) needs `root.readonly`.
pub fn check_policy(
    image: &ImageUse,
    policy: &crate::policy::Policy,
    prefix: &str,
) -> Result<(), SpecError> {
    if image.writable == Writable::Yes && policy.restart.mode == crate::policy::RestartMode::Overlap
    {
        return Err(SpecError::new(
            format!("{prefix}restart.mode"),
            "overlap: the old and new sandbox would share one writable layer; set root.readonly (and mount volumes for data)",
        ));
    }
    Ok(())
}

/// `field: message` of an image error, without its own field (we name ours).
fn strip_field(e: &isola_images::Error) -> String {
    match e {
        isola_images::Error::Usage { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
