//! Weights repacked at load for the quantized products of one row, a batch of rows and a whole
//! prompt chunk: the layout and tile driver of every packed kernel, and the AVX-512 VNNI tiles
//! of the 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the K-quants' layout is
//! `packed_k`, the AVX2 tiles of both layouts `packed_avx2`).
//!
//! Kernels that give each lane a slice of one weight row and sum the lanes per activation
//! row (llama.cpp's `vec_dot`, and ours before these) do most of their work per (weight row,
//! activation row) pair outside the multiply. Here, as in llama.cpp's repacked layouts (`ggml-cpu/repack.cpp`), the
//! weights are repacked at load, 16 rows interleaved 4 bytes at a time, so that one
//! `vpdpbusd` multiplies 4 values of each of 16 weight rows by the same 4 activation bytes
//! (broadcast from memory, inside the instruction) and accumulates each weight row's sum in
//! its own i32 lane: the sixteen lanes are sixteen outputs, and no horizontal sum is left. A
//! tile of up to 8 activation rows shares each loaded weight vector. (512-bit vectors rather
//! than llama.cpp's 8 rows per 256-bit one: each activation broadcast and each per-block
//! float step serves twice the weight rows. On a Zen 4 core, whose `vpdpbusd` peak is the
//! same for both widths, that took a prompt-sized Q8_0 product from ~55 % to ~70 % of it.)
//! CPUs with AVX2 but not AVX-512 VNNI take each group as two halves of 8 rows, with
//! `vpmaddubsw` and `vpmaddwd` in place of `vpdpbusd` (`packed_avx2`).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so weights are stored unsigned with the
//! type's offset (`q + 8` for Q4_0, `q + 16` for Q5_0, `q + 128` for Q8_0) and the offset
//! times the activation block's byte sum is subtracted, all in exact integers. Q4_1 and Q5_1
//! values are unsigned already; their minimums add `min · s` per block (`s`: the activation
//! block's scaled sum, as in llama.cpp's Q8_1). Activations are
//! quantized to Q8_0 (llama.cpp's activation type for these weights) by `act_quant`.
//!
//! Batch invariance: each output is `Σ_b float(I_b) · (d_w · d_y)` accumulated block after
//! block with fused multiply-adds, where `I_b` is the block's exact integer dot product. The
//! integer sums may be split into several accumulators (more independent chains for small
//! tiles) without changing a bit, and the float chain is the same whatever the tile, so a row
//! gets the same result in any batch (see the tests). The AVX2 tiles compute the same integers
//! and run the same float chain lane by lane: both instruction sets give the same outputs.

use std::arch::x86_64::*;

use anyhow::Result;
use rayon::prelude::*;

use super::act_quant;
use super::block32::{check_size, Block32};
use super::packed_avx2;
use super::packed_layout::{Act32, Fifth32, Group32, Nibbles32, HALF, LANES};
use super::rows::RowsMatMul;

/// Whether the CPU runs the VNNI tiles (AVX2 and FMA for activation quantization, AVX-512 F,
/// BW, VL and VNNI for the products on 512-bit vectors).
pub(super) fn vnni_available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// The instructions a packed kernel multiplies with, chosen once when it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512 VNNI, F, BW and VL (and AVX2, FMA): whole 16-row groups on 512-bit vectors.
    Vnni,
    /// AVX2 and FMA: each group as two halves of 8 rows on 256-bit vectors (`packed_avx2`).
    Avx2,
}

/// Activation rows sharing each loaded weight vector, at most: 8 with 32 vector registers
/// (AVX-512), 4 with 16 (AVX2: each row's integer and float sums take two).
const TILE_VNNI: usize = 8;
const TILE_AVX2: usize = 4;
/// Activation rows per task when a product has many (prompt chunks): tasks over both weight
/// and activation rows keep both cores busy on products with few weight rows.
const ROWS_PER_TASK: usize = 32;
/// Groups of [`LANES`] weight rows per task: 64 rows, as with 8-row groups before, so that a
/// single token's small products still split evenly over two cores (SmolLM2's 576 rows: 9
/// tasks, not 5).
const GROUPS_PER_TASK: usize = 4;

