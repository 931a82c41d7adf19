//! Resource limits for the VMM: parsing `--resource-limit KEY=N` and applying them.

use std::io;

/// Default RLIMIT_NOFILE.
pub const DEFAULT_NO_FILE: u64 = 2048;
/// Default RLIMIT_FSIZE: 16 GiB.
pub const DEFAULT_FSIZE: u64 = 16 << 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RlimitError {
    #[error("--resource-limit '{0}': expected KEY=N with KEY no-file or fsize")]
    Syntax(String),
    #[error("--resource-limit '{0}': unknown key (known: no-file, fsize)")]
    UnknownKey(String),
    #[error("--resource-limit '{0}': the value is not a whole number")]
    BadValue(String),
    #[error("--resource-limit {0} is given twice")]
    Duplicate(String),
}

/// The limits the VMM runs with; each is set as both the soft and the hard limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub no_file: u64,
    pub fsize: u64,
    no_file_set: bool,
    fsize_set: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            no_file: DEFAULT_NO_FILE,
            fsize: DEFAULT_FSIZE,
            no_file_set: false,
            fsize_set: false,
        }
    }
}

impl Limits {
    /// Applies one `KEY=N` setting from the command line.
    pub fn set(&mut self, setting: &str) -> Result<(), RlimitError> {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| RlimitError::Syntax(setting.to_string()))?;
        let (slot, seen) = match key {
            "no-file" => (&mut self.no_file, &mut self.no_file_set),
            "fsize" => (&mut self.fsize, &mut self.fsize_set),
            _ => return Err(RlimitError::UnknownKey(setting.to_string())),
        };
        if *seen {
            return Err(RlimitError::Duplicate(key.to_string()));
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RlimitError::BadValue(setting.to_string()));
        }
        *slot = value
            .parse::<u64>()
            .map_err(|_| RlimitError::BadValue(setting.to_string()))?;
        *seen = true;
        Ok(())
    }

    /// Sets RLIMIT_NOFILE and RLIMIT_FSIZE of the calling process. The error names the
    /// limit the kernel refused as `KEY=N`.
    pub fn apply(&self) -> Result<(), (String, io::Error)> {
        set_one(libc::RLIMIT_NOFILE, self.no_file)
            .map_err(|e| (format!("no-file={}", self.no_file), e))?;
        set_one(libc::RLIMIT_FSIZE, self.fsize)
            .map_err(|e| (format!("fsize={}", self.fsize), e))?;
        Ok(())
    }
}

/// The resource argument of getrlimit/setrlimit: glibc's own type, an int in musl.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

fn set_one(resource: Resource, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the rlimit struct we pass by reference.
    crate::sys::check(unsafe { libc::setrlimit(resource, &lim) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_finite() {
        let l = Limits::default();
        assert_eq!(l.no_file, 2048);
        assert_eq!(l.fsize, 16 << 30);
    }

    #[test]
    fn parses_known_keys() {
        let mut l = Limits::default();
        l.set("no-file=100").unwrap();
        l.set("fsize=4096").unwrap();
        assert_eq!((l.no_file, l.fsize), (100, 4096));
    }

    #[test]
    fn rejects_bad_settings() {
        let mut l = Limits::default();
        assert_eq!(
            l.set("nofile=1"),
            Err(RlimitError::UnknownKey("nofile=1".into()))
        );
        assert_eq!(l.set("no-file"), Err(RlimitError::Syntax("no-file".into())));
        assert_eq!(
            l.set("no-file=-1"),
            Err(RlimitError::BadValue("no-file=-1".into()))
        );
        assert_eq!(
            l.set("fsize=1G"),
            Err(RlimitError::BadValue("fsize=1G".into()))
        );
        assert_eq!(
            l.set("fsize=99999999999999999999999"),
            Err(RlimitError::BadValue(
                "fsize=99999999999999999999999".into()
            ))
        );
        assert_eq!(l.set("fsize="), Err(RlimitError::BadValue("fsize=".into())));
        l.set("fsize=1").unwrap();
        assert_eq!(
            l.set("fsize=2"),
            Err(RlimitError::Duplicate("fsize".into()))
        );
    }
}
