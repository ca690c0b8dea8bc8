#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
//! `tarflow`: TarFlow normalizing flows on a self-contained tensor engine.
//!
//! The engine ([`Tensor`], reverse-mode autograd in [`autograd`], ops in [`ops`]) is written
//! for exactness first: every op works in `f32` and `f64`, every backward is checked against
//! central finite differences in `f64`, and fused ops are checked against their composed
//! references. See `docs/architecture.md` for the design.
//!
//! ```
//! use tarflow::Tensor;
//! let x = Tensor::<f64>::from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap().requires_grad_();
//! let y = x.square().unwrap().sum_all().unwrap();
//! y.backward().unwrap();
//! assert_eq!(x.grad().unwrap().to_vec(), vec![2.0, 4.0, 6.0]);
//! ```

pub mod audit;
pub mod autograd;
pub mod backend;
// The measurement machinery behind `tarflow bench` and `cargo bench`: public for the binary
// and the benches, not a stable API.
#[doc(hidden)]
pub mod bench;
pub mod data;
pub mod error;
// File helpers of the binary and the library (atomic writes): not a stable API.
#[doc(hidden)]
pub mod fsutil;
pub mod gpu;
pub mod gradcheck;
pub mod imageio;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod profile;
pub mod rng;
pub mod tensor;
pub mod tensorio;
pub mod train;

pub use autograd::{no_grad, with_no_grad};
pub use error::{Error, Result};
pub use rng::Rng;
pub use tensor::{DType, Device, Element, Layout, Tensor};

/// The README's Rust examples, compiled and run by `cargo test --doc` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
