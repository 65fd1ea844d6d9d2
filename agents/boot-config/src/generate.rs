//! Setting generators: values derived at boot (host name, node IP, instance facts from IMDS),
//! stored like any other setting, after user data and before rendering, at every boot.
//!
//! A generator only writes a key it owns: one that is unset, or whose live value is one this
//! step wrote before (recorded in `/private/boot-config/generated.json`). A key set any other
//! way — user data, `apiclient set` — belongs to the user and is never touched again, even
//! when the generator would now produce something else. Setting a key to exactly the value
//! the generator wrote cannot be told apart from not setting it (the value is the same).
//!
//! | key | aws | elsewhere | when |
//! |---|---|---|---|
//! | `network.hostname` | IMDS `local-hostname` (first name) | kernel host name, or `berth-<machine id, 12 hex>` when it is `localhost`/unset | always |
//! | `aws.region` | IMDS `placement/region` (identity document as fallback) | - | aws |
//! | `kubernetes.node-ip` | IMDS `local-ipv4`; on an IPv6 cluster (`kubernetes.ip-family`, else `kubernetes.service-cidr`) the first `ipv6s` of the primary interface | address of the interface of the default route | `settings.kubernetes` exists |
//! | `kubernetes.provider-id` | `aws:///<availability zone>/<instance id>` | - | aws and `settings.kubernetes` exists |
//! | `updates.seed` | random in `0..2048`, drawn once | the same | always |
//!
//! The update seed places the host in the update waves. Unlike the host facts it is drawn
//! once, at the first boot that finds it unset, and then kept (while this step owns it):
//! redrawing at every boot would move the host between waves.
//!
//! All generated values of one boot go in one transaction (`boot-config-generate`). A value
//! the model rejects is logged and left out; a generator that fails (metadata service down)
//! is logged and its key keeps its value.

use crate::imds::{Imds, Retry};
use crate::platform::{Detected, Platform};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The transaction generated values are stored in.
pub const TX: &str = "boot-config-generate";
/// How long to wait for a default route when deriving the node IP off AWS.
const ROUTE_WAIT: Duration = Duration::from_secs(10);

/// What the generators did, stored as JSON (the ownership record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub platform: String,
    /// Per key, the values this step wrote (the last two: the previous boot's and this
    /// boot's), so a crash between recording and committing cannot make a key look user-set.
    #[serde(default)]
    pub generated: BTreeMap<String, Vec<Value>>,
    /// Keys left alone because the user set them.
    #[serde(default)]
    pub user_set: Vec<String>,
    /// Keys whose generator failed, with the reason.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
}

/// Where facts come from.
#[derive(Debug)]
pub struct Facts {
    pub root: PathBuf,
    pub platform: Detected,
    pub imds_endpoint: String,
    pub imds_retry: Retry,
    imds: Option<Imds>,
}

impl Facts {
    pub fn new(root: PathBuf, platform: Detected, imds_endpoint: String, retry: Retry) -> Facts {
        Facts {
            root,
            platform,
            imds_endpoint,
            imds_retry: retry,
            imds: None,
        }
    }

    fn imds(&mut self) -> Result<&mut Imds> {
        if self.imds.is_none() {
            self.imds = Some(Imds::new(&self.imds_endpoint, self.imds_retry)?);
        }
        Ok(self.imds.as_mut().expect("set just above"))
    }

    fn meta(&mut self, item: &str) -> Result<Option<String>> {
        let endpoint = self.imds_endpoint.clone();
        self.imds()?
            .meta_data(item)
            .with_context(|| format!("cannot read meta-data/{item} from {endpoint}"))
    }

    fn is_aws(&self) -> bool {
        self.platform.platform == Platform::Aws
    }

