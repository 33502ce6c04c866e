//! The outside world as small traits, so the core runs natively in tests and under Spin in
//! the component. The Spin implementations live in `platform.rs`.

use std::fmt;
use std::time::Duration;

/// Where a setting's value comes from (Spin variables in the component, a map in tests).
pub trait VariableSource {
    /// `Ok(None)` when the variable is not defined at all; then the default in `config`'s
    /// `SETTINGS` applies. `Err` carries the provider's message (it must not contain a value).
    fn get(&self, name: &str) -> Result<Option<String>, String>;
}

/// An outbound HTTP request. The URL is always built by the component from configured bases,
/// never taken from a response.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    pub url: url::Url,
    /// Header names in lower case. Values may hold credentials: never log them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeouts: Timeouts,
    /// The whole exchange ends by then (Unix seconds): a response still arriving, even byte
    /// by byte within every timeout, is abandoned with [`TransportError::Timeout`].
    pub finish_by: Option<f64>,
    /// Responses larger than this are refused with [`TransportError::BodyTooLarge`].
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// Explicit per-request timeouts: Spin's defaults are 600 s, far beyond a run's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub between_bytes: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(20),
            between_bytes: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The defaults, each cut to the time left before a deadline (at least a second), so no
    /// request can outlive the run's budget.
    pub fn within(secs_left: f64) -> Timeouts {
        let cap = Duration::from_secs_f64(secs_left.clamp(1.0, 3600.0));
        let d = Timeouts::default();
        Timeouts {
            connect: d.connect.min(cap),
            first_byte: d.first_byte.min(cap),
            between_bytes: d.between_bytes.min(cap),
        }
    }
}

impl OutboundRequest {
    pub fn get(url: url::Url) -> Self {
        OutboundRequest {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: Vec::new(),
            timeouts: Timeouts::default(),
            finish_by: None,
            max_response_bytes: 16 * 1024 * 1024,
        }
    }

    /// Bounds the request by `deadline` (Unix seconds), `now` being the time: each timeout
    /// cut to the time left, and the whole exchange ended by the deadline.
    pub fn bound_by(&mut self, deadline: f64, now: f64) {
        self.timeouts = Timeouts::within(deadline - now);
        self.finish_by = Some(deadline);
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

#[derive(Debug, Clone)]
pub struct InboundResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl InboundResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request that produced no HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The host refused the request (for Spin: not in `allowed_outbound_hosts`).
    Denied(String),
    Timeout(String),
    BodyTooLarge(usize),
    Other(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Denied(m) => write!(
                f,
                "request refused by the host ({m}); is the destination in allowed_outbound_hosts?"
            ),
            TransportError::Timeout(m) => write!(f, "timed out ({m})"),
            TransportError::BodyTooLarge(n) => write!(f, "response body larger than {n} bytes"),
            TransportError::Other(m) => f.write_str(m),
        }
    }
}

pub trait HttpClient {
    fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, TransportError>;
}

/// A key-value store with the limits every Spin platform enforces (see `state.rs`).
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
    /// Every key in the store.
    fn keys(&self) -> Result<Vec<String>, String>;
}

pub trait Clock {
    /// Seconds since the Unix epoch.
    fn now(&self) -> f64;
    /// Blocks for `secs` seconds (rate-limit waits and backoff).
    fn sleep(&self, secs: f64);
}

/// Everything the core needs from its host.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub vars: &'a dyn VariableSource,
    pub kv: &'a dyn KeyValue,
    pub http: &'a dyn HttpClient,
    pub clock: &'a dyn Clock,
}

/// Wraps the HTTP client, KV and the clock to measure how long the run waited on the network,
/// on rate-limit sleeps and on the KV store, so the summary can report the component's own
/// compute time.
pub struct WaitMeter<'a> {
    http: &'a dyn HttpClient,
    kv: &'a dyn KeyValue,
    clock: &'a dyn Clock,
    waited: std::cell::Cell<f64>,
    kv_waited: std::cell::Cell<f64>,
}

impl<'a> WaitMeter<'a> {
    pub fn new(http: &'a dyn HttpClient, kv: &'a dyn KeyValue, clock: &'a dyn Clock) -> Self {
        WaitMeter {
            http,
            kv,
            clock,
            waited: std::cell::Cell::new(0.0),
            kv_waited: std::cell::Cell::new(0.0),
        }
    }

    /// Seconds spent in HTTP requests and sleeps so far.
    pub fn waited_secs(&self) -> f64 {
        self.waited.get()
    }

    /// Seconds spent in KV calls so far.
    pub fn kv_secs(&self) -> f64 {
        self.kv_waited.get()
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = self.clock.now();
        let out = f();
        self.kv_waited
            .set(self.kv_waited.get() + (self.clock.now() - start).max(0.0));
        out
    }
}

impl KeyValue for WaitMeter<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.timed(|| self.kv.get(key))
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.timed(|| self.kv.set(key, value))
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.timed(|| self.kv.delete(key))
    }
    fn keys(&self) -> Result<Vec<String>, String> {
        self.timed(|| self.kv.keys())
    }
}

impl HttpClient for WaitMeter<'_> {
    fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, TransportError> {
        let start = self.clock.now();
        let result = self.http.send(request);
        self.waited
            .set(self.waited.get() + (self.clock.now() - start).max(0.0));
        result
    }
}

impl Clock for WaitMeter<'_> {
    fn now(&self) -> f64 {
        self.clock.now()
    }

    fn sleep(&self, secs: f64) {
        let start = self.clock.now();
        self.clock.sleep(secs);
        self.waited
            .set(self.waited.get() + (self.clock.now() - start).max(0.0));
    }
}

/// An in-memory KV store for unit tests, refusing what every Spin platform refuses (keys over
/// 255 bytes, values over 1 MB).
#[cfg(test)]
pub(crate) mod memory {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{KeyValue, VariableSource};

    #[derive(Default)]
    pub struct MemKv(pub RefCell<BTreeMap<String, Vec<u8>>>);

    /// Spin variables from a map.
    pub struct MemVars(pub std::collections::HashMap<&'static str, String>);

    impl VariableSource for MemVars {
        fn get(&self, name: &str) -> Result<Option<String>, String> {
            Ok(self.0.get(name).cloned())
        }
    }

    impl KeyValue for MemKv {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            assert!(
                key.len() <= 255 && value.len() <= 1024 * 1024,
                "{key}: {}",
                value.len()
            );
            self.0.borrow_mut().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.0.borrow_mut().remove(key);
            Ok(())
        }
        fn keys(&self) -> Result<Vec<String>, String> {
            Ok(self.0.borrow().keys().cloned().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_never_outlive_the_time_left() {
        assert_eq!(Timeouts::within(1000.0), Timeouts::default());
        let t = Timeouts::within(3.5);
        assert_eq!(
            (t.connect, t.first_byte, t.between_bytes),
            (
                Duration::from_millis(3500),
                Duration::from_millis(3500),
                Duration::from_millis(3500)
            )
        );
        let floor = Timeouts::within(-5.0);
        assert_eq!(
            floor.first_byte,
            Duration::from_secs(1),
            "at least a second"
        );
    }
}
