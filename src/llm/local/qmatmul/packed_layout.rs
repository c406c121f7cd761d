//! The packed kernels' layouts (`packed`, `packed_k`, `packed_avx2`): weight rows in groups
//! of [`LANES`], interleaved 4 bytes at a time, and the activation blocks they multiply.

use super::k_quants::QK_K;

/// Weight rows interleaved in one group: one output per i32 lane of a 512-bit vector.
pub(super) const LANES: usize = 16;
/// Weight rows in each half of a group: one output per i32 lane of a 256-bit vector.
pub(super) const HALF: usize = LANES / 2;

/// One block of 32 activations quantized to Q8_0: the bytes, minus their sum times the
/// weights' offset (where the block's integer dot product starts), and the scale.
#[derive(Clone, Copy)]
pub(super) struct Act32 {
    pub(super) qs: [i8; 32],
    pub(super) start: i32,
    pub(super) d: f32,
    /// `d · Σ q` in f16 arithmetic (Q8_1's `s`), which the minimums of Q4_1 and Q5_1 multiply.
    pub(super) s: f32,
}

/// [`LANES`] weight rows' block `b` (32 values each): `qs[4 · LANES · t + 4j + l]` is value
/// `4t + l` of row `j`, unsigned (the type's offset added); `d[j]` is row `j`'s scale.
///
/// Aligned to cache lines (576 bytes, nine lines, no padding) so that no 512-bit load of the
/// weights spans two lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Group32 {
    pub(super) qs: [u8; 32 * LANES],
    pub(super) d: [f32; LANES],
}

const _: () = assert!(std::mem::size_of::<Group32>() == 36 * LANES);

/// [`LANES`] weight rows' super-block: `qs[4 · LANES · t + 4j + l]` is value `4t + l` of row
/// `j` (unsigned) when `Q` is [`K_BYTES`]; with `Q` [`K_NIBBLES`] (Q4_K and Q5_K for the AVX2
/// tiles: half the bytes, for decoding), `qs[256s + 128h + 32p + 4j + l]` holds value
/// `32s + 4p + l` of row `8h + j` in its low nibble and value `32s + 4(p + 4) + l` in its high
/// one (Q5_K's fifth bits apart, [`KFifth`]). `scales[LANES · g + j]` the scale of row `j`'s sub-block `g`, `d[j]` and
/// `dmin[j]` its super-block scales. `pairs[LANES · p + j]` holds two i16 factors of row `j`
/// (low half first) for `vpdpwssd` against the activations' pair `p` of sums: the minimums of
/// its 32-value sub-blocks `2p` and `2p + 1` (Q4_K, Q5_K: pairs 0..4), or the scales of its
/// 16-value sub-blocks `2p` and `2p + 1` (Q6_K: pairs 0..8).
///
/// Aligned to cache lines (4992 bytes, 78 lines, or 2944, 46 lines; no padding), as
/// [`Group32`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct GroupK<const Q: usize> {
    pub(super) qs: [u8; Q],
    pub(super) scales: [i8; 16 * LANES],
    pub(super) pairs: [u32; 8 * LANES],
    pub(super) d: [f32; LANES],
    pub(super) dmin: [f32; LANES],
}

/// [`GroupK`]'s `Q` with a byte per value.
pub(super) const K_BYTES: usize = LANES * QK_K;
/// [`GroupK`]'s `Q` with two values per byte.
pub(super) const K_NIBBLES: usize = LANES * QK_K / 2;

const _: () = assert!(std::mem::size_of::<GroupK<K_BYTES>>() == 4992);
const _: () = assert!(std::mem::size_of::<GroupK<K_NIBBLES>>() == 2944);

/// The fifth bits of a Q5_K [`GroupK`] of nibbles: bit `t` of `[64s + 32h + 4j + l]` is that
/// of value `32s + 4t + l` of row `8h + j`.
pub(super) type KFifth = [u8; 8 * 4 * LANES];

/// A [`Group32`] of 4- or 5-bit values for the AVX2 tiles, in half the bytes (decoding streams
/// the weights from memory): `lo[128h + 32p + 4j + l]` holds value `4p + l` of row `8h + j`
/// (unsigned, the type's offset added) in its low nibble and value `4(p + 4) + l` in its high
/// one; their fifth bits, for 5-bit types, are kept apart ([`Fifth32`]). `d` as in
/// [`Group32`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Nibbles32 {
    pub(super) lo: [u8; 16 * LANES],
    pub(super) d: [f32; LANES],
}

const _: () = assert!(std::mem::size_of::<Nibbles32>() == 20 * LANES);

/// The fifth bits of a [`Nibbles32`] block of a 5-bit type: bit `t` of `[32h + 4j + l]` is
/// that of value `4t + l` of row `8h + j`.
pub(super) type Fifth32 = [u8; 4 * LANES];