    fn hostname(&mut self) -> Result<Option<String>> {
        if self.is_aws() {
            let name = self.meta("local-hostname")?;
            return Ok(name.and_then(|n| n.split_whitespace().next().map(str::to_string)));
        }
        let kernel =
            std::fs::read_to_string(self.root.join("proc/sys/kernel/hostname")).unwrap_or_default();
        let kernel = kernel.trim();
        if !matches!(
            kernel,
            "" | "(none)" | "localhost" | "localhost.localdomain"
        ) {
            return Ok(Some(kernel.to_string()));
        }
        let id = std::fs::read_to_string(self.root.join("etc/machine-id"))
            .context("cannot read /etc/machine-id to derive a host name")?;
        let id = id.trim();
        if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("/etc/machine-id is not a machine id: {id:?}");
        }
        Ok(Some(format!("berth-{}", &id[..12])))
    }

    fn region(&mut self) -> Result<Option<String>> {
        if let Some(region) = self.meta("placement/region")? {
            return Ok(Some(region));
        }
        let doc = self.imds()?.identity_document()?;
        Ok(doc.and_then(|d| d["region"].as_str().map(str::to_string)))
    }

    fn node_ip(&mut self) -> Result<Option<String>> {
        if self.is_aws() {
            return self.meta("local-ipv4");
        }
        primary_address(ROUTE_WAIT).map(|a| a.map(|ip| ip.to_string()))
    }

    /// The node IP of an IPv6 cluster: the first IPv6 address of the primary interface, as
    /// nodeadm picks it.
    fn node_ipv6(&mut self) -> Result<Option<String>> {
        let Some(mac) = self.meta("mac")? else {
            return Ok(None);
        };
        let ips = self.meta(&format!("network/interfaces/macs/{}/ipv6s", mac.trim()))?;
        Ok(ips.and_then(|v| v.split_whitespace().next().map(str::to_string)))
    }

    fn provider_id(&mut self) -> Result<Option<String>> {
        let az = self.meta("placement/availability-zone")?;
        let id = self.meta("instance-id")?;
        Ok(match (az, id) {
            (Some(az), Some(id)) => Some(format!("aws:///{az}/{id}")),
            _ => None,
        })
    }
}

