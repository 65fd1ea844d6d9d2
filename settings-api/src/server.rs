//! The API server: HTTP/1.1 over a Unix socket, dispatching on [`crate::api::ROUTES`].
//!
//! Readers take a snapshot of the live settings (an `Arc` behind a short read lock) and never
//! wait for writers. Writers (PATCH, commit, delete) are serialized by one async mutex and do
//! their file I/O on the blocking pool.

use crate::api::{self, Op};
use crate::datastore::{Datastore, DatastoreError};
use crate::key::{split_key_list, Key};
use crate::metadata::Metadata;
use crate::model::{typed_patch, ModelError, Settings};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use tracing::{debug, info, warn, Instrument};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Transaction used when the `tx` parameter is absent.
pub const DEFAULT_TX: &str = "default";

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("failed to open the datastore")]
    Datastore(#[from] DatastoreError),
    #[error("failed to load defaults")]
    Defaults(#[from] crate::defaults::DefaultsError),
    #[error("failed to load metadata")]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error("live settings in the datastore are invalid")]
    InvalidLive(#[source] ModelError),
    #[error("failed to bind {path}")]
    Bind {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("failed to set owner or mode of {path}")]
    SocketPerms {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// An error answered to a client as `{"error": ..., "key": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub key: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            key: None,
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            key: Some(e.key),
        }
    }
}

impl From<DatastoreError> for ApiError {
    fn from(e: DatastoreError) -> ApiError {
        match e {
            DatastoreError::TxName(_) => ApiError::bad(e.to_string()),
            DatastoreError::Invalid { tx, source } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("transaction '{tx}' would make live settings invalid: {source}"),
                key: Some(source.key),
            },
            other => {
                let mut message = other.to_string();
                let mut source = std::error::Error::source(&other);
                while let Some(s) = source {
                    message.push_str(": ");
                    message.push_str(&s.to_string());
                    source = s.source();
                }
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}

/// Committed settings as held in memory, with the serialized body of `GET /settings`.
#[derive(Debug)]
struct Snapshot {
    value: Value,
    body: Bytes,
}

impl Snapshot {
    fn new(value: Value) -> Arc<Snapshot> {
        let body = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Arc::new(Snapshot { value, body })
    }
}

/// Applies committed settings to the services they affect.
pub trait Applier: Send + Sync + std::fmt::Debug {
    /// `keys` changed; `services` are the services the metadata maps them to.
    fn apply(&self, keys: &[Key], services: &BTreeSet<String>);
}

/// Logs the services that need their configuration rendered and a restart. Rendering and
/// restarting through systemd's D-Bus API is the config renderer's job (a later issue).
#[derive(Debug, Default)]
pub struct LogApplier;

impl Applier for LogApplier {
    fn apply(&self, keys: &[Key], services: &BTreeSet<String>) {
        if !services.is_empty() {
            info!(keys = keys.len(), services = ?services, "applying settings");
        }
    }
}

/// Records every application, for tests.
#[derive(Debug, Default)]
pub struct RecordingApplier(pub std::sync::Mutex<Vec<BTreeSet<String>>>);

impl Applier for RecordingApplier {
    fn apply(&self, _keys: &[Key], services: &BTreeSet<String>) {
        if let Ok(mut log) = self.0.lock() {
            log.push(services.clone());
        }
    }
}

/// Server state shared by all connections.
#[derive(Debug)]
pub struct State {
    ds: Datastore,
    live: RwLock<Arc<Snapshot>>,
    writer: tokio::sync::Mutex<()>,
    metadata: Metadata,
    os: BTreeMap<String, String>,
    /// os-build's record of the external artifacts the image lacks, served in /os.
    missing_artifacts: Option<Value>,
    applier: Arc<dyn Applier>,
    /// Root of the host tree the CIS checks read.
    cis_root: std::path::PathBuf,
    /// boot-config's first-boot user data status file, served at /boot/user-data.
    user_data_status: Option<std::path::PathBuf>,
    /// What `POST /actions/reboot` does; 501 without one.
    rebooter: Option<Arc<dyn crate::reboot::Rebooter>>,
    /// Runs `berth-updater` for the update actions and status; 501 without one.
    updater: Option<crate::updates::Updater>,
    /// Live settings kept in quarantine (served in /os); `quarantined_now` when this start
    /// put them there.
    quarantines: Vec<crate::datastore::Quarantine>,
    quarantined_now: bool,
}

impl State {
    /// Opens the datastore, fills in defaults the live settings lack, and loads metadata.
    pub fn open(
        ds: Datastore,
        defaults: Option<Value>,
        metadata: Metadata,
        os: BTreeMap<String, String>,
    ) -> Result<State, ServerError> {
        // Live settings that cannot be used would make every start fail: keep them aside and
        // start from the defaults (boot-config then applies user data again).
        let unusable = match ds.live() {
            Ok(live) => match Settings::from_json(&live) {
                Ok(_) => Ok(live),
                Err(e) => Err(format!("the live settings are refused by the model: {e}")),
            },
            Err(DatastoreError::Corrupt { path, source }) => {
                Err(format!("{} is not valid JSON: {source}", path.display()))
            }
            Err(e) => return Err(e.into()),
        };
        let quarantined_now = unusable.is_err();
        let mut live = match unusable {
            Ok(live) => live,
            Err(reason) => {
                let q = ds.quarantine_live(&reason)?;
                tracing::error!(
                    file = %q.file.display(),
                    "datastore quarantined: {reason}; the settings start from the defaults and user data is applied again (the file is kept; see /os)"
                );
                Value::Object(Map::new())
            }
        };
        let quarantines = ds.quarantines();
        if let Some(defaults) = defaults {
            if crate::datastore::fill_missing(&mut live, &defaults) {
                Settings::from_json(&live).map_err(ServerError::InvalidLive)?;
                ds.set_live(&live)?;
                info!("stored defaults for settings that were not set");
            }
        }
        Ok(State {
            ds,
            live: RwLock::new(Snapshot::new(live)),
            writer: tokio::sync::Mutex::new(()),
            metadata,
            os,
            missing_artifacts: None,
            applier: Arc::new(LogApplier),
            cis_root: std::path::PathBuf::from("/"),
            user_data_status: None,
            rebooter: None,
            updater: None,
            quarantines,
            quarantined_now,
        })
    }

    /// Whether this start moved unusable live settings to quarantine.
    pub fn quarantined_now(&self) -> bool {
        self.quarantined_now
    }

    /// Replaces the applier (the default logs).
    /// Serves os-build's missing-artifacts record in `/os` (read once: it is on the read-only
    /// root, fixed for the life of the image).
    pub fn with_missing_artifacts(mut self, missing: Option<Value>) -> State {
        self.missing_artifacts = missing;
        self
    }

    pub fn with_applier(mut self, applier: Arc<dyn Applier>) -> State {
        self.applier = applier;
        self
    }

    /// Runs the CIS checks against `root` instead of `/`.
    pub fn with_cis_root(mut self, root: std::path::PathBuf) -> State {
        self.cis_root = root;
        self
    }

    /// Serves boot-config's user data status file at /boot/user-data.
    pub fn with_user_data_status(mut self, path: std::path::PathBuf) -> State {
        self.user_data_status = Some(path);
        self
    }

    /// Lets `POST /actions/reboot` reboot through `rebooter`.
    pub fn with_rebooter(mut self, rebooter: Arc<dyn crate::reboot::Rebooter>) -> State {
        self.rebooter = Some(rebooter);
        self
    }

    /// Lets the update actions and `/updates/status` run `updater`.
    pub fn with_updater(mut self, updater: crate::updates::Updater) -> State {
        self.updater = Some(updater);
        self
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.live.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn publish(&self, value: Value) {
        let snap = Snapshot::new(value);
        match self.live.write() {
            Ok(mut guard) => *guard = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
    }

    /// Runs a datastore write on the blocking pool while holding the writer lock.
    async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Datastore) -> Result<T, DatastoreError> + Send + 'static,
    {
        let _guard = self.writer.lock().await;
        self.blocking(f).await
    }

    /// Commits `tx` and publishes the new live snapshot under the writer lock, so that
    /// snapshots are published in commit order.
    async fn commit(&self, tx: String) -> Result<Vec<Key>, ApiError> {
        let _guard = self.writer.lock().await;
        let (changed, live) = self
            .blocking(move |ds| ds.commit(&tx, &|live| Settings::from_json(live).map(drop)))
            .await?;
        if !changed.is_empty() {
            self.publish(live);
        }
        Ok(changed)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Datastore) -> Result<T, DatastoreError> + Send + 'static,
    {
        let ds = self.ds.clone();
        tokio::task::spawn_blocking(move || f(&ds))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(ApiError::from)
    }
}

/// Parsed query string: last value wins for repeated names.
fn parse_query(query: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Ok(out)
}

/// Decodes `%XX` escapes and `+` (form encoding) into UTF-8 text.
pub fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad(format!("bad percent-escape in query '{s}'")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad(format!("query '{s}' is not UTF-8")))
}

/// Encodes a query value so that [`percent_decode`] returns it unchanged.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn tx_param(q: &BTreeMap<String, String>) -> String {
    q.get("tx")
        .filter(|t| !t.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_TX.to_string())
}

fn parse_keys(list: &str) -> Result<Vec<Key>, ApiError> {
    split_key_list(list)
        .iter()
        .map(|k| Key::parse_setting(k).map_err(|e| ApiError::bad(e.to_string())))
        .collect()
}

fn key_strings(keys: &[Key]) -> Value {
    Value::Array(
        keys.iter()
            .map(|k| Value::String(k.with_settings_prefix()))
            .collect(),
    )
}

/// Copies the values at `keys` out of `root` into a fresh nested object.
fn select(root: &Value, keys: &[Key]) -> Value {
    let mut out = Value::Object(Map::new());
    for key in keys {
        if let Some(v) = key.lookup(root) {
            crate::datastore::merge(&mut out, &key.nest(v.clone()));
        }
    }
    out
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn ok_json(value: &Value) -> Result<Response<Full<Bytes>>, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    ))
}

