//! The only module with `unsafe`: thin wrappers over the few process-level
//! syscalls that `rustix` does not expose safely. Everything that touches a
//! layer goes through `rustix` (directory fds and `*at` calls) elsewhere.

use std::io;

/// Result of [`fork`].
pub enum Fork {
    Parent(i32),
    Child,
}

/// Forks the process. Only call while the process is single-threaded
/// (cairnfs forks after the FUSE handshake, before starting worker threads).
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the caller guarantees the process is single-threaded, so the
    // child cannot inherit a lock held by another thread.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// Ends the process at once, without running destructors or atexit hooks
/// (the forked parent must not unmount the filesystem its child serves).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Detaches from the controlling terminal and process group.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for a child and returns its raw wait status.
pub fn waitpid(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(status);
    }
}
