//! f32 buffers reused from one training step to the next.
//!
//! A step of the CPU backward pass needs the same few hundred activation and gradient
//! buffers every time, most of them megabytes. Freshly allocated, each large one is a new
//! mapping: the kernel zeroes its pages on first touch and, when it is unmapped, stops
//! every other core to flush its TLB. On opt-125m that was over a third of a step's time.
//! A `Buf` goes back to a process-wide pool when dropped and the next step takes it again.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers smaller than this come from the allocator's own free lists cheaply.
const MIN_POOLED: usize = 16 * 1024;
/// The pool never holds more than this many bytes; beyond it, buffers are freed.
const MAX_POOLED_BYTES: usize = 8 << 30;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// An f32 buffer that returns to the pool when dropped.
#[derive(Debug, Default)]
pub struct Buf(Vec<f32>);

impl Buf {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Buf {
        let mut b = Buf::scratch(len);
        b.fill(0.0);
        b
    }

    /// `len` values left from an earlier use, for a buffer that is overwritten whole.
    pub fn scratch(len: usize) -> Buf {
        if len < MIN_POOLED {
            return Buf(vec![0.0; len]);
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest pooled buffer that fits without wasting more than half of it.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() <= 2 * len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        let mut v = match best {
            Some(i) => pool.swap_remove(i),
            None => return Buf(written_zeros(len)),
        };
        drop(pool);
        // Values past the old length were never written: zero them, never read them.
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0.0);
        }
        Buf(v)
    }

    /// A copy of `src`.
    pub fn copy_of(src: &[f32]) -> Buf {
        let mut b = Buf::scratch(src.len());
        b.copy_from_slice(src);
        b
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.0.capacity() < MIN_POOLED {
            return;
        }
        let v = std::mem::take(&mut self.0);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = pool.iter().map(|v| v.capacity() * 4).sum();
        if held + v.capacity() * 4 <= MAX_POOLED_BYTES {
            pool.push(v);
        }
    }
}

/// `len` zeros written, not `calloc`ed: a calloc'd page is first mapped to the shared
/// zero page, and the first write into it (a matmul accumulating into a gradient, say)
/// then takes a copy-on-write fault that flushes every core's TLB.
pub fn written_zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.resize(len, 0f32);
    v
}

/// Frees every pooled buffer when dropped: held for the length of a run's training.
pub struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_taken_again_and_zeroed_on_request() {
        let len = MIN_POOLED * 3;
        let mut a = Buf::scratch(len);
        a.fill(5.0);
        let ptr = a.as_ptr();
        drop(a);
        // Other tests share the pool, so look for this buffer among a few takes.
        let taken: Vec<Buf> = (0..8).map(|_| Buf::scratch(len - 7)).collect();
        let again = taken.iter().find(|b| b.as_ptr() == ptr).expect("reused");
        assert_eq!(again.len(), len - 7);
        assert!(
            again.iter().all(|&v| v == 5.0),
            "a scratch buffer keeps old values"
        );
        drop(taken);
        let z = Buf::zeroed(len);
        assert!(z.iter().all(|&v| v == 0.0));
        let v = Buf::copy_of(&vec![1.0; len]);
        assert_eq!(v.len(), len);
    }
}
