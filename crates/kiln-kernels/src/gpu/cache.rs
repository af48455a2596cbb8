//! Compiled kernels kept on disk, so that NVRTC runs once per kernel
//! source, architecture and NVRTC version on a machine rather than once per
//! process: `KILN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/kiln/kernels`, else
//! `~/.cache/kiln/kernels`. A cache that cannot be read or written (a
//! read-only container) only costs the compile.

use std::path::{Path, PathBuf};

use cudarc::nvrtc::Ptx;

use super::{Result, compile, nvrtc_version};
use crate::mix::xxh64;
use crate::sources::{self, Source};

/// Where the compiled kernels are kept, if anywhere.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("kiln").join("kernels"))
}

/// The file a kernel's PTX is kept in: everything that changes the PTX is
/// in its name.
fn file_for(source: &Source, arch: &str) -> Result<String> {
    let (major, minor) = nvrtc_version()?;
    let text = source.for_nvrtc() + &sources::nvrtc_options(arch).join(" ");
    let stem = source.name.trim_end_matches(".cu");
    Ok(format!(
        "{stem}-{arch}-nvrtc{major}.{minor}-{:016x}.ptx",
        xxh64(text.as_bytes())
    ))
}

/// The PTX of `source` for `arch`, from `dir` if it is there, else
/// compiled and left there.
pub fn compile_cached(source: &Source, arch: &str, dir: Option<&Path>) -> Result<Ptx> {
    let Some(dir) = dir else {
        return compile(source, arch);
    };
    let path = dir.join(file_for(source, arch)?);
    if let Ok(ptx) = std::fs::read_to_string(&path)
        && ptx.contains(".entry")
    {
        return Ok(Ptx::from_src(ptx));
    }
    let ptx = compile(source, arch)?;
    // Written aside and renamed, so that a reader never sees half a file.
    let aside = path.with_extension(format!("{}.tmp", std::process::id()));
    let kept = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&aside, ptx.to_src()))
        .and_then(|_| std::fs::rename(&aside, &path));
    if kept.is_err() {
        // Not kept: the next process compiles again, nothing worse.
        let _ = std::fs::remove_file(&aside);
    }
    Ok(ptx)
}