/// A weight matrix repacked in groups of [`LANES`] rows, with its tile kernels.
///
/// # Safety
/// [`Self::Act`] must be plain data: all-zero bytes a valid value.
pub(super) unsafe trait Packed: Sync {
    /// One block of quantized activations.
    type Act: Send + Sync + Copy;
    /// The instructions its tiles use (the CPU has them: see [`Isa`]).
    fn isa(&self) -> Isa;
    /// Output rows (weight rows) and the row length.
    fn shape(&self) -> (usize, usize);
    /// Activation blocks per row.
    fn act_blocks(&self) -> usize;
    /// `x`'s row (`k` values) quantized into `out` ([`Self::act_blocks`] blocks).
    fn quantize(&self, x: &[f32], out: &mut [Self::Act]);
    /// The [`LANES`] outputs of group `g` (weight rows `16g..16g + 16`) for the `R` activation
    /// rows whose blocks start at `at[r]` in `y`.
    ///
    /// # Safety
    /// [`vnni_available`] must hold; `g` is a group of the matrix and `y` holds
    /// [`Self::act_blocks`] blocks from each `at[r]`.
    unsafe fn tile<const R: usize>(&self, g: usize, y: &[Self::Act], at: [usize; R])
        -> [__m512; R];
    /// The same outputs for half `h` of group `g` (weight rows `16g + 8h..16g + 8h + 8`), with
    /// AVX2: bit for bit those of [`Self::tile`].
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `g`, `y` and `at` as for [`Self::tile`].
    unsafe fn tile_avx2<const R: usize>(
        &self,
        g: usize,
        h: usize,
        y: &[Self::Act],
        at: [usize; R],
    ) -> [__m256; R];
}

/// A raw pointer to the output, written by tasks at disjoint places.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own (row, group) places only (see `matmul_packed`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `dst[m, n] = x[m, k] · Wᵀ` for a [`Packed`] `W`: activations quantized once, then tasks of
/// [`GROUPS_PER_TASK`] weight groups × [`ROWS_PER_TASK`] activation rows in parallel.
pub(super) fn matmul_packed<P: Packed>(p: &P, x: &[f32], m: usize, dst: &mut [f32]) {
    let (n, k) = p.shape();
    assert!(
        x.len() >= m * k && dst.len() >= m * n,
        "matmul_packed: short buffers"
    );
    let kb = p.act_blocks();
    // SAFETY: `Packed::Act` is plain data (see the trait); every block is overwritten below.
    let mut y = vec![unsafe { std::mem::zeroed::<P::Act>() }; m * kb];
    let quantize = |(r, out): (usize, &mut [P::Act])| p.quantize(&x[r * k..(r + 1) * k], out);
    if m >= 16 {
        y.par_chunks_mut(kb).enumerate().for_each(quantize);
    } else {
        y.chunks_mut(kb).enumerate().for_each(quantize);
    }
    let groups = n.div_ceil(LANES);
    let rows_per_task = match m > 2 * ROWS_PER_TASK {
        true => ROWS_PER_TASK,
        false => m,
    };
    let row_tasks = m.div_ceil(rows_per_task);
    let group_tasks = groups.div_ceil(GROUPS_PER_TASK);
    let out = Out(dst.as_mut_ptr());
    (0..group_tasks * row_tasks).into_par_iter().for_each(|t| {
        let (gt, rt) = (t % group_tasks, t / group_tasks);
        let rows = rt * rows_per_task..m.min((rt + 1) * rows_per_task);
        let groups = gt * GROUPS_PER_TASK..groups.min((gt + 1) * GROUPS_PER_TASK);
        // SAFETY: a `Packed` kernel is built for an `Isa` only when the CPU has it; the groups
        // are below `n / LANES` rounded up and `y` holds `kb` blocks for each of the `m` rows;
        // each (row, group) is written by this task alone, inside `dst` (`n` per row).
        unsafe {
            match p.isa() {
                Isa::Vnni => task_vnni(p, &y, out, groups, rows),
                Isa::Avx2 => task_avx2(p, &y, out, groups, rows),
            }
        }
    });
}