fn no_content() -> Result<Response<Full<Bytes>>, ApiError> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut body = json!({"error": e.message});
    if let Some(key) = &e.key {
        body["key"] = json!(key);
    }
    json_response(
        e.status,
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
}

fn parse_json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not JSON: {e}")))
}

/// Time between answering `POST /actions/reboot` and asking systemd to reboot, so the
/// response reaches the client first.
const REBOOT_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

fn not_implemented(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("{what} is not implemented in this release of Berth (see settings-api/README.md)"),
    )
}

fn updates_not_configured() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "updates are not configured on this host",
    )
}

impl From<crate::updates::UpdatesError> for ApiError {
    fn from(e: crate::updates::UpdatesError) -> ApiError {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        ApiError {
            status: e.status(),
            key: e.key(),
            message,
        }
    }
}

/// Handles one HTTP request: reads the body (at most [`MAX_BODY`] bytes), then [`respond`]s.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let err = if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::bad(format!("failed to read request body: {e}"))
            };
            return error_response(&err);
        }
    };
    respond(
        &state,
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        body,
    )
    .await
}

/// Answers a request given as parts; the entry point for tests and the fuzz target.
pub async fn respond(
    state: &Arc<State>,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let span = tracing::debug_span!("request", %method, %path);
    async move {
        let resp = match api::find(method, path) {
            Ok(route) => match dispatch(state, route.op, query, body).await {
                Ok(resp) => resp,
                Err(e) => {
                    if e.status.is_server_error() && e.status != StatusCode::NOT_IMPLEMENTED {
                        warn!(status = %e.status, "{}", e.message);
                    } else {
                        debug!(status = %e.status, "{}", e.message);
                    }
                    error_response(&e)
                }
            },
            Err(allowed) if allowed.is_empty() => error_response(&ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such path '{path}'"),
            )),
            Err(allowed) => {
                let mut resp = error_response(&ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!(
                        "method {method} is not allowed on {path}; use {}",
                        allowed.join(", ")
                    ),
                ));
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    resp.headers_mut().insert(ALLOW, v);
                }
                resp
            }
        };
        debug!(status = %resp.status(), "done");
        resp
    }
    .instrument(span)
    .await
}

