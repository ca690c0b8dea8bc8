//! The crate's one error type.
//!
//! Every fallible library function returns [`Result`]. Shape and dtype problems name the
//! operation, the shapes involved and the element type, so a message is enough to find the
//! offending call without a debugger.

use std::fmt;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `tarflow`.
#[derive(Debug)]
pub enum Error {
    /// Operand shapes do not fit the operation.
    Shape {
        op: &'static str,
        shapes: Vec<Vec<usize>>,
        dtype: &'static str,
        detail: String,
    },
    /// An axis or index is out of range.
    Index { op: &'static str, detail: String },
    /// An invalid argument that is not a shape (a negative size, an empty list, ...).
    Arg { op: &'static str, detail: String },
    /// The operation is not available on this device (e.g. CUDA built without the feature).
    Device { op: &'static str, detail: String },
    /// Autograd misuse, e.g. `backward()` from a non-scalar or a tensor without a graph.
    Autograd(String),
    /// Model or training configuration that cannot work.
    Config(String),
    /// A NaN or infinity where a finite number is required.
    NonFinite { what: String },
    /// A file or byte stream does not follow its format.
    Format { what: String, detail: String },
    /// An I/O failure, with the path it concerned.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub fn shape(
        op: &'static str,
        shapes: &[&[usize]],
        dtype: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Error::Shape {
            op,
            shapes: shapes.iter().map(|s| s.to_vec()).collect(),
            dtype,
            detail: detail.into(),
        }
    }

    pub fn arg(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Arg {
            op,
            detail: detail.into(),
        }
    }

    pub fn index(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Index {
            op,
            detail: detail.into(),
        }
    }

    pub fn format(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Format {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape {
                op,
                shapes,
                dtype,
                detail,
            } => {
                write!(f, "{op}: {detail} (shapes ")?;
                for (i, s) in shapes.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{s:?}")?;
                }
                write!(f, "; dtype {dtype})")
            }
            Error::Index { op, detail } => write!(f, "{op}: {detail}"),
            Error::Arg { op, detail } => write!(f, "{op}: {detail}"),
            Error::Device { op, detail } => write!(f, "{op}: {detail}"),
            Error::Autograd(m) => write!(f, "autograd: {m}"),
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::NonFinite { what } => write!(f, "non-finite value in {what}"),
            Error::Format { what, detail } => write!(f, "{what}: {detail}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
