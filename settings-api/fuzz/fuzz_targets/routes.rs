//! Fuzz the API routes: any sequence of requests is answered without an internal error, and
//! the live settings always pass the model's validation.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use settings_api::{datastore::Datastore, metadata::Metadata, model::Settings, server};
use std::sync::Arc;

#[derive(Debug, Arbitrary)]
struct Req {
    method: u8,
    route: u8,
    extra_path: Option<String>,
    query: Option<String>,
    body: Vec<u8>,
}

const METHODS: &[&str] = &["GET", "PATCH", "POST", "DELETE", "PUT"];

fuzz_target!(|reqs: Vec<Req>| {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = Datastore::open(dir.path()).expect("datastore");
    let state = Arc::new(
        server::State::open(ds.clone(), None, Metadata::default(), Default::default())
            .expect("state"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for req in reqs.into_iter().take(8) {
        let method = METHODS[usize::from(req.method) % METHODS.len()];
        let routes = settings_api::api::ROUTES;
        let path = match req.extra_path {
            Some(p) => p,
            None => routes[usize::from(req.route) % routes.len()]
                .path
                .to_string(),
        };
        let resp = rt.block_on(server::respond(
            &state,
            method,
            &path,
            req.query.as_deref(),
            bytes::Bytes::from(req.body),
        ));
        assert_ne!(resp.status().as_u16(), 500, "{method} {path}");
        Settings::from_json(&ds.live().expect("live")).expect("live settings stay valid");
    }
});
