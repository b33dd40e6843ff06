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
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Instant;

use weft_mesh::config;
use weft_mesh::snapshot::{self, Snapshot};

use super::{Control, Socket, WorkerMsg};
use crate::listen;

/// The listeners bound now, as the control thread tracks them.
#[derive(Default)]
pub struct BoundSet {
    by_name: BTreeMap<String, SocketAddr>,
    next_slot: usize,
}

impl BoundSet {
    /// Binds `name` at `addr` once per worker and records it as bound.
    pub fn bind(
        &mut self,
        name: &str,
        addr: SocketAddr,
        workers: usize,
    ) -> io::Result<Vec<Socket>> {
        let sockets = self.bind_unrecorded(name, addr, workers)?;
        self.by_name.insert(name.to_owned(), addr);
        Ok(sockets)
    }

    fn bind_unrecorded(
        &mut self,
        name: &str,
        addr: SocketAddr,
        workers: usize,
    ) -> io::Result<Vec<Socket>> {
        let slot = self.next_slot;
        self.next_slot += 1;
        (0..workers)
            .map(|_| {
                listen::bind_reuseport(addr).map(|listener| Socket {
                    slot,
                    name: name.to_owned(),
                    listener,
                })
            })
            .collect()
    }
}

impl fmt::Display for BoundSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .by_name
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
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
        .filter(|(n, a)| wanted.get(n.as_str()) != Some(a))
        .map(|(n, _)| n.clone())
        .collect();
    let added = wanted
        .iter()
        .filter(|(n, a)| bound.by_name.get(**n) != Some(a))
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
        match bound.bind_unrecorded(name, *addr, control.workers) {
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
    for (name, addr) in &changes.added {
        bound.by_name.insert(name.clone(), *addr);
    }
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
    for sockets in staged {
        for (m, socket) in mailboxes.iter().zip(sockets) {
            let _ = m.send(WorkerMsg::Listen(socket));
        }
    }
    drop(mailboxes);
    control.reloads.succeeded.fetch_add(1, Ordering::Relaxed);
    *control
        .reloads
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    tracing::info!(
        version,
        hash = %format!("{hash:016x}"),
        took = ?started.elapsed(),
        added = ?changes.added,
        removed = ?changes.removed,
        "reload: serving new config"
    );
}

fn refuse(control: &Control, keeping: u64, errors: String) {
    tracing::error!("reload refused, still serving version {keeping}:\n{errors}");
    control.reloads.failed.fetch_add(1, Ordering::Relaxed);
    *control
        .reloads
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(errors);
}
