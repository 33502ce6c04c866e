//! Loading the component and invoking its exports under wasmtime, the way `spin up` does:
//! a fresh instance per invocation, WASI p2, `wasi:http` with the allow-list enforced on every
//! outbound request, and Spin's key-value and variables interfaces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context, Result};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::allowed_hosts::AllowedHosts;
use crate::kv::KvStore;
use crate::manifest::{resolve_component, Manifest, ProvidedVariables, ResolvedComponent};
use crate::runtime_config::RuntimeConfig;

mod spin_bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "collector:host/spin-imports",
        with: { "fermyon:spin/key-value.store": crate::app::KvHandle },
        imports: { default: trappable },
    });
}

mod cron_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/cron.wit",
        world: "spin-cron",
        exports: { default: async },
    });
}

use spin_bindings::fermyon::spin::key_value::{self, Error as KvError};
use spin_bindings::fermyon::spin::variables::{self, Error as VarError};

/// An open store handed to the guest.
pub struct KvHandle {
    store: KvStore,
}

/// Which trigger the app is loaded for; it decides which component runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The component of `[[trigger.cron]]`, or the manifest's only component.
    Cron,
    /// The component of the `[[trigger.http]]`.
    Http,
}

/// How the host is started: the same inputs as `spin up`.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// `--from`; default `./spin.toml`.
    pub manifest: Option<PathBuf>,
    /// `--state-dir`; default `.spin` beside the manifest.
    pub state_dir: Option<PathBuf>,
    /// `--runtime-config-file`: key-value stores (files or Redis) and outbound HTTP limits.
    pub runtime_config: Option<PathBuf>,
    pub variables: ProvidedVariables,
    /// Seconds added to the guest's wall clock, so tests can move time forward between runs
    /// (shared with the Sentry simulator's clock). `None`: the real clock.
    pub clock_offset: Option<Arc<AtomicI64>>,
    /// When set, `serve` also appends everything the guest prints here (tests scan it).
    pub output_sink: Option<Arc<std::sync::Mutex<String>>>,
    /// `--max-memory`: the most linear memory, in bytes, one instance may have (cron and HTTP
    /// alike), like the hosted platforms' 128 MiB. An instance that would grow past it traps
    /// with a message naming the limit. `None`: no limit, as under `spin up`.
    pub max_memory: Option<usize>,
}

/// The real wall clock plus an offset.
struct OffsetClock(Arc<AtomicI64>);

impl wasmtime_wasi::HostWallClock for OffsetClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }

    fn now(&self) -> std::time::Duration {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let offset = self.0.load(Ordering::SeqCst);
        if offset >= 0 {
            real + std::time::Duration::from_secs(offset as u64)
        } else {
            real.saturating_sub(std::time::Duration::from_secs(offset.unsigned_abs()))
        }
    }
}

/// Compiling a component with Cranelift takes seconds; the engine caches compiled code on disk
/// (wasmtime's cache, keyed by the component's bytes), so repeated runs start fast.
fn engine() -> Result<&'static Engine> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e);
    }
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(false);
    // `COLLECTOR_HOST_PERFMAP=1` names the compiled guest functions for `perf` (profiling).
    if std::env::var_os("COLLECTOR_HOST_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Ok(cache) = wasmtime::Cache::new(wasmtime::CacheConfig::new()) {
        config.cache(Some(cache));
    }
    let engine = Engine::new(&config)?;
    Ok(ENGINE.get_or_init(|| engine))
}

/// The loaded application: manifest, resolved component, compiled code, linker, state.
pub struct App {
    pub manifest: Manifest,
    pub component: ResolvedComponent,
    pub state_dir: PathBuf,
    compiled: Component,
    linker: Linker<InstanceState>,
    stores: Arc<BTreeMap<String, KvStore>>,
    /// `[outbound_http]`'s limit on requests in flight, shared by every instance.
    outbound_limit: Option<Arc<tokio::sync::Semaphore>>,
    clock_offset: Option<Arc<AtomicI64>>,
    pub(crate) output_sink: Option<Arc<std::sync::Mutex<String>>>,
    /// [`HostOptions::max_memory`], given to every instance's [`MemoryMeter`].
    max_memory: Option<usize>,
}

