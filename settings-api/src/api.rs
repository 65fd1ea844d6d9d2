//! The route table: one entry per path and method. The server dispatches on it and the OpenAPI
//! document (`settings-api/openapi.json`) is generated from it, so the two cannot drift.

use crate::model::Settings;
use serde_json::{json, Map, Value};

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    GetModel,
    GetSettings,
    PatchSettings,
    PatchKeypair,
    GetTx,
    DeleteTx,
    ListTx,
    CommitTx,
    ApplyTx,
    CommitAndApplyTx,
    GetOs,
    UserDataStatus,
    AffectedServices,
    Services,
    ConfigurationFiles,
    Reboot,
    RefreshUpdates,
    PrepareUpdate,
    ActivateUpdate,
    DeactivateUpdate,
    RollbackToInactive,
    ResetUpdateClock,
    UpdateStatus,
    ReportCis,
    ReportCisK8s,
}

/// A query parameter.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub description: &'static str,
    pub required: bool,
    /// Comma-separated list (`style: form, explode: false`).
    pub list: bool,
}

/// A body or response schema.
#[derive(Debug, Clone, Copy)]
pub enum Schema {
    Settings,
    Model,
    StringList,
    StringMap,
    StringListMap,
    Os,
    Services,
    ConfigurationFiles,
    UserDataStatus,
    UpdateStatus,
    Error,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub op: Op,
    pub summary: &'static str,
    pub params: &'static [Param],
    pub body: Option<Schema>,
    pub responses: &'static [(u16, &'static str, Option<Schema>)],
}

const TX: Param = Param {
    name: "tx",
    description: "Transaction name; defaults to 'default'",
    required: false,
    list: false,
};
const KEYS: Param = Param {
    name: "keys",
    description: "Comma-separated setting keys (the 'settings.' prefix is optional); takes precedence over 'prefix'",
    required: false,
    list: true,
};
const PREFIX: Param = Param {
    name: "prefix",
    description: "Key prefix, e.g. 'kubernetes' or 'settings.host-containers.admin'",
    required: false,
    list: false,
};
const NAMES: Param = Param {
    name: "names",
    description: "Comma-separated names to return; all when absent",
    required: false,
    list: true,
};

const NOT_IMPL: &str = "Not implemented in this release; the JSON error says which issue adds it";
const BAD: (u16, &str, Option<Schema>) = (
    400,
    "Invalid input; the error names the key and the reason",
    Some(Schema::Error),
);
const ERR: (u16, &str, Option<Schema>) = (500, "Server error", Some(Schema::Error));
const UPDATES_UNCONFIGURED: (u16, &str, Option<Schema>) = (
    501,
    "Updates are not configured on this host (apiserver runs without --updater-command)",
    Some(Schema::Error),
);
/// The answers of the update actions: berth-updater's exit code decides (0, 2, 3, else).
const UPDATE_ACTION_RESPONSES: &[(u16, &str, Option<Schema>)] = &[
    (204, "The updater command finished successfully", None),
    (
        400,
        "A required setting (settings.updates.metadata-base-url, targets-base-url or seed) is not set; the error names it and nothing ran",
        Some(Schema::Error),
    ),
    (
        409,
        "Not allowed in the current update state (updater exit code 3); the error is the updater's error chain",
        Some(Schema::Error),
    ),
    (
        423,
        "Another updater command holds the update lock (updater exit code 2); retry later",
        Some(Schema::Error),
    ),
    (
        500,
        "The updater failed (any other exit code); the error is its error chain",
        Some(Schema::Error),
    ),
    UPDATES_UNCONFIGURED,
];
const UNIMPL: (u16, &str, Option<Schema>) = (501, NOT_IMPL, Some(Schema::Error));
const LEVEL: Param = Param {
    name: "level",
    description: "1 (default: Level 1 checks) or 2 (both levels)",
    required: false,
    list: false,
};
const FORMAT: Param = Param {
    name: "format",
    description: "text (default, text/plain) or json",
    required: false,
    list: false,
};
const REPORT_RESPONSES: &[(u16, &str, Option<Schema>)] = &[
    (
        200,
        "Report; its Status is FAIL when an automated check failed",
        None,
    ),
    (400, "Bad type, level or format", Some(Schema::Error)),
];

