//! The PTX interpreter: the GPU that CI has.
//!
//! [`PtxSim`] implements [`crate::gpu::Driver`] by parsing the committed PTX once per module
//! ([`parse`] into the decoded form of [`ir`]) and executing it warp by warp ([`exec`]) with
//! sanitizer checks on every access. The instruction semantics live in small pure modules
//! ([`intmath`], [`fpmath`], [`convert`], [`warp_ops`]) that the tests also call directly.
//! See `docs/ptx-interpreter.md`.

pub mod convert;
pub mod counters;
mod decode;
mod dispatch;
mod driver;
mod exec;
pub mod fpmath;
pub mod intmath;
pub mod ir;
mod lex;
pub mod mbarrier;
mod mem_access;
mod memory;
pub mod parse;
mod tma;
mod warp_io;
pub mod warp_ops;
pub mod wgmma;

pub use counters::Counters;
pub use driver::PtxSim;
