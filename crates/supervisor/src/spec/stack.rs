//! A stack file: `{"services": {"NAME": SERVICE, …}}`, where SERVICE is an
//! `isola run` spec plus supervision fields. Everything is validated here,
//! before any service starts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::Path;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use isola_runtime::{cgroup, spec, Plan, SpecError};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::spec::autoscale;
use crate::spec::images::{self, ImageContext, ImageUse};
use crate::spec::logging::{self, Logging};
use crate::spec::networks::{self, Member, NetworkDef};
use crate::spec::policy::{self, Policy};

#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: String,
    /// Hash of the service's JSON as written: a reload restarts a service
    /// when it changed. (The parsed spec is not kept: the plan is all a
    /// start needs, and a thousand specs would be most of the heap.)
    pub fingerprint: u64,
    /// Hash of the definitions of the networks it is on (0: none): a
    /// reload that changes one restarts it too. Apart from `fingerprint`,
    /// which the spawner (knowing no networks) checks.
    pub networks_fingerprint: u64,
    pub plan: Plan,
    pub policy: Policy,
    /// A replica (`web.3`) names its service (`web`).
    pub group: Option<String>,
    /// `isola update` changed its limits since the stack file was read: a
    /// reload restarts it with the file's own, and the spawner (which
    /// knows the file's) does not start it.
    pub live_limits: bool,
    /// The service's position among the stack file's services as `isola
    /// up` read them at start: the spawner built it from there, and starts
    /// it by that number. None for what a reload read.
    pub entry: Option<u32>,
    /// The image its root is made of (`image`), if any.
    pub image: Option<Arc<ImageUse>>,
}

impl ServiceDef {
    /// Replica `k` of this replica's service.
    pub fn replica(&self, k: u32) -> Option<ServiceDef> {
        let group = self.group.as_ref()?;
        let mut d = self.clone();
        d.name = replica_name(group, k);
        // Which one it is, for a payload that needs to know (like
        // systemd's %i).
        let env = std::ffi::CString::new(format!("{REPLICA_ENV}={k}")).ok()?;
        isola_runtime::plan::set_env(&mut d.plan.env, env);
        if let Some(image) = &self.image {
            // Each replica writes on a root of its own.
            image.apply(&d.name, &mut d.plan).ok()?;
        }
        Some(d)
    }

    /// Which replica of its service this is (`web.3`: 3); none for a
    /// service that has no replicas.
    pub fn replica_number(&self) -> Option<u32> {
        let group = self.group.as_deref()?;
        self.name
            .strip_prefix(group)?
            .strip_prefix('.')?
            .parse()
            .ok()
    }

    /// The service a person names: the replica's group, or the service.
    pub fn group_name(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.name)
    }
}

/// The variable telling a replica its number.
pub const REPLICA_ENV: &str = "ISOLA_REPLICA";

/// `web.3`.
pub fn replica_name(group: &str, k: u32) -> String {
    format!("{group}.{k}")
}

#[derive(Debug, Clone)]
pub struct Stack {
    /// In dependency order: every service after the ones it depends on.
    pub services: Vec<ServiceDef>,
    /// Not errors, but worth a line at load.
    pub warnings: Vec<String>,
    /// The stack's networks, by name.
    pub networks: Vec<NetworkDef>,
    /// The autoscaled services as written (a replica is `replica(k)` of
    /// one): `services` has their `min` first replicas, maybe none.
    pub autoscaled: Vec<ServiceDef>,
    /// The services with a fixed `replicas` as written: what `isola scale`
    /// makes a replica of (a running replica's definition is completed
    /// under its own name).
    pub replicated: Vec<ServiceDef>,
}

impl Stack {
    /// Its services and the autoscaled ones as written: what has sockets
    /// to hold, whether a replica runs or not.
    pub fn with_autoscaled(&self) -> impl Iterator<Item = &ServiceDef> + Clone {
        self.services.iter().chain(&self.autoscaled)
    }
}

