//! What sort of failure an error is, independent of the crate that raised it. Library errors
//! expose `kind()`; the CLI maps kinds to exit codes and the server to HTTP statuses, each in
//! one place.

use std::fmt;

/// The sort of failure, as front ends need to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input (a file, a query, a setting, an argument) cannot be used; fixing it is the
    /// user's move.
    Input,
    /// An engine or runtime this machine lacks or cannot start (ONNX Runtime, tesseract's
    /// language data, the hub without network).
    Unavailable,
    /// A model file is missing, corrupt or unreadable.
    ModelFile,
    /// Not now: the memory budget or the machine's memory is taken, or another process holds
    /// a lock; retrying later can work.
    Busy,
    /// The disk (or quota) is full.
    DiskFull,
    /// A failure inside mnema or an engine that the input does not explain.
    Internal,
}

impl ErrorKind {
    /// All kinds.
    pub const ALL: [ErrorKind; 6] =
        [ErrorKind::Input, ErrorKind::Unavailable, ErrorKind::ModelFile, ErrorKind::Busy, ErrorKind::DiskFull, ErrorKind::Internal];

    /// The snake_case name used in JSON (`"kind": "model_file"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Input => "input",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ModelFile => "model_file",
            ErrorKind::Busy => "busy",
            ErrorKind::DiskFull => "disk_full",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of an IO error: a full disk or quota is [`DiskFull`](ErrorKind::DiskFull);
    /// `otherwise` for the rest (what an unreadable file means depends on whose file it is).
    pub fn of_io(e: &std::io::Error, otherwise: ErrorKind) -> ErrorKind {
        if is_disk_full(e) {
            ErrorKind::DiskFull
        } else {
            otherwise
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True when an IO error says the disk or the quota is full (ENOSPC, EDQUOT).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    // ENOSPC is 28 and EDQUOT 122 on Linux; StorageFull covers other platforms.
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || (cfg!(target_os = "linux") && matches!(e.raw_os_error(), Some(28) | Some(122)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_snake_case() {
        let names: std::collections::HashSet<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn a_full_disk_is_a_full_disk() {
        let enospc = std::io::Error::from_raw_os_error(28);
        assert_eq!(ErrorKind::of_io(&enospc, ErrorKind::Internal), ErrorKind::DiskFull);
        let denied = std::io::Error::from_raw_os_error(13);
        assert_eq!(ErrorKind::of_io(&denied, ErrorKind::Input), ErrorKind::Input);
    }
}