/// Every route the server answers.
pub static ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/",
        op: Op::GetModel,
        summary: "Get the whole model: settings, os, services and configuration files",
        params: &[PREFIX],
        body: None,
        responses: &[(200, "The model", Some(Schema::Model)), BAD, ERR],
    },
    Route {
        method: "GET",
        path: "/settings",
        op: Op::GetSettings,
        summary: "Get committed settings",
        params: &[KEYS, PREFIX],
        body: None,
        responses: &[(200, "Settings", Some(Schema::Settings)), BAD, ERR],
    },
    Route {
        method: "PATCH",
        path: "/settings",
        op: Op::PatchSettings,
        summary: "Stage settings in a transaction",
        params: &[TX],
        body: Some(Schema::Settings),
        responses: &[
            (204, "Staged", None),
            BAD,
            (413, "Body too large", Some(Schema::Error)),
            ERR,
        ],
    },
    Route {
        method: "PATCH",
        path: "/settings/keypair",
        op: Op::PatchKeypair,
        summary:
            "Stage settings given as {\"dotted.key\": \"raw value\"}; values are typed by the model",
        params: &[TX],
        body: Some(Schema::StringMap),
        responses: &[(204, "Staged", None), BAD, ERR],
    },
    Route {
        method: "GET",
        path: "/tx",
        op: Op::GetTx,
        summary: "Get pending settings of a transaction",
        params: &[TX],
        body: None,
        responses: &[(200, "Pending settings", Some(Schema::Settings)), BAD, ERR],
    },
    Route {
        method: "DELETE",
        path: "/tx",
        op: Op::DeleteTx,
        summary: "Discard a transaction; returns the keys it held",
        params: &[TX],
        body: None,
        responses: &[(200, "Deleted keys", Some(Schema::StringList)), BAD, ERR],
    },
    Route {
        method: "GET",
        path: "/tx/list",
        op: Op::ListTx,
        summary: "List transactions with pending settings",
        params: &[],
        body: None,
        responses: &[(200, "Transaction names", Some(Schema::StringList)), ERR],
    },
    Route {
        method: "POST",
        path: "/tx/commit",
        op: Op::CommitTx,
        summary: "Commit a transaction atomically, without applying; returns the changed keys",
        params: &[TX],
        body: None,
        responses: &[(200, "Changed keys", Some(Schema::StringList)), BAD, ERR],
    },
    Route {
        method: "POST",
        path: "/tx/apply",
        op: Op::ApplyTx,
        summary: "Apply committed settings to the services they affect",
        params: &[KEYS],
        body: None,
        responses: &[(204, "Applied", None), BAD, ERR],
    },
    Route {
        method: "POST",
        path: "/tx/commit_and_apply",
        op: Op::CommitAndApplyTx,
        summary: "Commit a transaction and apply the changes; returns the changed keys",
        params: &[TX],
        body: None,
        responses: &[(200, "Changed keys", Some(Schema::StringList)), BAD, ERR],
    },
    Route {
        method: "GET",
        path: "/os",
        op: Op::GetOs,
        summary: "OS information: pretty_name, variant_id, version_id, build_id, arch, secure_boot (enabled, disabled, unsupported), lockdown, missing_artifacts when the image was built without some external artifacts, and datastore_quarantine when live settings that could not be used were kept aside",
        params: &[],
        body: None,
        responses: &[(200, "OS information", Some(Schema::Os)), ERR],
    },
    Route {
        method: "GET",
        path: "/boot/user-data",
        op: Op::UserDataStatus,
        summary: "Outcome of the first-boot user data step (boot-config): applied, none or invalid, with the key and the error",
        params: &[],
        body: None,
        responses: &[
            (200, "User data status", Some(Schema::UserDataStatus)),
            (404, "User data not handled yet", Some(Schema::Error)),
            ERR,
        ],
    },
    Route {
        method: "GET",
        path: "/metadata/affected-services",
        op: Op::AffectedServices,
        summary: "Services affected by each of the given keys",
        params: &[Param {
            name: "keys",
            description: "Comma-separated setting keys",
            required: true,
            list: true,
        }],
        body: None,
        responses: &[
            (200, "Key to services", Some(Schema::StringListMap)),
            BAD,
            ERR,
        ],
    },
    Route {
        method: "GET",
        path: "/services",
        op: Op::Services,
        summary: "Services with their configuration files and restart commands",
        params: &[NAMES],
        body: None,
        responses: &[
            (200, "Services", Some(Schema::Services)),
            (404, "Unknown service", Some(Schema::Error)),
            ERR,
        ],
    },
    Route {
        method: "GET",
        path: "/configuration-files",
        op: Op::ConfigurationFiles,
        summary: "Configuration files with their templates and paths",
        params: &[NAMES],
        body: None,
        responses: &[
            (200, "Configuration files", Some(Schema::ConfigurationFiles)),
            (404, "Unknown file", Some(Schema::Error)),
            ERR,
        ],
    },
    Route {
        method: "POST",
        path: "/actions/reboot",
        op: Op::Reboot,
        summary: "Reboot the host",
        params: &[],
        body: None,
        responses: &[
            (204, "Reboot requested: systemd starts reboot.target right after the answer", None),
            UNIMPL,
        ],
    },
    Route {
        method: "POST",
        path: "/actions/refresh-updates",
        op: Op::RefreshUpdates,
        summary: "Query the update repository and choose an update (berth-updater check); answers when it has finished",
        params: &[],
        body: None,
        responses: UPDATE_ACTION_RESPONSES,
    },
    Route {
        method: "POST",
        path: "/actions/prepare-update",
        op: Op::PrepareUpdate,
        summary: "Download the chosen update and write it to the inactive slot (berth-updater prepare); answers when it has finished, which may take minutes",
        params: &[],
        body: None,
        responses: UPDATE_ACTION_RESPONSES,
    },
    Route {
        method: "POST",
        path: "/actions/activate-update",
        op: Op::ActivateUpdate,
        summary: "Make the prepared slot the next boot, with boot tries (berth-updater activate)",
        params: &[],
        body: None,
        responses: UPDATE_ACTION_RESPONSES,
    },
    Route {
        method: "POST",
        path: "/actions/deactivate-update",
        op: Op::DeactivateUpdate,
        summary: "Make the running slot the next boot again (berth-updater deactivate)",
        params: &[],
        body: None,
        responses: UPDATE_ACTION_RESPONSES,
    },
    Route {
        method: "POST",
        path: "/actions/rollback-to-inactive",
        op: Op::RollbackToInactive,
        summary: "Boot the other slot at the next reboot (berth-updater rollback); 409 when its UKI is gone",
        params: &[],
        body: None,
        responses: UPDATE_ACTION_RESPONSES,
    },
    Route {
        method: "POST",
        path: "/actions/reset-update-clock",
        op: Op::ResetUpdateClock,
        summary: "Forget the latest time a verified update check saw (berth-updater reset-clock), when a clock that ran ahead recorded it and every check now fails with 'the system clock ... is behind'",
        params: &[],
        body: None,
        responses: UPDATE_ACTION_RESPONSES,
    },
    Route {
        method: "GET",
        path: "/updates/status",
        op: Op::UpdateStatus,
        summary: "Update status: the updater's state document (berth-updater status)",
        params: &[],
        body: None,
        responses: &[
            (
                200,
                "Update status; idle when no update command has run yet",
                Some(Schema::UpdateStatus),
            ),
            (500, "The updater failed; the error is its error chain", Some(Schema::Error)),
            UPDATES_UNCONFIGURED,
        ],
    },
    Route {
        method: "GET",
        path: "/report/cis",
        op: Op::ReportCis,
        summary: "CIS benchmark report: runs the checks on the host",
        params: &[
            Param {
                name: "type",
                description: "bottlerocket (default) or kubernetes",
                required: false,
                list: false,
            },
            LEVEL,
            FORMAT,
        ],
        body: None,
        responses: REPORT_RESPONSES,
    },
    Route {
        method: "GET",
        path: "/report/cis-k8s",
        op: Op::ReportCisK8s,
        summary: "CIS Kubernetes worker node report (the same as /report/cis?type=kubernetes)",
        params: &[LEVEL, FORMAT],
        body: None,
        responses: REPORT_RESPONSES,
    },
];

