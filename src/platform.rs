//! The Spin implementations of the core's ports: variables, key-value, outbound HTTP, clock.
//! This is the only module (with `lib.rs`) that knows it runs inside Spin.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spin_sdk::key_value::Store;
use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
use spin_sdk::wit::wasi::http0_2_0::types::{
    ErrorCode, Fields, Method as WasiMethod, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::StreamError;

use crate::ports::VariableSource;
use crate::ports::{
    Clock, HttpClient, InboundResponse, KeyValue, Method, OutboundRequest, TransportError,
};

pub struct SpinVariables;

impl VariableSource for SpinVariables {
    fn get(&self, name: &str) -> Result<Option<String>, String> {
        use spin_sdk::variables::Error;
        match spin_sdk::variables::get(name) {
            Ok(v) => Ok(Some(v)),
            Err(Error::Undefined(_)) => Ok(None),
            Err(Error::InvalidName(_)) => Err("invalid variable name".into()),
            Err(Error::Provider(m)) | Err(Error::Other(m)) => Err(m),
        }
    }
}

/// The `default` store, opened on first use.
#[derive(Default)]
pub struct SpinKv {
    store: std::cell::OnceCell<Result<Store, String>>,
}

impl SpinKv {
    fn store(&self) -> Result<&Store, String> {
        self.store
            .get_or_init(|| {
                Store::open_default().map_err(|e| {
                    format!("cannot open the default key-value store ({e}); add key_value_stores = [\"default\"] to the component")
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl KeyValue for SpinKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store()?.get(key).map_err(|e| e.to_string())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.store()?.set(key, value).map_err(|e| e.to_string())
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.store()?.delete(key).map_err(|e| e.to_string())
    }
    fn keys(&self) -> Result<Vec<String>, String> {
        self.store()?.get_keys().map_err(|e| e.to_string())
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    fn sleep(&self, secs: f64) {
        if secs > 0.0 && secs.is_finite() {
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
    }
}

/// Outbound HTTP over `wasi:http/outgoing-handler`, blocking, with explicit timeouts
/// (the SDK's `send` passes none, and Spin's defaults are 600 s) and a response size cap.
pub struct SpinHttp;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn transport(e: ErrorCode) -> TransportError {
    match e {
        ErrorCode::HttpRequestDenied => TransportError::Denied("HTTP request denied".into()),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => TransportError::Timeout(format!("{e:?}")),
        other => TransportError::Other(format!("{other:?}")),
    }
}

impl HttpClient for SpinHttp {
    fn send(&self, req: &OutboundRequest) -> Result<InboundResponse, TransportError> {
        let other = |m: &str| TransportError::Other(m.to_string());
        let mut headers: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
            .collect();
        if req.method == Method::Post {
            headers.push((
                "content-length".into(),
                req.body.len().to_string().into_bytes(),
            ));
        }
        let fields = Fields::from_list(&headers).map_err(|_| other("invalid request header"))?;
        let outgoing = OutgoingRequest::new(fields);
        let method = match req.method {
            Method::Get => WasiMethod::Get,
            Method::Post => WasiMethod::Post,
        };
        let scheme = match req.url.scheme() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            _ => return Err(other("unsupported URL scheme")),
        };
        let authority = match (req.url.host_str(), req.url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(other("URL has no host")),
        };
        let path = match req.url.query() {
            Some(q) => format!("{}?{q}", req.url.path()),
            None => req.url.path().to_string(),
        };
        outgoing.set_method(&method).map_err(|_| other("method"))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|_| other("scheme"))?;
        outgoing
            .set_authority(Some(&authority))
            .map_err(|_| other("authority"))?;
        outgoing
            .set_path_with_query(Some(&path))
            .map_err(|_| other("path"))?;

        let options = RequestOptions::new();
        let _ = options.set_connect_timeout(Some(nanos(req.timeouts.connect)));
        let _ = options.set_first_byte_timeout(Some(nanos(req.timeouts.first_byte)));
        let _ = options.set_between_bytes_timeout(Some(nanos(req.timeouts.between_bytes)));

        let past_deadline = || {
            req.finish_by.is_some_and(|by| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .is_ok_and(|d| d.as_secs_f64() > by)
            })
        };
        if past_deadline() {
            return Err(TransportError::Timeout(
                "the run's deadline passed before the request".into(),
            ));
        }
        let body = outgoing.body().map_err(|_| other("request body"))?;
        let future = outgoing_handler::handle(outgoing, Some(options)).map_err(transport)?;
        {
            // As much as the host accepts per write (check-write), one flush at the end:
            // 4 KiB blocking writes would cost a host round trip per 4 KiB of an 8 MiB upload.
            let stream = body.write().map_err(|_| other("request body stream"))?;
            let failed = || other("writing the request body failed");
            let mut rest = &req.body[..];
            while !rest.is_empty() {
                let permit = stream.check_write().map_err(|_| failed())?;
                if permit == 0 {
                    stream.subscribe().block();
                    continue;
                }
                let n = rest
                    .len()
                    .min(usize::try_from(permit).unwrap_or(usize::MAX));
                stream.write(&rest[..n]).map_err(|_| failed())?;
                rest = &rest[n..];
            }
            if !req.body.is_empty() {
                // Once `content-length` bytes are written the host may report the stream
                // closed: that is the end of the body, not a failure.
                match stream.blocking_flush() {
                    Ok(()) | Err(StreamError::Closed) => {}
                    Err(StreamError::LastOperationFailed(_)) => return Err(failed()),
                }
            }
        }
        OutgoingBody::finish(body, None).map_err(transport)?;

        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => return Err(transport(e)),
            _ => return Err(other("no response")),
        };
        let status = response.status();
        let headers = header_list(response.headers().entries());
        let incoming = response.consume().map_err(|_| other("response body"))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|_| other("response body stream"))?;
            loop {
                // A read still arriving at the deadline is abandoned. An upload's answer is
                // not: its status already says whether the object landed.
                if req.method == Method::Get && past_deadline() {
                    return Err(TransportError::Timeout(
                        "the response was still arriving at the run's deadline".into(),
                    ));
                }
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        if bytes.len() + chunk.len() > req.max_response_bytes {
                            return Err(TransportError::BodyTooLarge(req.max_response_bytes));
                        }
                        if bytes.is_empty() {
                            // Most pages arrive in one read: kept, not copied.
                            bytes = chunk;
                        } else {
                            bytes.extend_from_slice(&chunk);
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(_)) => {
                        return Err(other("the response body was cut off"))
                    }
                }
            }
        }
        drop(incoming);
        Ok(InboundResponse {
            status,
            headers,
            body: bytes,
        })
    }
}

/// `wasi:http` header entries as (lower-case name, value) pairs; a value that is not UTF-8 is
/// read lossily (a header the component reads is ASCII).
pub(crate) fn header_list(entries: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    entries
        .into_iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}
