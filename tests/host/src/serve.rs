//! Serving the component's `wasi:http/incoming-handler` export over HTTP/1.1, one fresh
//! instance per request, like `spin up`'s HTTP trigger.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpView;

use crate::app::{output_pipes, pipe_text, trap_message, App, InstanceState};

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, anyhow::Error>;

/// Serves until `shutdown` resolves. Guest output is written to the host's stdout and stderr
/// after each request.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let route = match app.manifest.triggers.http.as_slice() {
        [one] => one.route.clone(),
        _ => bail!("this host serves exactly one [[trigger.http]]"),
    };
    let pre = ProxyPre::new(app.linker().instantiate_pre(app.compiled())?)?;
    let pre = Arc::new(pre);
    tokio::pin!(shutdown);
    loop {
        let (conn, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let app = app.clone();
        let pre = pre.clone();
        let route = route.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                let pre = pre.clone();
                let route = route.clone();
                async move { handle(app, pre, &route, peer, req).await }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

/// Spin's route syntax: `/...` matches everything, `/x/...` a prefix, anything else exactly.
fn route_matches(route: &str, path: &str) -> bool {
    match route.strip_suffix("/...") {
        Some(prefix) => {
            path == prefix || path.starts_with(&format!("{prefix}/")) || prefix.is_empty()
        }
        None => path == route,
    }
}

fn plain(status: u16, text: &str) -> hyper::Response<BoxBody> {
    hyper::Response::builder()
        .status(status)
        .body(
            Full::new(Bytes::from(text.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response")
}

async fn handle(
    app: Arc<App>,
    pre: Arc<ProxyPre<InstanceState>>,
    route: &str,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<BoxBody>, std::convert::Infallible> {
    if !route_matches(route, req.uri().path()) {
        return Ok(plain(404, "Not Found"));
    }
    let (stdout, stderr) = output_pipes();
    let mut store = app.new_store(stdout.clone(), stderr.clone());
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // Logged on failure: method and path only, as the query may carry a shared secret.
    let request_line = format!("{} {}", parts.method, parts.uri.path());
    let full_url = format!("http://{host}{path_and_query}");
    let mut req = hyper::Request::from_parts(
        parts,
        body.map_err(wasmtime_wasi_http::p2::hyper_request_error)
            .boxed_unsync(),
    );
    // Headers Spin's HTTP trigger adds for the component.
    let h = req.headers_mut();
    for (name, value) in [
        ("spin-full-url", full_url),
        ("spin-matched-route", route.to_string()),
        ("spin-client-addr", peer.to_string()),
    ] {
        if let Ok(v) = value.parse() {
            h.insert(name, v);
        }
    }
    let result = async {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await
        });
        match receiver.await {
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .to_bytes();
                let _ = task.await;
                Ok(hyper::Response::from_parts(
                    parts,
                    Full::new(body)
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                ))
            }
            Ok(Err(e)) => Err(anyhow::anyhow!("guest error: {e:?}")),
            Err(_) => match task.await {
                Ok(Err(e)) => Err(anyhow::anyhow!("guest trapped: {}", trap_message(&e))),
                _ => Err(anyhow::anyhow!("guest never set a response")),
            },
        }
    }
    .await;
    let out = pipe_text(&stdout);
    let err = pipe_text(&stderr);
    if !out.is_empty() {
        print!("{out}");
    }
    if !err.is_empty() {
        eprint!("{err}");
    }
    if let Some(sink) = &app.output_sink {
        let mut sink = sink.lock().unwrap();
        sink.push_str(&out);
        sink.push_str(&err);
    }
    Ok(match result {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!(
                "collector-host: {} {request_line}: {e:#}",
                app.component.name
            );
            plain(500, "Internal Server Error")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::route_matches;

    #[test]
    fn spin_route_syntax() {
        assert!(route_matches("/...", "/healthz"));
        assert!(route_matches("/...", "/"));
        assert!(route_matches("/api/...", "/api/run"));
        assert!(route_matches("/api/...", "/api"));
        assert!(!route_matches("/api/...", "/apix"));
        assert!(route_matches("/healthz", "/healthz"));
        assert!(!route_matches("/healthz", "/healthz/x"));
    }
}
