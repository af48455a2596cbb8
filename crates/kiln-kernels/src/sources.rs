//! The CUDA sources of the kernels, built into the binary so that NVRTC
//! can compile them wherever kiln runs. Each kernel file includes
//! `common.cuh`; NVRTC gets the header's text in its place.

const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// A kernel file: its name and its `extern "C"` entry points.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub name: &'static str,
    text: &'static str,
    pub kernels: &'static [&'static str],
}

pub const HASH_BUCKET: Source = Source {
    name: "hash_bucket.cu",
    text: include_str!("../../../kernels/hash_bucket.cu"),
    kernels: &[
        "hash_bucket_offsets32",
        "hash_bucket_offsets64",
        "hash_bucket_u64",
    ],
};

pub const BUCKETIZE: Source = Source {
    name: "bucketize.cu",
    text: include_str!("../../../kernels/bucketize.cu"),
    kernels: &["bucketize_f64", "bucketize_i64"],
};

pub const MINHASH: Source = Source {
    name: "minhash.cu",
    text: include_str!("../../../kernels/minhash.cu"),
    kernels: &["minhash_offsets32"],
};

pub const VECTOR: Source = Source {
    name: "vector.cu",
    text: include_str!("../../../kernels/vector.cu"),
    kernels: &["vector_pairwise", "l2_normalize"],
};

pub const PROJECTION: Source = Source {
    name: "projection.cu",
    text: include_str!("../../../kernels/projection.cu"),
    kernels: &["random_projection"],
};

pub const ALL: [Source; 5] = [HASH_BUCKET, BUCKETIZE, MINHASH, VECTOR, PROJECTION];

/// Permutations per thread in `minhash.cu` (its `KILN_MINHASH_PERMS`).
pub const MINHASH_PERMS_PER_THREAD: u32 = 16;

impl Source {
    /// A source that is not one of kiln's files (tests, experiments).
    pub const fn from_text(name: &'static str, text: &'static str, kernels: &'static [&'static str]) -> Self {
        Self { name, text, kernels }
    }

    /// The text NVRTC compiles: the shared header in place of its include.
    pub fn for_nvrtc(&self) -> String {
        let header = COMMON.replace("#pragma once", "");
        self.text.replace("#include \"common.cuh\"", &header)
    }
}

/// The options every kernel is compiled with. `--fmad=false` keeps each
/// product and sum rounded as on the CPU, so float answers are the same
/// bits on both.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".to_string(),
        "--std=c++17".to_string(),
    ]
}
