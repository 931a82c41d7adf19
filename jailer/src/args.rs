//! The jailer's command line: `minipc-jailer [OPTIONS] -- <minipc args>`.

use std::path::PathBuf;

use crate::cgroup::{self, CgroupError, Setting, Version};
use crate::rlimits::{Limits, RlimitError};

pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
const MAX_ID_LEN: usize = 64;

pub const USAGE: &str = "\
minipc-jailer: runs minipc confined: own root directory, namespaces, cgroup, rlimits,
an unprivileged uid/gid and no capabilities. Must be started as root.

Usage: minipc-jailer --id ID --exec-file PATH --uid U --gid G [OPTIONS] -- [MINIPC ARGS]

Required:
  --id ID                   1 to 64 ASCII letters, digits and '-'; names the jail
  --exec-file PATH          the VMM binary; copied into the jail as /minipc
  --uid U, --gid G          the unprivileged user and group the VMM runs as (not 0)

Options:
  --chroot-base DIR         absolute; the jail is DIR/minipc/ID/root (default /srv/jailer)
  --netns PATH              join this network namespace (e.g. /var/run/netns/NAME)
  --cgroup KEY=VALUE        write VALUE to the leaf's KEY file, e.g. memory.max=256M,
                            pids.max=64, 'cpu.max=50000 100000' (repeatable); on
                            cgroup v1, v2 keys are translated to the v1 files (memory.max
                            to memory.limit_in_bytes, ...) and v1 keys written as given
  --cgroup-version 1|2      the cgroup interface (default: v2 when it is mounted at
                            /sys/fs/cgroup, else the v1 controllers)
  --resource-limit KEY=N    no-file=N (default 2048) or fsize=N bytes (default 16 GiB)
                            (repeatable)
  --daemonize               detach (new session, stdio to /dev/null), print the VMM's
                            PID and exit 0; the jail and cgroup are then left for the
                            caller to remove
  --mount-proc              mount /proc inside the jail (off by default)
  -h, --help                this text

Files named by the VMM arguments --firmware, --kernel, --initrd, --disk (FILE or =FILE)
are placed in the jail and the arguments rewritten; --serial file:PATH writes to a file
in the jail that is copied to PATH when the VMM exits.

Exit code: the VMM's own, 128+N if it was killed by signal N, 2 if the jail could not be
set up (one line on stderr; nothing is left behind).

Example:
  minipc-jailer --id vm1 --exec-file /usr/local/bin/minipc --uid 990 --gid 990 \\
      --cgroup memory.max=512M --cgroup pids.max=64 -- --mem 256M --firmware fw.bin
";

#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown option '{0}' (see --help)")]
    UnknownOption(String),
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("{0} takes no value")]
    UnexpectedValue(String),
    #[error("{0} is given twice")]
    Duplicate(String),
    #[error("{0} is required (see --help)")]
    Missing(&'static str),
    #[error("unexpected argument '{0}' (VMM arguments go after '--')")]
    Positional(String),
    #[error("argument {0} is not valid UTF-8")]
    NotUtf8(usize),
    #[error("--id '{0}': use 1 to 64 ASCII letters, digits and '-'")]
    BadId(String),
    #[error("{flag} '{value}': not a number from 1 to 4294967294")]
    BadNumber { flag: &'static str, value: String },
    #[error("{0} 0: the VMM must not run as root")]
    Root(&'static str),
    #[error("--chroot-base '{0}': must be an absolute path without '..'")]
    BadChrootBase(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Rlimit(#[from] RlimitError),
}

/// A validated command line (syntax only: files are checked later).
#[derive(Debug)]
pub struct Args {
    pub id: String,
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub cgroups: Vec<Setting>,
    pub cgroup_version: Option<Version>,
    pub limits: Limits,
    pub daemonize: bool,
    pub mount_proc: bool,
    pub vmm_args: Vec<String>,
}

#[derive(Debug)]
pub enum Command {
    Run(Args),
    Help,
}

/// Checks a jail id: 1 to 64 ASCII alphanumerics and '-'.
pub fn validate_id(id: &str) -> Result<(), ArgsError> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ArgsError::BadId(id.to_string()))
    }
}

fn parse_id_number(flag: &'static str, value: &str) -> Result<u32, ArgsError> {
    let bad = || ArgsError::BadNumber {
        flag,
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = value.parse::<u32>().map_err(|_| bad())?;
    match n {
        0 => Err(ArgsError::Root(flag)),
        u32::MAX => Err(bad()),
        n => Ok(n),
    }
}

fn parse_chroot_base(value: &str) -> Result<PathBuf, ArgsError> {
    let p = PathBuf::from(value);
    let dotdot = p
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if !p.is_absolute() || dotdot {
        return Err(ArgsError::BadChrootBase(value.to_string()));
    }
    Ok(p)
}

/// Converts the raw process arguments (without the program name) to strings.
pub fn to_strings<I: IntoIterator<Item = std::ffi::OsString>>(
    args: I,
) -> Result<Vec<String>, ArgsError> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| a.into_string().map_err(|_| ArgsError::NotUtf8(i + 1)))
        .collect()
}

