//! Every kernel compiles with NVRTC, as it will at start-up on a GPU
//! machine, for the architectures kiln meets (Volta to Hopper and on). No
//! GPU needed: NVRTC is a library (scripts/test.sh installs NVIDIA's pip
//! wheel of it and puts it on LD_LIBRARY_PATH). A missing NVRTC fails the
//! test rather than skipping it.

use kiln_kernels::gpu;
use kiln_kernels::sources;

#[test]
fn every_kernel_compiles_with_nvrtc_for_each_architecture() {
    assert!(
        gpu::nvrtc_present(),
        "libnvrtc not found: run the suite through scripts/test.sh, which installs it and sets LD_LIBRARY_PATH"
    );
    let (major, minor) = gpu::nvrtc_version().unwrap();
    // NVRTC 13 no longer targets Volta.
    let archs: &[&str] = if major >= 13 {
        &["compute_80", "compute_90"]
    } else {
        &["compute_70", "compute_80", "compute_90"]
    };
    for source in sources::ALL {
        for arch in archs {
            let ptx = gpu::compile(&source, arch)
                .unwrap_or_else(|e| panic!("NVRTC {major}.{minor}: {e}"))
                .to_src();
            for kernel in source.kernels {
                assert!(
                    ptx.contains(&format!(".entry {kernel}(")),
                    "{} for {arch} has no entry point {kernel}",
                    source.name
                );
            }
        }
    }
}

#[test]
fn a_kernel_that_does_not_compile_is_an_error_with_nvrtcs_log() {
    assert!(gpu::nvrtc_present(), "libnvrtc not found (see above)");
    let broken = sources::Source::from_text(
        "broken.cu",
        "extern \"C\" __global__ void k() { undeclared(); }",
        &["k"],
    );
    let e = gpu::compile(&broken, "compute_80").unwrap_err().to_string();
    assert!(e.contains("broken.cu") && e.contains("undeclared"), "{e}");
}

#[test]
fn compiled_kernels_are_kept_on_disk_and_read_back() {
    assert!(gpu::nvrtc_present(), "libnvrtc not found (see above)");
    let dir = tempfile::tempdir().unwrap();
    let first = gpu::cache::compile_cached(&sources::BUCKETIZE, "compute_80", Some(dir.path()))
        .unwrap()
        .to_src();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("bucketize-compute_80-nvrtc") && name.ends_with(".ptx"),
        "{name}"
    );
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), first);

    // Read back, not compiled again: a marked copy comes back as it is.
    let marked = format!("{first}\n// kept\n");
    std::fs::write(&files[0], &marked).unwrap();
    let again = gpu::cache::compile_cached(&sources::BUCKETIZE, "compute_80", Some(dir.path()))
        .unwrap()
        .to_src();
    assert_eq!(again, marked);

    // A damaged file is compiled over.
    std::fs::write(&files[0], "garbage").unwrap();
    let fixed = gpu::cache::compile_cached(&sources::BUCKETIZE, "compute_80", Some(dir.path()))
        .unwrap()
        .to_src();
    assert_eq!(fixed, first);
    // Another architecture is another file.
    gpu::cache::compile_cached(&sources::BUCKETIZE, "compute_90", Some(dir.path())).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