/// `services` as an ordered list, so duplicate names are seen (a JSON map
/// would silently keep the last one). Each service stays text (a slice of
/// the file) until its turn: turned into a plan one at a time, a stack of
/// 10,000 never holds 10,000 JSON trees at once, whose garbage, between
/// the plans that outlive it, was most of the supervisor's heap.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of services")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries<'a>, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, &'de RawValue>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile<'a> {
    /// For editors (`isola schema stack`); ignored.
    #[serde(rename = "$schema")]
    _schema: Option<String>,
    #[serde(borrow)]
    services: Entries<'a>,
    /// Every service's `logging`, where its own says nothing.
    logging: Option<Value>,
    /// The stack's networks.
    networks: Option<Value>,
    /// Registries reached over plain HTTP (`isola up` pulls; read there).
    #[serde(rename = "insecureRegistries")]
    _insecure_registries: Option<Vec<String>>,
}

/// The stack file's services, in the file's order, each still text.
pub(crate) fn entries(text: &str) -> Result<Vec<(String, &RawValue)>, SpecError> {
    Ok(read_file(text)?.services.0)
}

fn read_file(text: &str) -> Result<StackFile<'_>, SpecError> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            SpecError::new(
                "",
                format!("malformed JSON at line {} column {}", e.line(), e.column()),
            )
        } else {
            SpecError::new("", spec::strip_position(&e.to_string()))
        }
    })
}

/// One service of the file (`name`: its key, `text`: its JSON) as the
/// supervisor runs it — before any replica is made of it — and the
/// warnings of its load. The spawner builds each service it starts with
/// this too, from the same text: the same definition, fingerprint
/// included.
pub(crate) fn service_def(
    name: String,
    text: &str,
    base_dir: &Path,
    images: &ImageContext,
) -> Result<(ServiceDef, Vec<String>), SpecError> {
    let prefix = format!("services.{name}.");
    let mut raw: Value = serde_json::from_str(text)
        .map_err(|e| SpecError::new(format!("services.{name}"), e.to_string()))?;
    cgroup::check_name(&name).map_err(|e| SpecError::new(format!("services.{name}"), e.message))?;
    if name.contains("..") {
        return Err(SpecError::new(
            format!("services.{name}"),
            "`..` is kept for isola's own cgroup names",
        ));
    }
    let mut fingerprint = fingerprint(&raw);
    let image = match raw.as_object_mut() {
        Some(obj) => images::resolve(obj, &name, images, &prefix)?,
        None => None,
    };
    if let Some(i) = &image {
        // The image a tag names now: a pull of a new one, then a reload,
        // restarts the service on it (and a spawner that read the store
        // before the pull is not asked to start it).
        fingerprint ^= {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            i.record.digest.hash(&mut h);
            h.finish()
        };
    }
    let spec = spec::parse_value(raw, base_dir, &prefix)?;
    let mut plan = Plan::from_spec(&spec)
        .map_err(|e| SpecError::new(format!("{prefix}{}", e.field), e.message))?;
    let policy = policy::parse(&spec.supervision, &prefix)?;
    if let Some(image) = &image {
        image
            .apply(&name, &mut plan)
            .map_err(|e| SpecError::new(format!("{prefix}{}", e.field), e.message))?;
        images::check_policy(image, &policy, &prefix)?;
    }
    let mut warnings: Vec<String> = policy::overlap_warning(&policy, &prefix)
        .into_iter()
        .collect();
    warnings.extend(plan.warnings.iter().map(|w| format!("{prefix}{w}")));
    warnings.extend(image.as_ref().and_then(|i| i.warning.clone()));
    let group = policy.replicated().then(|| name.clone());
    let def = ServiceDef {
        name,
        fingerprint,
        networks_fingerprint: 0,
        plan,
        policy,
        group,
        live_limits: false,
        entry: None,
        image,
    };
    Ok((def, warnings))
}

/// A stack file whose image services (if any) are in the default store.
pub fn parse(text: &str, base_dir: &Path) -> Result<Stack, SpecError> {
    parse_with(text, base_dir, &ImageContext::default())
}