/// One task of [`matmul_packed`] with the VNNI tiles: the outputs of weight groups `groups`
/// for activation rows `rows`. Compiled with the kernels' features so that the tiles' vectors
/// stay in registers and their stores are inlined (from a function without them, every
/// `[__m512; R]` goes through memory and every store is a call); `task_avx2` likewise.
///
/// # Safety
/// As for [`Packed::tile`] for every group and row; `out` holds `n` values per row of `rows`,
/// written by this task alone.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn task_vnni<P: Packed>(
    p: &P,
    y: &[P::Act],
    out: Out,
    groups: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) {
    let (n, kb) = (p.shape().0, p.act_blocks());
    for g in groups {
        for (r, take) in tiles(rows.clone(), TILE_VNNI) {
            match take {
                1 => store_vnni(out, n, g, r, p.tile(g, y, [r * kb])),
                2 => store_vnni(out, n, g, r, p.tile(g, y, at::<2>(r, kb))),
                3 => store_vnni(out, n, g, r, p.tile(g, y, at::<3>(r, kb))),
                4 => store_vnni(out, n, g, r, p.tile(g, y, at::<4>(r, kb))),
                5 => store_vnni(out, n, g, r, p.tile(g, y, at::<5>(r, kb))),
                6 => store_vnni(out, n, g, r, p.tile(g, y, at::<6>(r, kb))),
                7 => store_vnni(out, n, g, r, p.tile(g, y, at::<7>(r, kb))),
                _ => store_vnni(out, n, g, r, p.tile(g, y, at::<8>(r, kb))),
            }
        }
    }
}

/// [`task_vnni`] with the AVX2 tiles, half a group at a time.
///
/// # Safety
/// As for [`Packed::tile_avx2`] for every group and row; `out` as for [`task_vnni`].
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2<P: Packed>(
    p: &P,
    y: &[P::Act],
    out: Out,
    groups: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) {
    let (n, kb) = (p.shape().0, p.act_blocks());
    for g in groups {
        // The halves that hold weight rows (the last group's second may not).
        for h in (0..2).take_while(|h| g * LANES + h * HALF < n) {
            for (r, take) in tiles(rows.clone(), TILE_AVX2) {
                let c = g * LANES + h * HALF;
                match take {
                    1 => store_avx2(out, n, c, r, p.tile_avx2(g, h, y, [r * kb])),
                    2 => store_avx2(out, n, c, r, p.tile_avx2(g, h, y, at::<2>(r, kb))),
                    3 => store_avx2(out, n, c, r, p.tile_avx2(g, h, y, at::<3>(r, kb))),
                    _ => store_avx2(out, n, c, r, p.tile_avx2(g, h, y, at::<4>(r, kb))),
                }
            }
        }
    }
}

/// `rows` in tiles of at most `tile` rows: each tile's first row and its row count.
fn tiles(rows: std::ops::Range<usize>, tile: usize) -> impl Iterator<Item = (usize, usize)> {
    rows.clone()
        .step_by(tile)
        .map(move |r| (r, tile.min(rows.end - r)))
}

/// The first block of `R` consecutive activation rows from row `r`.
fn at<const R: usize>(r: usize, kb: usize) -> [usize; R] {
    std::array::from_fn(|i| (r + i) * kb)
}

/// Writes the outputs of group `g` for the activation rows `r..r + R` (the lanes past the last
/// weight row are dropped).
///
/// # Safety
/// AVX-512 F must be available; `out` has `n` values per row for every row written.
#[inline(always)]
unsafe fn store_vnni<const R: usize>(out: Out, n: usize, g: usize, r: usize, v: [__m512; R]) {
    let c = g * LANES;
    // All lanes, or those of the weight rows that exist (a masked store writes no others).
    let keep: __mmask16 = match n - c {
        left if left >= LANES => !0,
        left => (1 << left) - 1,
    };
    for (i, v) in v.into_iter().enumerate() {
        _mm512_mask_storeu_ps(out.0.add((r + i) * n + c), keep, v);
    }
}

