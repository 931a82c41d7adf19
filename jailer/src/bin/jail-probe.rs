//! jail-probe: prints what a process sees of its confinement, one `key=value` per line,
//! for the jailer's integration tests. Arguments: `exit=N` exits with N after printing;
//! `sleep=S` waits S seconds after printing; SIGTERM then ends it with exit code 100+15
//! (its handler is installed before anything is printed).

use std::fs;
use std::io::Write;

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The resource argument of getrlimit/setrlimit: glibc's own type, an int in musl.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

fn rlimit(resource: Resource) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass by reference.
    unsafe { libc::getrlimit(resource, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

extern "C" fn on_term(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(100 + sig) };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a.starts_with("sleep=")) {
        // SAFETY: installing a handler that only calls _exit.
        unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    }
    let mut out = Vec::new();
    // SAFETY: getters without arguments.
    let (uid, gid, euid, egid, pid) = unsafe {
        (
            libc::getuid(),
            libc::getgid(),
            libc::geteuid(),
            libc::getegid(),
            libc::getpid(),
        )
    };
    let mut line = |k: &str, v: String| out.push(format!("{k}={v}"));
    line("uid", uid.to_string());
    line("gid", gid.to_string());
    line("euid", euid.to_string());
    line("egid", egid.to_string());
    line("pid", pid.to_string());
    line(
        "passwd_exists",
        std::path::Path::new("/etc/passwd").exists().to_string(),
    );
    let mut root: Vec<String> = fs::read_dir("/")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    root.sort();
    line("root_entries", root.join(","));
    for name in &root {
        let path = std::path::Path::new("/").join(name);
        if let Ok(m) = fs::symlink_metadata(&path) {
            use std::os::unix::fs::MetadataExt;
            if m.is_file() {
                line(
                    &format!("file_{name}"),
                    format!("{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()),
                );
            }
        }
    }
    line(
        "hostname",
        fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
    );
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    line("proc_mounted", (!status.is_empty()).to_string());
    for (k, f) in [
        ("no_new_privs", "NoNewPrivs"),
        ("cap_inh", "CapInh"),
        ("cap_prm", "CapPrm"),
        ("cap_eff", "CapEff"),
        ("cap_bnd", "CapBnd"),
        ("cap_amb", "CapAmb"),
        ("groups", "Groups"),
    ] {
        line(k, status_field(&status, f));
    }
    line(
        "cgroup",
        fs::read_to_string("/proc/self/cgroup")
            .map(|s| s.trim().replace('\n', ";"))
            .unwrap_or_else(|_| "unknown".into()),
    );
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        line(
            &format!("ns_{ns}"),
            fs::read_link(format!("/proc/self/ns/{ns}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
        );
    }
    let (soft, hard) = rlimit(libc::RLIMIT_NOFILE);
    line("nofile_soft", soft.to_string());
    line("nofile_hard", hard.to_string());
    line("fsize_hard", rlimit(libc::RLIMIT_FSIZE).1.to_string());
    // Descriptors open at start: listing /proc/self/fd opens one more, which is dropped.
    let mut fds: Vec<u32> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds.truncate(fds.len().saturating_sub(1));
    line(
        "fds",
        fds.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    );
    line("env_count", std::env::vars_os().count().to_string());
    line("argv", args.join(" "));

    let mut stdout = std::io::stdout();
    let _ = stdout.write_all((out.join("\n") + "\n").as_bytes());
    let _ = stdout.flush();

    for a in &args[1..] {
        if let Some(n) = a.strip_prefix("exit=").and_then(|n| n.parse().ok()) {
            std::process::exit(n);
        }
        if let Some(s) = a.strip_prefix("sleep=").and_then(|s| s.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_secs(s));
        }
    }
}
