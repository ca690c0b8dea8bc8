//! Tensor maps: what a TMA copy (`cp.async.bulk.tensor`) knows of a tensor in global memory
//! (base, sizes, strides, the box one copy moves, and how the box is swizzled in shared
//! memory).
//!
//! A kernel takes the map as a 128-byte, 64-byte-aligned `__grid_constant__` parameter
//! ([`crate::gpu::KernelArg::TensorMap`]). Its bytes are the driver's business: the CUDA
//! driver fills them with `cuTensorMapEncodeTiled`, the PTX interpreter with its own layout
//! ([`TensorMap::encode_sim`]). [`TensorMap::check`] applies the rules of
//! `cuTensorMapEncodeTiled` first, so a map the interpreter accepts is one the GPU accepts.

/// Bytes of an encoded tensor map.
pub const TENSOR_MAP_BYTES: usize = 128;

/// How a box is laid out in shared memory: 16-byte chunks permuted within each span of
/// 32, 64 or 128 bytes (see [`swizzle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swizzle {
    /// Rows of the box one after another.
    None,
    /// 16-byte chunks swapped within 32-byte spans.
    B32,
    /// 16-byte chunks permuted within 64-byte spans.
    B64,
    /// 16-byte chunks permuted within 128-byte spans (what `wgmma`'s 128-byte swizzled
    /// layout reads).
    B128,
}

impl Swizzle {
    /// The span in bytes (0 for none).
    pub fn span(self) -> u32 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 32,
            Swizzle::B64 => 64,
            Swizzle::B128 => 128,
        }
    }

    fn code(self) -> u8 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 1,
            Swizzle::B64 => 2,
            Swizzle::B128 => 3,
        }
    }

    fn from_code(c: u8) -> Option<Swizzle> {
        Some(match c {
            0 => Swizzle::None,
            1 => Swizzle::B32,
            2 => Swizzle::B64,
            3 => Swizzle::B128,
            _ => return None,
        })
    }
}

/// Where byte `addr` of a shared-memory box lands under `mode`: bits 4.. of the address
/// (the 16-byte chunk within a 128-byte line) are XORed with the line's index within a group
/// of 8 (128-byte), 4 (64-byte) or 2 (32-byte) lines. The address is the absolute shared
/// address, so the pattern repeats every 1024, 512 or 256 bytes of shared memory.
pub fn swizzle(addr: u32, mode: Swizzle) -> u32 {
    let lines = match mode {
        Swizzle::None => return addr,
        Swizzle::B32 => 1,
        Swizzle::B64 => 3,
        Swizzle::B128 => 7,
    };
    addr ^ (((addr >> 7) & lines) << 4)
}

/// A tiled tensor map of rank 1 to 5 (dimension 0 innermost and contiguous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMap {
    /// Bytes per element (1, 2, 4 or 8).
    pub elem_bytes: u32,
    /// Device address of element (0, 0, 0).
    pub base: u64,
    /// Elements along each dimension, innermost first.
    pub dims: Vec<u64>,
    /// Byte stride of dimensions 1.. (dimension 0 is contiguous).
    pub strides: Vec<u64>,
    /// Elements of the box along each dimension.
    pub boxes: Vec<u32>,
    /// The box's layout in shared memory.
    pub swizzle: Swizzle,
}

const MAGIC: &[u8; 4] = b"TFtm";

/// Most dimensions of a tiled map (`cuTensorMapEncodeTiled`'s limit).
pub const MAX_RANK: usize = 5;

/// Offsets of the fields in [`TensorMap::encode_sim`]'s bytes: `MAX_RANK` dims (8 bytes
/// each), then `MAX_RANK - 1` strides (8 bytes), then `MAX_RANK` boxes (4 bytes).
const DIMS_AT: usize = 16;
const STRIDES_AT: usize = DIMS_AT + 8 * MAX_RANK;
const BOXES_AT: usize = STRIDES_AT + 8 * (MAX_RANK - 1);
const _: () = assert!(BOXES_AT + 4 * MAX_RANK <= TENSOR_MAP_BYTES);