async fn dispatch(
    state: &Arc<State>,
    op: Op,
    query: Option<&str>,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let q = parse_query(query)?;
    match op {
        Op::GetSettings => {
            let snap = state.snapshot();
            if let Some(keys) = q.get("keys") {
                ok_json(&select(&snap.value, &parse_keys(keys)?))
            } else if let Some(prefix) = q.get("prefix").filter(|p| !p.is_empty()) {
                let prefix =
                    Key::parse_setting(prefix).map_err(|e| ApiError::bad(e.to_string()))?;
                if prefix.segments() == ["settings"] {
                    return Ok(json_response(StatusCode::OK, snap.body.clone()));
                }
                ok_json(&select(&snap.value, &[prefix]))
            } else {
                Ok(json_response(StatusCode::OK, snap.body.clone()))
            }
        }
        Op::GetModel => {
            let snap = state.snapshot();
            let model = json!({
                "settings": snap.value,
                "os": state.os,
                "services": state.metadata.services,
                "configuration-files": state.metadata.configuration_files,
            });
            match q.get("prefix").filter(|p| !p.is_empty()) {
                Some(prefix) => {
                    let key = Key::parse(prefix).map_err(|e| ApiError::bad(e.to_string()))?;
                    ok_json(&select(&model, &[key]))
                }
                None => ok_json(&model),
            }
        }
        Op::PatchSettings => {
            let tx = tx_param(&q);
            crate::datastore::check_tx_name(&tx)?;
            let body = parse_json_body(&body)?;
            if !body.is_object() {
                return Err(ApiError::bad(
                    "request body must be a JSON object of settings, e.g. {\"motd\": \"hi\"}",
                ));
            }
            let patch = Settings::canonicalize(&body)?;
            state.write(move |ds| ds.patch_pending(&tx, &patch)).await?;
            no_content()
        }
        Op::PatchKeypair => {
            let tx = tx_param(&q);
            crate::datastore::check_tx_name(&tx)?;
            let body = parse_json_body(&body)?;
            let pairs = body.as_object().ok_or_else(|| {
                ApiError::bad("request body must be a JSON object {\"dotted.key\": \"value\"}")
            })?;
            let mut patch = Value::Object(Map::new());
            for (key, raw) in pairs {
                let parsed = Key::parse_setting(key).map_err(|e| ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: e.to_string(),
                    key: Some(key.clone()),
                })?;
                let raw = match raw {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                crate::datastore::merge(&mut patch, &typed_patch(&parsed, &raw)?);
            }
            let patch = Settings::canonicalize(&patch)?;
            state.write(move |ds| ds.patch_pending(&tx, &patch)).await?;
            no_content()
        }
        Op::GetTx => {
            let tx = tx_param(&q);
            let ds = state.ds.clone();
            let pending = tokio::task::spawn_blocking(move || ds.pending(&tx))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
            ok_json(&pending)
        }
        Op::DeleteTx => {
            let tx = tx_param(&q);
            let keys = state.write(move |ds| ds.delete_tx(&tx)).await?;
            ok_json(&key_strings(&keys))
        }
        Op::ListTx => {
            let ds = state.ds.clone();
            let list = tokio::task::spawn_blocking(move || ds.list_tx())
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
            ok_json(&json!(list))
        }
        Op::CommitTx | Op::CommitAndApplyTx => {
            let tx = tx_param(&q);
            let span_tx = tx.clone();
            let changed = state.commit(tx).await?;
            info!(tx = %span_tx, changed = changed.len(), "committed");
            if op == Op::CommitAndApplyTx {
                apply(state, &changed);
            }
            ok_json(&key_strings(&changed))
        }
        Op::ApplyTx => {
            let keys = match q.get("keys") {
                Some(list) => parse_keys(list)?,
                None => leaf_keys(&state.snapshot().value),
            };
            apply(state, &keys);
            no_content()
        }
        Op::GetOs => {
            let mut os = json!(state.os);
            if let Some(missing) = &state.missing_artifacts {
                os["missing_artifacts"] = missing.clone();
            }
            if !state.quarantines.is_empty() {
                os["datastore_quarantine"] = json!(state.quarantines);
            }
            // Read per request: the firmware's state and the lockdown mode are live facts.
            let host = cis::HostRoot::new(&state.cis_root);
            os["secure_boot"] = json!(cis::platform::secure_boot(&host));
            os["lockdown"] =
                json!(cis::platform::lockdown(&host).unwrap_or_else(|| "unsupported".into()));
            ok_json(&os)
        }
        Op::UserDataStatus => {
            let missing = || {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "user data has not been handled yet (boot-config userdata runs at first boot)",
                )
            };
            let path = state.user_data_status.clone().ok_or_else(missing)?;
            let text = tokio::fs::read(&path).await.map_err(|_| missing())?;
            let value: Value = serde_json::from_slice(&text).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{} is not JSON: {e}", path.display()),
                )
            })?;
            ok_json(&value)
        }
        Op::AffectedServices => {
            let list = q
                .get("keys")
                .ok_or_else(|| ApiError::bad("missing required query parameter 'keys'"))?;
            let mut out = Map::new();
            for (raw, key) in split_key_list(list).iter().zip(parse_keys(list)?) {
                let services: Vec<String> =
                    state.metadata.affected_services(&key).into_iter().collect();
                let name = if raw.starts_with("settings.") {
                    raw.clone()
                } else {
                    key.with_settings_prefix()
                };
                out.insert(name, json!(services));
            }
            ok_json(&Value::Object(out))
        }
        Op::Services => ok_json(&pick(&state.metadata.services, q.get("names"), "service")?),
        Op::ConfigurationFiles => ok_json(&pick(
            &state.metadata.configuration_files,
            q.get("names"),
            "configuration file",
        )?),
        Op::Reboot => {
            let Some(rebooter) = state.rebooter.clone() else {
                return Err(not_implemented("reboot (apiserver runs without --reboot)"));
            };
            // Answer first: the reboot starts once the response is on its way.
            std::thread::spawn(move || {
                std::thread::sleep(REBOOT_DELAY);
                if let Err(e) = rebooter.reboot() {
                    tracing::error!("reboot failed: {e:#}");
                }
            });
            info!("reboot requested");
            no_content()
        }
        Op::RefreshUpdates
        | Op::PrepareUpdate
        | Op::ActivateUpdate
        | Op::DeactivateUpdate
        | Op::RollbackToInactive
        | Op::ResetUpdateClock => {
            use crate::updates::Action;
            let updater = state.updater.as_ref().ok_or_else(updates_not_configured)?;
            let action = match op {
                Op::RefreshUpdates => Action::Check,
                Op::PrepareUpdate => Action::Prepare,
                Op::ActivateUpdate => Action::Activate,
                Op::RollbackToInactive => Action::Rollback,
                Op::ResetUpdateClock => Action::ResetClock,
                _ => Action::Deactivate,
            };
            // The updater takes its inputs from the live settings as they are now.
            let settings = Settings::from_json(&state.snapshot().value).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("live settings are invalid: {e}"),
                )
            })?;
            updater.run(action, settings.updates.as_ref()).await?;
            no_content()
        }
        Op::UpdateStatus => {
            let updater = state.updater.as_ref().ok_or_else(updates_not_configured)?;
            ok_json(&updater.status().await?)
        }
        Op::ReportCis | Op::ReportCisK8s => cis_report(state, op, &q).await,
    }
}

