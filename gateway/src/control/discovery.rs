//! Service discovery, on the control side, never on a worker: a thread per watched
//! endpoints file (there are few), and one thread whose monoio runtime runs every Consul
//! watch as a task (one per distinct health query, shared by the clusters that ask it).
//!
//! Found endpoints are applied the way a reload is: the running config (the text of
//! the published snapshot, not the file, which may hold unreviewed edits) is compiled
//! again with them and published, under the same lock as SIGHUP reloads. One publisher
//! thread does that for all sources, coalescing changes that arrive together (hundreds
//! of services answering at start-up cost one compile, not hundreds). Pools are
//! keyed by endpoint address, so keep-alive connections to endpoints that stay are
//! kept. A source that fails keeps its last good endpoints (an outage never empties a
//! cluster) and is reported stale on /config and /metrics; an empty healthy set is
//! applied (the cluster then answers 503).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use weft_mesh::config::EndpointConfig;
use weft_mesh::snapshot::{ConsulQuery, ConsulSettings, Discovered, Discovery};

use super::consul;
use super::Control;

/// What discovery knows, shared by the watch threads and the admin thread.
#[derive(Default)]
pub struct DiscoveryState {
    found: Mutex<Discovered>,
    status: Mutex<BTreeMap<String, SourceStatus>>,
    watches: Mutex<HashMap<Discovery, Watch>>,
    /// Sources whose endpoints changed since the last publish (empty: nothing to do).
    pending: Mutex<Vec<String>>,
    wake: std::sync::Condvar,
    publisher_started: AtomicBool,
    /// Hands new Consul watches to the thread that runs them all.
    consul_tasks: Mutex<Option<std::sync::mpsc::Sender<ConsulWatch>>>,
}

/// How one cluster's source is doing.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceStatus {
    pub source: String,
    /// The last answer could not be used: the endpoints served are the last good ones.
    pub stale: bool,
    pub last_error: Option<String>,
    pub updates: u64,
    pub errors: u64,
    pub endpoints: usize,
}