impl TensorMap {
    /// The `cuTensorMapEncodeTiled` rules this crate relies on (element strides of 1, no
    /// interleave, out-of-range elements filled with zeros): an error naming the field.
    pub fn check(&self) -> Result<(), String> {
        let rank = self.dims.len();
        let fail = |m: String| Err(format!("tensor map: {m}"));
        if !(1..=MAX_RANK).contains(&rank)
            || self.boxes.len() != rank
            || self.strides.len() + 1 != rank
        {
            return fail(format!(
                "{rank} dimensions with {} box sizes and {} strides (want 1 to 5 dimensions, \
                 as many box sizes, one stride fewer)",
                self.boxes.len(),
                self.strides.len()
            ));
        }
        if ![1, 2, 4, 8].contains(&self.elem_bytes) {
            return fail(format!("{} bytes per element", self.elem_bytes));
        }
        if !self.base.is_multiple_of(16) {
            return fail(format!(
                "base address 0x{:x} is not 16-byte aligned",
                self.base
            ));
        }
        if let Some(d) = self.dims.iter().position(|&d| d == 0 || d > 1 << 32) {
            return fail(format!("dimension {d} has {} elements", self.dims[d]));
        }
        if let Some(s) = self
            .strides
            .iter()
            .position(|&s| !s.is_multiple_of(16) || s >= 1 << 40)
        {
            return fail(format!(
                "the stride of dimension {} is {} bytes (a multiple of 16 below 2^40)",
                s + 1,
                self.strides[s]
            ));
        }
        if let Some(b) = self.boxes.iter().position(|&b| b == 0 || b > 256) {
            return fail(format!(
                "box size {} along dimension {b} (1 to 256)",
                self.boxes[b]
            ));
        }
        let inner = self.boxes[0] * self.elem_bytes;
        if !inner.is_multiple_of(16) {
            return fail(format!(
                "the box's inner dimension is {inner} bytes (a multiple of 16)"
            ));
        }
        let span = self.swizzle.span();
        if span != 0 && inner > span {
            return fail(format!(
                "the box's inner dimension is {inner} bytes, more than the {span}-byte swizzle \
                 span"
            ));
        }
        // The driver also takes a narrower box, but the PTX ISA documents the swizzled
        // layouts for rows of the whole span only, so the interpreter could only guess.
        if span != 0 && inner < span {
            return fail(format!(
                "the box's inner dimension is {inner} bytes, less than the {span}-byte swizzle \
                 span (a swizzled box's rows must fill the span)"
            ));
        }
        Ok(())
    }

    /// Bytes one copy of the box writes to shared memory (and completes on its mbarrier).
    pub fn box_bytes(&self) -> u64 {
        self.boxes.iter().map(|&b| b as u64).product::<u64>() * self.elem_bytes as u64
    }

    /// The PTX interpreter's encoding.
    pub fn encode_sim(&self) -> [u8; TENSOR_MAP_BYTES] {
        let mut out = [0u8; TENSOR_MAP_BYTES];
        out[..4].copy_from_slice(MAGIC);
        out[4] = self.dims.len() as u8;
        out[5] = self.elem_bytes as u8;
        out[6] = self.swizzle.code();
        out[8..16].copy_from_slice(&self.base.to_le_bytes());
        for (i, &d) in self.dims.iter().enumerate() {
            out[DIMS_AT + 8 * i..DIMS_AT + 8 * i + 8].copy_from_slice(&d.to_le_bytes());
        }
        for (i, &s) in self.strides.iter().enumerate() {
            out[STRIDES_AT + 8 * i..STRIDES_AT + 8 * i + 8].copy_from_slice(&s.to_le_bytes());
        }
        for (i, &b) in self.boxes.iter().enumerate() {
            out[BOXES_AT + 4 * i..BOXES_AT + 4 * i + 4].copy_from_slice(&b.to_le_bytes());
        }
        out
    }

