//! kiln's feature-function kernels over plain slices, with no Arrow and no
//! DataFusion: the CPU implementations ([`cpu`]), the CUDA sources of
//! their GPU twins ([`sources`], from `kernels/*.cu`), and the GPU layer
//! that compiles and runs those ([`gpu`]). kiln's SQL functions call these
//! on Arrow buffers; `gpu-check` runs both sides against each other on a
//! GPU machine without the rest of kiln.
//!
//! Every hashed or seeded value is defined in [`mix`], which the CPU, the
//! CUDA kernels and the Python of kiln's functions reference compute alike.

pub mod cpu;
pub mod gpu;
pub mod mix;
pub mod sample;
pub mod sources;