/// What one guest invocation printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
    /// The most linear memory the instance asked for, in bytes, granted or not (wasm memory
    /// never shrinks, so without a limit this is its size at the end). When `--max-memory`
    /// refused a growth, this is the size the refused growth asked for.
    pub peak_memory_bytes: usize,
    /// The linear memory the instance was granted, in bytes: its size at the end. Equal to
    /// `peak_memory_bytes` unless a growth was refused.
    pub granted_memory_bytes: usize,
}

/// Records how far the instance's linear memory grew and, with a limit (`--max-memory`),
/// refuses growth past it. Spin sets no limit of its own; hosted platforms (Akamai Functions,
/// Fermyon Cloud) cap an instance at 128 MiB.
///
/// Sizes are the sum over the instance's linear memories (a component built for wasm32-wasip2
/// has one), as the platforms count an instance's memory, not one memory's.
#[derive(Debug, Default)]
pub struct MemoryMeter {
    /// The most memory asked for, in bytes, granted or not: a refused growth records the size
    /// it would have reached (so a benchmark can report what the instance attempted).
    pub peak_bytes: usize,
    /// The memory granted so far, in bytes (never above `limit`).
    pub granted_bytes: usize,
    /// The limit in bytes; `None` grants everything.
    pub limit: Option<usize>,
    /// The bytes of the last granted growth, taken back if wasmtime then fails to grow.
    last_growth: usize,
}

impl MemoryMeter {
    /// A meter that refuses growth past `limit` bytes (`None`: no limit).
    pub fn with_limit(limit: Option<usize>) -> MemoryMeter {
        MemoryMeter {
            limit,
            ..MemoryMeter::default()
        }
    }
}

/// The platforms' limit on an instance's memory, for the message of a refused growth.
pub const PLATFORM_MEMORY_LIMIT: usize = 128 * 1024 * 1024;

/// The error an instance traps with when its linear memory would grow past `--max-memory`
/// (at instantiation or on `memory.grow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimitExceeded {
    /// The instance's linear memory, in bytes, had the growth been granted.
    pub desired: usize,
    /// `--max-memory`, in bytes.
    pub limit: usize,
}

impl std::fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "linear memory would grow to {} bytes ({}), past the host's --max-memory limit of {} (Akamai Functions and Fermyon Cloud allow {})",
            self.desired,
            format_size(self.desired),
            format_size(self.limit),
            format_size(PLATFORM_MEMORY_LIMIT),
        )
    }
}

impl std::error::Error for MemoryLimitExceeded {}

/// How a trap is reported: wasmtime's error with its chain (and wasm backtrace), led by the
/// `--max-memory` message when that is what stopped the instance (it is otherwise found only
/// under "Caused by", after the backtrace).
pub(crate) fn trap_message(trap: &wasmtime::Error) -> String {
    match trap.downcast_ref::<MemoryLimitExceeded>() {
        Some(limit) => format!("{limit}\n\n{trap:?}"),
        None => format!("{trap:?}"),
    }
}

impl wasmtime::ResourceLimiter for MemoryMeter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `current` is 0 when a memory is created at instantiation, so the first call counts
        // its initial size.
        let growth = desired.saturating_sub(current);
        let total = self.granted_bytes.saturating_add(growth);
        self.peak_bytes = self.peak_bytes.max(total);
        if let Some(limit) = self.limit {
            if total > limit {
                // An error, not `Ok(false)`: `memory.grow` would return -1 and Rust's allocator
                // abort with no word of why; an error traps at once with this message.
                return Err(wasmtime::Error::new(MemoryLimitExceeded {
                    desired: total,
                    limit,
                }));
            }
        }
        self.granted_bytes = total;
        self.last_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Granted by us, but wasmtime could not grow (the memory's own maximum, or the OS).
        self.granted_bytes = self.granted_bytes.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The export returned its error variant.
    GuestError(String),
    /// The instance trapped (panic, out of bounds, host failure).
    Trap(String),
}

pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    policy: OutboundPolicy,
    variables: Arc<BTreeMap<String, String>>,
    kv_allowed: Arc<Vec<String>>,
    stores: Arc<BTreeMap<String, KvStore>>,
    memory: MemoryMeter,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.policy,
        }
    }
}