/// A stack file, image services' roots as `images` says.
pub fn parse_with(text: &str, base_dir: &Path, images: &ImageContext) -> Result<Stack, SpecError> {
    let mut seen = HashMap::new();
    let mut defs = Vec::new();
    let mut warnings = Vec::new();
    let mut autoscaled = Vec::new();
    let mut replicated = Vec::new();
    let file = read_file(text)?;
    let logging = match &file.logging {
        Some(v) => logging::parse(v, "logging")?,
        None => Logging::default(),
    };
    for (k, (name, entry)) in file.services.0.into_iter().enumerate() {
        if seen.insert(name.clone(), ()).is_some() {
            return Err(SpecError::new(
                format!("services.{name}"),
                "duplicate service name",
            ));
        }
        let (mut def, w) = service_def(name, entry.get(), base_dir, images)?;
        def.entry = u32::try_from(k).ok();
        def.policy.logging = def.policy.logging.over(&logging);
        warnings.extend(w);
        match (def.policy.replicas, &def.policy.autoscale) {
            (Some(n), _) => {
                defs.extend((1..=n).filter_map(|k| def.replica(k)));
                replicated.push(def);
            }
            (None, Some(a)) => {
                defs.extend((1..=a.min).filter_map(|k| def.replica(k)));
                autoscaled.push(def);
            }
            (None, None) => defs.push(def),
        }
    }
    autoscale::check_waiting_on_zero(&autoscaled, &defs)?;
    if defs.is_empty() && autoscaled.is_empty() {
        return Err(SpecError::new("services", "no services"));
    }
    let mut names = HashMap::new();
    for d in &defs {
        if names.insert(d.name.clone(), ()).is_some() {
            return Err(SpecError::new(
                format!("services.{}", d.name),
                "a service and a replica of another have this name",
            ));
        }
    }
    // The autoscaled services as written go through what their replicas
    // do: a replica made from one later is as checked as one from the file.
    expand_group_dependencies(&mut defs, &mut autoscaled);
    autoscale::check_dependencies(&autoscaled, &defs)?;
    let networks = match &file.networks {
        Some(v) => networks::parse_stack(v, base_dir)?,
        None => Vec::new(),
    };
    check_networks(&networks, defs.iter().chain(&autoscaled))?;
    fold_network_defs(&networks, &mut defs);
    fold_network_defs(&networks, &mut autoscaled);
    fold_network_defs(&networks, &mut replicated);
    Ok(Stack {
        services: order(defs)?,
        warnings,
        networks,
        autoscaled,
        replicated,
    })
}

/// The services' `networks` against the stack's.
fn check_networks<'a>(
    nets: &[NetworkDef],
    defs: impl Iterator<Item = &'a ServiceDef>,
) -> Result<(), SpecError> {
    let members: Vec<Member<'_>> = defs
        .map(|d| Member {
            name: &d.name,
            group: d.group.as_deref(),
            attachments: &d.policy.networks,
            own_netns: d.plan.new_net_ns()
                && !d
                    .plan
                    .join
                    .iter()
                    .any(|(f, _)| f.contains(nix::sched::CloneFlags::CLONE_NEWNET)),
            user_ns: d.plan.new_user_ns(),
        })
        .collect();
    networks::check_members(nets, &members)
}