/// Parses the jailer's options; everything after the first `--` belongs to the VMM.
pub fn parse(args: Vec<String>) -> Result<Command, ArgsError> {
    let mut id = None;
    let mut exec_file = None;
    let mut uid = None;
    let mut gid = None;
    let mut chroot_base = None;
    let mut netns = None;
    let mut cgroups: Vec<Setting> = Vec::new();
    let mut cgroup_version = None;
    let mut limits = Limits::default();
    let mut daemonize = false;
    let mut mount_proc = false;
    let mut vmm_args = Vec::new();

    let mut seen: Vec<String> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            vmm_args = it.collect();
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            name.as_str(),
            "--id"
                | "--exec-file"
                | "--uid"
                | "--gid"
                | "--chroot-base"
                | "--netns"
                | "--cgroup"
                | "--cgroup-version"
                | "--resource-limit"
        );
        let is_switch = matches!(
            name.as_str(),
            "--daemonize" | "--mount-proc" | "-h" | "--help"
        );
        if !takes_value && !is_switch {
            return Err(if name.starts_with('-') {
                ArgsError::UnknownOption(name)
            } else {
                ArgsError::Positional(arg)
            });
        }
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| ArgsError::MissingValue(name.clone()))?,
            }
        } else {
            if inline.is_some() {
                return Err(ArgsError::UnexpectedValue(name));
            }
            String::new()
        };
        let repeatable = matches!(name.as_str(), "--cgroup" | "--resource-limit");
        if !repeatable && seen.contains(&name) {
            return Err(ArgsError::Duplicate(name));
        }
        seen.push(name.clone());
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--id" => {
                validate_id(&value)?;
                id = Some(value);
            }
            "--exec-file" => exec_file = Some(PathBuf::from(value)),
            "--uid" => uid = Some(parse_id_number("--uid", &value)?),
            "--gid" => gid = Some(parse_id_number("--gid", &value)?),
            "--chroot-base" => chroot_base = Some(parse_chroot_base(&value)?),
            "--netns" => netns = Some(PathBuf::from(value)),
            "--cgroup" => {
                let s = cgroup::parse_setting(&value)?;
                if cgroups.iter().any(|c| c.key == s.key) {
                    return Err(CgroupError::Duplicate(s.key).into());
                }
                cgroups.push(s);
            }
            "--cgroup-version" => cgroup_version = Some(cgroup::parse_version(&value)?),
            "--resource-limit" => limits.set(&value)?,
            "--daemonize" => daemonize = true,
            "--mount-proc" => mount_proc = true,
            _ => return Err(ArgsError::UnknownOption(name)),
        }
    }
    Ok(Command::Run(Args {
        id: id.ok_or(ArgsError::Missing("--id"))?,
        exec_file: exec_file.ok_or(ArgsError::Missing("--exec-file"))?,
        uid: uid.ok_or(ArgsError::Missing("--uid"))?,
        gid: gid.ok_or(ArgsError::Missing("--gid"))?,
        chroot_base: chroot_base.unwrap_or_else(|| PathBuf::from(DEFAULT_CHROOT_BASE)),
        netns,
        cgroups,
        cgroup_version,
        limits,
        daemonize,
        mount_proc,
        vmm_args,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[&str] = &[
        "--id",
        "vm-1",
        "--exec-file",
        "/bin/minipc",
        "--uid",
        "1000",
        "--gid",
        "100",
    ];

    fn run(extra: &[&str]) -> Result<Args, ArgsError> {
        let args = BASE.iter().chain(extra).map(|s| s.to_string()).collect();
        match parse(args)? {
            Command::Run(a) => Ok(a),
            Command::Help => panic!("help"),
        }
    }

    fn err(extra: &[&str]) -> String {
        run(extra).unwrap_err().to_string()
    }

    #[test]
    fn ids() {
        assert!(validate_id("a").is_ok());
        assert!(validate_id("vm-1-ABC").is_ok());
        assert!(validate_id(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "..", "a_b", "é", "a.b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn required_and_defaults() {
        let a = run(&[]).unwrap();
        assert_eq!(a.id, "vm-1");
        assert_eq!(a.exec_file, PathBuf::from("/bin/minipc"));
        assert_eq!((a.uid, a.gid), (1000, 100));
        assert_eq!(a.chroot_base, PathBuf::from("/srv/jailer"));
        assert_eq!(a.netns, None);
        assert!(a.cgroups.is_empty());
        assert_eq!(a.cgroup_version, None);
        assert_eq!(a.limits, Limits::default());
        assert!(!a.daemonize && !a.mount_proc);
        assert!(a.vmm_args.is_empty());
        for (i, flag) in ["--id", "--exec-file", "--uid", "--gid"].iter().enumerate() {
            let mut args: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
            args.drain(2 * i..2 * i + 2);
            let e = parse(args).unwrap_err().to_string();
            assert_eq!(e, format!("{flag} is required (see --help)"));
        }
    }

    #[test]
    fn both_flag_forms() {
        let args = [
            "--id=x",
            "--exec-file=/e",
            "--uid=5",
            "--gid",
            "6",
            "--chroot-base=/jails",
            "--netns",
            "/run/netns/a",
            "--cgroup=cpu.max=50000 100000",
            "--cgroup",
            "pids.max=64",
            "--cgroup-version=1",
            "--resource-limit=no-file=64",
            "--resource-limit",
            "fsize=1024",
            "--daemonize",
            "--mount-proc",
        ];
        let Command::Run(a) = parse(args.iter().map(|s| s.to_string()).collect()).unwrap() else {
            panic!("help")
        };
        assert_eq!(a.id, "x");
        assert_eq!((a.uid, a.gid), (5, 6));
        assert_eq!(a.chroot_base, PathBuf::from("/jails"));
        assert_eq!(a.netns, Some(PathBuf::from("/run/netns/a")));
        assert_eq!(a.cgroups[0].key, "cpu.max");
        assert_eq!(a.cgroups[0].value, "50000 100000");
        assert_eq!(a.cgroups[1].value, "64");
        assert_eq!(a.cgroup_version, Some(Version::V1));
        assert_eq!(
            run(&["--cgroup-version", "2"]).unwrap().cgroup_version,
            Some(Version::V2)
        );
        assert_eq!((a.limits.no_file, a.limits.fsize), (64, 1024));
        assert!(a.daemonize && a.mount_proc);
    }

    #[test]
    fn double_dash_ends_jailer_options() {
        let a = run(&["--mount-proc", "--", "--id", "x", "--", "--help"]).unwrap();
        assert!(a.mount_proc);
        assert_eq!(a.vmm_args, ["--id", "x", "--", "--help"]);
        assert!(run(&["--"]).unwrap().vmm_args.is_empty());
        // --help after -- is the VMM's.
        assert!(run(&["--", "--help"]).is_ok());
    }

    #[test]
    fn help() {
        for h in ["-h", "--help"] {
            assert!(matches!(
                parse(vec!["--id".into(), "x".into(), h.into()]),
                Ok(Command::Help)
            ));
        }
        assert!(USAGE.contains("Example"));
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(err(&["--bogus"]), "unknown option '--bogus' (see --help)");
        assert_eq!(err(&["--bogus=1"]), "unknown option '--bogus' (see --help)");
        assert_eq!(err(&["-x"]), "unknown option '-x' (see --help)");
        assert!(err(&["stray"]).contains("'stray'"));
        assert_eq!(err(&["--netns"]), "--netns needs a value");
        assert_eq!(err(&["--daemonize=yes"]), "--daemonize takes no value");
        assert_eq!(err(&["--uid", "7"]), "--uid is given twice");
        assert_eq!(
            err(&["--mount-proc", "--mount-proc"]),
            "--mount-proc is given twice"
        );
        assert!(err(&["--chroot-base", "rel"]).contains("--chroot-base 'rel'"));
        assert!(err(&["--chroot-base", "/a/../b"]).contains("absolute"));
        assert!(err(&["--cgroup", "../x=1"]).starts_with("--cgroup '../x=1'"));
        assert!(err(&["--cgroup", "pids.max=1", "--cgroup", "pids.max=2"]).contains("twice"));
        assert!(err(&["--resource-limit", "stack=1"]).contains("unknown key"));
        assert_eq!(
            err(&["--cgroup-version", "3"]),
            "--cgroup-version '3': expected 1 or 2"
        );
        assert_eq!(
            err(&["--cgroup-version", "1", "--cgroup-version", "2"]),
            "--cgroup-version is given twice"
        );
    }

    #[test]
    fn bad_ids_and_numbers() {
        let args = |id: &str, uid: &str| -> String {
            let v = ["--id", id, "--exec-file", "/e", "--uid", uid, "--gid", "1"];
            parse(v.iter().map(|s| s.to_string()).collect())
                .unwrap_err()
                .to_string()
        };
        assert!(args("a b", "1").starts_with("--id 'a b'"));
        assert!(args("ok", "x").starts_with("--uid 'x'"));
        assert!(args("ok", "-1").starts_with("--uid '-1'"));
        assert!(args("ok", "4294967295").starts_with("--uid '4294967295'"));
        assert!(args("ok", "4294967296").starts_with("--uid '4294967296'"));
        assert_eq!(args("ok", "0"), "--uid 0: the VMM must not run as root");
    }

    #[test]
    fn utf8() {
        use std::os::unix::ffi::OsStringExt;
        let bad = std::ffi::OsString::from_vec(vec![0xff]);
        let e = to_strings(vec!["ok".into(), bad]).unwrap_err();
        assert_eq!(e.to_string(), "argument 2 is not valid UTF-8");
    }
}
