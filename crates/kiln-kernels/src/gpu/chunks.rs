//! Running a kernel over inputs of any size: the rows are cut into chunks
//! whose device buffers fit a budget (so no input makes the device run out
//! of memory), and the chunks alternate between two lanes, each a stream
//! with its own pinned host buffers and device buffers. While one lane's
//! kernel runs, the host fills the other lane's pinned buffer and queues
//! its copy: copies and kernels overlap.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtrMut, PinnedHostSlice,
};

use super::{GpuError, Result};

/// Inputs are laid out one after another in a lane's buffer, each at a
/// multiple of this (enough for any element type the kernels read).
const ALIGN: usize = 16;

/// What one chunk copies in and where its output goes.
pub(crate) struct Chunk<'a> {
    /// Host bytes of each input, in the order the kernel takes them.
    pub inputs: Vec<&'a [u8]>,
    /// Where the chunk's output lies in the whole output, in bytes.
    pub out: Range<usize>,
}

struct Lane {
    stream: Arc<CudaStream>,
    pinned_in: Option<PinnedHostSlice<u8>>,
    pinned_out: Option<PinnedHostSlice<u8>>,
    dev_in: Option<CudaSlice<u8>>,
    dev_out: Option<CudaSlice<u8>>,
    /// The output range of the chunk in flight, copied out once the
    /// stream has finished it.
    pending: Option<Range<usize>>,
}

/// The two lanes of a device, and the budget each chunk is cut to.
pub struct Lanes {
    ctx: Arc<CudaContext>,
    lanes: [Lane; 2],
    chunk_bytes: usize,
    /// A byte every output buffer is filled with before a kernel runs, so
    /// that an element the kernel fails to write shows up (gpu-check).
    poison: Option<u8>,
    /// Whether to time each kernel with events (gpu-check), and the sum of
    /// those times over the last call, in milliseconds.
    timing: bool,
    kernel_ms: f64,
}

fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl Lane {
    fn new(stream: Arc<CudaStream>) -> Self {
        Self {
            stream,
            pinned_in: None,
            pinned_out: None,
            dev_in: None,
            dev_out: None,
            pending: None,
        }
    }

    /// Waits for the chunk in flight and copies its output home.
    fn finish(&mut self, out: &mut [u8]) -> Result<()> {
        if let Some(range) = self.pending.take() {
            self.stream.synchronize()?;
            let pinned = self
                .pinned_out
                .as_ref()
                .expect("a chunk in flight has an output buffer");
            out[range.clone()].copy_from_slice(&pinned.as_slice()?[..range.len()]);
        }
        Ok(())
    }

    /// Buffers of at least `need` bytes on both sides.
    fn reserve(
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        pinned: &mut Option<PinnedHostSlice<u8>>,
        device: &mut Option<CudaSlice<u8>>,
        need: usize,
    ) -> Result<()> {
        let need = need.max(ALIGN);
        if pinned.as_ref().is_none_or(|p| p.len() < need) {
            *pinned = None;
            // SAFETY: the buffer is written before any byte of it is read.
            *pinned = Some(unsafe { ctx.alloc_pinned::<u8>(need) }?);
        }
        if device.as_ref().is_none_or(|d| d.len() < need) {
            *device = None;
            // SAFETY: as above; the kernels read only what was copied in.
            *device = Some(unsafe { stream.alloc::<u8>(need) }?);
        }
        Ok(())
    }
}

impl Lanes {
    pub(crate) fn new(ctx: Arc<CudaContext>, streams: [Arc<CudaStream>; 2], chunk_bytes: usize) -> Self {
        let [a, b] = streams;
        Self {
            ctx,
            lanes: [Lane::new(a), Lane::new(b)],
            chunk_bytes,
            poison: None,
            timing: false,
            kernel_ms: 0.0,
        }
    }

    pub(crate) fn set_timing(&mut self, on: bool) {
        self.timing = on;
    }

    /// The kernels' own time in the last call (copies excluded), when
    /// timing is on.
    pub(crate) fn kernel_ms(&self) -> f64 {
        self.kernel_ms
    }

    pub(crate) fn set_chunk_bytes(&mut self, bytes: usize) {
        self.chunk_bytes = bytes.max(ALIGN * 8);
    }

    pub(crate) fn set_poison(&mut self, poison: Option<u8>) {
        self.poison = poison;
    }

    pub(crate) fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Runs every chunk, alternating lanes, into `out`. `launch` queues the
    /// kernel on the stream it is given, over the chunk's inputs on the
    /// device and its output buffer.
    pub(crate) fn run<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = Chunk<'a>>,
        out: &mut [u8],
        launch: impl Fn(&Arc<CudaStream>, &[CudaView<'_, u8>], &mut CudaViewMut<'_, u8>, usize) -> Result<()>,
    ) -> Result<()> {
        let mut events = Vec::new();
        let result = self.run_all(chunks, out, launch, &mut events);
        // Whatever happened, nothing may stay in flight into buffers that
        // the next call reuses.
        for lane in &mut self.lanes {
            let drained = lane.finish(out);
            if result.is_ok() {
                drained?;
            }
        }
        self.kernel_ms = 0.0;
        for (start, end) in &events {
            self.kernel_ms += f64::from(start.elapsed_ms(end)?);
        }
        result
    }