/// Runs the CIS checks on the blocking pool and answers the report as text or JSON.
async fn cis_report(
    state: &Arc<State>,
    op: Op,
    q: &BTreeMap<String, String>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let default = if op == Op::ReportCisK8s {
        cis::Benchmark::Kubernetes
    } else {
        cis::Benchmark::Bottlerocket
    };
    let benchmark = match q.get("type") {
        None => default,
        Some(t) => cis::Benchmark::parse(t)
            .filter(|b| op == Op::ReportCis || *b == default)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "query parameter 'type' must be bottlerocket or kubernetes, not '{t}'"
                ))
            })?,
    };
    let level = match q.get("level").map(String::as_str) {
        None | Some("1") => 1,
        Some("2") => 2,
        Some(l) => {
            return Err(ApiError::bad(format!(
                "query parameter 'level' must be 1 or 2, not '{l}'"
            )))
        }
    };
    let format = match q.get("format") {
        None => cis::Format::Text,
        Some(f) => cis::Format::parse(f).ok_or_else(|| {
            ApiError::bad(format!(
                "query parameter 'format' must be text or json, not '{f}'"
            ))
        })?,
    };
    let root = state.cis_root.clone();
    let report = tokio::task::spawn_blocking(move || {
        cis::Report::run(
            benchmark,
            level,
            &cis::HostRoot::new(root),
            std::time::SystemTime::now(),
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let body = report
        .render(format)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let content_type = match format {
        cis::Format::Text => "text/plain; charset=utf-8",
        cis::Format::Json => "application/json",
    };
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

fn pick<T: serde::Serialize>(
    all: &BTreeMap<String, T>,
    names: Option<&String>,
    what: &str,
) -> Result<Value, ApiError> {
    let Some(names) = names else {
        return Ok(json!(all));
    };
    let mut out = Map::new();
    for name in names.split(',').filter(|n| !n.is_empty()) {
        let item = all.get(name).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("no {what} named '{name}'"))
        })?;
        out.insert(name.to_string(), json!(item));
    }
    Ok(Value::Object(out))
}

