//! f32 matrix products for the CPU backward pass: OpenBLAS when the machine has it, the
//! `gemm` crate (candle's own matmul) otherwise.
//!
//! On this project's machines the `gemm` crate runs its AVX2 kernels at about 60 GFLOP/s a
//! core, while OpenBLAS's AVX-512 (SkylakeX) kernels reach about 140: the matmuls are most
//! of a training step, so that is most of the difference to PyTorch (MKL). OpenBLAS is
//! loaded at run time, never linked, so a build needs nothing beyond crates.io and a
//! machine without it trains as before. OpenBLAS is held to one thread and each product is
//! split across rayon's threads here, so one thread pool serves the whole step instead of
//! two pools spinning against each other.
//!
//! `ABLATE_BLAS` chooses: unset or `auto` (Debian's `libopenblas0-pthread`, else any
//! `libopenblas.so.0`), `off` (the `gemm` crate), or a path to a thread-safe library
//! exporting `cblas_sgemm`. Results differ between the two
//! in the last bits, as any two GEMMs do; each is deterministic for a given thread count.

use std::sync::OnceLock;

use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only strided matrix over a slice.
#[derive(Clone, Copy)]
pub struct View {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

// SAFETY: a View only reads, and is made from a slice borrowed for the product's duration.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// A row-major `rows × cols` matrix.
    pub fn of(s: &[f32], rows: usize, cols: usize) -> View {
        assert!(
            s.len() >= rows * cols,
            "matrix of {rows}x{cols} over {} values",
            s.len()
        );
        View {
            ptr: s.as_ptr(),
            rows,
            cols,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// Rows `r0..r0+m`, columns `c0..c0+k` of a row-major matrix `stride` wide.
    pub fn block(s: &[f32], stride: usize, r0: usize, m: usize, c0: usize, k: usize) -> View {
        assert!(
            c0 + k <= stride && (r0 + m) * stride <= s.len(),
            "block out of bounds"
        );
        View {
            ptr: s[r0 * stride + c0..].as_ptr(),
            rows: m,
            cols: k,
            rs: stride as isize,
            cs: 1,
        }
    }

    pub fn t(self) -> View {
        View {
            ptr: self.ptr,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `r0..r0+m` of this matrix.
    fn rows(self, r0: usize, m: usize) -> View {
        View {
            ptr: self.ptr.wrapping_offset(r0 as isize * self.rs),
            rows: m,
            ..self
        }
    }

    /// Columns `c0..c0+k` of this matrix.
    fn cols(self, c0: usize, k: usize) -> View {
        View {
            ptr: self.ptr.wrapping_offset(c0 as isize * self.cs),
            cols: k,
            ..self
        }
    }
}

/// `dst = beta·a·b` into a row-major `m × n` slice, or `dst += beta·a·b` with `acc`,
/// using every rayon thread.
pub fn matmul(dst: &mut [f32], m: usize, n: usize, a: View, b: View, acc: bool, beta: f32) {
    check(dst.len(), m, n, n, a, b);
    let out = SharedMut(dst.as_mut_ptr(), dst.len());
    // SAFETY: checked above; the product owns dst for its duration.
    unsafe { out.product(n, 0, m, 0, n, a, b, acc, beta, true, blas()) }
}

/// As `matmul`, on the calling thread (inside a parallel loop).
pub fn matmul_serial(dst: &mut [f32], m: usize, n: usize, a: View, b: View, acc: bool, beta: f32) {
    check(dst.len(), m, n, n, a, b);
    let out = SharedMut(dst.as_mut_ptr(), dst.len());
    // SAFETY: as in `matmul`.
    unsafe { out.product(n, 0, m, 0, n, a, b, acc, beta, false, blas()) }
}

fn check(len: usize, m: usize, n: usize, stride: usize, a: View, b: View) {
    assert!(
        a.rows == m && b.cols == n && a.cols == b.rows,
        "product of {}x{} and {}x{} into {m}x{n}",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * stride + n <= len,
        "product out of bounds"
    );
}

/// A buffer that parallel tasks write disjoint blocks of.
#[derive(Clone, Copy)]
pub struct SharedMut(pub *mut f32, pub usize);

// SAFETY: written only through `product` and `matmul_block`, whose callers write
// disjoint blocks.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The address `offset` values in (a method, so closures capture the whole Send
    /// wrapper rather than its raw pointer field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }

    /// `block = beta·a·b` for rows `r0..r0+m`, columns `c0..c0+k` of the row-major buffer
    /// `stride` wide, on the calling thread.
    ///
    /// # Safety
    /// No other thread may touch that block meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_block(
        self,
        stride: usize,
        r0: usize,
        m: usize,
        c0: usize,
        k: usize,
        a: View,
        b: View,
        beta: f32,
    ) {
        assert!(c0 + k <= stride, "block out of bounds");
        check(self.1.saturating_sub(r0 * stride + c0), m, k, stride, a, b);
        self.product(stride, r0, m, c0, k, a, b, false, beta, false, blas())
    }

    /// The product into rows `r0..r0+m`, columns `c0..c0+n` (bounds checked by the
    /// caller) through `backend` (`None`: the gemm crate), split across rayon's threads
    /// with `parallel`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        self,
        stride: usize,
        r0: usize,
        m: usize,
        c0: usize,
        n: usize,
        a: View,
        b: View,
        acc: bool,
        beta: f32,
        parallel: bool,
        backend: Option<&Blas>,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let dst = self.0.add(r0 * stride + c0);
        let Some(blas) = backend else {
            let par = if parallel {
                Parallelism::Rayon(rayon::current_num_threads())
            } else {
                Parallelism::None
            };
            crate_gemm(dst, stride, m, n, a, b, acc, beta, par);
            return;
        };
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        // Split the longer side of the output into one block per thread, in multiples
        // of 16 so each block keeps whole kernel tiles.
        let (len, by_rows) = if m >= n { (m, true) } else { (n, false) };
        let parts = threads.min(len.div_ceil(16)).max(1);
        let step = len.div_ceil(parts).div_ceil(16) * 16;
        let out = SharedMut(dst, 0);
        let run = |i: usize| {
            let (s, e) = (i * step, ((i + 1) * step).min(len));
            if s >= e {
                return;
            }
            let (d, a, b, bm, bn) = if by_rows {
                (out.at(s * stride), a.rows(s, e - s), b, e - s, n)
            } else {
                (out.at(s), a, b.cols(s, e - s), m, e - s)
            };
            blas.sgemm(d, stride, bm, bn, a, b, acc, beta);
        };
        if parts == 1 {
            run(0);
        } else {
            (0..parts).into_par_iter().for_each(run);
        }
    }
}

/// `dst = beta·a·b` (or `+=` with `acc`) into the row-major block at `dst`, `stride`
/// wide, through the gemm crate.
///
/// # Safety
/// `dst` must hold an `m × n` block `stride` wide that nothing else touches meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn crate_gemm(
    dst: *mut f32,
    stride: usize,
    m: usize,
    n: usize,
    a: View,
    b: View,
    acc: bool,
    beta: f32,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        a.cols,
        dst,
        1,
        stride as isize,
        acc,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        if acc { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        par,
    );
}

type CblasSgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

/// A loaded CBLAS.
pub struct Blas {
    sgemm: CblasSgemm,
    /// The library file, for logs and benchmark output.
    pub path: String,
    _lib: libloading::Library,
}

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

impl Blas {
    /// `(transposed, leading dimension)` of a view in CBLAS's row-major terms, or `None`
    /// when neither dimension is contiguous.
    fn operand(v: View) -> Option<(i32, i32)> {
        if v.cs == 1 && (v.rows <= 1 || v.rs >= v.cols as isize) {
            let ld = if v.rows <= 1 { v.cols } else { v.rs as usize };
            Some((NO_TRANS, ld.max(1) as i32))
        } else if v.rs == 1 && (v.cols <= 1 || v.cs >= v.rows as isize) {
            let ld = if v.cols <= 1 { v.rows } else { v.cs as usize };
            Some((TRANS, ld.max(1) as i32))
        } else {
            None
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn sgemm(
        &self,
        dst: *mut f32,
        stride: usize,
        m: usize,
        n: usize,
        a: View,
        b: View,
        acc: bool,
        beta: f32,
    ) {
        let (Some((ta, lda)), Some((tb, ldb))) = (Self::operand(a), Self::operand(b)) else {
            // Not a CBLAS layout (no contiguous dimension): the gemm crate takes any strides.
            crate_gemm(dst, stride, m, n, a, b, acc, beta, Parallelism::None);
            return;
        };
        (self.sgemm)(
            ROW_MAJOR,
            ta,
            tb,
            m as i32,
            n as i32,
            a.cols as i32,
            beta,
            a.ptr,
            lda,
            b.ptr,
            ldb,
            if acc { 1.0 } else { 0.0 },
            dst,
            stride.max(1) as i32,
        );
    }
}

/// The OpenBLAS in use, if any (see the module docs for `ABLATE_BLAS`).
pub fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(|| {
        let choice = std::env::var("ABLATE_BLAS").unwrap_or_default();
        let candidates: Vec<String> = match choice.as_str() {
            "off" | "none" | "0" => return None,
            // Debian's serial build is not safe for concurrent callers (it shares its
            // packing buffers: two runs of the same sweep gave different gradients), so
            // the threaded build, held to one thread of its own, comes first.
            "" | "auto" => [
                "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
                "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
                "libopenblas.so.0",
            ]
            .map(String::from)
            .to_vec(),
            path => vec![path.to_string()],
        };
        select_kernels();
        candidates.into_iter().find_map(|path| load(&path))
    })
    .as_ref()
}

/// OpenBLAS picks its kernels from the CPU model, and Debian's 0.3.21 does not know the
/// virtual "Intel Xeon Processor" models of cloud machines: it falls back to generic
/// kernels at a fifth of the speed. Name the kernel family from the CPU's features
/// instead, unless the user already did. Its own thread pool is not started: rayon's
/// threads call it.
fn select_kernels() {
    // Set before the library is loaded, while no other thread reads the environment
    // (the first product of a step runs on the caller's thread).
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
        std::env::set_var("OPENBLAS_NUM_THREADS", "1");
    }
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl");
        let core = if avx512 {
            "SkylakeX"
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            "Haswell"
        } else {
            return;
        };
        std::env::set_var("OPENBLAS_CORETYPE", core);
    }
}

