//! Binary upgrade: a new weft takes over the running one's listening sockets.
//!
//! Both are started with the same `--upgrade-socket PATH`. The running one listens
//! there (a `SOCK_SEQPACKET` unix socket, owner-only); a new one that finds it
//! connects, and is handed every listening socket (each worker's, so no accept queue
//! is closed) and the admin sockets, as file descriptors (`SCM_RIGHTS`). The new one
//! binds nothing it was given, starts its workers on the sockets, and says `ready`;
//! only then does the old one stop accepting and drain as on SIGTERM (without leaving
//! the Consul catalog: its successor registered the same service). Until `ready`, the
//! old one serves on as if nothing happened, so a new binary that fails to start
//! changes nothing. This is nginx's USR2 model with Pingora's and Envoy's explicit
//! socket passing: the kernel queues connections on the same sockets throughout, so
//! none is refused.
//!
//! Messages, one per packet: `upgrade 1` (new -> old); `listener NAME ADDRESS` with
//! that listener's sockets attached, `admin KEY` with one socket, `end` (old -> new);
//! `ready` (new -> old).
//!
//! Invariants: the old process never removes the socket file (it is its successor's
//! once handed over); a new process binds its own under a name of its own and renames
//! it over the path only once it serves, so a start that fails leaves the running
//! one's socket in place; a file nobody answers on is stale.

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use super::reload::BoundSet;
use super::Control;

const HELLO: &[u8] = b"upgrade 1";
/// Sockets per message: the kernel's SCM_MAX_FD is 253.
const FDS_PER_MESSAGE: usize = 250;
/// How long a new process may take from connecting to `ready` (config compile,
/// workers starting); after that the old one keeps serving and forgets it.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// What a new process was handed by the one it replaces.
pub struct Inherited {
    /// Listening sockets by address (the new config decides which listener gets them).
    pub listeners: BTreeMap<SocketAddr, Vec<TcpListener>>,
    /// Admin sockets by config key (`admin.address`, `admin.private_address`).
    pub admin: BTreeMap<String, OwnedFd>,
    predecessor: Socket,
}

/// Takes the listening sockets of the weft serving at `path`, if one does. `None`
/// when no file is there or nobody answers on it (a stale file, replaced later).
pub fn take_over(path: &Path) -> io::Result<Option<Inherited>> {
    if !path.exists() {
        return Ok(None);
    }
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e),
    }
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    send(&socket, HELLO, &[])?;
    let mut inherited = Inherited {
        listeners: BTreeMap::new(),
        admin: BTreeMap::new(),
        predecessor: socket,
    };
    loop {
        let (text, fds) = receive(&inherited.predecessor)?;
        let mut words = text.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("end"), None, None) => return Ok(Some(inherited)),
            (Some("listener"), Some(_name), Some(address)) => {
                let address: SocketAddr = address.parse().map_err(|_| bad(&text))?;
                inherited
                    .listeners
                    .entry(address)
                    .or_default()
                    .extend(fds.into_iter().map(TcpListener::from));
            }
            (Some("admin"), Some(key), None) if fds.len() == 1 => {
                inherited
                    .admin
                    .extend(fds.into_iter().map(|fd| (key.to_owned(), fd)));
            }
            _ => return Err(bad(&text)),
        }
    }
}

impl Inherited {
    /// Tells the old process this one serves: it stops accepting and drains.
    pub fn ready(self) -> io::Result<()> {
        send(&self.predecessor, b"ready", &[])
    }

    /// The inherited admin socket for `key`, if it was handed over.
    pub fn admin_socket(&mut self, key: &str) -> Option<OwnedFd> {
        self.admin.remove(key)
    }
}

/// The upgrade socket of this process, bound but not yet at its path: it is bound
/// under a name of its own first and renamed over `path` once this process serves
/// (`serve`), so a start that fails after the takeover leaves the running one's
/// socket where it was.
pub struct Pending {
    path: PathBuf,
    bound_at: PathBuf,
    /// Taken by `serve`; still here on drop when the start failed.
    listener: Option<Socket>,
}

/// Binds this process's upgrade socket (owner-only), beside `path`.
pub fn bind(path: PathBuf) -> io::Result<Pending> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}", std::process::id()));
    let bound_at = path.with_file_name(name);
    let _ = std::fs::remove_file(&bound_at);
    let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    listener.bind(&SockAddr::unix(&bound_at)?)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bound_at, std::fs::Permissions::from_mode(0o600))?;
    listener.listen(4)?;
    Ok(Pending {
        path,
        bound_at,
        listener: Some(listener),
    })
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Not served after all (the start failed): the name of its own goes.
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.bound_at);
        }
    }
}