/// Writes the outputs of weight rows `c..c + 8` (those below `n`) for the activation rows
/// `r..r + R`.
///
/// # Safety
/// AVX must be available; `c < n`; `out` has `n` values per row for every row written.
#[inline(always)]
unsafe fn store_avx2<const R: usize>(out: Out, n: usize, c: usize, r: usize, v: [__m256; R]) {
    let left = n - c;
    for (i, v) in v.into_iter().enumerate() {
        let at = out.0.add((r + i) * n + c);
        if left >= HALF {
            _mm256_storeu_ps(at, v);
        } else {
            // Lanes below `left` kept: a masked store writes no others.
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lane);
            _mm256_maskstore_ps(at, keep, v);
        }
    }
}

/// Integer accumulators per activation row for a tile of `R` rows: enough independent
/// `vpdpbusd` chains to hide its latency.
pub(super) const fn chains(r: usize) -> usize {
    match r {
        1 => 4,
        2 | 3 => 2,
        _ => 1,
    }
}

/// 4 activation bytes at `p`, in every i32 lane (folded into `vpdpbusd`'s memory operand).
///
/// # Safety
/// `p` must point to 4 readable bytes; AVX-512 F must be available.
#[inline(always)]
pub(super) unsafe fn broadcast4(p: *const i8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// A [`Block32`] type's weights repacked for [`Packed::tile`] (and [`Packed::tile_avx2`]).
pub(super) struct Packed32 {
    /// The weights a byte per value; empty where `nibbles` holds them.
    groups: Vec<Group32>,
    /// The weights of a 4- or 5-bit type for the AVX2 tiles, half a byte per value (as
    /// `groups`); else empty.
    nibbles: Vec<Nibbles32>,
    /// For a 5-bit type in `nibbles`, the fifth bits (as `groups`); else empty.
    fifth: Vec<Fifth32>,
    /// For the types with a minimum (Q4_1, Q5_1), the 16 rows' minimums of each group's block
    /// (as `groups`); else empty.
    mins: Vec<[f32; LANES]>,
    /// The offset added to the values to make them unsigned.
    offset: i32,
    /// Bits per value (the largest stored value is `2^bits - 1`).
    bits: u32,
    isa: Isa,
    n: usize,
    k: usize,
}

impl Packed32 {
    /// The kernel for `n` rows of `k` values of type `B` stored as `data` (the tensor's GGUF
    /// bytes), multiplying with `isa` (which the CPU must have).
    pub(super) fn new<B: Block32>(data: &[u8], n: usize, k: usize, isa: Isa) -> Result<Self> {
        check_size(B::NAME, data.len(), (32, B::BYTES), n, k)?;
        let kb = k / 32;
        let offset = B::OFFSET;
        let blocks = n.div_ceil(LANES) * kb;
        let as_nibbles = isa == Isa::Avx2 && B::BITS <= 5;
        let mut me = Self {
            groups: Vec::new(),
            nibbles: Vec::new(),
            fifth: Vec::new(),
            mins: match B::HAS_MIN {
                true => vec![[0.0; LANES]; blocks],
                false => Vec::new(),
            },
            offset,
            bits: B::BITS,
            isa,
            n,
            k,
        };
        match as_nibbles {
            true => {
                let empty = Nibbles32 {
                    lo: [0; 16 * LANES],
                    d: [0.0; LANES],
                };
                me.nibbles = vec![empty; blocks];
                if B::BITS == 5 {
                    me.fifth = vec![[0; 4 * LANES]; blocks];
                }
            }
            false => {
                let empty = Group32 {
                    qs: [offset as u8; 32 * LANES],
                    d: [0.0; LANES],
                };
                me.groups = vec![empty; blocks];
            }
        }
        for (i, bytes) in data.chunks_exact(B::BYTES).enumerate() {
            let (c, b) = (i / kb, i % kb);
            let (g, j) = (c / LANES, c % LANES);
            let block = B::ints(bytes);
            let at = g * kb + b;
            if B::HAS_MIN {
                me.mins[at][j] = block.min;
            }
            let unsigned = block.q.map(|q| (q as i32 + offset) as u8);
            if !as_nibbles {
                let dst = &mut me.groups[at];
                for (v, &u) in unsigned.iter().enumerate() {
                    dst.qs[4 * LANES * (v / 4) + 4 * j + v % 4] = u;
                }
                dst.d[j] = block.d;
                continue;
            }
            let dst = &mut me.nibbles[at];
            dst.d[j] = block.d;
            let (h, j) = (j / HALF, j % HALF);
            for (v, &u) in unsigned.iter().enumerate() {
                let (t, l) = (v / 4, v % 4);
                let byte = 128 * h + 32 * (t % 4) + 4 * j + l;
                dst.lo[byte] |= (u & 0xF) << (4 * (t / 4));
                if B::BITS == 5 {
                    me.fifth[at][32 * h + 4 * j + l] |= (u >> 4) << t;
                }
            }
        }
        Ok(me)
    }
}

// SAFETY: `Act32` holds integers and a float.
unsafe impl Packed for Packed32 {
    type Act = Act32;

    fn isa(&self) -> Isa {
        self.isa
    }

    fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn act_blocks(&self) -> usize {
        self.k / 32
    }

    fn quantize(&self, x: &[f32], out: &mut [Act32]) {
        for (x, o) in x.chunks_exact(32).zip(out) {
            // SAFETY: every `Isa` includes AVX2 and FMA, and the kernel is built for one the
            // CPU has.
            let (d, sum) = unsafe { act_quant::q8_0(x, &mut o.qs) };
            (o.d, o.start) = (d, -self.offset * sum);
            if !self.mins.is_empty() {
                o.s = (half::f16::from_f32(sum as f32) * half::f16::from_f32(d)).to_f32();
            }
        }
    }

    #[inline(always)]
    unsafe fn tile<const R: usize>(&self, g: usize, y: &[Act32], at: [usize; R]) -> [__m512; R] {
        let kb = self.k / 32;
        let w = &self.groups[g * kb..(g + 1) * kb];
        let mins = match self.mins.is_empty() {
            true => &[][..],
            false => &self.mins[g * kb..(g + 1) * kb],
        };
        if R == 1 {
            // `R == 1`: `[row32(..); 1]` is `[__m512; R]`.
            return std::array::from_fn(|_| row32(w, mins, y, at[0]));
        }
        match chains(R) {
            4 => tile32::<R, 4>(w, mins, y, at),
            2 => tile32::<R, 2>(w, mins, y, at),
            _ => tile32::<R, 1>(w, mins, y, at),
        }
    }

    #[inline(always)]
    unsafe fn tile_avx2<const R: usize>(
        &self,
        g: usize,
        h: usize,
        y: &[Act32],
        at: [usize; R],
    ) -> [__m256; R] {
        let kb = self.k / 32;
        let blocks = g * kb..(g + 1) * kb;
        let mins = match self.mins.is_empty() {
            true => &[][..],
            false => &self.mins[blocks.clone()],
        };
        match self.bits {
            4 => packed_avx2::tile32::<R, false>(&self.nibbles[blocks], &[], mins, y, at, h),
            5 => {
                let (w, fifth) = (&self.nibbles[blocks.clone()], &self.fifth[blocks]);
                packed_avx2::tile32::<R, true>(w, fifth, mins, y, at, h)
            }
            8 => packed_avx2::tile32_q8_0::<R>(&self.groups[blocks], y, at, h),
            bits => unreachable!("no 32-value block type has {bits}-bit values"),
        }
    }
}

/// [`Packed::tile`] for [`Packed32`], with `C` integer accumulators per activation row.
///
/// # Safety
/// As for [`Packed::tile`]; `w` is one group's blocks, `mins` their minimums or empty.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile32<const R: usize, const C: usize>(
    w: &[Group32],
    mins: &[[f32; LANES]],
    y: &[Act32],
    at: [usize; R],
) -> [__m512; R] {
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, wb) in w.iter().enumerate() {
        let mut sums = [[_mm512_setzero_si512(); C]; R];
        for (r, sums) in sums.iter_mut().enumerate() {
            // The offset's term, so that the sum ends exact.
            sums[0] = _mm512_set1_epi32(y.get_unchecked(at[r] + b).start);
        }
        for t in 0..8 {
            let wv = _mm512_loadu_si512(wb.qs.as_ptr().add(4 * LANES * t) as *const __m512i);
            for r in 0..R {
                let yb = y.get_unchecked(at[r] + b);
                let s = &mut sums[r][t % C];
                *s = _mm512_dpbusd_epi32(*s, wv, broadcast4(yb.qs.as_ptr().add(4 * t)));
            }
        }
        let d = _mm512_loadu_ps(wb.d.as_ptr());
        for r in 0..R {
            let yb = y.get_unchecked(at[r] + b);
            let mut s = sums[r][0];
            for part in &sums[r][1..] {
                s = _mm512_add_epi32(s, *part);
            }
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(yb.d));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
            if !mins.is_empty() {
                let m = _mm512_loadu_ps(mins.get_unchecked(b).as_ptr());
                acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(yb.s), acc[r]);
            }
        }
    }
    acc
}

