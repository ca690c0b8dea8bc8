//! The host side of a device buffer cache: which buffers are live (by address, with their
//! sizes, for the copies' range checks) and which freed buffers wait for reuse (by size
//! class, last in, first out).
//!
//! The CUDA driver keeps one, since a training step or a sampled position asks for the same
//! sizes as the one before and `cuMemAllocAsync` per buffer would cost more than the launch
//! that uses it. Tools that stand in for the CUDA driver (the host-overhead bench, the
//! launch-batch tests' interpreter) keep one too, so that a step's buffers get the addresses
//! they would get on a GPU. It is on the path of every allocation and free, so it is cheap:
//! an array of free lists indexed by class, and the live buffers in a hash map with a
//! multiplicative hash of the address.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// The bytes the buffer cache allocates for a request of `bytes`: a power of two (256 at
/// least) up to 1 MiB, whole MiB above. Rounding sizes to a few classes lets a freed buffer
/// serve the next request of about the same size (training steps repeat their sizes
/// exactly; sampling grows slowly).
pub fn size_class(bytes: usize) -> usize {
    let b = bytes.max(256);
    if b <= 1 << 20 {
        b.next_power_of_two()
    } else {
        b.div_ceil(1 << 20) << 20
    }
}

/// Classes 256 B ..= 1 MiB are indices 0 ..= 12; `k` MiB (k >= 2) is index 11 + k.
fn class_index(class: usize) -> usize {
    if class <= 1 << 20 {
        class.trailing_zeros() as usize - 8
    } else {
        11 + (class >> 20)
    }
}

/// Free lists kept in the array (classes up to 1 GiB); larger classes, which are few, are
/// kept in a map.
const INDEXED_CLASSES: usize = 12 + 1024;

/// A hasher for device addresses: they are distinct multiples of 256, so one multiplication
/// by an odd constant spreads them well; SipHash's resistance to chosen keys buys nothing
/// here and costs most of a lookup.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        // The high bits feed the table index, so fold them down after the multiplication.
        let h = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
}

/// Live buffers and cached free buffers of one device (see the [module](self)).
#[derive(Default)]
pub struct BufferCache {
    /// Size class of every live buffer, by address.
    live: HashMap<u64, usize, BuildHasherDefault<AddressHasher>>,
    /// Freed buffers by [`class_index`], up to [`INDEXED_CLASSES`].
    free: Vec<Vec<u64>>,
    /// Freed buffers of larger classes, by class.
    free_large: BTreeMap<usize, Vec<u64>>,
    cached: usize,
}