impl Pending {
    /// Puts the socket at its path (a stale file or the predecessor's is replaced in
    /// one rename) and answers upgrade requests on a thread of its own. `bound` is what
    /// the listeners hold now (kept current by reloads); `admin` the admin sockets'
    /// copies.
    pub fn serve(
        mut self,
        control: Arc<Control>,
        bound: Arc<Mutex<BoundSet>>,
        admin: Vec<(&'static str, OwnedFd)>,
    ) -> io::Result<()> {
        std::fs::rename(&self.bound_at, &self.path)?;
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        std::thread::Builder::new()
            .name("weft-upgrade".into())
            .spawn(move || {
                super::defer_to_workers();
                loop {
                    let successor = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::warn!("upgrade socket: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    match hand_over(&successor, &bound, &admin) {
                        Ok(()) => {
                            tracing::info!(
                                "upgrade: the new process serves the listeners now; draining"
                            );
                            control.handed_off.store(true, Ordering::Release);
                            // The drain is SIGTERM's, from the main thread.
                            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
                            return;
                        }
                        Err(e) => tracing::warn!("upgrade: not handed over, still serving: {e}"),
                    }
                }
            })?;
        Ok(())
    }
}

/// Sends every socket to `successor` and waits for its `ready`.
fn hand_over(
    successor: &Socket,
    bound: &Mutex<BoundSet>,
    admin: &[(&'static str, OwnedFd)],
) -> io::Result<()> {
    // Bounded both ways: the set of listeners stays locked while it is sent, and a
    // reload must not wait on a peer that stopped reading.
    successor.set_read_timeout(Some(Duration::from_secs(10)))?;
    successor.set_write_timeout(Some(Duration::from_secs(10)))?;
    let (hello, _) = receive(successor)?;
    if hello.as_bytes() != HELLO {
        return Err(bad(&hello));
    }
    {
        // Held until every socket is sent, so a reload cannot change the set midway.
        let bound = bound.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, address, sockets) in bound.handover() {
            let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
            for chunk in fds.chunks(FDS_PER_MESSAGE) {
                send(
                    successor,
                    format!("listener {name} {address}").as_bytes(),
                    chunk,
                )?;
            }
        }
        for (key, fd) in admin {
            send(
                successor,
                format!("admin {key}").as_bytes(),
                &[fd.as_raw_fd()],
            )?;
        }
        send(successor, b"end", &[])?;
    }
    successor.set_read_timeout(Some(READY_WITHIN))?;
    match receive(successor) {
        Ok((word, _)) if word == "ready" => Ok(()),
        Ok((word, _)) => Err(bad(&word)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("the new process did not say it was ready: {e}"),
        )),
    }
}

fn bad(text: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected upgrade message {text:?}"),
    )
}

/// One packet with `fds` attached.
fn send(socket: &Socket, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call,
    // and the control buffer is CMSG_SPACE bytes for exactly `fds`.
    unsafe {
        let mut msg: libc::msghdr = MaybeUninit::zeroed().assume_init();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
        if libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One packet: its text and the descriptors attached (close-on-exec).
fn receive(socket: &Socket) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut data = [0u8; 512];
    // SAFETY: as for `send`.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) }
        as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as for `send`; the kernel writes at most msg_controllen control bytes,
    // and each SCM_RIGHTS header's length bounds the descriptors read from it.
    let n = unsafe {
        let mut msg: libc::msghdr = MaybeUninit::zeroed().assume_init();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let first = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upgrade message truncated",
            ));
        }
        n as usize
    };
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the upgrade socket",
        ));
    }
    Ok((String::from_utf8_lossy(&data[..n]).into_owned(), fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_carries_its_text_and_sockets() {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).expect("pair");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        send(&a, b"listener edge 127.0.0.1:1", &[listener.as_raw_fd()]).expect("send");
        send(&a, b"end", &[]).expect("send");
        let (text, fds) = receive(&b).expect("receive");
        assert_eq!(text, "listener edge 127.0.0.1:1");
        assert_eq!(fds.len(), 1);
        let passed = TcpListener::from(fds.into_iter().next().expect("one"));
        assert_eq!(passed.local_addr().expect("addr"), address);
        let (text, fds) = receive(&b).expect("receive");
        assert_eq!((text.as_str(), fds.len()), ("end", 0));
        drop(a);
        assert_eq!(
            receive(&b).map(|(t, _)| t).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
