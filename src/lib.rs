//! sentry-logs-collector: Sentry data into Google Cloud Storage as NDJSON, for Google SecOps.
//!
//! The entry points below are thin: they build the Spin implementations of the core's ports
//! ([`platform`]) and call the core ([`run`], [`http_api`]), which knows nothing about Spin.

pub mod checkpoint;
pub mod collect;
pub mod config;
pub mod gcs;
pub mod http_api;
pub mod jwt;
pub mod lease;
pub mod platform;
pub mod ports;
pub mod push_auth;
pub mod retry;
pub mod run;
pub mod secret;
pub mod sentry;
pub mod shard;
pub mod state;
pub mod status_page;
pub mod streams;
pub mod time;

/// Runs `f` with the Spin implementations of the ports.
pub fn with_spin_env<T>(f: impl FnOnce(&ports::Env) -> T) -> T {
    let kv = platform::SpinKv::default();
    let env = ports::Env {
        vars: &platform::SpinVariables,
        kv: &kv,
        http: &platform::SpinHttp,
        clock: &platform::SystemClock,
    };
    f(&env)
}

/// The Spin exports exist only in the wasm build: their symbol names (`wasi:http/...#handle`)
/// cannot be exported from a native shared library, and natively nothing calls them.
#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod exports {
    use spin_sdk::http::{IntoResponse, Request, Response};

    use crate::{http_api, run, with_spin_env};

    #[spin_sdk::http_component]
    fn handle_http(req: Request) -> impl IntoResponse {
        let api_req = http_api::ApiRequest {
            method: req.method().to_string(),
            path: req.path().to_string(),
            query: req.query().to_string(),
            headers: req
                .headers()
                .map(|(n, v)| {
                    (
                        n.to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: req.body().to_vec(),
        };
        let resp = with_spin_env(|env| http_api::handle(env, &api_req));
        let mut builder = Response::builder();
        builder.status(resp.status);
        for (name, value) in resp.headers {
            builder.header(name, value);
        }
        builder.body(resp.body).build()
    }

    // The `handle-cron-event` export of `fermyon:spin-cron@2.0.0`, generated with the SDK's
    // own wit-bindgen so the component carries one wit-bindgen runtime.
    spin_sdk::wit_bindgen::generate!({
        world: "spin-cron",
        path: "wit/cron.wit",
        runtime_path: "::spin_sdk::wit_bindgen::rt",
    });

    struct CronTrigger;

    impl Guest for CronTrigger {
        /// One collection run. The summary goes to stdout; an error is returned, and the cron
        /// trigger logs it (printing it here too would log it twice).
        fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
            let outcome = with_spin_env(|env| {
                run::run_once(env, run::Trigger::Cron, &run::RunOptions::default())
            });
            match outcome {
                Ok(run::RunOutcome::Ran(summary)) => {
                    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                    Ok(())
                }
                Ok(run::RunOutcome::Skipped(skipped)) => {
                    println!("{}", serde_json::to_string(&skipped).unwrap_or_default());
                    Ok(())
                }
                Err(run::RunError::Streams(summary)) => {
                    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                    Err(Error::Other(run::RunError::Streams(summary).to_string()))
                }
                Err(e) => Err(Error::Other(e.to_string())),
            }
        }
    }

    export!(CronTrigger);
}