/// A member's definition includes its networks': a reload that changes a
/// network restarts the services on it (and only those).
fn fold_network_defs(nets: &[NetworkDef], defs: &mut [ServiceDef]) {
    for d in defs.iter_mut() {
        if d.policy.networks.is_empty() {
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for a in &d.policy.networks {
            format!("{:?}", nets.iter().find(|n| n.name == a.network)).hash(&mut h);
        }
        d.networks_fingerprint = h.finish();
    }
}

/// A dependency on a replicated service is one on each of its replicas.
/// (`autoscaled`: the services as written, whose replicas may come later.)
fn expand_group_dependencies(defs: &mut [ServiceDef], autoscaled: &mut [ServiceDef]) {
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for d in defs.iter() {
        if let Some(g) = &d.group {
            groups.entry(g.clone()).or_default().push(d.name.clone());
        }
    }
    if groups.is_empty() {
        return;
    }
    for d in defs.iter_mut().chain(autoscaled.iter_mut()) {
        let deps = std::mem::take(&mut d.policy.depends_on);
        for dep in deps {
            match groups.get(&dep.name) {
                Some(members) => d.policy.depends_on.extend(members.iter().map(|m| {
                    crate::spec::health::Dependency {
                        name: m.clone(),
                        condition: dep.condition,
                    }
                })),
                None => d.policy.depends_on.push(dep),
            }
        }
    }
}

/// serde_json's map is ordered by key, so equal JSON gives equal text and
/// key order or whitespace in the file does not count as a change.
fn fingerprint(raw: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match raw.as_object().filter(|o| o.contains_key("autoscale")) {
        // How many replicas run is not what a replica is: new bounds
        // restart none of them.
        Some(o) => {
            let mut o = o.clone();
            o.remove("autoscale");
            hash_json(&Value::Object(o), &mut h);
        }
        None => hash_json(raw, &mut h),
    }
    h.finish()
}

/// `v.to_string().hash(h)` without the string: serde_json's compact form
/// streamed into the hasher (a streaming hasher takes it in pieces alike),
/// then `str`'s terminator — the fingerprints an older binary computed.
fn hash_json(v: &Value, h: &mut impl Hasher) {
    struct HashWriter<'h, H>(&'h mut H);
    impl<H: Hasher> std::io::Write for HashWriter<'_, H> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Writing a Value into a sink that cannot fail does not fail.
    let _ = serde_json::to_writer(HashWriter(&mut *h), v);
    h.write_u8(0xff);
}

/// Topological order (Kahn), stable in the file's order; names unknown
/// dependencies and cycles.
fn order(defs: Vec<ServiceDef>) -> Result<Vec<ServiceDef>, SpecError> {
    let index: HashMap<String, usize> = defs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.clone(), i))
        .collect();
    for d in &defs {
        for dep in d.policy.depends_on.iter().map(|d| &d.name) {
            if !index.contains_key(dep) {
                return Err(SpecError::new(
                    format!("services.{}.dependsOn", d.name),
                    format!("{dep}: no such service"),
                ));
            }
            if dep == &d.name {
                return Err(SpecError::new(
                    format!("services.{}.dependsOn", d.name),
                    format!("{dep}: depends on itself"),
                ));
            }
        }
    }
    // Kahn's algorithm, the lowest eligible index first: the file's order
    // wherever the dependencies allow, in O(n log n) (a scan for the next
    // one was quadratic: seconds at 10,000 services).
    let mut waiting_on: Vec<usize> = defs.iter().map(|d| d.policy.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); defs.len()];
    for (i, d) in defs.iter().enumerate() {
        for dep in &d.policy.depends_on {
            dependents[index[&dep.name]].push(i);
        }
    }
    let mut eligible: BinaryHeap<Reverse<usize>> = (0..defs.len())
        .filter(|&i| waiting_on[i] == 0)
        .map(Reverse)
        .collect();
    let mut out_idx = Vec::with_capacity(defs.len());
    while let Some(Reverse(i)) = eligible.pop() {
        out_idx.push(i);
        for &j in &dependents[i] {
            waiting_on[j] -= 1;
            if waiting_on[j] == 0 {
                eligible.push(Reverse(j));
            }
        }
    }
    if out_idx.len() < defs.len() {
        let stuck: Vec<&str> = (0..defs.len())
            .filter(|&i| waiting_on[i] > 0)
            .map(|i| defs[i].name.as_str())
            .collect();
        return Err(SpecError::new(
            format!("services.{}.dependsOn", stuck[0]),
            format!("dependency cycle among {}", stuck.join(", ")),
        ));
    }
    // Most files list a service after what it depends on: nothing moves.
    // Else each definition (~1.5 KiB) is moved once, not through a map.
    if out_idx.iter().enumerate().all(|(k, &i)| k == i) {
        return Ok(defs);
    }
    let mut slots: Vec<Option<ServiceDef>> = defs.into_iter().map(Some).collect();
    Ok(out_idx
        .into_iter()
        .filter_map(|i| slots.get_mut(i)?.take())
        .collect())
}

#[cfg(test)]
mod tests;
