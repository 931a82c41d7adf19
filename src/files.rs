//! Reading the files a user names (firmware images, and kernels, initrds, modules and disk
//! images alike): the whole content, as far as a bound, whatever the file's metadata says.
//!
//! A file's size in its metadata is not what a read returns for every file: `/proc` files
//! report 0 bytes, sysfs files 4096, FIFOs and character devices 0 (and `/dev/zero` never
//! ends). So the size that counts is the number of bytes actually read, and reading stops
//! as soon as more than the bound has arrived, so no file can make the VMM allocate more
//! than the bound (plus one read's worth).

use std::io::{self, Read};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot open: {err}")]
    Open { path: String, err: io::Error },
    #[error("{path}: cannot read: {err}")]
    Read { path: String, err: io::Error },
    #[error("{path}: larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
}

/// Reads all of `path`, at most `max` bytes: a file with more is refused with
/// `FileError::TooLarge` once `max + 1` bytes have been read. Errors name the path.
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let name = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|err| FileError::Open { path: name(), err })?;
    // The size the metadata claims is only a hint for the buffer (one read instead of a
    // dozen growing ones); what counts is what the reads return.
    let hint = file
        .metadata()
        .map_or(0, |m| m.len())
        .min(max.saturating_add(1));
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|err| FileError::Read { path: name(), err })?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge { path: name(), max });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("minipc-files-{}-{name}", std::process::id()))
    }

    #[test]
    fn regular_files_up_to_the_bound() {
        let p = tmp("regular");
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        assert_eq!(read_limited(&p, 100).unwrap(), vec![7u8; 100]);
        assert_eq!(read_limited(&p, 1000).unwrap().len(), 100);
        let e = read_limited(&p, 99).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { max: 99, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{}: larger than 99 bytes", p.display())
        );
        std::fs::write(&p, b"").unwrap();
        assert_eq!(read_limited(&p, 10).unwrap(), b"");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn files_whose_metadata_lies_are_read_for_what_they_hold() {
        // /proc reports a size of 0 and holds more.
        let status = read_limited(Path::new("/proc/self/status"), 1 << 20).unwrap();
        assert!(status.starts_with(b"Name:"), "{status:?}");
        // /dev/zero never ends: the read stops just past the bound.
        let e = read_limited(Path::new("/dev/zero"), 4096).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { max: 4096, .. }), "{e}");
        assert_eq!(e.to_string(), "/dev/zero: larger than 4096 bytes");
    }

    #[test]
    fn a_fifo_is_read_to_its_end() {
        let p = tmp("fifo");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                for _ in 0..5 {
                    f.write_all(&[1u8; 1000]).unwrap();
                }
            })
        };
        assert_eq!(read_limited(&p, 1 << 20).unwrap().len(), 5000);
        writer.join().unwrap();
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn errors_name_the_file() {
        let e = read_limited(Path::new("/nonexistent/x.bin"), 10).unwrap_err();
        assert!(matches!(e, FileError::Open { .. }));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/x.bin: cannot open:"),
            "{e}"
        );
        let e = read_limited(Path::new("/"), 10).unwrap_err();
        assert!(matches!(e, FileError::Read { .. }), "{e}");
        assert!(e.to_string().starts_with("/: cannot read:"), "{e}");
    }
}