fn load(path: &str) -> Option<Blas> {
    // SAFETY: loading runs OpenBLAS's initializers, which only probe the CPU.
    let lib = unsafe { libloading::Library::new(path) }.ok()?;
    // SAFETY: the signature is CBLAS's.
    let sgemm: CblasSgemm = unsafe { *lib.get::<CblasSgemm>(b"cblas_sgemm\0").ok()? };
    // A threaded build would start a second pool next to rayon's: keep it to one thread.
    type SetThreads = unsafe extern "C" fn(i32);
    if let Ok(set) = unsafe { lib.get::<SetThreads>(b"openblas_set_num_threads\0") } {
        unsafe { set(1) };
    }
    tracing::debug!(path, "matmuls through OpenBLAS");
    Some(Blas {
        sgemm,
        path: path.to_string(),
        _lib: lib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// `matmul` on a given backend.
    #[allow(clippy::too_many_arguments)]
    fn product(
        backend: Option<&Blas>,
        dst: &mut [f32],
        m: usize,
        n: usize,
        a: View,
        b: View,
        acc: bool,
        beta: f32,
        parallel: bool,
    ) {
        check(dst.len(), m, n, n, a, b);
        let out = SharedMut(dst.as_mut_ptr(), dst.len());
        unsafe { out.product(n, 0, m, 0, n, a, b, acc, beta, parallel, backend) }
    }

    /// Every layout the backward pass uses (plain, transposed either side, blocks of a
    /// wider matrix, accumulation and scaling), against a naive product, through the
    /// gemm crate and, where this machine has it, OpenBLAS.
    #[test]
    #[allow(clippy::print_stderr)] // says which backends the test could check
    fn products_match_a_naive_product_in_every_layout() {
        let backends: Vec<Option<&Blas>> = std::iter::once(None).chain(blas().map(Some)).collect();
        if backends.len() == 1 {
            eprintln!("no OpenBLAS on this machine: checking the gemm crate only");
        }
        for backend in backends {
            for parallel in [false, true] {
                layouts(backend, parallel);
            }
        }
        // The public entry points, on whichever backend is in use.
        let (a, b) = (values(6, 1), values(6, 2));
        let mut c = vec![0f32; 4];
        matmul(
            &mut c,
            2,
            2,
            View::of(&a, 2, 3),
            View::of(&b, 3, 2),
            false,
            1.0,
        );
        for (g, w) in c.iter().zip(naive(&a, &b, 2, 3, 2)) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    fn layouts(backend: Option<&Blas>, parallel: bool) {
        let (m, k, n) = (37, 19, 53);
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let want = naive(&a, &b, m, k, n);
        let close = |got: &[f32], want: &[f32]| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-4, "{g} vs {w}");
            }
        };
        let mut c = vec![0f32; m * n];
        product(
            backend,
            &mut c,
            m,
            n,
            View::of(&a, m, k),
            View::of(&b, k, n),
            false,
            1.0,
            parallel,
        );
        close(&c, &want);
        // Transposed operands read through strides: (aᵀ)ᵀ·(bᵀ)ᵀ, over a stale output.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c2 = vec![7f32; m * n];
        let (atv, btv) = (View::of(&at, k, m).t(), View::of(&bt, n, k).t());
        product(backend, &mut c2, m, n, atv, btv, false, 1.0, parallel);
        close(&c2, &want);
        // A wide output (split by columns) from a transposed left side, accumulated
        // with a scale: c += 0.5·a·b.
        let (wm, wn) = (5, 70);
        let wb = values(k * wn, 4);
        let mut w = vec![1f32; wm * wn];
        let av = View::of(&at, k, m).t().rows(0, wm);
        product(
            backend,
            &mut w,
            wm,
            wn,
            av,
            View::of(&wb, k, wn),
            true,
            0.5,
            parallel,
        );
        let wwant = naive(&a[..wm * k], &wb, wm, k, wn);
        close(&w, &wwant.iter().map(|x| 1.0 + 0.5 * x).collect::<Vec<_>>());
        // A block of a wider matrix, written into a block of a wider output.
        let wide = values(m * (k + 5), 3);
        let blk = View::block(&wide, k + 5, 0, m, 2, k);
        let cut: Vec<f32> = wide
            .chunks(k + 5)
            .flat_map(|r| r[2..2 + k].to_vec())
            .collect();
        let want_blk = naive(&cut, &b, m, k, n);
        let mut out = vec![0f32; m * (n + 4)];
        let shared = SharedMut(out.as_mut_ptr(), out.len());
        unsafe {
            shared.product(
                n + 4,
                0,
                m,
                3,
                n,
                blk,
                View::of(&b, k, n),
                false,
                1.0,
                parallel,
                backend,
            )
        };
        for (i, row) in out.chunks(n + 4).enumerate() {
            close(&row[3..3 + n], &want_blk[i * n..(i + 1) * n]);
            assert_eq!(row[..3], [0.0; 3]);
        }
    }
}
