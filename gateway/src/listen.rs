//! Listening sockets, CPU affinity: the OS-facing part of thread-per-core.
//!
//! Every worker gets its own SO_REUSEPORT socket per listener address, all bound in the
//! main thread before any worker starts, so a port conflict is reported once and weft
//! exits before serving anything. The kernel then spreads incoming connections across
//! the workers' sockets; there is no accept thread and no hand-off.
//!
//! SO_REUSEPORT would also let a second process of the same user join the group and
//! take a share of the connections with its own, possibly stale, config. So before
//! binding an address weft holds no socket for, it asks whether anyone listens there
//! (`listened_elsewhere`) and refuses, as nginx does; a deliberate replacement passes
//! the running process's sockets over instead (`control::upgrade`).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

const BACKLOG: i32 = 4096;

pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Whether some socket already listens on `addr`: a bind without SO_REUSEPORT (but
/// with SO_REUSEADDR, so connections in TIME_WAIT do not count) fails exactly when a
/// listening socket holds the address. Asked only for addresses this process holds no
/// socket for, so a "yes" is another process.
pub fn listened_elsewhere(addr: SocketAddr) -> io::Result<bool> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(true),
        Err(e) => Err(e),
    }
}

/// The error of a listener address another process serves.
pub fn in_use_elsewhere(addr: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "{addr} is in use by another process (to replace a running weft without \
             refusing connections, start the new one with --upgrade-socket; README, \
             \"Upgrading weft\")"
        ),
    )
}

/// CPUs this process may run on: the same answer config validation gets.
pub use weft_mesh::host::allowed_cpus;

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; CPU_SET only writes inside the set for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {cpu} out of range"),
            ));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