impl BufferCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn free_list(&mut self, class: usize) -> &mut Vec<u64> {
        let i = class_index(class);
        if i < INDEXED_CLASSES {
            if self.free.len() <= i {
                self.free.resize_with(i + 1, Vec::new);
            }
            &mut self.free[i]
        } else {
            self.free_large.entry(class).or_default()
        }
    }

    /// A cached buffer for a request of `bytes` (`class` = [`size_class`]`(bytes)` bytes),
    /// now live; `None` when none of its class is cached, and then the caller allocates
    /// `class` bytes and reports the buffer with [`BufferCache::insert`].
    pub fn reuse(&mut self, class: usize) -> Option<u64> {
        let p = self.free_list(class).pop()?;
        self.cached -= 1;
        self.live.insert(p, class);
        Some(p)
    }

    /// Records a newly allocated buffer of `class` bytes at `ptr` as live.
    pub fn insert(&mut self, ptr: u64, class: usize) {
        self.live.insert(ptr, class);
    }

    /// Moves the live buffer at `ptr` to the free lists, returning its class; `None` (and
    /// nothing changes) when no live buffer starts at `ptr`.
    pub fn release(&mut self, ptr: u64) -> Option<usize> {
        let class = self.live.remove(&ptr)?;
        self.free_list(class).push(ptr);
        self.cached += 1;
        Some(class)
    }

    /// Whether `[ptr, ptr + len)` lies inside one live buffer (its class's bytes, which is
    /// what was allocated).
    pub fn contains(&self, ptr: u64, len: usize) -> bool {
        let inside =
            |base: u64, class: usize| ptr >= base && ptr - base + len as u64 <= class as u64;
        // Copies mostly address a buffer's start; a view's offset needs the scan.
        match self.live.get(&ptr) {
            Some(&class) => inside(ptr, class),
            None => self.live.iter().any(|(&base, &class)| inside(base, class)),
        }
    }

    /// Takes every cached free buffer out of the cache (to give them back to the device when
    /// an allocation fails).
    pub fn drain_cached(&mut self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.cached);
        for list in &mut self.free {
            out.append(list);
        }
        for (_, mut list) in std::mem::take(&mut self.free_large) {
            out.append(&mut list);
        }
        self.cached = 0;
        out
    }

    /// Takes every buffer, live and cached, out of the cache (to give them back to the
    /// device when it closes).
    pub fn drain_all(&mut self) -> Vec<u64> {
        let mut out = self.drain_cached();
        out.extend(self.live.drain().map(|(p, _)| p));
        out
    }

    /// Live buffers.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Cached free buffers.
    pub fn cached_count(&self) -> usize {
        self.cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two_then_whole_mib() {
        let table = [
            (0, 256),
            (1, 256),
            (256, 256),
            (257, 512),
            (4095, 4096),
            (1 << 20, 1 << 20),
            ((1 << 20) + 1, 2 << 20),
            (5 << 20, 5 << 20),
            ((5 << 20) + 7, 6 << 20),
        ];
        for (bytes, class) in table {
            assert_eq!(size_class(bytes), class, "{bytes} bytes");
        }
        let mut seen = std::collections::BTreeSet::new();
        for bytes in (0..(40 << 20)).step_by(4099) {
            let c = size_class(bytes);
            assert!(c >= bytes);
            let i = class_index(c);
            seen.insert((i, c));
        }
        // Distinct classes, distinct indices.
        let idx: std::collections::BTreeSet<usize> = seen.iter().map(|&(i, _)| i).collect();
        assert_eq!(idx.len(), seen.len());
        assert_eq!(class_index(256), 0);
        assert_eq!(class_index(1 << 20), 12);
        assert_eq!(class_index(2 << 20), 13);
    }

    #[test]
    fn freed_buffers_are_reused_last_in_first_out_within_their_class() {
        let mut c = BufferCache::new();
        for (p, class) in [
            (0x1000, 512),
            (0x2000, 512),
            (0x3000, 1024),
            (0x40_0000, 3 << 20),
        ] {
            assert_eq!(c.reuse(class), None);
            c.insert(p, class);
        }
        assert_eq!(c.live_count(), 4);
        assert_eq!(c.release(0x1000), Some(512));
        assert_eq!(c.release(0x2000), Some(512));
        assert_eq!(c.release(0x2000), None, "not live any more");
        assert_eq!(c.release(0x40_0000), Some(3 << 20));
        assert_eq!(c.cached_count(), 3);
        assert_eq!(c.reuse(1024), None, "its only buffer is live");
        assert_eq!(c.reuse(512), Some(0x2000));
        assert_eq!(c.reuse(512), Some(0x1000));
        assert_eq!(c.reuse(512), None);
        assert_eq!(c.reuse(3 << 20), Some(0x40_0000));
        assert_eq!(c.cached_count(), 0);
        assert_eq!(c.live_count(), 4);
    }

    #[test]
    fn large_classes_and_draining() {
        let mut c = BufferCache::new();
        let big = 3 << 30;
        c.insert(0x1_0000_0000, big);
        c.insert(0x100, 256);
        c.release(0x1_0000_0000);
        c.release(0x100);
        let mut d = c.drain_cached();
        d.sort();
        assert_eq!(d, vec![0x100, 0x1_0000_0000]);
        assert_eq!(c.cached_count(), 0);
        assert_eq!(c.reuse(big), None);
        assert_eq!(c.reuse(256), None);
    }

    #[test]
    fn ranges_inside_one_live_buffer() {
        let mut c = BufferCache::new();
        c.insert(0x1000, 1024);
        c.insert(0x1400, 256);
        let table = [
            (0x1000, 1024, true),
            (0x1000, 1025, false),
            (0x1100, 768, true),
            (0x1100, 769, false),
            (0x13ff, 1, true),
            (0x1400, 256, true),
            (0x1410, 240, true),
            (0x1410, 241, false),
            (0x0fff, 1, false),
            (0x1600, 1, false),
        ];
        for (ptr, len, want) in table {
            assert_eq!(c.contains(ptr, len), want, "{ptr:#x} + {len}");
        }
        c.release(0x1400);
        assert!(!c.contains(0x1400, 1), "freed buffers are not live");
    }
}
