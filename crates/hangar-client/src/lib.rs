//! A typed client for the Machines API as `hangard` serves it (and, for the
//! Fly-compatible part, as Fly does). Used by the `hangar` CLI and the
//! end-to-end tests.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_api_types::{
    App, AppSecrets, AppSecretsUpdateRequest, AppSecretsUpdateResp, AppToken, AssignIpRequest,
    CreateAppRequest, CreateAppTokenRequest, CreateMachineRequest, CreateReleaseRequest,
    CreateVolumeRequest, CreatedAppToken, ErrorResponse, ExecResponse, ExtendVolumeRequest,
    ExtendVolumeResponse, ImageSummary, IpAssignment, Lease, LeaseEnvelope, ListAppsResponse,
    ListIpAssignmentsResponse, ListReleasesResponse, LogEntry, Machine, MachineEvent,
    MachineExecRequest, MachineVersion, ProcessStat, Release, ReleaseEvent, ReleasePlan,
    StartResponse, UpdateMachineRequest, Volume, VolumeSnapshot, WaitMachineResponse,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// Default API address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:4280";
/// Default data directory of a local `hangard` (where its admin token is).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/hangar";

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's `error` message.
        message: String,
    },
    /// The API could not be reached.
    #[error("cannot reach hangard at {url}: {reason}")]
    Transport {
        /// Base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The client is not configured (no token...).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Filters of a machine listing.
#[derive(Debug, Clone, Default)]
pub struct ListMachines {
    /// Include destroyed machines.
    pub include_deleted: bool,
    /// Only this region.
    pub region: Option<String>,
    /// Only these states.
    pub states: Vec<String>,
    /// Omit config and events.
    pub summary: bool,
    /// Only machines with these metadata values.
    pub metadata: Vec<(String, String)>,
}

/// The client.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Finds the token: `HANGAR_API_TOKEN`, then `FLY_API_TOKEN`, then the
/// admin token of a local `hangard` (readable by root), in
/// `$HANGAR_DATA_DIR` or `/var/lib/hangar`.
pub fn discover_token() -> Result<String, ClientError> {
    for var in ["HANGAR_API_TOKEN", "FLY_API_TOKEN"] {
        if let Ok(t) = std::env::var(var) {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_owned());
            }
        }
    }
    let dir = std::env::var_os("HANGAR_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let file = dir.join("admin-token");
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(ClientError::Config(format!("{} is empty", file.display()))),
        Err(e) => Err(ClientError::Config(format!(
            "no API token: set HANGAR_API_TOKEN (or FLY_API_TOKEN), or run as root on the hangard host ({}: {e})",
            file.display()
        ))),
    }
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:4280`) with `token`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Client {
        Client {
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// A client configured from the environment: `HANGAR_API_URL` (default
    /// `http://127.0.0.1:4280`) and [`discover_token`].
    pub fn from_env() -> Result<Client, ClientError> {
        let base = std::env::var("HANGAR_API_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        Ok(Client::new(base, discover_token()?))
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The token it sends (for the registry's credentials).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// hangard's registry: `host:port` of its API address.
    pub fn registry_host(&self) -> String {
        self.base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned()
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/v1{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = rb.send().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            reason: hangar_core::errors::error_chain(&e),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorResponse>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)));
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ClientError::Api {
            status: status.as_u16(),
            message: format!("unexpected response: {e}"),
        })
    }

    // ---- apps ----

    /// `POST /v1/apps`.
    pub async fn create_app(&self, name: &str) -> Result<App, ClientError> {
        let req = CreateAppRequest {
            name: Some(name.into()),
            org_slug: Some("personal".into()),
            ..CreateAppRequest::default()
        };
        self.send(self.request(Method::POST, "/apps").json(&req))
            .await
    }

    /// `POST /v1/apps` with every field of the request (e.g. `network`).
    pub async fn create_app_with(&self, req: &CreateAppRequest) -> Result<App, ClientError> {
        self.send(self.request(Method::POST, "/apps").json(req))
            .await
    }

    /// `GET /v1/apps/{app}/ip_assignments`.
    pub async fn list_ips(&self, app: &str) -> Result<Vec<IpAssignment>, ClientError> {
        let r: ListIpAssignmentsResponse = self
            .send(self.request(Method::GET, &format!("/apps/{app}/ip_assignments")))
            .await?;
        Ok(r.ips)
    }

    /// `POST /v1/apps/{app}/ip_assignments`: `v4` or `shared_v4`.
    pub async fn assign_ip(&self, app: &str, kind: &str) -> Result<IpAssignment, ClientError> {
        let req = AssignIpRequest {
            kind: Some(kind.into()),
            ..AssignIpRequest::default()
        };
        self.send(
            self.request(Method::POST, &format!("/apps/{app}/ip_assignments"))
                .json(&req),
        )
        .await
    }

    /// `DELETE /v1/apps/{app}/ip_assignments/{ip}`.
    pub async fn release_ip(&self, app: &str, ip: &str) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(
            self.request(Method::DELETE, &format!("/apps/{app}/ip_assignments/{ip}")),
        )
        .await
        .map(|_| ())
    }

    /// `GET /v1/hangar/apps/{app}/tokens`, or every app's tokens with `None`
    /// (`GET /v1/hangar/tokens`, admin token only).
    pub async fn list_tokens(&self, app: Option<&str>) -> Result<Vec<AppToken>, ClientError> {
        let path = match app {
            Some(a) => format!("/hangar/apps/{a}/tokens"),
            None => "/hangar/tokens".into(),
        };
        self.send(self.request(Method::GET, &path)).await
    }

    /// `POST /v1/hangar/apps/{app}/tokens`.
    pub async fn create_token(
        &self,
        app: &str,
        req: &CreateAppTokenRequest,
    ) -> Result<CreatedAppToken, ClientError> {
        self.send(
            self.request(Method::POST, &format!("/hangar/apps/{app}/tokens"))
                .json(req),
        )
        .await
    }

    /// `DELETE /v1/hangar/apps/{app}/tokens/{id}`, or any app's with `None`
    /// (`DELETE /v1/hangar/tokens/{id}`, admin token only).
    pub async fn revoke_token(&self, app: Option<&str>, id: &str) -> Result<(), ClientError> {
        let path = match app {
            Some(a) => format!("/hangar/apps/{a}/tokens/{id}"),
            None => format!("/hangar/tokens/{id}"),
        };
        self.send::<serde_json::Value>(self.request(Method::DELETE, &path))
            .await
            .map(|_| ())
    }

    /// `GET /v1/apps`.
    pub async fn list_apps(&self) -> Result<ListAppsResponse, ClientError> {
        self.send(self.request(Method::GET, "/apps?org_slug=personal"))
            .await
    }

    /// `GET /v1/apps/{app}`.
    pub async fn get_app(&self, app: &str) -> Result<App, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}")))
            .await
    }

    /// `DELETE /v1/apps/{app}`.
    pub async fn delete_app(&self, app: &str, force: bool) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(
            self.request(Method::DELETE, &format!("/apps/{app}?force={force}")),
        )
        .await
        .map(|_| ())
    }

    // ---- machines ----

    /// `POST /v1/apps/{app}/machines`.
    pub async fn create_machine(
        &self,
        app: &str,
        req: &CreateMachineRequest,
    ) -> Result<Machine, ClientError> {
        self.send(
            self.request(Method::POST, &format!("/apps/{app}/machines"))
                .json(req),
        )
        .await
    }

    /// `GET /v1/apps/{app}/machines`.
    pub async fn list_machines(
        &self,
        app: &str,
        f: &ListMachines,
    ) -> Result<Vec<Machine>, ClientError> {
        let mut q: Vec<(String, String)> = Vec::new();
        if f.include_deleted {
            q.push(("include_deleted".into(), "true".into()));
        }
        if f.summary {
            q.push(("summary".into(), "true".into()));
        }
        if let Some(r) = &f.region {
            q.push(("region".into(), r.clone()));
        }
        if !f.states.is_empty() {
            q.push(("state".into(), f.states.join(",")));
        }
        for (k, v) in &f.metadata {
            q.push((format!("metadata.{k}"), v.clone()));
        }
        self.send(
            self.request(Method::GET, &format!("/apps/{app}/machines"))
                .query(&q),
        )
        .await
    }

    /// `GET /v1/apps/{app}/machines/{id}`.
    pub async fn get_machine(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/machines/{id}")))
            .await
    }

    /// `POST .../start`.
    pub async fn start_machine(&self, app: &str, id: &str) -> Result<StartResponse, ClientError> {
        self.send(self.request(Method::POST, &format!("/apps/{app}/machines/{id}/start")))
            .await
    }

    /// `POST .../stop`.
    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        signal: Option<&str>,
        timeout: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(s) = signal {
            body.insert("signal".into(), s.into());
        }
        if let Some(t) = timeout {
            body.insert("timeout".into(), t.into());
        }
        self.send::<serde_json::Value>(
            self.request(Method::POST, &format!("/apps/{app}/machines/{id}/stop"))
                .json(&body),
        )
        .await
        .map(|_| ())
    }

    /// `DELETE .../{id}?force=`.
    pub async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
    ) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(self.request(
            Method::DELETE,
            &format!("/apps/{app}/machines/{id}?force={force}"),
        ))
        .await
        .map(|_| ())
    }

    /// `GET .../wait`, repeated past the API's 60-second limit until
    /// `timeout`.
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &str,
        states: &[&str],
        timeout: Duration,
    ) -> Result<WaitMachineResponse, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let secs = left.as_secs().clamp(1, 60);
            let q: Vec<(&str, String)> = states
                .iter()
                .map(|s| ("state", (*s).to_owned()))
                .chain([("timeout", secs.to_string())])
                .collect();
            let r = self
                .send(
                    self.request(Method::GET, &format!("/apps/{app}/machines/{id}/wait"))
                        .query(&q),
                )
                .await;
            match r {
                Err(ClientError::Api { status, .. })
                    if status == StatusCode::REQUEST_TIMEOUT.as_u16()
                        && tokio::time::Instant::now() + Duration::from_millis(500) < deadline =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// `GET .../events`.
    pub async fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MachineEvent>, ClientError> {
        self.send(self.request(
            Method::GET,
            &format!("/apps/{app}/machines/{id}/events?limit={limit}"),
        ))
        .await
    }

    /// `POST /v1/apps/{app}/machines/{id}` (full config replacement).
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMachineRequest,
        nonce: Option<&str>,
    ) -> Result<Machine, ClientError> {
        let mut rb = self
            .request(Method::POST, &format!("/apps/{app}/machines/{id}"))
            .json(req);
        if let Some(n) = nonce {
            rb = rb.header("fly-machine-lease-nonce", n);
        }
        self.send(rb).await
    }

    /// `GET .../versions`.
    pub async fn machine_versions(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Vec<MachineVersion>, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/machines/{id}/versions")))
            .await
    }

    /// `POST .../restart`.
    pub async fn restart_machine(
        &self,
        app: &str,
        id: &str,
        signal: Option<&str>,
        timeout: Option<&str>,
        force: bool,
    ) -> Result<(), ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(s) = signal {
            body.insert("signal".into(), s.into());
        }
        if let Some(t) = timeout {
            body.insert("timeout".into(), t.into());
        }
        if force {
            body.insert("force_stop".into(), true.into());
        }
        self.send::<serde_json::Value>(
            self.request(Method::POST, &format!("/apps/{app}/machines/{id}/restart"))
                .json(&body),
        )
        .await
        .map(|_| ())
    }

    /// `POST .../signal`.
    pub async fn signal_machine(
        &self,
        app: &str,
        id: &str,
        signal: &str,
    ) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(
            self.request(Method::POST, &format!("/apps/{app}/machines/{id}/signal"))
                .json(&serde_json::json!({ "signal": signal })),
        )
        .await
        .map(|_| ())
    }

    /// `POST .../{action}` for `suspend`, `cordon` and `uncordon`.
    pub async fn machine_action(
        &self,
        app: &str,
        id: &str,
        action: &str,
    ) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(
            self.request(Method::POST, &format!("/apps/{app}/machines/{id}/{action}")),
        )
        .await
        .map(|_| ())
    }

    /// `POST .../exec`.
    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        req: &MachineExecRequest,
    ) -> Result<ExecResponse, ClientError> {
        self.send(
            self.request(Method::POST, &format!("/apps/{app}/machines/{id}/exec"))
                .json(req),
        )
        .await
    }

    /// `GET .../ps`.
    pub async fn processes(&self, app: &str, id: &str) -> Result<Vec<ProcessStat>, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/machines/{id}/ps")))
            .await
    }

    /// `GET .../lease` (`None` when there is none).
    pub async fn get_lease(&self, app: &str, id: &str) -> Result<Option<Lease>, ClientError> {
        match self
            .send::<LeaseEnvelope<Lease>>(
                self.request(Method::GET, &format!("/apps/{app}/machines/{id}/lease")),
            )
            .await
        {
            Ok(e) => Ok(Some(e.data)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE .../lease` with `nonce`.
    pub async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(
            self.request(Method::DELETE, &format!("/apps/{app}/machines/{id}/lease"))
                .header("fly-machine-lease-nonce", nonce),
        )
        .await
        .map(|_| ())
    }

    /// `GET .../metadata`.
    pub async fn metadata(
        &self,
        app: &str,
        id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/machines/{id}/metadata")))
            .await
    }

    /// `PATCH .../metadata`: `None` removes a key.
    pub async fn update_metadata(
        &self,
        app: &str,
        id: &str,
        changes: &std::collections::BTreeMap<String, Option<String>>,
    ) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(
            self.request(
                Method::PATCH,
                &format!("/apps/{app}/machines/{id}/metadata"),
            )
            .json(&serde_json::json!({ "metadata": changes })),
        )
        .await
        .map(|_| ())
    }

    // ---- volumes ----

    /// `GET /v1/apps/{app}/volumes`.
    pub async fn list_volumes(&self, app: &str) -> Result<Vec<Volume>, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/volumes")))
            .await
    }

    /// `POST /v1/apps/{app}/volumes`.
    pub async fn create_volume(
        &self,
        app: &str,
        req: &CreateVolumeRequest,
    ) -> Result<Volume, ClientError> {
        self.send(
            self.request(Method::POST, &format!("/apps/{app}/volumes"))
                .json(req),
        )
        .await
    }

    /// `GET /v1/apps/{app}/volumes/{id}`.
    pub async fn get_volume(&self, app: &str, id: &str) -> Result<Volume, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/volumes/{id}")))
            .await
    }

    /// `DELETE /v1/apps/{app}/volumes/{id}`.
    pub async fn delete_volume(&self, app: &str, id: &str) -> Result<Volume, ClientError> {
        self.send(self.request(Method::DELETE, &format!("/apps/{app}/volumes/{id}")))
            .await
    }

    /// `PUT /v1/apps/{app}/volumes/{id}/extend`.
    pub async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: i64,
    ) -> Result<ExtendVolumeResponse, ClientError> {
        self.send(
            self.request(Method::PUT, &format!("/apps/{app}/volumes/{id}/extend"))
                .json(&ExtendVolumeRequest {
                    size_gb: Some(size_gb),
                }),
        )
        .await
    }

    /// `GET /v1/apps/{app}/volumes/{id}/snapshots`.
    pub async fn list_snapshots(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Vec<VolumeSnapshot>, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/volumes/{id}/snapshots")))
            .await
    }

    /// `POST /v1/apps/{app}/volumes/{id}/snapshots`.
    pub async fn create_snapshot(&self, app: &str, id: &str) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(
            self.request(Method::POST, &format!("/apps/{app}/volumes/{id}/snapshots")),
        )
        .await
        .map(|_| ())
    }

    // ---- secrets ----

    /// `GET /v1/apps/{app}/secrets`: names and digests.
    pub async fn list_secrets(&self, app: &str) -> Result<AppSecrets, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/secrets")))
            .await
    }

    /// `POST /v1/apps/{app}/secrets`: sets (`Some`) and unsets (`None`)
    /// secrets at once; returns the new secrets version.
    pub async fn update_secrets(
        &self,
        app: &str,
        values: std::collections::BTreeMap<String, Option<String>>,
    ) -> Result<i64, ClientError> {
        let r: AppSecretsUpdateResp = self
            .send(
                self.request(Method::POST, &format!("/apps/{app}/secrets"))
                    .json(&AppSecretsUpdateRequest { values }),
            )
            .await?;
        Ok(r.version)
    }

    // ---- logs (Hangar extension) ----

    /// `GET /v1/hangar/apps/{app}/logs`: the newest `tail` lines (of one
    /// machine, or the whole app), then, with `follow`, new lines as they
    /// come. Yields entries until the server ends the response.
    pub async fn logs(
        &self,
        app: &str,
        query: &LogsQuery,
    ) -> Result<impl futures::Stream<Item = Result<LogEntry, ClientError>> + use<>, ClientError>
    {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(m) = &query.machine {
            q.push(("machine_id", m.clone()));
        }
        if let Some(s) = &query.since {
            q.push(("since", s.clone()));
        }
        if let Some(t) = query.tail {
            q.push(("tail", t.to_string()));
        }
        if query.follow {
            q.push(("follow", "true".into()));
        }
        let resp = self
            .open_stream(
                self.request(Method::GET, &format!("/hangar/apps/{app}/logs"))
                    .query(&q),
            )
            .await?;
        Ok(self.ndjson::<LogEntry>(resp))
    }

    /// Sends a request whose answer streams; an error status becomes an
    /// error.
    async fn open_stream(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = rb.send().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            reason: hangar_core::errors::error_chain(&e),
        })?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            let message = serde_json::from_slice::<ErrorResponse>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {status}"));
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        Ok(resp)
    }

    /// An NDJSON answer, one `T` per line.
    fn ndjson<T: DeserializeOwned + Send + 'static>(
        &self,
        resp: reqwest::Response,
    ) -> futures::stream::BoxStream<'static, Result<T, ClientError>> {
        use futures::StreamExt;
        let base = self.base.clone();
        let lines = futures::stream::unfold(
            (resp.bytes_stream(), Vec::<u8>::new(), base),
            |(mut body, mut buf, base)| async move {
                loop {
                    if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        let item =
                            serde_json::from_slice::<T>(&line).map_err(|e| ClientError::Api {
                                status: 200,
                                message: format!("unexpected line in a stream: {e}"),
                            });
                        return Some((item, (body, buf, base)));
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            let err = ClientError::Transport {
                                url: base.clone(),
                                reason: e.to_string(),
                            };
                            return Some((Err(err), (body, Vec::new(), base)));
                        }
                        None => return None,
                    }
                }
            },
        );
        lines.boxed()
    }

    /// `POST /v1/hangar/images/prune`: the registry's garbage collection.
    pub async fn prune_images(&self) -> Result<hangar_api_types::PruneReport, ClientError> {
        self.send(self.request(Method::POST, "/hangar/images/prune"))
            .await
    }

    // ---- hosts (Hangar extension) ----

    /// `GET /v1/hangar/hosts`: the installation's hosts.
    pub async fn list_hosts(&self) -> Result<hangar_api_types::HostsResponse, ClientError> {
        self.send(self.request(Method::GET, "/hangar/hosts")).await
    }

    /// `POST /v1/hangar/hosts/{id}/drain` (or `undrain`): whether a host
    /// takes new machines.
    pub async fn drain_host(
        &self,
        id: &str,
        drain: bool,
    ) -> Result<hangar_api_types::HostView, ClientError> {
        let action = if drain { "drain" } else { "undrain" };
        self.send(self.request(Method::POST, &format!("/hangar/hosts/{id}/{action}")))
            .await
    }

    // ---- releases (Hangar extension) ----

    /// `POST /v1/apps/{app}/releases`: a deploy hangard runs.
    pub async fn create_release(
        &self,
        app: &str,
        req: &CreateReleaseRequest,
    ) -> Result<Release, ClientError> {
        self.send(
            self.request(Method::POST, &format!("/apps/{app}/releases"))
                .json(req),
        )
        .await
    }

    /// `POST /v1/apps/{app}/releases?dry_run=true`: what a deploy would do.
    pub async fn plan_release(
        &self,
        app: &str,
        req: &CreateReleaseRequest,
    ) -> Result<ReleasePlan, ClientError> {
        self.send(
            self.request(Method::POST, &format!("/apps/{app}/releases"))
                .query(&[("dry_run", "true")])
                .json(req),
        )
        .await
    }

    /// `POST /v1/apps/{app}/releases` with `rollback_to`: an earlier
    /// release's definition and image again.
    pub async fn rollback_release(&self, app: &str, key: &str) -> Result<Release, ClientError> {
        let req = CreateReleaseRequest {
            rollback_to: Some(key.to_owned()),
            ..CreateReleaseRequest::default()
        };
        self.create_release(app, &req).await
    }

    /// `POST /v1/apps/{app}/releases` with `restart`: the managed machines
    /// restarted with the current release, for `reason` (`secrets`,
    /// `restart`).
    pub async fn restart_release(&self, app: &str, reason: &str) -> Result<Release, ClientError> {
        let req = CreateReleaseRequest {
            restart: Some(reason.to_owned()),
            ..CreateReleaseRequest::default()
        };
        self.create_release(app, &req).await
    }

    /// `POST /v1/apps/{app}/releases` with `scale_count`.
    pub async fn scale_count(
        &self,
        app: &str,
        group: &str,
        count: usize,
    ) -> Result<Release, ClientError> {
        let req = CreateReleaseRequest {
            scale_count: Some(hangar_api_types::ScaleCountRequest {
                process_group: Some(group.to_owned()),
                count,
            }),
            ..CreateReleaseRequest::default()
        };
        self.create_release(app, &req).await
    }

    /// `POST /v1/apps/{app}/releases` with `scale_vm`.
    pub async fn scale_vm(
        &self,
        app: &str,
        vm: hangar_api_types::ScaleVmRequest,
    ) -> Result<Release, ClientError> {
        let req = CreateReleaseRequest {
            scale_vm: Some(vm),
            ..CreateReleaseRequest::default()
        };
        self.create_release(app, &req).await
    }

    /// `GET /v1/apps/{app}/releases`, newest first.
    pub async fn list_releases(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<Release>, ClientError> {
        let r: ListReleasesResponse = self
            .send(
                self.request(Method::GET, &format!("/apps/{app}/releases"))
                    .query(&[("limit", limit.to_string())]),
            )
            .await?;
        Ok(r.releases)
    }

    /// `GET /v1/apps/{app}/releases/{id or vN}`.
    pub async fn get_release(&self, app: &str, key: &str) -> Result<Release, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{app}/releases/{key}")))
            .await
    }

    /// `POST /v1/apps/{app}/releases/{id}/cancel`.
    pub async fn cancel_release(&self, app: &str, key: &str) -> Result<Release, ClientError> {
        self.send(self.request(Method::POST, &format!("/apps/{app}/releases/{key}/cancel")))
            .await
    }

    /// `GET /v1/apps/{app}/releases/{id}/events`: the progress after
    /// `after`; with `follow`, until the release ends.
    pub async fn release_events(
        &self,
        app: &str,
        key: &str,
        after: i64,
        follow: bool,
    ) -> Result<futures::stream::BoxStream<'static, Result<ReleaseEvent, ClientError>>, ClientError>
    {
        let resp = self
            .open_stream(
                self.request(Method::GET, &format!("/apps/{app}/releases/{key}/events"))
                    .query(&[("after", after.to_string()), ("follow", follow.to_string())]),
            )
            .await?;
        Ok(self.ndjson::<ReleaseEvent>(resp))
    }

    // ---- images (Hangar extension) ----

    /// `GET /v1/hangar/images`.
    pub async fn list_images(&self) -> Result<Vec<ImageSummary>, ClientError> {
        self.send(self.request(Method::GET, "/hangar/images")).await
    }

    /// Uploads an image archive (tar file) to `POST /v1/hangar/images/import`.
    pub async fn import_image_file(
        &self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<ImageSummary, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        let len = file.metadata().await.map(|m| m.len()).ok();
        let stream = tokio_util::io::ReaderStream::new(file);
        self.import_image_stream(reqwest::Body::wrap_stream(stream), len, name)
            .await
    }

    /// Uploads an image archive from a body.
    pub async fn import_image_stream(
        &self,
        body: reqwest::Body,
        len: Option<u64>,
        name: Option<&str>,
    ) -> Result<ImageSummary, ClientError> {
        let mut rb = self
            .request(Method::POST, "/hangar/images/import")
            .header("content-type", "application/x-tar")
            .body(body);
        if let Some(n) = name {
            rb = rb.query(&[("name", n)]);
        }
        if let Some(l) = len {
            rb = rb.header("content-length", l);
        }
        self.send(rb).await
    }
}

/// Which log lines [`Client::logs`] asks for.
#[derive(Debug, Clone, Default)]
pub struct LogsQuery {
    /// One machine (id or name) instead of the whole app.
    pub machine: Option<String>,
    /// Only lines at or after this RFC 3339 time.
    pub since: Option<String>,
    /// The newest this many lines (server default 100).
    pub tail: Option<usize>,
    /// Keep streaming new lines.
    pub follow: bool,
}

/// A command to run with a terminal ([`Client::exec_tty`]).
#[derive(Debug, Clone)]
pub struct TtyOptions {
    /// Program and arguments (empty: the machine's `/bin/sh`).
    pub argv: Vec<String>,
    /// Window height.
    pub rows: u16,
    /// Window width.
    pub cols: u16,
    /// `TERM` for the command (server default `xterm-256color`).
    pub term: Option<String>,
}

/// What a terminal session sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtyEvent {
    /// Terminal output.
    Output(Vec<u8>),
    /// The command ended with this exit code.
    Exit(i32),
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A command running with a terminal in a machine, over hangard's
/// WebSocket (`GET /v1/hangar/apps/{app}/machines/{id}/exec/tty`).
pub struct TtySession {
    ws: Ws,
}

/// The sending half of a [`TtySession`].
pub struct TtyInput {
    sink: futures::stream::SplitSink<Ws, tokio_tungstenite::tungstenite::Message>,
}

/// The receiving half of a [`TtySession`].
pub struct TtyOutput {
    stream: futures::stream::SplitStream<Ws>,
}

impl TtySession {
    /// Splits into input and output, to use concurrently.
    pub fn split(self) -> (TtyInput, TtyOutput) {
        use futures::StreamExt;
        let (sink, stream) = self.ws.split();
        (TtyInput { sink }, TtyOutput { stream })
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    ClientError::Transport {
        url: String::new(),
        reason: e.to_string(),
    }
}

impl TtyInput {
    /// Sends keystrokes.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        use futures::SinkExt;
        self.sink
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                data.to_vec().into(),
            ))
            .await
            .map_err(ws_error)
    }

    /// Tells the command the window's new size.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        use futures::SinkExt;
        let msg = serde_json::json!({"resize": {"rows": rows, "cols": cols}}).to_string();
        self.sink
            .send(tokio_tungstenite::tungstenite::Message::Text(msg.into()))
            .await
            .map_err(ws_error)
    }

    /// Hangs up (the command is ended).
    pub async fn close(&mut self) -> Result<(), ClientError> {
        use futures::SinkExt;
        self.sink.close().await.map_err(ws_error)
    }
}

impl TtyOutput {
    /// The next output or the exit; `None` once the session is over.
    pub async fn next(&mut self) -> Option<Result<TtyEvent, ClientError>> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            return match self.stream.next().await? {
                Ok(Message::Binary(b)) => Some(Ok(TtyEvent::Output(b.to_vec()))),
                Ok(Message::Text(t)) => {
                    match serde_json::from_str::<serde_json::Value>(&t)
                        .ok()
                        .and_then(|v| v["exit_code"].as_i64())
                    {
                        Some(code) => Some(Ok(TtyEvent::Exit(code as i32))),
                        None => continue,
                    }
                }
                Ok(Message::Close(_)) => None,
                Ok(_) => continue,
                Err(e) => Some(Err(ws_error(e))),
            };
        }
    }
}

impl Client {
    /// Runs a command with a terminal in a started machine.
    pub async fn exec_tty(
        &self,
        app: &str,
        id: &str,
        opts: &TtyOptions,
    ) -> Result<TtySession, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let ws_base = if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            return Err(ClientError::Config(format!(
                "unsupported API URL {}",
                self.base
            )));
        };
        let mut url = reqwest::Url::parse(&format!(
            "{ws_base}/v1/hangar/apps/{app}/machines/{id}/exec/tty"
        ))
        .map_err(|e| ClientError::Config(e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            for a in &opts.argv {
                q.append_pair("command", a);
            }
            q.append_pair("rows", &opts.rows.to_string());
            q.append_pair("cols", &opts.cols.to_string());
            if let Some(term) = &opts.term {
                q.append_pair("term", term);
            }
        }
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| ClientError::Config("the token is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", auth);
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(TtySession { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                let message = serde_json::from_slice::<ErrorResponse>(&body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| format!("HTTP {status}"));
                Err(ClientError::Api { status, message })
            }
            Err(e) => Err(ClientError::Transport {
                url: self.base.clone(),
                reason: e.to_string(),
            }),
        }
    }
}