    /// Reads [`TensorMap::encode_sim`]'s bytes back (checked).
    pub fn decode_sim(bytes: &[u8]) -> Result<TensorMap, String> {
        if bytes.len() < TENSOR_MAP_BYTES || &bytes[..4] != MAGIC {
            return Err(
                "the tensor-map operand does not point at an encoded tensor map \
                        (made by the driver's tensor_map)"
                    .into(),
            );
        }
        let rank = (bytes[4] as usize).min(MAX_RANK);
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let m = TensorMap {
            elem_bytes: bytes[5] as u32,
            base: u64_at(8),
            dims: (0..rank).map(|i| u64_at(DIMS_AT + 8 * i)).collect(),
            strides: (1..rank)
                .map(|i| u64_at(STRIDES_AT + 8 * (i - 1)))
                .collect(),
            boxes: (0..rank).map(|i| u32_at(BOXES_AT + 4 * i)).collect(),
            swizzle: Swizzle::from_code(bytes[6]).ok_or("tensor map: bad swizzle code")?,
        };
        m.check()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 128-byte pattern as the CUDA programming guide draws it: a 1024-byte block seen
    /// as 8 lines of 8 chunks of 16 bytes, chunk `c` of line `r` stored at chunk `c ^ r`;
    /// the byte within a chunk and the block do not change.
    #[test]
    fn swizzle_permutes_chunks_by_line() {
        // (mode, address, stored at)
        let table = [
            (Swizzle::B128, 0x000, 0x000),
            (Swizzle::B128, 0x010, 0x010),
            (Swizzle::B128, 0x080, 0x090),
            (Swizzle::B128, 0x0f0, 0x0e0),
            (Swizzle::B128, 0x08a, 0x09a),
            (Swizzle::B128, 0x120, 0x100),
            (Swizzle::B128, 0x380, 0x3f0),
            (Swizzle::B128, 0x3f5, 0x385),
            (Swizzle::B128, 0x400, 0x400),
            (Swizzle::B128, 0x4b0, 0x4a0),
            // 64-byte: chunk c (of 4 in a 64-byte span) of line r at c ^ (r mod 4).
            (Swizzle::B64, 0x080, 0x090),
            (Swizzle::B64, 0x180, 0x1b0),
            (Swizzle::B64, 0x200, 0x200),
            (Swizzle::B64, 0x0c0, 0x0d0),
            // 32-byte: the two chunks of a 32-byte span swap on odd lines.
            (Swizzle::B32, 0x000, 0x000),
            (Swizzle::B32, 0x080, 0x090),
            (Swizzle::B32, 0x090, 0x080),
            (Swizzle::B32, 0x100, 0x100),
            (Swizzle::None, 0x0f0, 0x0f0),
        ];
        for (mode, a, at) in table {
            assert_eq!(swizzle(a, mode), at, "{mode:?} 0x{a:x}");
        }
    }

    #[test]
    fn swizzle_is_a_permutation_of_each_block() {
        for (mode, block) in [
            (Swizzle::B32, 256),
            (Swizzle::B64, 512),
            (Swizzle::B128, 1024),
        ] {
            let mut seen = vec![false; block as usize];
            for a in 0..block {
                let s = swizzle(a + 3 * block, mode) - 3 * block;
                assert!(!seen[s as usize], "{mode:?}: 0x{a:x} collides");
                seen[s as usize] = true;
            }
        }
    }

    fn map() -> TensorMap {
        TensorMap {
            elem_bytes: 2,
            base: 0x10_0000_0000,
            dims: vec![200, 300],
            strides: vec![416],
            boxes: vec![64, 128],
            swizzle: Swizzle::B128,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let m = map();
        assert_eq!(m.check(), Ok(()));
        assert_eq!(TensorMap::decode_sim(&m.encode_sim()), Ok(m.clone()));
        // Five dimensions, the most a tiled map has.
        let m5 = TensorMap {
            dims: vec![64, 300, 3, 7, 2],
            strides: vec![416, 416 * 300, 416 * 900, 416 * 6300],
            boxes: vec![64, 128, 1, 1, 1],
            ..map()
        };
        assert_eq!(TensorMap::decode_sim(&m5.encode_sim()), Ok(m5.clone()));
        let six = TensorMap {
            dims: vec![64, 2, 2, 2, 2, 2],
            strides: vec![128; 5],
            boxes: vec![64, 1, 1, 1, 1, 1],
            ..map()
        };
        assert!(six.check().unwrap_err().contains("want 1 to 5"));
        assert_eq!(m.box_bytes(), 64 * 128 * 2);
        let mut bad = m.encode_sim();
        bad[0] = 0;
        assert!(TensorMap::decode_sim(&bad).is_err());
    }

    #[test]
    fn maps_that_the_driver_would_refuse_are_named() {
        type Edit = fn(&mut TensorMap);
        let cases: [(Edit, &str); 8] = [
            (|m| m.base += 8, "not 16-byte aligned"),
            (|m| m.strides[0] = 408, "stride of dimension 1"),
            (|m| m.boxes[1] = 257, "box size 257"),
            (|m| m.boxes[0] = 4, "multiple of 16"),
            (|m| m.boxes[0] = 128, "more than the 128-byte swizzle span"),
            (|m| m.boxes[0] = 32, "less than the 128-byte swizzle span"),
            (|m| m.dims[1] = 0, "dimension 1 has 0"),
            (|m| m.elem_bytes = 3, "3 bytes per element"),
        ];
        for (edit, want) in cases {
            let mut m = map();
            edit(&mut m);
            let e = m.check().unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }
}
