//! Shared by the benchmark binaries: datasets and their ground truth.

pub mod dataset;
