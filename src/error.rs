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
        /// Name of the operation that rejected its operands.
        op: &'static str,
        /// Shapes of the operands involved, in argument order.
        shapes: Vec<Vec<usize>>,
        /// Element type name (`"f32"` or `"f64"`).
        dtype: &'static str,
        /// What is wrong with the shapes.
        detail: String,
    },
    /// An axis or index is out of range.
    Index {
        /// Name of the operation given the axis or index.
        op: &'static str,
        /// Which axis or index is wrong, usually with the range it had to fall in.
        detail: String,
    },
    /// An invalid argument that is not a shape (a negative size, an empty list, ...).
    Arg {
        /// Name of the operation given the argument.
        op: &'static str,
        /// Which argument is invalid, and why.
        detail: String,
    },
    /// The operation is not available on this device (e.g. CUDA built without the feature).
    Device {
        /// Name of the operation that asked for the device.
        op: &'static str,
        /// Which device was requested and why it is unavailable.
        detail: String,
    },
    /// Autograd misuse, e.g. `backward()` from a non-scalar or a tensor without a graph.
    Autograd(String),
    /// Model or training configuration that cannot work.
    Config(String),
    /// A NaN or infinity where a finite number is required.
    NonFinite {
        /// The quantity that held it (a parameter, a gradient, a loss), with context such as
        /// the step or element index.
        what: String,
    },
    /// A file or byte stream does not follow its format.
    Format {
        /// What was being read or written: a file path or a description such as
        /// `"safetensors"`.
        what: String,
        /// How it departs from the format (or why it could not be encoded).
        detail: String,
    },
    /// An I/O failure, with the path it concerned.
    Io {
        /// The file or directory the operation concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Shape`] for `op`, copying the operand shapes.
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

    /// An [`Error::Arg`] for `op`.
    pub fn arg(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Arg {
            op,
            detail: detail.into(),
        }
    }

    /// An [`Error::Index`] for `op`.
    pub fn index(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Index {
            op,
            detail: detail.into(),
        }
    }

    /// An [`Error::Format`] for the input described by `what`.
    pub fn format(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Format {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// An [`Error::Io`] for `source`, raised while accessing `path`.
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
