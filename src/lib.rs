//! sentry-logs-collector: Sentry data into Google Cloud Storage as NDJSON, for Google SecOps.
//!
//! The entry points below are thin: they build the Spin implementations of the core's ports
//! ([`platform`]) and call the core ([`run`], [`http_api`]), which knows nothing about Spin.

pub mod backfill;
pub mod bytes;
pub mod checkpoint;
pub mod collect;
pub mod config;
pub mod delivered;
pub mod gcs;
pub mod hex;
pub mod http_api;
pub mod identity;
pub mod jwt;
pub mod layout;
pub mod lease;
pub mod platform;
pub mod ports;
pub mod push_auth;
pub mod report;
pub mod retry;
pub mod run;
pub mod secret;
pub mod sentry;
pub mod shard;
pub mod state;
pub mod status_page;
pub mod streams;
pub mod time;
pub mod webhook;
pub mod window;

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
    use spin_sdk::http::{IncomingRequest, IntoResponse, Response};
    use wasi::io::streams::StreamError;

    use crate::{http_api, platform, run, with_spin_env};

    /// The request body is read here, chunk by chunk, never past [`http_api::max_body_bytes`]:
    /// a body declared larger is refused before any of it is read, and one that turns out
    /// larger (chunked, or a lying `Content-Length`) is refused as soon as it passes the cap.
    #[spin_sdk::http_component]
    fn handle_http(req: IncomingRequest) -> impl IntoResponse {
        let headers = platform::header_list(req.headers().entries());
        let method = req.method().to_string();
        let target = req.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let declared = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        let cap = http_api::max_body_bytes(path);
        let body = if declared.is_some_and(|n| n > cap as u64) {
            Err(TOO_LARGE)
        } else {
            read_body(req, cap)
        };
        let resp = match body {
            Ok(body) => {
                let api_req = http_api::ApiRequest {
                    method,
                    path: path.to_string(),
                    query: query.to_string(),
                    headers,
                    body,
                };
                with_spin_env(|env| http_api::handle(env, &api_req))
            }
            Err(TOO_LARGE) => with_spin_env(|env| http_api::too_large(env, path)),
            Err(_) => http_api::ApiResponse::error(400, "the request body could not be read"),
        };
        let mut builder = Response::builder();
        builder.status(resp.status);
        for (name, value) in resp.headers {
            builder.header(name, value);
        }
        builder.body(resp.body).build()
    }

    const TOO_LARGE: u16 = 413;

    /// The body, or the status to refuse it with: 413 as soon as it passes `cap` bytes, 400
    /// when it cannot be read.
    fn read_body(req: IncomingRequest, cap: usize) -> Result<Vec<u8>, u16> {
        let incoming = req.consume().map_err(|_| 400u16)?;
        let mut body = Vec::new();
        {
            let stream = incoming.stream().map_err(|_| 400u16)?;
            loop {
                match stream.blocking_read(16 * 1024) {
                    Ok(chunk) if body.len() + chunk.len() > cap => return Err(TOO_LARGE),
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(_)) => return Err(400),
                }
            }
        }
        Ok(body)
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
