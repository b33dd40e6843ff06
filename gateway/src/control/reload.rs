//! Applying a new config while serving (SIGHUP).
//!
//! Order matters, so that no request fails and no connection is refused:
//! 1. load and compile the file exactly as `weft check` and startup do; any error
//!    refuses the reload (logged, counted, shown on /config) and changes nothing;
//! 2. bind sockets for added listeners on behalf of every worker (a bind error also
//!    refuses the reload; nothing has been published yet);
//! 3. publish the snapshot: new requests see it, running ones keep theirs;
//! 4. tell workers to accept on the added sockets (the kernel queues connections in
//!    the meantime) and to stop accepting on removed listeners, whose connections then
//!    drain. A listener that exists in both configs is never touched, so there is no
//!    moment where its port refuses connections. A changed address is a remove + add.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Instant;

use weft_mesh::config;
use weft_mesh::snapshot::{self, Snapshot};

use super::{Control, ReloadOutcome, Socket, WorkerMsg};
use crate::listen;

/// The listeners bound now, as the control thread tracks them.
#[derive(Default)]
pub struct BoundSet {
    by_name: BTreeMap<String, Bound>,
    next_slot: usize,
    /// Sockets handed over by the weft this one replaces, by address, until a
    /// listener of the config takes them (`control::upgrade`).
    inherited: BTreeMap<SocketAddr, Vec<TcpListener>>,
}

/// One bound listener: its address, and a copy of every socket its workers accept on,
/// to hand over to a successor (`control::upgrade`). Dropped with the listener, so a
/// removed listener's port is closed once its workers let go of theirs.
struct Bound {
    address: SocketAddr,
    copies: Vec<TcpListener>,
}

/// A listener's sockets, one list per worker (a worker may get more than one when
/// it inherited more sockets than this process has workers).
pub type PerWorker = Vec<Vec<Socket>>;

/// Sockets bound but not recorded yet (a reload records them once nothing can fail).
pub struct Staged {
    name: String,
    bound: Bound,
    pub per_worker: PerWorker,
}

impl BoundSet {
    /// A set that takes `inherited` sockets before binding new ones.
    pub fn inheriting(inherited: BTreeMap<SocketAddr, Vec<TcpListener>>) -> BoundSet {
        BoundSet {
            inherited,
            ..BoundSet::default()
        }
    }

    /// Binds `name` at `addr` for every worker and records it as bound.
    pub fn bind(&mut self, name: &str, addr: SocketAddr, workers: usize) -> io::Result<PerWorker> {
        let staged = self.stage(name, addr, workers)?;
        Ok(self.record(staged))
    }

    /// Sockets for `name` at `addr`: the inherited ones for that address, then new
    /// SO_REUSEPORT ones until every worker has one. An address no socket of this
    /// process holds, and another process listens on, is refused.
    pub fn stage(&mut self, name: &str, addr: SocketAddr, workers: usize) -> io::Result<Staged> {
        let mut sockets = self.inherited.remove(&addr).unwrap_or_default();
        let held = self.by_name.values().any(|b| b.address == addr);
        if sockets.is_empty() && !held && listen::listened_elsewhere(addr)? {
            return Err(listen::in_use_elsewhere(addr));
        }
        while sockets.len() < workers {
            sockets.push(listen::bind_reuseport(addr)?);
        }
        let copies = sockets
            .iter()
            .map(TcpListener::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        let slot = self.next_slot;
        self.next_slot += 1;
        let mut per_worker: PerWorker = (0..workers).map(|_| Vec::new()).collect();
        for (i, listener) in sockets.into_iter().enumerate() {
            per_worker[i % workers].push(Socket {
                slot,
                name: name.to_owned(),
                listener,
            });
        }
        Ok(Staged {
            name: name.to_owned(),
            bound: Bound {
                address: addr,
                copies,
            },
            per_worker,
        })
    }

    /// Records staged sockets as bound; returns them for the workers.
    pub fn record(&mut self, staged: Staged) -> PerWorker {
        self.by_name.insert(staged.name, staged.bound);
        staged.per_worker
    }

    /// Closes inherited sockets no listener took (the new config dropped them).
    pub fn close_unclaimed(&mut self) {
        for (address, _) in std::mem::take(&mut self.inherited) {
            tracing::warn!(%address, "upgrade: the old process listened here and this config does not; closed");
        }
    }

    /// Every listener's name, address and sockets, for a successor.
    pub fn handover(&self) -> impl Iterator<Item = (&str, SocketAddr, &[TcpListener])> {
        self.by_name
            .iter()
            .map(|(n, b)| (n.as_str(), b.address, b.copies.as_slice()))
    }
}

impl fmt::Display for BoundSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .by_name
            .iter()
            .map(|(n, b)| format!("{n}={}", b.address))
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// Listener changes between what is bound and what `next` wants.
struct ListenerDiff {
    removed: Vec<String>,
    added: Vec<(String, SocketAddr)>,
}

fn diff(bound: &BoundSet, next: &Snapshot) -> ListenerDiff {
    let wanted: BTreeMap<&str, SocketAddr> = next
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address))
        .collect();
    let removed = bound
        .by_name
        .iter()
        .filter(|(n, b)| wanted.get(n.as_str()) != Some(&b.address))
        .map(|(n, _)| n.clone())
        .collect();
    let added = wanted
        .iter()
        .filter(|(n, a)| bound.by_name.get(**n).map(|b| b.address) != Some(**a))
        .map(|(n, a)| (n.to_string(), *a))
        .collect();
    ListenerDiff { removed, added }
}