/// The source address the kernel picks for the default route, without sending anything:
/// connecting a UDP socket only selects a route. Waits up to `wait` for one (DHCP).
fn primary_address(wait: Duration) -> Result<Option<std::net::IpAddr>> {
    let start = Instant::now();
    loop {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").context("cannot open a UDP socket")?;
        // TEST-NET-1: never routed anywhere special, so the default route is what matches.
        if sock.connect("192.0.2.1:9").is_ok() {
            let ip = sock.local_addr().context("UDP socket has no address")?.ip();
            if !ip.is_unspecified() {
                return Ok(Some(ip));
            }
        }
        if start.elapsed() >= wait {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Upper bound (exclusive) of `updates.seed`: the updater's waves cover seeds `0..2048`.
pub const SEED_BOUND: u32 = 2048;

#[derive(Debug, Clone, Copy)]
enum Generator {
    /// A host fact, derived again at every boot.
    Fact(fn(&mut Facts) -> Result<Option<String>>),
    /// A random integer in `0..bound`, drawn when the key is unset and kept afterwards.
    RandomOnce(u32),
}

impl Generator {
    /// The value to store, given the key's current value (only ever one this step wrote).
    fn generate(self, facts: &mut Facts, current: Option<&Value>) -> Result<Option<Value>> {
        match self {
            Generator::Fact(fact) => Ok(fact(facts)?.map(Value::String)),
            Generator::RandomOnce(bound) => Ok(Some(match current {
                Some(kept) => kept.clone(),
                None => Value::from(rand::Rng::gen_range(&mut rand::thread_rng(), 0..bound)),
            })),
        }
    }
}

/// Which generators apply to this host.
fn generators(facts: &Facts, live: &Value) -> Vec<(&'static str, Generator)> {
    let kubernetes = live.get("kubernetes").is_some();
    let aws = facts.is_aws();
    let mut out: Vec<(&'static str, Generator)> = vec![
        ("network.hostname", Generator::Fact(Facts::hostname)),
        ("updates.seed", Generator::RandomOnce(SEED_BOUND)),
    ];
    if aws {
        out.push(("aws.region", Generator::Fact(Facts::region)));
    }
    if kubernetes {
        let node_ip = if aws && ipv6_cluster(live) {
            Facts::node_ipv6
        } else {
            Facts::node_ip
        };
        out.push(("kubernetes.node-ip", Generator::Fact(node_ip)));
    }
    if kubernetes && aws {
        out.push((
            "kubernetes.provider-id",
            Generator::Fact(Facts::provider_id),
        ));
    }
    out
}

/// Whether the live settings describe an IPv6 cluster (the settings model's rule: the
/// `ip-family`, else the service CIDR's). Settings that contradict each other count as IPv4
/// here; the cluster agent refuses them, naming both keys.
fn ipv6_cluster(live: &Value) -> bool {
    live.get("kubernetes")
        .and_then(|k| serde_json::from_value::<settings_api::model::Kubernetes>(k.clone()).ok())
        .and_then(|k| k.cluster_ip_family().ok().flatten())
        == Some(settings_api::model::IpFamily::Ipv6)
}

fn lookup<'a>(settings: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(settings, |v, seg| v.get(seg))
}

fn insert(settings: &mut Value, key: &str, value: Value) {
    let mut v = settings;
    let segs: Vec<&str> = key.split('.').collect();
    for seg in &segs[..segs.len() - 1] {
        v = v
            .as_object_mut()
            .expect("generated keys only descend into tables")
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    v.as_object_mut()
        .expect("generated keys only descend into tables")
        .insert(segs[segs.len() - 1].to_string(), value);
}

/// Works out what to store: `(patch, new status)`. `live` is `GET /settings`; `previous` the
/// status of the last run.
pub fn plan(facts: &mut Facts, live: &Value, previous: &Status) -> (Value, Status) {
    let mut patch = Value::Object(Default::default());
    let mut status = Status {
        platform: format!("{} ({})", facts.platform.platform, facts.platform.reason),
        ..Status::default()
    };
    for (key, generator) in generators(facts, live) {
        let current = lookup(live, key);
        let written = previous.generated.get(key);
        let owned = match current {
            None => true,
            Some(v) => written.is_some_and(|w| w.contains(v)),
        };
        if !owned {
            // marker: qemu-tests/src/markers.rs
            tracing::info!(key, "set by the user; not generated");
            status.user_set.push(key.to_string());
            continue;
        }
        let keep_record = |status: &mut Status| {
            if let (Some(w), Some(_)) = (written, current) {
                status.generated.insert(key.to_string(), w.clone());
            }
        };
        let value = match generator.generate(facts, current) {
            Ok(Some(v)) => v,
            Ok(None) => {
                tracing::info!(key, "nothing to generate");
                keep_record(&mut status);
                continue;
            }
            Err(e) => {
                tracing::warn!(key, "generator failed: {e:#}");
                status.errors.insert(key.to_string(), format!("{e:#}"));
                keep_record(&mut status);
                continue;
            }
        };
        let mut one = Value::Object(Default::default());
        insert(&mut one, key, value.clone());
        if let Err(e) = settings_api::model::Settings::from_json(&one) {
            tracing::warn!(key, %value, "generated value rejected by the model: {e}");
            status.errors.insert(key.to_string(), e.to_string());
            keep_record(&mut status);
            continue;
        }
        let mut record: Vec<Value> = current
            .filter(|c| **c != value)
            .cloned()
            .into_iter()
            .collect();
        record.push(value.clone());
        status.generated.insert(key.to_string(), record);
        if current != Some(&value) {
            tracing::info!(key, %value, "generated");
            insert(&mut patch, key, value);
        } else {
            tracing::info!(key, %value, "generated value unchanged");
        }
    }
    (patch, status)
}

/// Runs the generators against the API at `socket`.
pub fn run(socket: &Path, facts: &mut Facts, status_file: &Path) -> Result<()> {
    tracing::info!(
        platform = %facts.platform.platform,
        reason = %facts.platform.reason,
        "generating settings"
    );
    let live = crate::get_settings(socket)?;
    let previous: Status = match std::fs::read(status_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %status_file.display(), "ignoring unreadable generator record: {e}");
            Status::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Status::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", status_file.display())),
    };
    let (patch, status) = plan(facts, &live, &previous);
    // Record first: a crash before the commit leaves keys the record still calls ours.
    crate::write_json_durably(status_file, &status)?;
    if patch.as_object().is_some_and(|o| !o.is_empty()) {
        let body = serde_json::to_vec(&patch).expect("a JSON value serializes");
        crate::api(socket, "DELETE", &format!("/tx?tx={TX}"), None)
            .context("cannot clear the generator transaction")?;
        crate::api(socket, "PATCH", &format!("/settings?tx={TX}"), Some(body))
            .context("cannot store generated settings")?;
        crate::api(socket, "POST", &format!("/tx/commit?tx={TX}"), None)
            .context("cannot commit generated settings")?;
    }
    tracing::info!(
        generated = status.generated.len(),
        user_set = status.user_set.len(),
        errors = status.errors.len(),
        "settings generated"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(root: &Path, platform: Platform) -> Facts {
        Facts::new(
            root.to_owned(),
            Detected {
                platform,
                reason: "test".into(),
            },
            // Nothing listens there: IMDS generators fail at once.
            "127.0.0.1:1".into(),
            Retry {
                request_timeout: Duration::from_millis(100),
                first_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                total: Duration::from_millis(5),
            },
        )
    }

    fn host(hostname: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("proc/sys/kernel/hostname"),
            format!("{hostname}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        dir
    }

    /// The patch without the update seed a first run draws, checked to be in range.
    fn facts_only(mut patch: Value) -> Value {
        let top = patch.as_object_mut().unwrap();
        if let Some(updates) = top.get_mut("updates").and_then(Value::as_object_mut) {
            let seed = updates.remove("seed").and_then(|s| s.as_u64()).unwrap();
            assert!(seed < u64::from(SEED_BOUND), "seed {seed}");
            if updates.is_empty() {
                top.remove("updates");
            }
        }
        patch
    }

    #[test]
    fn the_update_seed_is_drawn_once_and_kept() {
        let d = host("node-7");
        let (patch, status) = plan(
            &mut facts(d.path(), Platform::Qemu),
            &json!({}),
            &Status::default(),
        );
        let seed = patch["updates"]["seed"].clone();
        assert!(seed.as_u64().is_some_and(|s| s < 2048), "{seed}");
        assert_eq!(
            status.generated["updates.seed"],
            std::slice::from_ref(&seed)
        );
        // The model takes it (an integer, not a string).
        settings_api::model::Settings::from_json(&patch).unwrap();
        // Next boot: ours, so kept as it is, not drawn again.
        let live = json!({"network": {"hostname": "node-7"}, "updates": {"seed": seed}});
        for _ in 0..5 {
            let (patch, again) = plan(&mut facts(d.path(), Platform::Qemu), &live, &status);
            assert_eq!(patch, json!({}), "nothing changes");
            assert_eq!(again.generated["updates.seed"], std::slice::from_ref(&seed));
        }
        // A seed from user data is the user's.
        let live = json!({"updates": {"seed": 2047}});
        let (patch, status) = plan(
            &mut facts(d.path(), Platform::Qemu),
            &live,
            &Status::default(),
        );
        assert!(patch.get("updates").is_none(), "{patch}");
        assert!(status.user_set.contains(&"updates.seed".to_string()));
        // Draws spread over the range (64 draws all below 1024 would be a broken draw).
        let draws: Vec<u64> = (0..64)
            .map(|_| {
                let (patch, _) = plan(
                    &mut facts(d.path(), Platform::Qemu),
                    &json!({}),
                    &Status::default(),
                );
                patch["updates"]["seed"].as_u64().unwrap()
            })
            .collect();
        assert!(draws.iter().any(|s| *s >= 1024), "{draws:?}");
    }

    #[test]
    fn hostname_off_aws_from_kernel_or_machine_id() {
        let d = host("node-7");
        let (patch, status) = plan(
            &mut facts(d.path(), Platform::Qemu),
            &json!({}),
            &Status::default(),
        );
        assert_eq!(
            facts_only(patch),
            json!({"network": {"hostname": "node-7"}})
        );
        assert_eq!(status.generated["network.hostname"], [json!("node-7")]);
        let d = host("localhost");
        let (patch, _) = plan(
            &mut facts(d.path(), Platform::Metal),
            &json!({}),
            &Status::default(),
        );
        assert_eq!(
            facts_only(patch),
            json!({"network": {"hostname": "berth-0123456789ab"}})
        );
    }

    #[test]
    fn user_values_win_and_generated_ones_follow_the_host() {
        let d = host("node-7");
        // Set by user data (not in the record): left alone.
        let live = json!({"network": {"hostname": "mine"}});
        let (patch, status) = plan(
            &mut facts(d.path(), Platform::Qemu),
            &live,
            &Status::default(),
        );
        assert_eq!(facts_only(patch), json!({}));
        assert_eq!(status.user_set, ["network.hostname"]);
        assert!(!status.generated.contains_key("network.hostname"));
        // Generated before, host name changed since: regenerated.
        let previous = Status {
            generated: BTreeMap::from([("network.hostname".to_string(), vec![json!("old")])]),
            ..Status::default()
        };
        let live = json!({"network": {"hostname": "old"}});
        let (patch, status) = plan(&mut facts(d.path(), Platform::Qemu), &live, &previous);
        assert_eq!(
            facts_only(patch),
            json!({"network": {"hostname": "node-7"}})
        );
        assert_eq!(
            status.generated["network.hostname"],
            [json!("old"), json!("node-7")]
        );
        // Generated before, then changed with apiclient set: the user's now.
        let live = json!({"network": {"hostname": "renamed"}});
        let (patch, status) = plan(&mut facts(d.path(), Platform::Qemu), &live, &previous);
        assert_eq!(facts_only(patch), json!({}));
        assert_eq!(status.user_set, ["network.hostname"]);
    }

    #[test]
    fn invalid_generated_values_are_left_out() {
        let d = host("bad_name!");
        let (patch, status) = plan(
            &mut facts(d.path(), Platform::Qemu),
            &json!({}),
            &Status::default(),
        );
        assert_eq!(facts_only(patch), json!({}));
        assert!(
            status.errors["network.hostname"].contains("network.hostname"),
            "{status:?}"
        );
    }

    #[test]
    fn aws_generators_need_aws_and_kubernetes() {
        let d = host("node-7");
        let f = facts(d.path(), Platform::Qemu);
        let keys: Vec<&str> = generators(&f, &json!({}))
            .into_iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(keys, ["network.hostname", "updates.seed"]);
        let keys: Vec<&str> = generators(&f, &json!({"kubernetes": {}}))
            .into_iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(
            keys,
            ["network.hostname", "updates.seed", "kubernetes.node-ip"]
        );
        let f = facts(d.path(), Platform::Aws);
        let keys: Vec<&str> = generators(&f, &json!({"kubernetes": {"cluster-name": "c"}}))
            .into_iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(
            keys,
            [
                "network.hostname",
                "updates.seed",
                "aws.region",
                "kubernetes.node-ip",
                "kubernetes.provider-id"
            ]
        );
    }

    #[test]
    fn a_failing_metadata_service_keeps_the_old_value() {
        let d = host("node-7");
        let previous = Status {
            generated: BTreeMap::from([("aws.region".to_string(), vec![json!("eu-west-1")])]),
            ..Status::default()
        };
        let live = json!({"aws": {"region": "eu-west-1"}});
        let (patch, status) = plan(&mut facts(d.path(), Platform::Aws), &live, &previous);
        assert_eq!(facts_only(patch), json!({}));
        assert!(status.errors.contains_key("aws.region"));
        assert!(status.errors.contains_key("network.hostname"));
        // Still recorded as ours, so a later boot with IMDS back can update it.
        assert_eq!(status.generated["aws.region"], [json!("eu-west-1")]);
    }
}