/// All leaf keys of `value`.
fn leaf_keys(value: &Value) -> Vec<Key> {
    crate::datastore::changed_keys(&Value::Null, value)
}

/// Applies changed keys: the services they affect, from the metadata, go to the applier.
fn apply(state: &State, keys: &[Key]) {
    let services: BTreeSet<String> = keys
        .iter()
        .flat_map(|k| state.metadata.affected_services(k))
        .collect();
    state.applier.apply(keys, &services);
}

/// Tells systemd the server is ready when `NOTIFY_SOCKET` is set.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            warn!("sd_notify: cannot create socket: {e}");
            return;
        }
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name,
        )
        .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = result {
        warn!("sd_notify READY=1 failed: {e}");
    }
}

/// Resolves a group given as a number or as a name in the `group(5)` file at `group_file`.
pub fn resolve_gid(group: &str, group_file: &std::path::Path) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let text = std::fs::read_to_string(group_file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?;
        (name == group).then(|| gid.parse().ok()).flatten()
    })
}

/// Binds the socket (replacing a stale one), sets mode 0660 and the optional group.
pub fn bind(
    path: &std::path::Path,
    gid: Option<u32>,
) -> Result<tokio::net::UnixListener, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let perms_err = |source| ServerError::SocketPerms {
        path: path.to_path_buf(),
        source,
    };
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(perms_err)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(perms_err)?;
    Ok(listener)
}

