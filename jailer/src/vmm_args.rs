//! Finds the host files named in the VMM's arguments and rewrites those arguments to the
//! files' paths inside the jail.

use std::path::PathBuf;

/// VMM flags whose value is a guest input file.
const FILE_FLAGS: &[(&str, Access)] = &[
    ("--firmware", Access::ReadOnly),
    ("--kernel", Access::ReadOnly),
    ("--initrd", Access::ReadOnly),
    ("--disk", Access::ReadWrite),
];
/// Other VMM flags that take a value; their values are skipped, never interpreted.
const VALUE_FLAGS: &[&str] = &[
    "--mem",
    "--cpus",
    "--timeout",
    "--rtc",
    "--seccomp",
    "--log-level",
];
const SERIAL: &str = "--serial";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmmArgsError {
    #[error("VMM option {0} needs a value")]
    MissingValue(String),
    #[error("VMM option {0}: the path is empty")]
    EmptyPath(String),
}

/// How the VMM uses a guest file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only: firmware, kernel, initrd.
    ReadOnly,
    /// Read and written by the VMM: disk images.
    ReadWrite,
}

/// Where a value sits in the argument list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// `--flag value`: the value is the whole argument at this index.
    Separate(usize),
    /// `--flag=value`: the argument at this index is `--flag=` followed by the value.
    Inline(usize),
}

/// A guest input file named by a VMM flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFile {
    pub flag: &'static str,
    pub host: PathBuf,
    pub access: Access,
    slot: Slot,
}

/// A `--serial file:PATH` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialFile {
    pub host: PathBuf,
    slot: Slot,
}

/// The VMM's arguments with the places where host paths occur.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    args: Vec<String>,
    pub files: Vec<GuestFile>,
    pub serials: Vec<SerialFile>,
}

/// Scans the VMM arguments for path-valued flags, in both `--flag value` and
/// `--flag=value` forms. Unknown arguments are passed through untouched.
pub fn scan(args: &[String]) -> Result<Plan, VmmArgsError> {
    let mut plan = Plan {
        args: args.to_vec(),
        files: Vec::new(),
        serials: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg.as_str(), None),
        };
        let file_flag = FILE_FLAGS.iter().find(|(f, _)| *f == name);
        let takes_value = file_flag.is_some() || name == SERIAL || VALUE_FLAGS.contains(&name);
        if !takes_value {
            i += 1;
            continue;
        }
        let (value, slot) = match inline {
            Some(v) => (v, Slot::Inline(i)),
            None => {
                i += 1;
                let v = args
                    .get(i)
                    .ok_or_else(|| VmmArgsError::MissingValue(name.to_string()))?;
                (v.as_str(), Slot::Separate(i))
            }
        };
        if let Some((flag, access)) = file_flag {
            if value.is_empty() {
                return Err(VmmArgsError::EmptyPath(name.to_string()));
            }
            plan.files.push(GuestFile {
                flag,
                host: PathBuf::from(value),
                access: *access,
                slot,
            });
        } else if name == SERIAL {
            // Only file outputs are moved; an empty path is left for the VMM to reject.
            if let Some(p) = value.strip_prefix("file:").filter(|p| !p.is_empty()) {
                plan.serials.push(SerialFile {
                    host: PathBuf::from(p),
                    slot,
                });
            }
        }
        i += 1;
    }
    Ok(plan)
}

impl Plan {
    /// The arguments with the guest files replaced by `file_paths` (one per entry of
    /// `files`, in order) and the serial outputs by `serial_paths`.
    pub fn rewrite(&self, file_paths: &[String], serial_paths: &[String]) -> Vec<String> {
        let mut out = self.args.clone();
        for (f, p) in self.files.iter().zip(file_paths) {
            put(&mut out, &f.slot, f.flag, p);
        }
        for (s, p) in self.serials.iter().zip(serial_paths) {
            put(&mut out, &s.slot, SERIAL, &format!("file:{p}"));
        }
        out
    }
}

