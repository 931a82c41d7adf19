//! Dropping privileges before exec: stray descriptors, capabilities, no_new_privs and the
//! switch to the unprivileged uid/gid.

use std::io;
use std::os::fd::RawFd;

use crate::sys::{check, check_long};

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Capability numbers are below 64 for the foreseeable future; PR_CAPBSET_READ tells
/// where the kernel's list ends.
const MAX_CAP: libc::c_ulong = 64;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Closes every descriptor above 2 except `keep`.
pub fn close_fds_except(keep: RawFd) -> io::Result<()> {
    let keep = u32::try_from(keep).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ranges = [(3, keep.saturating_sub(1)), (keep + 1, u32::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes descriptors; nothing of ours refers to them.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if ret < 0 {
            return close_listed_fds(keep);
        }
    }
    Ok(())
}

/// The fallback for kernels without close_range: the descriptors listed in /proc/self/fd.
fn close_listed_fds(keep: u32) -> io::Result<()> {
    let fds: Vec<u32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2 && fd != keep) {
        // SAFETY: closing a descriptor number; the directory's own one is already closed
        // and EBADF is harmless.
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}

/// Clears the ambient capability set and drops every capability from the bounding set.
/// Needs CAP_SETPCAP, so it runs before the uid changes.
pub fn drop_bounding_and_ambient() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities has none to clear.
    if ret < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    for cap in 0..MAX_CAP {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } < 0 {
            break;
        }
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) })?;
    }
    Ok(())
}

/// Sets no_new_privs: exec can never grant privileges again (setuid bits, file caps).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// Drops supplementary groups, then sets gid and uid (real, effective and saved). The
/// kernel clears the permitted and effective capabilities on the change to a non-zero
/// uid; the inheritable set is cleared explicitly. The error names the step.
pub fn become_user(uid: u32, gid: u32) -> Result<(), (&'static str, io::Error)> {
    // SAFETY: no groups: a zero count and a null list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(|e| ("setgroups", e))?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map_err(|e| ("setgid", e))?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map_err(|e| ("setuid", e))?;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data structs as capset(2) expects for version 3.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })
        .map_err(|e| ("clearing capabilities (capset)", e))?;
    Ok(())
}

/// Confirms the result of `become_user`: the ids and no capability left.
pub fn verify(uid: u32, gid: u32) -> Result<(), String> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and room for two data structs, as capget(2) expects for version 3.
    check_long(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })
        .map_err(|e| format!("capget: {}", crate::sys::describe(&e)))?;
    if data
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err("capabilities are still present after setuid".to_string());
    }
    // SAFETY: getters without arguments.
    let ids = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if ids != (uid, uid, gid, gid) {
        return Err(format!("uid/gid are {ids:?} after setuid, not {uid}/{gid}"));
    }
    Ok(())
}
