//! The CPU implementations: straight loops over Arrow's buffers as slices,
//! written so that the compiler vectorises them, and the reference every
//! GPU kernel is compared with.

pub mod bucketize;
pub mod hash;
pub mod minhash;
pub mod projection;
pub mod scale;
pub mod vector;

/// An Arrow offset (`i32` for `Utf8` and `List`, `i64` for the `Large`
/// layouts).
pub trait Offset: Copy {
    fn index(self) -> usize;
}

impl Offset for i32 {
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

impl Offset for i64 {
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}
