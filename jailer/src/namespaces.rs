//! Namespaces and the root switch: new PID, mount, IPC and UTS namespaces, joining a
//! network namespace, and pivot_root into the jail.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::jail::OLD_ROOT;
use crate::sys::{check, check_long, cpath};

/// `statfs` magic of nsfs, the file system of /proc/PID/ns/* and bind-mounted namespaces.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Makes the next child of the calling process PID 1 of a new PID namespace (the
/// caller's own PID namespace does not change).
pub fn unshare_pid() -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
    Ok(())
}

/// New mount, IPC and UTS namespaces for the calling process.
pub fn unshare_mount_ipc_uts() -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) })?;
    Ok(())
}

/// ioctl(NS_GET_NSTYPE): the CLONE_NEW* type of a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Whether `file` is a namespace file (nsfs).
pub fn is_namespace_file(file: &File) -> bool {
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid out-pointer.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    // f_type is signed in glibc, unsigned in musl.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64;
    ret == 0 && magic == NSFS_MAGIC
}

/// Whether `file` refers to a network namespace.
pub fn is_net_namespace(file: &File) -> bool {
    // SAFETY: NS_GET_NSTYPE takes no argument and is only issued on an nsfs file.
    is_namespace_file(file)
        && unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) } == libc::CLONE_NEWNET
}

/// Joins the network namespace `file` refers to.
pub fn join_netns(file: &File) -> io::Result<()> {
    // SAFETY: setns on a descriptor we own; the kernel checks its type.
    check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}

/// Sets the host name of the (new) UTS namespace.
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

fn mount(
    source: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let ptr = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: NUL-terminated strings or null pointers, and no data argument.
    let ret = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    };
    check(ret)?;
    Ok(())
}

/// Makes `root` the root directory of the calling process's (new) mount namespace:
/// propagation private, `root` bind-mounted onto itself, pivot_root, the old root
/// detached and its directory removed, then /proc mounted if asked. The error names the
/// step that failed.
pub fn pivot_into(root: &Path, mount_proc: bool) -> Result<(), (String, io::Error)> {
    let step = |s: &str| {
        let s = s.to_string();
        move |e| (s, e)
    };
    let slash = cpath(Path::new("/")).map_err(step("/"))?;
    let croot = cpath(root).map_err(step("jail root"))?;
    mount(None, &slash, None, libc::MS_REC | libc::MS_PRIVATE).map_err(step(
        "making mount propagation private (mount / MS_REC|MS_PRIVATE)",
    ))?;
    mount(Some(&croot), &croot, None, libc::MS_BIND | libc::MS_REC).map_err(step(&format!(
        "bind-mounting {} onto itself",
        root.display()
    )))?;
    std::env::set_current_dir(root).map_err(step(&format!("chdir {}", root.display())))?;
    let old = cpath(Path::new(OLD_ROOT)).map_err(step(OLD_ROOT))?;
    // SAFETY: a NUL-terminated relative path.
    check(unsafe { libc::mkdir(old.as_ptr(), 0o700) })
        .map_err(step(&format!("creating {}/{OLD_ROOT}", root.display())))?;
    let dot = cpath(Path::new(".")).map_err(step("."))?;
    // SAFETY: pivot_root with two NUL-terminated paths.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) })
        .map_err(step(&format!("pivot_root into {}", root.display())))?;
    std::env::set_current_dir("/").map_err(step("chdir / in the jail"))?;
    let old_abs = cpath(&Path::new("/").join(OLD_ROOT)).map_err(step(OLD_ROOT))?;
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::umount2(old_abs.as_ptr(), libc::MNT_DETACH) })
        .map_err(step("unmounting the old root"))?;
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::rmdir(old_abs.as_ptr()) })
        .map_err(step("removing the old root's directory"))?;
    if mount_proc {
        let proc_ = cpath(Path::new("/proc")).map_err(step("/proc"))?;
        let fstype = cpath(Path::new("proc")).map_err(step("proc"))?;
        mount(
            Some(&fstype),
            &proc_,
            Some(&fstype),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )
        .map_err(step("mounting /proc in the jail"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_files_are_recognised() {
        let ns = File::open("/proc/self/ns/net").unwrap();
        assert!(is_namespace_file(&ns));
        assert!(is_net_namespace(&ns));
        let uts = File::open("/proc/self/ns/uts").unwrap();
        assert!(is_namespace_file(&uts) && !is_net_namespace(&uts));
        let not = File::open("/proc/self/status").unwrap();
        assert!(!is_namespace_file(&not) && !is_net_namespace(&not));
    }
}