struct Watch {
    clusters: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl DiscoveryState {
    pub fn found(&self) -> Discovered {
        lock(&self.found).clone()
    }

    pub fn status(&self) -> BTreeMap<String, SourceStatus> {
        lock(&self.status).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads every watched endpoints file again now (SIGHUP): an edit the watcher has not
/// noticed yet is applied with the reload, not up to a recheck later.
pub fn reread_files(control: &Control) {
    let watches = lock(&control.discovery.watches);
    for (spec, watch) in watches.iter() {
        if let Discovery::File(path) = spec {
            let source = format!("file:{}", path.display());
            deliver(control, &watch.clusters, &source, read_endpoints_file(path));
        }
    }
}

/// Starts watches the published snapshot needs and stops those it no longer does.
pub fn reconcile(control: &Arc<Control>) {
    let snapshot = control.publisher.load();
    let mut wanted: HashMap<Discovery, Vec<String>> = HashMap::new();
    for c in &snapshot.clusters {
        if let Some(d) = &c.discovery {
            wanted.entry(d.clone()).or_default().push(c.name.clone());
        }
    }
    let state = &control.discovery;
    if !wanted.is_empty() && !state.publisher_started.swap(true, Ordering::AcqRel) {
        let c = control.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("weft-discovery".into())
            .spawn(move || publisher(&c))
        {
            tracing::error!("discovery: cannot start the publisher thread: {e}");
            state.publisher_started.store(false, Ordering::Release);
        }
    }
    let mut watches = lock(&state.watches);
    watches.retain(|spec, w| {
        let keep = wanted.contains_key(spec);
        if !keep {
            w.stop.store(true, Ordering::Release);
        }
        keep
    });
    {
        let mut found = lock(&state.found);
        let mut status = lock(&state.status);
        let discovering: Vec<&String> = wanted.values().flatten().collect();
        found.retain(|name, _| discovering.contains(&name));
        status.retain(|name, _| discovering.contains(&name));
    }
    for (spec, clusters) in wanted {
        if let Some(w) = watches.get(&spec) {
            *lock(&w.clusters) = clusters;
            continue;
        }
        let watch = Watch {
            clusters: Arc::new(Mutex::new(clusters)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (c, clusters, stop) = (control.clone(), watch.clusters.clone(), watch.stop.clone());
        let settings = snapshot.consul.clone();
        let started = match spec.clone() {
            Discovery::File(path) => std::thread::Builder::new()
                .name("weft-discovery-file".into())
                .spawn(move || watch_file(&c, &clusters, &stop, &path))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Discovery::Consul(query) => consul_runtime(control).and_then(|tx| {
                tx.send(ConsulWatch {
                    control: c,
                    clusters,
                    stop,
                    query,
                    settings,
                })
                .map_err(|_| "the Consul watch thread is gone".to_owned())
            }),
        };
        match started {
            Ok(()) => {
                watches.insert(spec, watch);
            }
            Err(e) => tracing::error!("discovery: cannot start a watch: {e}"),
        }
    }
}

/// Records what a source said and, when it changed the endpoints, publishes.
fn deliver(
    control: &Control,
    clusters: &Mutex<Vec<String>>,
    source: &str,
    outcome: Result<Vec<EndpointConfig>, String>,
) {
    let clusters = lock(clusters).clone();
    let state = &control.discovery;
    let mut changed = false;
    {
        let mut found = lock(&state.found);
        let mut status = lock(&state.status);
        for name in &clusters {
            let s = status.entry(name.clone()).or_default();
            s.source = source.to_owned();
            match &outcome {
                Ok(endpoints) => {
                    s.stale = false;
                    s.last_error = None;
                    s.updates += 1;
                    s.endpoints = endpoints.len();
                    let same = found
                        .get(name)
                        .is_some_and(|old| same_endpoints(old, endpoints));
                    if !same {
                        found.insert(name.clone(), endpoints.clone());
                        changed = true;
                    }
                }
                Err(e) => {
                    s.stale = true;
                    s.errors += 1;
                    s.last_error = Some(e.clone());
                }
            }
        }
    }
    match &outcome {
        Err(e) => tracing::warn!(source, "discovery: keeping the last good endpoints: {e}"),
        Ok(_) if changed => {
            lock(&state.pending).push(source.to_owned());
            state.wake.notify_one();
        }
        Ok(_) => {}
    }
}

/// How long the publisher lets changes gather before compiling them together.
const COALESCE: Duration = Duration::from_millis(10);

/// The one thread that publishes what discovery found.
fn publisher(control: &Control) {
    let state = &control.discovery;
    loop {
        let mut pending = lock(&state.pending);
        while pending.is_empty() {
            pending = state
                .wake
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(pending);
        std::thread::sleep(COALESCE);
        let sources = std::mem::take(&mut *lock(&state.pending));
        republish(control, &sources.join(","));
    }
}

fn same_endpoints(a: &[EndpointConfig], b: &[EndpointConfig]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.address == y.address && x.weight == y.weight && x.tags == y.tags && x.meta == y.meta
        })
}

/// Publishes the running snapshot with what discovery found: only the clusters whose
/// endpoints changed are rebuilt; the config is not parsed or compiled again, so the
/// cost does not grow with its routes (`Snapshot::with_discovered`).
pub fn republish(control: &Control, source: &str) {
    let _publishing = lock(&control.publishing);
    let current = control.publisher.load();
    let found = control.discovery.found();
    let update = current.with_discovered(&found);
    if let Some(next) = update.snapshot {
        let version = control.publisher.publish(next);
        control.version.store(version, Ordering::Release);
        tracing::info!(version, source, "discovery: serving new endpoints");
    }
    if update.refused.is_empty() {
        return;
    }
    // A refused answer (an endpoint that does not resolve, or that no service runs at)
    // leaves its cluster on the last good endpoints, which is what reloads and later
    // publishes see too.
    let served = control.publisher.load();
    let mut found = lock(&control.discovery.found);
    let mut status = lock(&control.discovery.status);
    for (cluster, errors) in update.refused {
        tracing::warn!(source, cluster, "discovery: endpoints refused: {errors}");
        match served.cluster_by_name(&cluster) {
            Some(id) => {
                let kept = served.clusters[id]
                    .endpoints
                    .iter()
                    .map(|e| e.as_config())
                    .collect();
                found.insert(cluster.clone(), kept);
            }
            None => {
                found.remove(&cluster);
            }
        }
        if let Some(s) = status.get_mut(&cluster) {
            s.stale = true;
            s.errors += 1;
            s.last_error = Some(errors.to_string());
        }
    }
}

/// How often a watched file is looked at when inotify is not available.
const FILE_POLL: Duration = Duration::from_millis(200);
/// With inotify, a look this often anyway (a missed event costs at most this).
const FILE_RECHECK: Duration = Duration::from_secs(2);

fn watch_file(control: &Control, clusters: &Mutex<Vec<String>>, stop: &AtomicBool, path: &Path) {
    let source = format!("file:{}", path.display());
    let notify = Inotify::watch_dir(path.parent().unwrap_or(Path::new(".")));
    if notify.is_none() {
        tracing::info!(
            source,
            "discovery: inotify unavailable, polling every {FILE_POLL:?}"
        );
    }
    let mut seen: Option<(SystemTime, u64)> = None;
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp != seen || first {
            first = false;
            seen = stamp;
            deliver(control, clusters, &source, read_endpoints_file(path));
        }
        match &notify {
            Some(n) => n.wait(FILE_RECHECK),
            None => std::thread::sleep(FILE_POLL),
        }
    }
}

/// An inotify watch on a directory: wakes on any write, rename or removal in it (an
/// editor's save-by-rename replaces the file, so the directory is what to watch).
struct Inotify(std::os::fd::OwnedFd);

impl Inotify {
    fn watch_dir(dir: &Path) -> Option<Inotify> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: inotify_init1 returns a new fd or -1; ownership moves to OwnedFd.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a fresh descriptor we own.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MODIFY;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), mask) };
        (wd >= 0).then_some(Inotify(owned))
    }

    /// Waits for an event or `limit`, then drains whatever arrived.
    fn wait(&self, limit: Duration) {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the timeout is bounded.
        unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as libc::c_int) };
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a stack buffer of the given length; the fd is non-blocking.
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

