//! Benchmarks behind `tarflow bench`: model workloads (and kernels).

pub mod model;