fn put(args: &mut [String], slot: &Slot, flag: &str, value: &str) {
    match *slot {
        Slot::Separate(i) => {
            if let Some(a) = args.get_mut(i) {
                *a = value.to_string();
            }
        }
        Slot::Inline(i) => {
            if let Some(a) = args.get_mut(i) {
                *a = format!("{flag}={value}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_files_in_both_forms() {
        let plan = scan(&v(&[
            "--firmware",
            "/img/fw.bin",
            "--kernel=/img/bzImage",
            "--mem",
            "64M",
            "--initrd",
            "rel/initrd.img",
            "--disk=/img/root.raw",
        ]))
        .unwrap();
        let got: Vec<_> = plan
            .files
            .iter()
            .map(|f| (f.flag, f.host.to_str().unwrap(), f.access))
            .collect();
        assert_eq!(
            got,
            vec![
                ("--firmware", "/img/fw.bin", Access::ReadOnly),
                ("--kernel", "/img/bzImage", Access::ReadOnly),
                ("--initrd", "rel/initrd.img", Access::ReadOnly),
                ("--disk", "/img/root.raw", Access::ReadWrite),
            ]
        );
        assert!(plan.serials.is_empty());
    }

    #[test]
    fn rewrites_in_the_form_given() {
        let plan = scan(&v(&[
            "--stats",
            "--firmware",
            "/img/fw.bin",
            "--disk=/img/root.raw",
            "--serial",
            "file:/tmp/s.log",
            "--timeout=3",
        ]))
        .unwrap();
        let out = plan.rewrite(
            &["/fw.bin".to_string(), "/root.raw".to_string()],
            &["/s.log".to_string()],
        );
        assert_eq!(
            out,
            v(&[
                "--stats",
                "--firmware",
                "/fw.bin",
                "--disk=/root.raw",
                "--serial",
                "file:/s.log",
                "--timeout=3"
            ])
        );
    }

    #[test]
    fn serial_inline_and_other_modes() {
        let plan = scan(&v(&["--serial=file:out.txt"])).unwrap();
        assert_eq!(plan.serials[0].host, PathBuf::from("out.txt"));
        assert_eq!(
            plan.rewrite(&[], &["/out.txt".to_string()]),
            v(&["--serial=file:/out.txt"])
        );
        for mode in ["stdio", "none", "file:"] {
            let plan = scan(&v(&["--serial", mode])).unwrap();
            assert!(plan.serials.is_empty(), "{mode}");
            assert_eq!(plan.rewrite(&[], &[]), v(&["--serial", mode]));
        }
    }

    #[test]
    fn values_of_other_flags_are_not_flags() {
        // "--disk" here is the value of --log-level, not a flag of its own.
        let plan = scan(&v(&["--log-level", "--disk", "x"])).unwrap();
        assert!(plan.files.is_empty());
        let plan = scan(&v(&["--seccomp", "--disk", "--rtc", "--kernel"])).unwrap();
        assert!(plan.files.is_empty());
        let plan = scan(&v(&["--cpus=2", "--firmware", "--disk"])).unwrap();
        assert_eq!(plan.files.len(), 1);
        assert_eq!(plan.files[0].host, PathBuf::from("--disk"));
    }

    #[test]
    fn missing_and_empty_values() {
        assert_eq!(
            scan(&v(&["--firmware"])),
            Err(VmmArgsError::MissingValue("--firmware".into()))
        );
        assert_eq!(
            scan(&v(&["--serial"])),
            Err(VmmArgsError::MissingValue("--serial".into()))
        );
        assert_eq!(
            scan(&v(&["--disk="])),
            Err(VmmArgsError::EmptyPath("--disk".into()))
        );
    }

    #[test]
    fn other_arguments_pass_through() {
        let args = v(&["--stats", "--cpus", "2", "--bogus=1", "stray"]);
        let plan = scan(&args).unwrap();
        assert_eq!(plan.rewrite(&[], &[]), args);
    }
}