/// Enforces `allowed_outbound_hosts` on every outbound request. A refused request fails at
/// once in the guest with `HTTP-request-denied`, as in Spin.
struct OutboundPolicy {
    allowed: Arc<AllowedHosts>,
    component: String,
    limit: Option<Arc<tokio::sync::Semaphore>>,
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<
                        dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                            + Send,
                    >,
                )>,
            > + Send,
    > {
        drop(fut);
        if !self.allowed.allows(request.uri()) {
            let uri = request.uri();
            eprintln!(
                "collector-host: component {} may not send a request to {}://{}: not in allowed_outbound_hosts",
                self.component,
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map(|a| a.as_str()).unwrap_or("?"),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let limit = self.limit.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            // A permit is held until the response body has been transferred.
            let permit = match limit {
                Some(l) => Some(
                    l.acquire_owned()
                        .await
                        .map_err(|_| wasmtime_wasi_http::Error::HttpRequestDenied)?,
                ),
                None => None,
            };
            let (resp, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let io = async move {
                let done = io.await;
                drop(permit);
                done
            };
            Ok((
                resp.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

impl key_value::Host for InstanceState {}

// Every KV function returns the guest's result inside a trappable one: a fault-injection test
// can kill the instance (trap) at a chosen write, the way a platform kills a running guest.
impl key_value::HostStore for InstanceState {
    fn open(&mut self, label: String) -> wasmtime::Result<Result<Resource<KvHandle>, KvError>> {
        if !self.kv_allowed.contains(&label) {
            return Ok(Err(KvError::AccessDenied));
        }
        let Some(store) = self.stores.get(&label).cloned() else {
            return Ok(Err(KvError::NoSuchStore));
        };
        Ok(self
            .table
            .push(KvHandle { store })
            .map_err(|_| KvError::StoreTableFull))
    }

    fn get(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, KvError>> {
        Ok(self
            .handle(&this)
            .and_then(|s| s.get(&key).map_err(KvError::Other)))
    }

    fn set(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), KvError>> {
        let store = match self.handle(&this) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        if store.kill_now(&key) {
            wasmtime::bail!("instance killed by fault injection before writing {key}");
        }
        Ok(store.set(&key, &value).map_err(KvError::Other))
    }

    fn delete(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), KvError>> {
        Ok(self
            .handle(&this)
            .and_then(|s| s.delete(&key).map_err(KvError::Other)))
    }

    fn exists(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, KvError>> {
        Ok(self
            .handle(&this)
            .and_then(|s| s.exists(&key).map_err(KvError::Other)))
    }

    fn get_keys(
        &mut self,
        this: Resource<KvHandle>,
    ) -> wasmtime::Result<Result<Vec<String>, KvError>> {
        Ok(self
            .handle(&this)
            .and_then(|s| s.keys().map_err(KvError::Other)))
    }

    fn drop(&mut self, this: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl InstanceState {
    fn handle(&self, this: &Resource<KvHandle>) -> Result<&KvStore, KvError> {
        self.table
            .get(this)
            .map(|h| &h.store)
            .map_err(|e| KvError::Other(e.to_string()))
    }
}

impl variables::Host for InstanceState {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<String, VarError>> {
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Ok(Err(VarError::InvalidName(format!(
                "invalid variable name {name:?}"
            ))));
        }
        Ok(self
            .variables
            .get(&name)
            .cloned()
            .ok_or_else(|| VarError::Undefined(format!("no variable for {name:?}"))))
    }
}

impl App {
    /// Loads the manifest, resolves variables (failing on a missing required one), compiles the
    /// component and opens the key-value stores it lists.
    pub fn load(options: &HostOptions, trigger: Trigger) -> Result<App> {
        let manifest_path = options
            .manifest
            .clone()
            .unwrap_or_else(|| PathBuf::from("spin.toml"));
        let manifest = Manifest::load(&manifest_path)?;
        let name = match trigger {
            Trigger::Cron => manifest.cron_component()?,
            Trigger::Http => manifest.http_component()?,
        }
        .to_string();
        let resolved = resolve_component(&manifest, &name, &options.variables)?;
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| manifest.dir.join(".spin"));
        let runtime_config = match &options.runtime_config {
            Some(path) => RuntimeConfig::load(path)?,
            None => RuntimeConfig::default(),
        };
        let mut stores = BTreeMap::new();
        for label in &resolved.key_value_stores {
            // Like `spin up`: "default" always exists, other labels only by runtime config.
            let store = runtime_config.open_store(label, &state_dir)?.ok_or_else(|| {
                anyhow!(
                    "[component.{name}] key_value_stores lists {label:?}, which no [key_value_store.{label}] in the runtime config defines"
                )
            })?;
            stores.insert(label.clone(), store);
        }
        let outbound_limit = runtime_config
            .outbound_http
            .and_then(|o| o.max_concurrent)
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        let compiled = compile(&resolved.source)?;
        let mut linker: Linker<InstanceState> = Linker::new(engine()?);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        key_value::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        variables::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        Ok(App {
            manifest,
            component: resolved,
            state_dir,
            compiled,
            linker,
            stores: Arc::new(stores),
            outbound_limit,
            clock_offset: options.clock_offset.clone(),
            output_sink: options.output_sink.clone(),
            max_memory: options.max_memory,
        })
    }

    /// The store behind a label, for tests that inspect or fault the state.
    pub fn store(&self, label: &str) -> Option<&KvStore> {
        self.stores.get(label)
    }

    pub(crate) fn new_store(
        &self,
        stdout: MemoryOutputPipe,
        stderr: MemoryOutputPipe,
    ) -> Store<InstanceState> {
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout).stderr(stderr);
        if let Some(offset) = &self.clock_offset {
            builder.wall_clock(OffsetClock(offset.clone()));
        }
        let wasi = builder.build();
        let mut store = Store::new(
            self.compiled.engine(),
            InstanceState {
                table: ResourceTable::new(),
                wasi,
                http: WasiHttpCtx::new(),
                policy: OutboundPolicy {
                    allowed: Arc::new(self.component.allowed_hosts.clone()),
                    component: self.component.name.clone(),
                    limit: self.outbound_limit.clone(),
                },
                variables: Arc::new(self.component.variables.clone()),
                kv_allowed: Arc::new(self.component.key_value_stores.clone()),
                stores: self.stores.clone(),
                memory: MemoryMeter::with_limit(self.max_memory),
            },
        );
        store.limiter(|s| &mut s.memory);
        store
    }

    pub(crate) fn linker(&self) -> &Linker<InstanceState> {
        &self.linker
    }

    pub(crate) fn compiled(&self) -> &Component {
        &self.compiled
    }

    /// Calls `handle-cron-event` once in a fresh instance, like one tick of trigger-cron.
    pub async fn run_cron(&self, timestamp: u64) -> Result<Invocation> {
        let (stdout, stderr) = output_pipes();
        let mut store = self.new_store(stdout.clone(), stderr.clone());
        let instantiated =
            cron_bindings::SpinCron::instantiate_async(&mut store, &self.compiled, &self.linker)
                .await;
        let outcome = match instantiated {
            // An instance whose initial memory is already past `--max-memory` traps like one
            // that grows past it later.
            Err(e) if e.downcast_ref::<MemoryLimitExceeded>().is_some() => {
                Outcome::Trap(trap_message(&e))
            }
            Err(e) => {
                return Err(anyhow::Error::from(e))
                    .context("instantiating the component for the cron trigger")
            }
            Ok(cron) => {
                let metadata =
                    cron_bindings::fermyon::spin_cron::cron_types::Metadata { timestamp };
                match cron.call_handle_cron_event(&mut store, metadata).await {
                    Ok(Ok(())) => Outcome::Ok,
                    Ok(Err(cron_bindings::fermyon::spin_cron::cron_types::Error::Other(m))) => {
                        Outcome::GuestError(m)
                    }
                    Err(trap) => Outcome::Trap(trap_message(&trap)),
                }
            }
        };
        let peak_memory_bytes = store.data().memory.peak_bytes;
        let granted_memory_bytes = store.data().memory.granted_bytes;
        drop(store);
        Ok(Invocation {
            outcome,
            stdout: pipe_text(&stdout),
            stderr: pipe_text(&stderr),
            peak_memory_bytes,
            granted_memory_bytes,
        })
    }
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// Reads a memory size the way `--max-memory` takes it: a whole number of bytes, or a whole
/// number followed by `KiB`, `MiB` or `GiB` (powers of 1024), such as `128MiB`. Zero, decimal
/// units (`MB`), fractions and anything else are refused.
pub fn parse_memory_size(text: &str) -> Result<usize> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let expected = "expected a whole number of bytes or of KiB, MiB or GiB, such as 128MiB";
    if number.is_empty() {
        return Err(anyhow!("{text:?} is not a size: {expected}"));
    }
    let scale = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        other => return Err(anyhow!("unknown unit {other:?} in {text:?}: {expected}")),
    };
    let bytes = number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| anyhow!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err(anyhow!("{text:?}: the limit must be more than 0 bytes"));
    }
    Ok(bytes)
}

/// A size for messages: whole GiB or MiB when it is one (`128 MiB`), else MiB with two
/// decimals (`128.06 MiB`); below 1 MiB, KiB or bytes.
pub fn format_size(bytes: usize) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.2} MiB", bytes as f64 / MIB as f64)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Output larger than this is cut, as a runaway guest must not exhaust the host.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

pub(crate) fn output_pipes() -> (MemoryOutputPipe, MemoryOutputPipe) {
    (
        MemoryOutputPipe::new(MAX_OUTPUT),
        MemoryOutputPipe::new(MAX_OUTPUT),
    )
}

pub(crate) fn pipe_text(pipe: &MemoryOutputPipe) -> String {
    String::from_utf8_lossy(&pipe.contents()).into_owned()
}

fn compile(source: &Path) -> Result<Component> {
    let bytes = std::fs::read(source).with_context(|| {
        format!(
            "cannot read the component {} (build it with `cargo build --target wasm32-wasip2 --release`)",
            source.display()
        )
    })?;
    Component::new(engine()?, &bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", source.display()))
}

/// A WASI command's state: WASI only, standard streams inherited.
struct CommandState {
    table: ResourceTable,
    wasi: WasiCtx,
}

impl WasiView for CommandState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Runs a WASI command component (`wasi:cli/run`), such as a benchmark built for
/// wasm32-wasip2, with the host's engine; returns whether it exited successfully and its
/// standard output.
pub async fn run_command(path: &Path, args: &[&str]) -> Result<(bool, String)> {
    let component = compile(path)?;
    let mut linker: Linker<CommandState> = Linker::new(engine()?);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let stdout = MemoryOutputPipe::new(MAX_OUTPUT);
    let mut builder = WasiCtx::builder();
    builder.stdout(stdout.clone()).inherit_stderr();
    let name = path
        .file_name()
        .map_or("command".into(), |n| n.to_string_lossy());
    builder.arg(name.as_ref());
    for a in args {
        builder.arg(a);
    }
    let mut store = Store::new(
        engine()?,
        CommandState {
            table: ResourceTable::new(),
            wasi: builder.build(),
        },
    );
    let command =
        wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &linker)
            .await
            .map_err(anyhow::Error::from)
            .context("instantiating the command")?;
    let ok = command
        .wasi_cli_run()
        .call_run(&mut store)
        .await
        .map_err(anyhow::Error::from)
        .context("running the command")?
        .is_ok();
    Ok((ok, pipe_text(&stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn the_meter_refuses_growth_past_its_limit_and_records_the_attempt() {
        let mut meter = MemoryMeter::with_limit(Some(2 * MIB));
        assert!(meter.memory_growing(0, 20 * 64 * KIB, None).unwrap());
        assert!(meter.memory_growing(20 * 64 * KIB, 2 * MIB, None).unwrap());
        let e = meter
            .memory_growing(2 * MIB, 2 * MIB + 64 * KIB, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("would grow to 2162688 bytes (2.06 MiB)")
                && e.contains("--max-memory limit of 2 MiB")
                && e.contains("allow 128 MiB"),
            "{e}"
        );
        assert_eq!(meter.peak_bytes, 2 * MIB + 64 * KIB);
        assert_eq!(meter.granted_bytes, 2 * MIB);

        let mut unlimited = MemoryMeter::default();
        assert!(unlimited.memory_growing(0, GIB, None).unwrap());
        assert_eq!((unlimited.peak_bytes, unlimited.granted_bytes), (GIB, GIB));
    }

    #[test]
    fn a_failed_growth_is_not_counted_as_granted() {
        let mut meter = MemoryMeter::with_limit(None);
        meter.memory_growing(0, MIB, None).unwrap();
        meter.memory_growing(MIB, 3 * MIB, Some(2 * MIB)).unwrap();
        meter
            .memory_grow_failed(wasmtime::format_err!("Memory maximum size exceeded"))
            .unwrap();
        assert_eq!((meter.peak_bytes, meter.granted_bytes), (3 * MIB, MIB));
    }

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(format_size(128 * MIB), "128 MiB");
        assert_eq!(format_size(GIB), "1 GiB");
        assert_eq!(format_size(512 * KIB), "512 KiB");
        assert_eq!(format_size(1000), "1000 bytes");
        assert_eq!(format_size(128 * MIB + 64 * KIB), "128.06 MiB");
    }
}