pub fn apply(control: &Control, bound: &mut BoundSet) {
    let started = Instant::now();
    let _publishing = control
        .publishing
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let current = control.publisher.load();
    let found = control.discovery.found();
    let mut next = match config::load(&current.source_file, current.role)
        .and_then(|l| snapshot::compile_with(&l, &found))
    {
        Ok(s) => s,
        Err(errors) => return refuse(control, current.version, errors.to_string()),
    };
    if next.content_hash == current.content_hash {
        tracing::info!(version = current.version, "reload: config unchanged");
        control.reloads.record(ReloadOutcome::Unchanged);
        return;
    }
    // Requests in flight keep their permits on the counters they took them from.
    next.inherit_shared(&current);
    for w in &next.warnings {
        tracing::warn!("reload: {w}");
    }
    if next.admin != current.admin {
        // The admin sockets are bound once, at start (a probe must never find them gone).
        tracing::warn!(
            "reload: [admin] changed; the admin listener keeps its addresses until restart"
        );
    }
    let changes = diff(bound, &next);
    // Bind everything first: a failure refuses the reload before anything changed.
    let mut staged = Vec::new();
    for (name, addr) in &changes.added {
        match bound.stage(name, *addr, control.workers) {
            Ok(sockets) => staged.push(sockets),
            Err(e) => {
                return refuse(
                    control,
                    current.version,
                    format!("listener {name:?}: cannot bind {addr}: {e}"),
                )
            }
        }
    }
    for name in &changes.removed {
        bound.by_name.remove(name);
    }
    let staged: Vec<PerWorker> = staged.into_iter().map(|s| bound.record(s)).collect();
    let hash = next.content_hash;
    let version = control.publisher.publish(next);
    control.version.store(version, Ordering::Release);

    let mailboxes = control
        .mailboxes
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for name in &changes.removed {
        for m in mailboxes.iter() {
            let _ = m.send(WorkerMsg::Unlisten(name.clone()));
        }
    }
    for per_worker in staged {
        for (m, sockets) in mailboxes.iter().zip(per_worker) {
            for socket in sockets {
                let _ = m.send(WorkerMsg::Listen(socket));
            }
        }
    }
    drop(mailboxes);
    control.reloads.record(ReloadOutcome::Published(version));
    let added: Vec<String> = changes
        .added
        .iter()
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect();
    tracing::info!(
        version,
        hash = %format!("{hash:016x}"),
        took_ms = started.elapsed().as_millis() as u64,
        added = %added.join(","),
        removed = %changes.removed.join(","),
        "reload: serving new config"
    );
}

/// One log line for a refused reload, whatever the number of errors: a log shipper
/// keeps an event whole, and a refusal is one event.
fn refuse(control: &Control, keeping: u64, errors: String) {
    let count = errors.lines().count();
    let joined = errors.lines().collect::<Vec<_>>().join(" | ");
    tracing::error!(
        errors = count,
        "reload refused, still serving version {keeping}: {joined}"
    );
    control.reloads.record(ReloadOutcome::Refused(errors));
}
