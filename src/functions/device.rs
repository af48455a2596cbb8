//! Where the feature functions run: the CPU, or a GPU through
//! `kiln_kernels::gpu`. Chosen once per process (`--device`,
//! `KILN_DEVICE`) and asked per batch: each function has one
//! implementation that hands a batch to the GPU or to its CPU loops, with
//! the same answer either way.

use std::sync::{Arc, OnceLock};

use kiln_kernels::gpu::{Gpu, GpuError};

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The GPU when there is one and a batch is large enough to pay for
    /// its copies; the CPU otherwise.
    #[default]
    Auto,
    Cpu,
    /// The GPU for every batch a kernel exists for; no GPU is an error at
    /// start-up.
    Gpu,
}

impl DeviceChoice {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "gpu" => Some(Self::Gpu),
            _ => None,
        }
    }
}

/// The smallest batch `auto` sends to the GPU: below it, copying the batch
/// there and back costs more than the CPU's loops. `KILN_GPU_MIN_ROWS`
/// sets it for a machine whose crossover `benches/gpu_check.sh` measured.
pub const DEFAULT_GPU_MIN_ROWS: usize = 65_536;

#[derive(Debug)]
pub struct Devices {
    choice: DeviceChoice,
    gpu: Option<Arc<Gpu>>,
    /// Why there is no GPU, for `kiln explain`.
    missing: Option<String>,
    min_rows: usize,
}

static DEVICES: OnceLock<Devices> = OnceLock::new();

/// Opens the GPU if `choice` may use one. With `gpu`, a machine without
/// one is an error here, before any data is read; with `auto` it is the
/// CPU. Later calls keep the first choice.
pub fn configure(choice: DeviceChoice) -> Result<&'static Devices, GpuError> {
    if let Some(d) = DEVICES.get() {
        return Ok(d);
    }
    let min_rows = std::env::var("KILN_GPU_MIN_ROWS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_GPU_MIN_ROWS);
    let (gpu, missing) = match choice {
        DeviceChoice::Cpu => (None, Some("--device cpu".to_string())),
        DeviceChoice::Auto | DeviceChoice::Gpu => match Gpu::open(0) {
            Ok(gpu) => {
                tracing::info!(
                    device = gpu.name(),
                    arch = gpu.arch(),
                    "feature functions may use the GPU"
                );
                (Some(Arc::new(gpu)), None)
            }
            Err(e) if choice == DeviceChoice::Gpu => return Err(e),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    Ok(DEVICES.get_or_init(|| Devices {
        choice,
        gpu,
        missing,
        min_rows,
    }))
}

/// The process's devices: the CPU alone until [`configure`] chose.
pub fn current() -> &'static Devices {
    DEVICES.get_or_init(|| Devices {
        choice: DeviceChoice::Cpu,
        gpu: None,
        missing: Some("no device was chosen".to_string()),
        min_rows: DEFAULT_GPU_MIN_ROWS,
    })
}

impl Devices {
    /// The GPU for a batch of `rows`, if this batch goes there.
    pub fn gpu_for(&self, rows: usize) -> Option<&Gpu> {
        let gpu = self.gpu.as_deref()?;
        match self.choice {
            DeviceChoice::Gpu => Some(gpu),
            DeviceChoice::Auto if rows >= self.min_rows => Some(gpu),
            _ => None,
        }
    }

    /// Whether a GPU failure falls back to the CPU (`auto`) or fails the
    /// query (`gpu`, where the user asked for the GPU).
    pub fn falls_back(&self) -> bool {
        self.choice != DeviceChoice::Gpu
    }

    /// Where a function runs, in words, for `kiln explain`.
    pub fn describe(&self, has_kernel: bool) -> String {
        let gpu = match (&self.gpu, has_kernel) {
            (Some(gpu), true) => gpu,
            (Some(_), false) => return "cpu (no GPU kernel for this function)".to_string(),
            (None, _) => {
                return format!("cpu ({})", self.missing.as_deref().unwrap_or("no GPU"));
            }
        };
        match self.choice {
            DeviceChoice::Gpu => format!("gpu ({}, {})", gpu.name(), gpu.arch()),
            _ => format!(
                "gpu ({}, {}) for batches of {} rows or more, cpu below",
                gpu.name(),
                gpu.arch(),
                self.min_rows
            ),
        }
    }
}

/// Runs `on_gpu` where this batch goes to the GPU, `on_cpu` otherwise, or
/// when the GPU cannot take it and `auto` allows the CPU instead.
pub fn dispatch<T>(
    rows: usize,
    call: &str,
    on_gpu: impl FnOnce(&Gpu) -> Result<T, GpuError>,
    on_cpu: impl FnOnce() -> datafusion::common::Result<T>,
) -> datafusion::common::Result<T> {
    let devices = current();
    let Some(gpu) = devices.gpu_for(rows) else {
        return on_cpu();
    };
    match on_gpu(gpu) {
        Ok(out) => Ok(out),
        // A row too large for a chunk is the CPU's whatever was chosen.
        Err(GpuError::Input(why)) => {
            tracing::debug!(call, why, "on the CPU");
            on_cpu()
        }
        Err(e) if devices.falls_back() => {
            tracing::warn!(call, error = %e, "the GPU failed; this batch runs on the CPU");
            on_cpu()
        }
        Err(e) => datafusion::common::exec_err!("{call} on the GPU: {e}"),
    }
}
