//! A full disk is an operating condition, not a failure: telling the two apart, and how
//! much room the disk has left.
//!
//! ENOSPC (no space) and EDQUOT (quota exceeded) on a write or on creating a segment leave
//! nothing new durable and go away when room is made, so the shard waits and retries. Any
//! other I/O error (EIO, a failed fdatasync) may have lost written pages and stops the
//! server, as before.

use std::path::Path;

/// Whether `error` means the filesystem (or the user's quota) has no room.
#[must_use]
pub fn is_no_space(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT
    ) || matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
#[must_use]
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Some(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn no_space_and_quota_are_told_from_other_errors() {
        let enospc = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        let edquot = std::io::Error::from_raw_os_error(nix::libc::EDQUOT);
        let eio = std::io::Error::from_raw_os_error(nix::libc::EIO);
        assert!(is_no_space(&enospc));
        assert!(is_no_space(&edquot));
        assert!(!is_no_space(&eio));
        // glommio keeps the kind (not the code) of the errors it wraps.
        let wrapped = std::io::Error::new(enospc.kind(), "write: no space");
        assert!(is_no_space(&wrapped));
    }

    #[test]
    fn free_bytes_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some());
    }
}