/// Finds the route for `path`; `Err(allowed)` lists the methods when only the method is wrong,
/// and `Err(empty)` means the path is unknown.
pub fn find(method: &str, path: &str) -> Result<&'static Route, Vec<&'static str>> {
    let mut allowed = Vec::new();
    for route in ROUTES.iter().filter(|r| r.path == path) {
        if route.method == method {
            return Ok(route);
        }
        allowed.push(route.method);
    }
    Err(allowed)
}

fn schema_json(schema: Schema) -> Value {
    let string_list = json!({"type": "array", "items": {"type": "string"}});
    match schema {
        Schema::Settings => json!({"$ref": "#/components/schemas/Settings"}),
        Schema::Model => json!({
            "type": "object",
            "properties": {
                "settings": {"$ref": "#/components/schemas/Settings"},
                "os": {"type": "object", "additionalProperties": {"type": "string"}},
                "services": {"$ref": "#/components/schemas/Services"},
                "configuration-files": {"$ref": "#/components/schemas/ConfigurationFiles"}
            }
        }),
        Schema::StringList => string_list,
        Schema::StringMap => json!({"type": "object", "additionalProperties": {"type": "string"}}),
        Schema::StringListMap => json!({"type": "object", "additionalProperties": string_list}),
        Schema::Os => json!({
            "type": "object",
            "properties": {
                "missing_artifacts": {
                    "description": "External artifacts the image was built without (os-build --allow-missing-artifacts)",
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "path", "reason"],
                        "properties": {
                            "name": {"type": "string"},
                            "path": {"type": "string"},
                            "url": {"type": ["string", "null"]},
                            "sha256": {"type": ["string", "null"]},
                            "reason": {"type": "string"}
                        }
                    }
                },
                "datastore_quarantine": {
                    "description": "Live settings apiserver could not use at a start (not JSON, or refused by the model), kept aside; the host then started from the defaults and applied user data again",
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["file", "reason"],
                        "properties": {
                            "file": {"type": "string"},
                            "reason": {"type": "string"}
                        }
                    }
                },
                "secure_boot": {
                    "description": "The firmware's Secure Boot state, from the SecureBoot EFI variable (docs/secure-boot.md)",
                    "type": "string",
                    "enum": ["enabled", "disabled", "unsupported"]
                },
                "lockdown": {
                    "description": "Kernel lockdown mode from /sys/kernel/security/lockdown (none, integrity, confidentiality), or unsupported",
                    "type": "string"
                }
            },
            "additionalProperties": {"type": "string"}
        }),
        Schema::Services => json!({"$ref": "#/components/schemas/Services"}),
        Schema::ConfigurationFiles => json!({"$ref": "#/components/schemas/ConfigurationFiles"}),
        Schema::UserDataStatus => json!({
            "type": "object",
            "required": ["state", "source"],
            "properties": {
                "state": {"type": "string", "enum": ["applied", "none", "invalid"]},
                "source": {"type": "string"},
                "changed": string_list,
                "key": {"type": "string"},
                "error": {"type": "string"}
            }
        }),
        // Mirrors updater::state::Status (agents/updater/src/state.rs).
        Schema::UpdateStatus => json!({
            "type": "object",
            "required": ["state", "available_versions"],
            "properties": {
                "state": {"type": "string", "enum": ["idle", "available", "staged", "ready"]},
                "running": {"type": "string", "description": "Running version, as last seen by the updater"},
                "available_versions": string_list,
                "chosen": {
                    "type": "object",
                    "required": ["variant", "arch", "version"],
                    "properties": {
                        "variant": {"type": "string"},
                        "arch": {"type": "string"},
                        "version": {"type": "string"}
                    }
                },
                "target_slot": {"type": "string", "enum": ["a", "b"]},
                "uki": {"type": "string"},
                "most_recent_command": {
                    "type": "object",
                    "required": ["command", "ok", "at"],
                    "properties": {
                        "command": {"type": "string", "enum": ["check", "prepare", "activate", "deactivate"]},
                        "ok": {"type": "boolean"},
                        "error": {"type": "string", "description": "Error chain of a failed command"},
                        "at": {"type": "string", "format": "date-time"}
                    }
                }
            }
        }),
        Schema::Error => json!({"$ref": "#/components/schemas/Error"}),
    }
}