/// An endpoints file: TOML `endpoints = ["host:port", { address, weight }]`, or a JSON
/// array of `"host:port"` / `{ "address": ..., "weight": ... }`.
pub fn read_endpoints_file(path: &Path) -> Result<Vec<EndpointConfig>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        endpoints: Vec<EndpointConfig>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let endpoints = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<EndpointConfig>>(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        toml::from_str::<File>(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .endpoints
    };
    for e in &endpoints {
        if e.weight == 0 {
            return Err(format!(
                "{}: {}: weight must be > 0",
                path.display(),
                e.address
            ));
        }
    }
    Ok(endpoints)
}

/// A Consul watch to start on the discovery runtime.
struct ConsulWatch {
    control: Arc<Control>,
    clusters: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    query: ConsulQuery,
    settings: ConsulSettings,
}

/// The sender of the thread that runs every Consul watch as a task on one monoio
/// runtime, started on first use.
fn consul_runtime(control: &Arc<Control>) -> Result<std::sync::mpsc::Sender<ConsulWatch>, String> {
    let mut slot = lock(&control.discovery.consul_tasks);
    if let Some(tx) = slot.as_ref() {
        return Ok(tx.clone());
    }
    let (tx, rx) = std::sync::mpsc::channel::<ConsulWatch>();
    std::thread::Builder::new()
        .name("weft-discovery-consul".into())
        .spawn(move || {
            let mut rt = match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("discovery: cannot start the Consul runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                loop {
                    // New watches arrive from reloads; a tenth of a second is soon enough.
                    loop {
                        match rx.try_recv() {
                            Ok(w) => {
                                monoio::spawn(async move {
                                    watch_consul(
                                        &w.control,
                                        &w.clusters,
                                        &w.stop,
                                        &w.query,
                                        &w.settings,
                                    )
                                    .await
                                });
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                        }
                    }
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        })
        .map_err(|e| e.to_string())?;
    *slot = Some(tx.clone());
    Ok(tx)
}

/// Consul's blocking-query loop for one query (see `../shared/consul/README.md`).
async fn watch_consul(
    control: &Control,
    clusters: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    query: &ConsulQuery,
    settings: &ConsulSettings,
) {
    let source = format!("consul:{}", query.service);
    let mut index = 0u64;
    let mut bucket = TokenBucket::new();
    let mut backoff = Backoff::default();
    while !stop.load(Ordering::Acquire) {
        bucket.take().await;
        // Read per query: a token rotated in its file is used from the next one.
        let token = consul_token(settings);
        let asked = consul::health(settings, query, index, token.as_deref());
        match asked.await {
            Ok(answer) => {
                backoff.reset();
                if answer.acl_filtered {
                    tracing::warn!(
                        source,
                        "Consul filtered the results by ACL: check the token's policy"
                    );
                }
                // The index must grow: a smaller one means Consul's state was reset, so
                // start over; 0 (or none) must never be sent back (it would not block).
                index = if answer.index < index {
                    0
                } else {
                    answer.index.max(1)
                };
                if !stop.load(Ordering::Acquire) {
                    deliver(control, clusters, &source, Ok(answer.endpoints));
                }
            }
            Err(e) => {
                deliver(control, clusters, &source, Err(e.to_string()));
                monoio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Registers the sidecar's service, if configured (logged, never fatal: the agent may
/// come later, and discovery elsewhere handles a missing instance).
pub fn register(control: &Control) {
    let snapshot = control.publisher.load();
    let Some(reg) = &snapshot.registration else {
        return;
    };
    let token = consul_token(&snapshot.consul);
    match consul::register(&snapshot.consul, reg, token.as_deref()) {
        Ok(()) => tracing::info!(id = %reg.id, "registered with the Consul agent"),
        Err(e) => tracing::error!(id = %reg.id, "Consul registration failed: {e}"),
    }
}

/// Takes the registration back (draining).
pub fn deregister(control: &Control) {
    let snapshot = control.publisher.load();
    let Some(reg) = &snapshot.registration else {
        return;
    };
    let token = consul_token(&snapshot.consul);
    match consul::deregister(&snapshot.consul, &reg.id, token.as_deref()) {
        Ok(()) => tracing::info!(id = %reg.id, "deregistered from the Consul agent"),
        Err(e) => tracing::warn!(id = %reg.id, "Consul deregistration failed: {e}"),
    }
}

/// The ACL token: `consul.token`, else `consul.token_file`, else `CONSUL_HTTP_TOKEN`.
fn consul_token(settings: &ConsulSettings) -> Option<String> {
    if let Some(t) = &settings.token {
        return Some(t.clone());
    }
    match settings.token_file.as_deref() {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                tracing::error!("consul.token_file {}: {e}", f.display());
                None
            }
        },
        None => std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    }
}

/// Paces the query loop: a burst for quick successive changes, then at most one
/// request per `REFILL` while results churn.
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

const BURST: f64 = 5.0;
const REFILL: Duration = Duration::from_millis(200);

impl TokenBucket {
    fn new() -> TokenBucket {
        TokenBucket {
            tokens: BURST,
            last: Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.last).as_secs_f64() / REFILL.as_secs_f64())
        .min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = REFILL.mul_f64(1.0 - self.tokens);
            monoio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Exponential backoff with full jitter, 100 ms doubling up to a minute.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = Duration::from_millis(100)
            .saturating_mul(1 << self.attempt.min(10))
            .min(Duration::from_secs(60));
        self.attempt += 1;
        cap.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}
