//! The GPU layer: finds a CUDA device (without panicking where there is
//! none), compiles every kernel with NVRTC for its architecture when it
//! opens the device (or takes the PTX from [`cache`]), and runs them on Arrow's buffers in chunks that fit the
//! device's free memory ([`chunks`]), through pinned host memory on two
//! streams so that one chunk's copies overlap the other's kernel.

pub mod cache;
mod chunks;
mod launch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, DriverError};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use crate::sources::{self, Source};

pub use chunks::Lanes;
pub use launch::VectorRows;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no CUDA driver (libcuda) on this machine")]
    NoDriver,
    #[error("no NVRTC library (libnvrtc) to compile kiln's kernels; put its folder on LD_LIBRARY_PATH")]
    NoNvrtc,
    #[error("no CUDA device")]
    NoDevice,
    #[error("CUDA: {0}")]
    Driver(#[from] DriverError),
    #[error("NVRTC could not compile {source_name} for {arch}: {log}")]
    Compile {
        source_name: &'static str,
        arch: String,
        log: String,
    },
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// Whether the CUDA driver library can be loaded. cudarc's loader panics
/// on first use where it cannot, so this is asked first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library; nothing is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub fn nvrtc_present() -> bool {
    // SAFETY: as for `driver_present`.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters, as nvrtcVersion documents.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    Ok((major, minor))
}

/// PTX for `arch` (for example `compute_90`), with kiln's options.
pub fn compile(source: &Source, arch: &str) -> Result<Ptx> {
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc);
    }
    let options = CompileOptions {
        options: sources::nvrtc_options(arch),
        name: Some(source.name.to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source.for_nvrtc(), options).map_err(|e| GpuError::Compile {
        source_name: source.name,
        arch: arch.to_string(),
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().trim().to_string(),
            other => other.to_string(),
        },
    })
}

/// One CUDA device with kiln's kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    name: String,
    arch: String,
    functions: HashMap<&'static str, CudaFunction>,
    lanes: Mutex<Lanes>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

/// At most this much device memory per chunk in flight (two are): large
/// enough to keep the device busy, small enough to start overlapping soon.
pub const MAX_CHUNK_BYTES: usize = 256 << 20;

impl Gpu {
    /// Device `ordinal`, its kernels compiled; an error (never a panic)
    /// where there is no driver, no device or no NVRTC.
    pub fn open(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(GpuError::NoDriver);
        }
        if CudaContext::device_count().unwrap_or(0) <= ordinal as i32 {
            return Err(GpuError::NoDevice);
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = format!("compute_{major}{minor}");
        let mut functions = HashMap::new();
        let cache = cache::default_dir();
        for source in sources::ALL {
            let module = ctx.load_module(cache::compile_cached(&source, &arch, cache.as_deref())?)?;
            for &kernel in source.kernels {
                functions.insert(kernel, module.load_function(kernel)?);
            }
        }
        let (free, _total) = ctx.mem_get_info()?;
        let chunk_bytes = (free / 4).clamp(1 << 20, MAX_CHUNK_BYTES);
        let streams = [ctx.new_stream()?, ctx.new_stream()?];
        Ok(Self {
            name: ctx.name()?,
            lanes: Mutex::new(Lanes::new(ctx.clone(), streams, chunk_bytes)),
            ctx,
            arch,
            functions,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture the kernels were compiled for (`compute_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Device memory a chunk may use: a quarter of what was free at
    /// start-up, at most [`MAX_CHUNK_BYTES`]; smaller for tests that must
    /// see many chunks.
    pub fn set_chunk_bytes(&self, bytes: usize) {
        self.lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_chunk_bytes(bytes);
    }

    fn function(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }
}
