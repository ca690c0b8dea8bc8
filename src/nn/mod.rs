//! Neural-network modules built on the tensor engine.

pub mod attention;
pub mod norm;
