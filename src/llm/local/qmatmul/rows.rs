//! The one operation every quantized weight layout offers (the row-wise kernels of this
//! module and the packed tiles alike), apart from the module that picks a layout so that the
//! layouts import it without importing their parent.

/// `dst[m, n] = x[m, k] · Wᵀ` for a quantized `W[n, k]`.
pub trait RowsMatMul: Send + Sync {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]);

    /// Whether prompt chunks (hundreds of rows) run faster here than through an f32 copy of
    /// the weights and a float gemm: then no such copy is kept.
    fn fast_for_many_rows(&self) -> bool {
        false
    }
}
