//! A service from an image (`"image": REF`): the image is found in the
//! store (`isola up` pulled it before starting anything; a reload or the
//! spawner never pulls, so the loop never waits on a registry), its
//! config fills the service's spec, and its plan runs on an overlay of
//! the image's layers with a writable layer of the service's own: the
//! root `<stack>.<service>` in the store, one per replica.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use isola_images::config::{self, ImageConfig};
use isola_images::root::{Layers, Writable};
use isola_images::store::ImageRecord;
use isola_images::{Reference, Store};
use isola_runtime::root_layers::{RootLayers, Upper};
use isola_runtime::{Plan, SpecError};
use serde_json::{Map, Value};

/// Where a stack's image roots are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlace {
    pub store: PathBuf,
    /// The stack's name: roots are `<stack>.<service>`.
    pub stack: String,
}

/// Where image services' roots come from, and the images a parse has
/// found so far (a thousand services of one image read its record and
/// config once).
#[derive(Debug)]
pub struct ImageContext {
    pub place: RootPlace,
    found: RefCell<HashMap<String, Arc<Found>>>,
}

/// An image of the store, as a parse found it.
#[derive(Debug)]
struct Found {
    record: ImageRecord,
    cfg: ImageConfig,
}

impl Default for ImageContext {
    fn default() -> ImageContext {
        ImageContext::new(isola_images::store::default_root(), "stack".into())
    }
}

impl ImageContext {
    pub fn new(store: PathBuf, stack: String) -> ImageContext {
        ImageContext {
            place: RootPlace { store, stack },
            found: RefCell::default(),
        }
    }

    /// The image `r` names, from the store (once per parse).
    fn find(&self, r: &Reference) -> Result<Arc<Found>, String> {
        let key = r.to_string();
        if let Some(f) = self.found.borrow().get(&key) {
            return Ok(f.clone());
        }
        let store = Store::open(&self.place.store).map_err(|e| e.to_string())?;
        let record = store.find(&key).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!(
                "{key}: not in the image store {} (isola up pulls before starting; isola pull {key})",
                self.place.store.display()
            )
        })?;
        Layers::check(&store, &record).map_err(|e| e.to_string())?;
        let cfg = ImageConfig::load(&store, &record).map_err(|e| e.to_string())?;
        let found = Arc::new(Found { record, cfg });
        self.found.borrow_mut().insert(key, found.clone());
        Ok(found)
    }
}

impl RootPlace {
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
    pub place: RootPlace,
    /// What the image added that the user should hear of (its
    /// HEALTHCHECK as the liveness probe).
    pub warning: Option<String>,
}

impl ImageUse {
    /// Point `plan` (of the service or replica `name`) at its root.
    pub fn apply(&self, name: &str, plan: &mut Plan) -> Result<(), SpecError> {
        let layers = Layers::at(
            &self.place.store,
            &self.place.root_name(name),
            &self.record,
            self.writable,
        )
        .map_err(|e| SpecError::new("image", e.to_string()))?;
        attach(plan, &layers)
    }

    /// The store's name for the root of service (or replica) `name`: a
    /// writable root is the service's own, kept across its restarts and
    /// images; a read-only one holds nothing of its own and is named for
    /// its image too, so that an overlap's successor on another image is
    /// on another root.
    pub fn root_name(&self, name: &str) -> String {
        match self.writable {
            Writable::Yes => self.place.root_name(name),
            Writable::No => format!(
                "{}@{}",
                self.place.root_name(name),
                self.record.digest.short()
            ),
        }
    }

    pub fn store(&self) -> Result<Store, SpecError> {
        Store::open(&self.place.store).map_err(|e| SpecError::new("image", e.to_string()))
    }
}

/// Run `plan` on `layers`: mounted on the store's `mnt/`, or, read-only,
/// over a scratch tmpfs there.
pub fn attach(plan: &mut Plan, layers: &Layers) -> Result<(), SpecError> {
    let upper = match &layers.upper {
        Some((upper, work)) => Upper::Dirs {
            upper,
            work,
            merged: &layers.mnt,
        },
        None => Upper::Scratch { dir: &layers.mnt },
    };
    RootLayers::new(&layers.lower, upper)?.attach(plan);
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
    let found = ctx.find(&r).map_err(|e| bad("image", &e))?;
    let writable = config::writable(obj);
    let place = &ctx.place;
    let layers = Layers::at(
        &place.store,
        &place.root_name(name),
        &found.record,
        writable,
    )
    .map_err(|e| bad("image", &e))?;
    let warning = config::fill(
        obj,
        &found.cfg,
        fields.entrypoint.as_deref(),
        &layers,
        prefix,
    )
    .map_err(|e| SpecError::new("", e.to_string()))?;
    Ok(Some(Arc::new(ImageUse {
        reference: r.to_string(),
        record: found.record.clone(),
        writable,
        place: place.clone(),
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
