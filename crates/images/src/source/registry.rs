//! `docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`: the distribution API v2
//! (manifests, indexes resolved to our platform, blobs, redirects to blob
//! storage without our credentials), over HTTPS unless the host is named
//! insecure. One blocking client; no async runtime in the CLI.

use std::io::Read;
use std::time::Duration;

use oci_spec::image::Descriptor;
use ureq::http::Response;
use ureq::Body;

use super::auth::{self, Challenge, Credentials};
use super::{digest_of, resolve, Manifest, Options, Source, MANIFEST_TYPES};
use crate::reference::{RegistryRef, Version};
use crate::{Digest, Error};

/// Manifests and indexes are small; a larger answer is not one.
const MANIFEST_MAX: u64 = 4 << 20;

pub(crate) struct Registry {
    r: RegistryRef,
    agent: ureq::Agent,
    base: String,
    creds: Option<Credentials>,
    /// The `Authorization` value once a challenge was answered.
    authorization: Option<String>,
}

impl Registry {
    pub(crate) fn new(r: RegistryRef, opts: &Options) -> Result<Registry, Error> {
        let scheme = if opts.insecure.contains(&r.host) {
            "http"
        } else {
            "https"
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .max_redirects(5)
            .build()
            .new_agent();
        Ok(Registry {
            base: format!("{scheme}://{}", r.host),
            creds: auth::lookup(&r.host),
            r,
            agent,
            authorization: None,
        })
    }

    /// GET `path` under `/v2/NAME/`, answering one auth challenge.
    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<Response<Body>, Error> {
        let url = format!("{}/v2/{}/{path}", self.base, self.r.repository);
        let mut resp = self.send(&url, accept)?;
        // One challenge answered per request: the first, and a token that
        // expired during a long pull (Docker Hub's last five minutes).
        if resp.status() == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|h| h.to_str().ok())
                .and_then(auth::parse_challenge);
            self.authorization = Some(self.answer(challenge)?);
            resp = self.send(&url, accept)?;
        }
        match resp.status().as_u16() {
            200..=299 => Ok(resp),
            401 | 403 => Err(Error::Source(format!(
                "{}: access to {} denied (HTTP {}; {})",
                self.r.host,
                self.r.repository,
                resp.status().as_u16(),
                match &self.creds {
                    Some(c) => format!("credentials of {} from {}", c.user, c.file.display()),
                    None => "no credentials for this registry: $REGISTRY_AUTH_FILE, auth.json or ~/.docker/config.json".into(),
                }
            ))),
            404 => Err(Error::Source(format!("docker://{}: not found (HTTP 404 for {path})", self.r))),
            s => Err(Error::Source(format!("{}: HTTP {s} for {url}", self.r.host))),
        }
    }

    fn send(&self, url: &str, accept: Option<&str>) -> Result<Response<Body>, Error> {
        let mut req = self.agent.get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        req.call().map_err(|e| {
            // A plain-HTTP registry answers a TLS hello with nonsense.
            let hint = if self.base.starts_with("https:") {
                " (over HTTPS; a plain-HTTP registry must be named: --insecure-registry HOST:PORT or insecureRegistries)"
            } else {
                ""
            };
            Error::Source(format!("{}: registry unreachable: {e}{hint}", self.r.host))
        })
    }

    /// The `Authorization` header value a challenge asks for.
    fn answer(&self, challenge: Option<Challenge>) -> Result<String, Error> {
        match challenge {
            Some(Challenge::Basic) => self.creds.as_ref().map(Credentials::basic).ok_or_else(|| {
                Error::Source(format!(
                    "{}: the registry asks for a login and no credentials name it ($REGISTRY_AUTH_FILE, auth.json or ~/.docker/config.json)",
                    self.r.host
                ))
            }),
            Some(Challenge::Bearer { realm, service, scope }) => self.token(&realm, service, scope),
            None => Err(Error::Source(format!("{}: HTTP 401 without a challenge we understand", self.r.host))),
        }
    }

    fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<String, Error> {
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.r.repository));
        let mut url = format!("{realm}?scope={}", auth::query_escape(&scope));
        if let Some(s) = service {
            url.push_str(&format!("&service={}", auth::query_escape(&s)));
        }
        let mut req = self.agent.get(&url);
        if let Some(c) = &self.creds {
            req = req.header("Authorization", c.basic());
        }
        let fail = |m: String| Error::Source(format!("{}: token from {realm}: {m}", self.r.host));
        let mut resp = req.call().map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!(
                "HTTP {} (bad credentials?)",
                resp.status().as_u16()
            )));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MANIFEST_MAX)
            .read_to_vec()
            .map_err(|e| fail(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| fail("no token in the answer".into()))?;
        Ok(format!("Bearer {token}"))
    }

    /// A manifest or index by tag or digest: its bytes and digest.
    fn fetch_manifest(&mut self, version: &str) -> Result<(Digest, Vec<u8>), Error> {
        let accept = MANIFEST_TYPES.join(", ");
        let mut resp = self.get(&format!("manifests/{version}"), Some(&accept))?;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MANIFEST_MAX)
            .read_to_vec()
            .map_err(|e| Error::Source(format!("docker://{}: manifest: {e}", self.r)))?;
        let digest = Digest::of(&bytes);
        if let Ok(by_digest) = Digest::parse(version) {
            by_digest.verify(&bytes, None, &format!("manifest {version}"))?;
        }
        Ok((digest, bytes))
    }
}

impl Source for Registry {
    fn manifest(&mut self) -> Result<Manifest, Error> {
        let what = format!("docker://{}", self.r);
        let version = match &self.r.version {
            Version::Tag(t) => t.clone(),
            Version::Digest(d) => d.to_string(),
        };
        let first = self.fetch_manifest(&version)?;
        resolve(&what, first, |d| {
            let d = digest_of(d)?;
            self.fetch_manifest(&d.to_string())
        })
    }

    fn blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + '_>, Error> {
        let digest = digest_of(d)?;
        let resp = self.get(&format!("blobs/{digest}"), None)?;
        Ok(Box::new(resp.into_body().into_reader()))
    }
}