/// Serves connections forever.
pub async fn serve(listener: tokio::net::UnixListener, state: Arc<State>) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                debug!("connection ended: {e}");
            }
        });
    }
}

/// Reads os-build's missing-artifacts record (a JSON list); `None` when the image has every
/// artifact (no file). A file that is not JSON is reported as such rather than hidden.
pub fn missing_artifacts(path: &std::path::Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| {
        warn!(path = %path.display(), error = %e, "missing-artifacts record is not JSON");
        json!([{"name": "unknown", "path": path.display().to_string(), "reason": format!("unreadable record: {e}")}])
    }))
}

/// Reads an os-release file into the `/os` map.
pub fn os_info(os_release: &std::path::Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(os_release) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let k = k.trim().to_ascii_lowercase();
                if matches!(
                    k.as_str(),
                    "pretty_name" | "variant_id" | "version_id" | "build_id" | "id"
                ) {
                    out.insert(k, v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    out.insert("arch".into(), std::env::consts::ARCH.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn test_state(dir: &std::path::Path) -> Arc<State> {
        let ds = Datastore::open(dir).unwrap();
        Arc::new(State::open(ds, None, Metadata::default(), BTreeMap::new()).unwrap())
    }

    #[test]
    fn user_data_status_is_served_when_boot_config_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("user-data.json");
        let ds = Datastore::open(dir.path().join("ds")).unwrap();
        let state = Arc::new(
            State::open(ds, None, Metadata::default(), BTreeMap::new())
                .unwrap()
                .with_user_data_status(status.clone()),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let get = || {
            rt.block_on(respond(
                &state,
                "GET",
                "/boot/user-data",
                None,
                Bytes::new(),
            ))
        };
        assert_eq!(get().status(), StatusCode::NOT_FOUND);
        std::fs::write(
            &status,
            r#"{"state": "invalid", "source": "fw_cfg", "key": "settings.motd", "error": "bad"}"#,
        )
        .unwrap();
        let resp = get();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = rt
            .block_on(http_body_util::BodyExt::collect(resp.into_body()))
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["key"], "settings.motd");
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("GET".to_string()),
            Just("PATCH".to_string()),
            Just("POST".to_string()),
            Just("DELETE".to_string()),
            "[A-Z]{1,7}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        let known: Vec<String> = api::ROUTES.iter().map(|r| r.path.to_string()).collect();
        prop_oneof![prop::sample::select(known), "/[a-z/_-]{0,20}"]
    }

    fn query() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "tx=[a-z0-9._/-]{0,10}",
            "keys=[a-z.,\"%-]{0,30}",
            "prefix=[a-z.\"%-]{0,20}",
            ".{0,30}",
        ])
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(br#"{"motd": "hi", "kubernetes": {"max-pods": 10}}"#.to_vec()),
            r#"\{"(motd|kubernetes|ntp|network|updates)": .{0,30}\}"#.prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Route fuzzing in CI (the cargo-fuzz target under fuzz/ does the same, unbounded):
        /// no input makes the server fail internally or store settings the model rejects.
        #[test]
        fn any_request_is_answered_and_live_stays_valid(
            reqs in prop::collection::vec((method(), path(), query(), body()), 1..6)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let state = test_state(dir.path());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            for (m, p, q, b) in reqs {
                let resp = rt.block_on(respond(&state, &m, &p, q.as_deref(), Bytes::from(b)));
                let status = resp.status();
                prop_assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{m} {p} {q:?}: 500");
                prop_assert!(status.as_u16() < 600);
                prop_assert!(Settings::from_json(&state.snapshot().value).is_ok());
                prop_assert!(Settings::from_json(&state.ds.live().unwrap()).is_ok());
            }
        }
    }

    /// Counts reboots and notes whether the answer was built before the reboot ran.
    #[derive(Debug, Default)]
    struct CountingRebooter(std::sync::atomic::AtomicUsize);

    impl crate::reboot::Rebooter for CountingRebooter {
        fn reboot(&self) -> anyhow::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn reboot_answers_204_then_reboots_once() {
        let dir = tempfile::tempdir().unwrap();
        let rebooter = Arc::new(CountingRebooter::default());
        let ds = Datastore::open(dir.path()).unwrap();
        let state = Arc::new(
            State::open(ds, None, Metadata::default(), BTreeMap::new())
                .unwrap()
                .with_rebooter(rebooter.clone()),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resp = rt.block_on(respond(
            &state,
            "POST",
            "/actions/reboot",
            None,
            Bytes::new(),
        ));
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            rebooter.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the answer comes before the reboot"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rebooter.0.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no reboot within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(REBOOT_DELAY * 2);
        assert_eq!(rebooter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Without a rebooter the action says it is not available.
        let plain = test_state(dir.path());
        let resp = rt.block_on(respond(
            &plain,
            "POST",
            "/actions/reboot",
            None,
            Bytes::new(),
        ));
        assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn commit_and_apply_hands_the_affected_services_to_the_applier() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::parse(
            "[affected-services]\n\"ntp\" = [\"chronyd\"]\n[services.chronyd]\n",
            std::path::Path::new("t"),
        )
        .unwrap();
        let recorder = Arc::new(RecordingApplier::default());
        let state = Arc::new(
            State::open(
                Datastore::open(dir.path()).unwrap(),
                None,
                md,
                BTreeMap::new(),
            )
            .unwrap()
            .with_applier(recorder.clone()),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let call = |m: &str, p: &str, q: Option<&str>, b: &str| {
            rt.block_on(respond(&state, m, p, q, Bytes::from(b.to_string())))
                .status()
        };
        let patch = r#"{"ntp": {"time-servers": ["a.example.com"]}, "motd": "x"}"#;
        assert_eq!(
            call("PATCH", "/settings", Some("tx=a"), patch),
            StatusCode::NO_CONTENT
        );
        assert_eq!(call("POST", "/tx/commit", Some("tx=a"), ""), StatusCode::OK);
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "commit alone applies nothing"
        );
        assert_eq!(
            call(
                "POST",
                "/tx/apply",
                Some("keys=settings.ntp.time-servers"),
                ""
            ),
            StatusCode::NO_CONTENT
        );
        let patch = r#"{"ntp": {"time-servers": ["b.example.com"]}}"#;
        assert_eq!(
            call("PATCH", "/settings", Some("tx=b"), patch),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call("POST", "/tx/commit_and_apply", Some("tx=b"), ""),
            StatusCode::OK
        );
        let chronyd = BTreeSet::from(["chronyd".to_string()]);
        assert_eq!(*recorder.0.lock().unwrap(), vec![chronyd.clone(), chronyd]);
    }

    #[test]
    fn groups_resolve_by_number_or_name() {
        let dir = tempfile::tempdir().unwrap();
        let group = dir.path().join("group");
        std::fs::write(&group, "root:x:0:\napi:x:274:\n").unwrap();
        assert_eq!(resolve_gid("274", &group), Some(274));
        assert_eq!(resolve_gid("api", &group), Some(274));
        assert_eq!(resolve_gid("nope", &group), None);
    }

    #[test]
    fn percent_round_trip() {
        let s = r#"kubernetes.node-labels."a.b/c d",motd"#;
        assert_eq!(percent_decode(&percent_encode(s)).unwrap(), s);
        assert!(percent_decode("%zz").is_err());
    }

    #[test]
    fn select_copies_nested_keys() {
        let live = json!({"motd": "m", "kubernetes": {"max-pods": 3, "cluster-name": "c"}});
        let keys = parse_keys("settings.kubernetes.max-pods,motd,nope").unwrap();
        assert_eq!(
            select(&live, &keys),
            json!({"motd": "m", "kubernetes": {"max-pods": 3}})
        );
    }
}
