//! A Spin-compatible host for sentry-logs-collector, built on wasmtime.
//!
//! It does for this app what `spin up` does (see `docs/testing.md`, "collector-host"):
//! loads `spin.toml`, resolves variables like Spin, implements `fermyon:spin/key-value@2.0.0`
//! (persisted under the state directory) and `fermyon:spin/variables@2.0.0`, enforces
//! `allowed_outbound_hosts` on every outbound request, calls the cron export, and serves the
//! HTTP export. Tests use it as a library; scripts use the `collector-host` binary.

pub mod allowed_hosts;
pub mod app;
pub mod kv;
pub mod manifest;
pub mod redis;
pub mod runtime_config;
pub mod serve;

pub use app::{App, HostOptions, Invocation, Outcome, Trigger};
pub mod google;
pub mod jitter;
pub mod testing;