    fn run_all<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = Chunk<'a>>,
        out: &mut [u8],
        launch: impl Fn(&Arc<CudaStream>, &[CudaView<'_, u8>], &mut CudaViewMut<'_, u8>, usize) -> Result<()>,
        events: &mut Vec<(CudaEvent, CudaEvent)>,
    ) -> Result<()> {
        for (index, chunk) in chunks.into_iter().enumerate() {
            let lane = &mut self.lanes[index % 2];
            lane.finish(out)?;
            let in_bytes: usize = chunk.inputs.iter().map(|i| aligned(i.len())).sum();
            let out_bytes = chunk.out.len();
            Lane::reserve(
                &self.ctx,
                &lane.stream,
                &mut lane.pinned_in,
                &mut lane.dev_in,
                in_bytes,
            )?;
            Lane::reserve(
                &self.ctx,
                &lane.stream,
                &mut lane.pinned_out,
                &mut lane.dev_out,
                out_bytes,
            )?;
            let (Some(pinned_in), Some(dev_in), Some(pinned_out), Some(dev_out)) = (
                &mut lane.pinned_in,
                &mut lane.dev_in,
                &mut lane.pinned_out,
                &mut lane.dev_out,
            ) else {
                unreachable!("reserve leaves every buffer in place");
            };

            let staging = pinned_in.as_mut_slice()?;
            let mut at = 0;
            let mut spans = Vec::with_capacity(chunk.inputs.len());
            for input in &chunk.inputs {
                staging[at..at + input.len()].copy_from_slice(input);
                spans.push(at..at + input.len());
                at += aligned(input.len());
            }
            // From pinned memory the copy is queued and returns at once.
            lane.stream
                .memcpy_htod(&staging[..in_bytes], &mut dev_in.slice_mut(0..in_bytes))?;
            let views: Vec<CudaView<'_, u8>> = spans.into_iter().map(|s| dev_in.slice(s)).collect();
            let mut out_view = dev_out.slice_mut(0..out_bytes.max(1));
            if let Some(byte) = self.poison {
                let (ptr, _sync) = out_view.device_ptr_mut(&lane.stream);
                // SAFETY: `ptr` holds at least `out_bytes` bytes, on this stream.
                unsafe {
                    cudarc::driver::result::memset_d8_async(ptr, byte, out_bytes, lane.stream.cu_stream())
                }?;
            }
            let timed = if self.timing {
                let (start, end) = (
                    self.ctx.new_event(Some(CU_EVENT_DEFAULT))?,
                    self.ctx.new_event(Some(CU_EVENT_DEFAULT))?,
                );
                start.record(&lane.stream)?;
                Some((start, end))
            } else {
                None
            };
            launch(&lane.stream, &views, &mut out_view, index)?;
            if let Some((start, end)) = timed {
                end.record(&lane.stream)?;
                events.push((start, end));
            }
            let home = pinned_out.as_mut_slice()?;
            lane.stream
                .memcpy_dtoh(&out_view.slice(0..out_bytes), &mut home[..out_bytes])?;
            lane.pending = Some(chunk.out);
        }
        Ok(())
    }
}

/// Cuts `0..rows` into ranges whose `cost(first, last)` in bytes fits
/// `budget`, each as long as it can be. A single row over the budget is an
/// error: the caller computes it on the CPU instead.
pub(crate) fn plan(
    rows: usize,
    budget: usize,
    cost: impl Fn(usize, usize) -> usize,
) -> Result<Vec<Range<usize>>> {
    let mut ranges = Vec::new();
    let mut first = 0;
    while first < rows {
        if cost(first, first + 1) > budget {
            return Err(GpuError::Input(format!(
                "row {first} needs {} bytes on the device, more than a chunk's {budget}",
                cost(first, first + 1)
            )));
        }
        // The largest `last` that fits: cost grows with `last`.
        let (mut lo, mut hi) = (first + 1, rows);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if cost(first, mid) <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        ranges.push(first..lo);
        first = lo;
    }
    Ok(ranges)
}

/// The bytes of a slice of plain numbers, as the device sees them.
pub(crate) fn bytes_of<T: Copy>(values: &[T]) -> &[u8] {
    // SAFETY: the kernels' element types (integers and floats) have no
    // padding and any byte pattern is one of them.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// A whole output, written by the chunks as bytes.
pub(crate) fn output<T: Copy + Default>(len: usize) -> Vec<T> {
    vec![T::default(); len]
}

pub(crate) fn bytes_of_mut<T: Copy>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: as for `bytes_of`; every byte pattern is a valid `T`.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_row_once_within_the_budget() {
        let sizes: Vec<usize> = (0..1000).map(|i| (i * 37) % 101 + 1).collect();
        let prefix: Vec<usize> = std::iter::once(0)
            .chain(sizes.iter().scan(0, |s, x| {
                *s += x;
                Some(*s)
            }))
            .collect();
        let cost = |a: usize, b: usize| prefix[b] - prefix[a] + 8 * (b - a);
        let ranges = plan(sizes.len(), 2000, cost).unwrap();
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, 1000);
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            // Each is as long as it can be.
            assert!(cost(w[0].start, w[0].end + 1) > 2000);
        }
        assert!(ranges.iter().all(|r| cost(r.start, r.end) <= 2000));
        assert!(plan(3, 5, |a, b| (b - a) * 10).is_err(), "a row over the budget");
        assert!(plan(0, 5, |a, b| b - a).unwrap().is_empty());
    }
}