/// The OpenAPI 3.0 document of the API, generated from [`ROUTES`] and the model types.
pub fn openapi() -> Value {
    let mut generator = schemars::gen::SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<Settings>();
    let mut schemas: Map<String, Value> = generator
        .definitions()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "description": "What went wrong and what to do"},
                "key": {"type": "string", "description": "Dotted key of the offending setting"}
            }
        }),
    );
    schemas.insert(
        "Services".into(),
        json!({"type": "object", "additionalProperties": {
            "type": "object",
            "properties": {
                "configuration-files": {"type": "array", "items": {"type": "string"}},
                "restart-commands": {"type": "array", "items": {"type": "string"}}
            }
        }}),
    );
    schemas.insert(
        "ConfigurationFiles".into(),
        json!({"type": "object", "additionalProperties": {
            "type": "object",
            "required": ["path", "template-path"],
            "properties": {
                "path": {"type": "string"},
                "template-path": {"type": "string"},
                "mode": {"type": "string"}
            }
        }}),
    );

    let mut paths = Map::new();
    for route in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(route.summary));
        op.insert("operationId".into(), json!(format!("{:?}", route.op)));
        if !route.params.is_empty() {
            let params: Vec<Value> = route
                .params
                .iter()
                .map(|p| {
                    let mut v = json!({
                        "in": "query",
                        "name": p.name,
                        "description": p.description,
                        "required": p.required,
                        "schema": if p.list {
                            json!({"type": "array", "items": {"type": "string"}})
                        } else {
                            json!({"type": "string"})
                        }
                    });
                    if p.list {
                        v["style"] = json!("form");
                        v["explode"] = json!(false);
                    }
                    v
                })
                .collect();
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = route.body {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema_json(body)}}}),
            );
        }
        let mut responses = Map::new();
        for (code, desc, schema) in route.responses {
            let mut r = json!({"description": desc});
            if let Some(s) = schema {
                r["content"] = json!({"application/json": {"schema": schema_json(*s)}});
            }
            responses.insert(code.to_string(), r);
        }
        responses.insert(
            "404".into(),
            json!({"description": "Unknown path", "content": {"application/json": {"schema": schema_json(Schema::Error)}}}),
        );
        responses.insert(
            "405".into(),
            json!({"description": "Method not allowed on this path", "content": {"application/json": {"schema": schema_json(Schema::Error)}}}),
        );
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[route.method.to_ascii_lowercase()] = Value::Object(op);
    }

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Berth settings API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "HTTP/1.1 over the Unix socket /run/api.sock; paths and semantics follow Bottlerocket's API. Generated from settings-api/src/api.rs and the model; do not edit by hand.",
            "license": {"name": env!("CARGO_PKG_LICENSE")}
        },
        "servers": [{"url": "file:///run/api.sock", "description": "The host's API socket"}],
        "paths": paths,
        "components": {"schemas": schemas}
    })
}

/// The committed document's text: pretty JSON with a trailing newline.
pub fn openapi_text() -> String {
    let mut text = serde_json::to_string_pretty(&openapi()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regenerate with `BERTH_UPDATE_OPENAPI=1 cargo test -p settings-api openapi`.
    #[test]
    fn openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let text = openapi_text();
        if std::env::var_os("BERTH_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text,
            "settings-api/openapi.json is stale; run BERTH_UPDATE_OPENAPI=1 cargo test -p settings-api openapi and commit it"
        );
    }

    #[test]
    fn routes_are_unique_and_findable() {
        for r in ROUTES {
            assert_eq!(find(r.method, r.path).unwrap().op, r.op);
        }
        assert_eq!(find("PUT", "/settings").unwrap_err(), vec!["GET", "PATCH"]);
        assert!(find("GET", "/nope").unwrap_err().is_empty());
    }
}
