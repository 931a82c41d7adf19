//! minipc-jailer: runs the minipc VMM confined to its own root directory, namespaces,
//! cgroup and resource limits, as an unprivileged user without capabilities.
//! See jailer/README.md.

mod args;
mod cgroup;
mod jail;
mod launch;
mod libs;
mod namespaces;
mod privileges;
mod rlimits;
mod sys;
mod vmm_args;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use args::{ArgsError, Command};
use cgroup::CgroupError;
use jail::{Jail, JailError};
use launch::LaunchError;
use libs::LibsError;
use sys::describe;
use vmm_args::VmmArgsError;

/// Environment variables passed on to the VMM; everything else is dropped.
const PASSED_ENV: &[&str] = &["MINIPC_LOG"];

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("must be run as root (effective uid is {0}); it drops to --uid/--gid itself")]
    NotRoot(u32),
    #[error("{flag} {}: {}", .path.display(), describe(.err))]
    File {
        flag: String,
        path: PathBuf,
        err: io::Error,
    },
    #[error("{flag} {}: not a regular file", .path.display())]
    NotRegular { flag: String, path: PathBuf },
    #[error("--exec-file {}: not executable", .0.display())]
    NotExecutable(PathBuf),
    #[error("--exec-file: {0}")]
    Libs(#[from] LibsError),
    #[error(transparent)]
    VmmArgs(#[from] VmmArgsError),
    #[error("--serial file:{}: no directory {}", .path.display(), .dir.display())]
    SerialDir { path: PathBuf, dir: PathBuf },
    #[error("--netns {}: not a network namespace file", .0.display())]
    NotNetns(PathBuf),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// The jailer's own exit codes, in the VMM's scheme (odd codes are the guest's, even codes
/// the VMM's or the jailer's); every other code is the VMM's, passed through.
mod code {
    /// A bad argument, file or jail id, or the jailer not run as root: nothing was started.
    pub const BAD_INPUT: i32 = 2;
    /// The host failed to set up the jail (a system call, the cgroup hierarchy, the child's
    /// confinement steps, waiting for the VMM).
    pub const HOST_ERROR: i32 = 6;
}

impl Error {
    fn exit_code(&self) -> i32 {
        match self {
            Error::Args(_)
            | Error::NotRoot(_)
            | Error::File { .. }
            | Error::NotRegular { .. }
            | Error::NotExecutable(_)
            | Error::Libs(_)
            | Error::VmmArgs(_)
            | Error::SerialDir { .. }
            | Error::NotNetns(_) => code::BAD_INPUT,
            Error::Cgroup(e) => match e {
                CgroupError::Io { .. } => code::HOST_ERROR,
                // A limit this host cannot apply (no hierarchy, a controller it lacks, a
                // key without a file) is refused like any bad argument: nothing started.
                CgroupError::Syntax(_)
                | CgroupError::BadKey { .. }
                | CgroupError::BadValue(_)
                | CgroupError::BadNumber { .. }
                | CgroupError::Duplicate(_)
                | CgroupError::BadVersion(_)
                | CgroupError::NotMounted(_)
                | CgroupError::ControllerMissing { .. }
                | CgroupError::V1ControllerMissing { .. }
                | CgroupError::NoV1Equivalent { .. }
                | CgroupError::Exists(_)
                | CgroupError::NoSuchFile { .. }
                | CgroupError::Refused { .. } => code::BAD_INPUT,
            },
            Error::Jail(e) => match e {
                JailError::Exists(_) | JailError::NotDir(_) => code::BAD_INPUT,
                JailError::Io { .. } => code::HOST_ERROR,
            },
            Error::Launch(e) => match e {
                LaunchError::Nul(_) => code::BAD_INPUT,
                LaunchError::Sys { .. } | LaunchError::Child(_) => code::HOST_ERROR,
            },
        }
    }
}

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("minipc-jailer: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn file_error(flag: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let (flag, path) = (flag.to_string(), path.to_path_buf());
    move |err| Error::File { flag, path, err }
}

/// `path` made absolute against the working directory; it must be a regular file.
fn regular_file(flag: &str, path: &Path) -> Result<(PathBuf, fs::Metadata), Error> {
    let abs = std::path::absolute(path).map_err(file_error(flag, path))?;
    let m = fs::metadata(&abs).map_err(file_error(flag, path))?;
    if !m.is_file() {
        return Err(Error::NotRegular {
            flag: flag.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok((abs, m))
}

fn run() -> Result<i32, Error> {
    let raw = args::to_strings(std::env::args_os().skip(1))?;
    let a = match args::parse(raw)? {
        Command::Help => {
            print!("{}", args::USAGE);
            return Ok(0);
        }
        Command::Run(a) => a,
    };
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(Error::NotRoot(euid));
    }

    // Everything named on the command line is checked before anything is created.
    let (exec, exec_meta) = regular_file("--exec-file", &a.exec_file)?;
    if exec_meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::NotExecutable(a.exec_file.clone()));
    }
    let needed = libs::resolve(&exec, &Path::new("/").join(jail::EXEC_NAME))?;
    let mut plan = vmm_args::scan(&a.vmm_args)?;
    for f in &mut plan.files {
        f.host = regular_file(f.flag, &f.host)?.0;
    }
    for s in &mut plan.serials {
        let abs = std::path::absolute(&s.host).map_err(file_error("--serial", &s.host))?;
        let dir = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
        if !dir.is_dir() {
            return Err(Error::SerialDir {
                path: s.host.clone(),
                dir,
            });
        }
        s.host = abs;
    }
    let netns = match &a.netns {
        Some(p) => {
            let f = File::open(p).map_err(file_error("--netns", p))?;
            if !namespaces::is_net_namespace(&f) {
                return Err(Error::NotNetns(p.clone()));
            }
            Some(f)
        }
        None => None,
    };
    let hierarchy = cgroup::Hierarchy::find(a.cgroup_version);
    match &hierarchy {
        Some(h) => cgroup::check(h, &a.cgroups)?,
        None if !a.cgroups.is_empty() || a.cgroup_version.is_some() => {
            return Err(CgroupError::NotMounted(a.cgroup_version).into())
        }
        None => {}
    }
    // The jail; dropping `jail` removes it again.
    let mut jail = Jail::create(&a.chroot_base, &a.id, a.uid, a.gid)?;
    jail.install_exec(&exec)?;
    jail.install_needed(&needed)?;
    jail.make_devices()?;
    if a.mount_proc {
        jail.make_dir("proc")?;
    }
    let mut file_paths = Vec::new();
    for f in &plan.files {
        file_paths.push(jail.install_guest(f)?);
    }
    let mut serial_paths = Vec::new();
    for s in &plan.serials {
        serial_paths.push(jail.create_serial(&s.host)?);
    }
    let vmm_args = plan.rewrite(&file_paths, &serial_paths);

    // The cgroup leaf; dropping `leaf` removes it again. A warning is printed only once
    // the VMM runs, so that a failure is reported on a single line. On cgroup v1 a leaf
    // is made only under the hierarchies the limits use: without any, there is none.
    let mut warning = None;
    let mut leaf = match &hierarchy {
        Some(h) if !a.cgroups.is_empty() || h.version() == cgroup::Version::V2 => {
            match cgroup::create(h, &a.id, &a.cgroups) {
                Ok(l) => Some(l),
                Err(e) if a.cgroups.is_empty() => {
                    warning = Some(e.to_string());
                    None
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(_) => None,
        None => {
            warning = Some(format!(
                "no cgroup hierarchy is mounted (neither cgroup v2 at {} nor cgroup v1 \
                 controllers)",
                cgroup::ROOT
            ));
            None
        }
    };

    let env = PASSED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .collect();
    let spec = launch::Spec {
        root: jail.root().to_path_buf(),
        hostname: a.id.clone(),
        uid: a.uid,
        gid: a.gid,
        netns,
        cgroup_procs: leaf.as_mut().map(|l| l.take_procs()).unwrap_or_default(),
        limits: a.limits,
        daemonize: a.daemonize,
        mount_proc: a.mount_proc,
        args: vmm_args,
        env,
    };
    let pid = launch::spawn(spec)?;
    if let Some(w) = warning {
        eprintln!("minipc-jailer: warning: {w}; the VMM runs without a cgroup of its own");
    }
    if a.daemonize {
        // The caller removes the jail directory and the cgroup leaf (see README.md).
        println!("{pid}");
        jail.keep();
        if let Some(l) = leaf.as_mut() {
            l.keep();
        }
        return Ok(0);
    }
    let code = launch::wait(pid)?;
    jail.copy_back();
    // `leaf`, then `jail`, are removed as they go out of scope.
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_failures_are_even_codes_bad_input_or_host() {
        let io = || io::Error::from_raw_os_error(libc::EACCES);
        let bad = [
            Error::NotRoot(1000),
            Error::NotExecutable(PathBuf::from("/x")),
            Error::NotNetns(PathBuf::from("/x")),
            Error::Jail(JailError::Exists(PathBuf::from("/x"))),
            Error::Cgroup(CgroupError::Syntax("x".into())),
            Error::Cgroup(CgroupError::NotMounted(None)),
            Error::Cgroup(CgroupError::V1ControllerMissing {
                key: "pids.max".into(),
                controller: "pids".into(),
                mounted: vec![],
            }),
            Error::Launch(LaunchError::Nul("x".into())),
        ];
        for e in &bad {
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        let host = [
            Error::Cgroup(CgroupError::Io {
                path: PathBuf::from("/x"),
                err: io(),
            }),
            Error::Jail(JailError::Io {
                step: "mknod",
                path: PathBuf::from("/x"),
                err: io(),
            }),
            Error::Launch(LaunchError::Sys {
                step: "fork",
                err: io(),
            }),
            Error::Launch(LaunchError::Child("pivot_root: EPERM".into())),
        ];
        for e in &host {
            assert_eq!(e.exit_code(), 6, "{e}");
        }
    }
}
