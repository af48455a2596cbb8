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
    /// The GPU once opened, or why there is none. `auto` opens it for the
    /// first batch large enough to go there, so a run that never calls a
    /// function on such a batch creates no CUDA context and compiles no
    /// kernel.
    gpu: OnceLock<Result<Arc<Gpu>, String>>,
    min_rows: usize,
}

static DEVICES: OnceLock<Devices> = OnceLock::new();

/// Chooses the devices for this process. With `gpu` the GPU is opened (and
/// the kernels compiled) here, and a machine without one is an error
/// before any data is read; with `auto` a machine without a CUDA driver is
/// the CPU at once. Later calls keep the first choice.
pub fn configure(choice: DeviceChoice) -> Result<&'static Devices, String> {
    if let Some(d) = DEVICES.get() {
        return Ok(d);
    }
    let min_rows = match std::env::var("KILN_GPU_MIN_ROWS") {
        Err(_) => DEFAULT_GPU_MIN_ROWS,
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("KILN_GPU_MIN_ROWS must be a number of rows, not '{v}'"))?,
    };
    let gpu = OnceLock::new();
    match choice {
        DeviceChoice::Cpu => {
            let _ = gpu.set(Err("--device cpu".to_string()));
        }
        DeviceChoice::Gpu => {
            let _ = gpu.set(Ok(Arc::new(open().map_err(|e| format!("--device gpu: {e}"))?)));
        }
        DeviceChoice::Auto if !kiln_kernels::gpu::driver_present() => {
            let _ = gpu.set(Err(GpuError::NoDriver.to_string()));
        }
        DeviceChoice::Auto => {}
    }
    Ok(DEVICES.get_or_init(|| Devices {
        choice,
        gpu,
        min_rows,
    }))
}

fn open() -> Result<Gpu, GpuError> {
    let gpu = Gpu::open(0)?;
    tracing::info!(
        device = gpu.name(),
        arch = gpu.arch(),
        "feature functions may use the GPU"
    );
    Ok(gpu)
}

/// The process's devices: the CPU alone until [`configure`] chose.
pub fn current() -> &'static Devices {
    DEVICES.get_or_init(|| {
        let gpu = OnceLock::new();
        let _ = gpu.set(Err("no device was chosen".to_string()));
        Devices {
            choice: DeviceChoice::Cpu,
            gpu,
            min_rows: DEFAULT_GPU_MIN_ROWS,
        }
    })
}

impl Devices {
    /// The GPU, opened on first use; none where it cannot be.
    fn gpu(&self) -> Option<&Gpu> {
        let opened = self.gpu.get_or_init(|| {
            open().map(Arc::new).map_err(|e| {
                tracing::info!(reason = %e, "no GPU: the feature functions run on the CPU");
                e.to_string()
            })
        });
        opened.as_deref().ok()
    }

    /// The GPU for a batch of `rows`, if this batch goes there.
    pub fn gpu_for(&self, rows: usize) -> Option<&Gpu> {
        match self.choice {
            DeviceChoice::Cpu => None,
            DeviceChoice::Auto if rows < self.min_rows => None,
            DeviceChoice::Auto | DeviceChoice::Gpu => self.gpu(),
        }
    }

    /// Whether a GPU failure falls back to the CPU (`auto`) or fails the
    /// query (`gpu`, where the user asked for the GPU).
    pub fn falls_back(&self) -> bool {
        self.choice != DeviceChoice::Gpu
    }

    /// Where a function runs, in words, for `kiln explain` (which opens
    /// the GPU to name it).
    pub fn describe(&self, has_kernel: bool) -> String {
        if self.choice == DeviceChoice::Cpu {
            return "cpu (--device cpu)".to_string();
        }
        let Some(gpu) = self.gpu() else {
            let why = self
                .gpu
                .get()
                .and_then(|g| g.as_ref().err())
                .map_or("no GPU", String::as_str);
            return format!("cpu ({why})");
        };
        if !has_kernel {
            return "cpu (no GPU kernel for this function)".to_string();
        }
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