/// [`tile32`] for one activation row (a single sequence's token), on the two 256-bit halves
/// of each weight vector: the same operations lane by lane, so the same values bit for bit.
/// Decoding streams the weights from memory; there the 512-bit loads were slower (Gemma 3's
/// 262144-row output projection: ~5 % at batch 1, median of 5 runs).
///
/// # Safety
/// As for [`Packed::tile`]; `w` is one group's blocks, `mins` their minimums or empty.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row32(w: &[Group32], mins: &[[f32; LANES]], y: &[Act32], at: usize) -> __m512 {
    const HALF: usize = LANES / 2;
    let mut acc = [_mm256_setzero_ps(); 2];
    for (b, wb) in w.iter().enumerate() {
        let yb = y.get_unchecked(at + b);
        // Four chains per half hide `vpdpbusd`'s latency.
        let mut sums = [[_mm256_setzero_si256(); 4]; 2];
        for half in &mut sums {
            half[0] = _mm256_set1_epi32(yb.start);
        }
        for t in 0..8 {
            let four = std::ptr::read_unaligned(yb.qs.as_ptr().add(4 * t) as *const i32);
            for (h, half) in sums.iter_mut().enumerate() {
                let at = wb.qs.as_ptr().add(4 * LANES * t + 4 * HALF * h);
                let wv = _mm256_loadu_si256(at as *const __m256i);
                half[t % 4] = _mm256_dpbusd_epi32(half[t % 4], wv, _mm256_set1_epi32(four));
            }
        }
        for (h, (half, acc)) in sums.iter().zip(&mut acc).enumerate() {
            let mut s = half[0];
            for part in &half[1..] {
                s = _mm256_add_epi32(s, *part);
            }
            let d = _mm256_loadu_ps(wb.d.as_ptr().add(HALF * h));
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(yb.d));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, *acc);
            if !mins.is_empty() {
                let m = _mm256_loadu_ps(mins.get_unchecked(b).as_ptr().add(HALF * h));
                *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(yb.s), *acc);
            }
        }
    }
    _mm512_insertf32x8(_mm512_castps256_ps512(acc[0]), acc[1], 1)
}

impl RowsMatMul for Packed32 {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        matmul_packed(self, x, m, dst)
    }

    /// With VNNI, about twice candle's f32 gemm on SmolLM2 Q8_0's prompts (measured with `cai
    /// bench --quantized-only` on a 2-core Zen 4). With the AVX2 tiles, on a 2-core Zen 3:
    /// 452 against 380 tok/s on that file's 256-token prompt, 617 against 377 on SmolLM2
    /// Q4_K_M and 690 against 387 on Gemma 3 270M Q4_K_M.
    fn fast_for_many_rows(&self) -> bool {
        true
    }
}
