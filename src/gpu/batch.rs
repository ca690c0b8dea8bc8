//! Launch batches: a run of launches held back by the driver and issued together, as one
//! CUDA graph on the CUDA driver.
//!
//! A KV-cached sampling step at small batch is a few dozen launches of tiny kernels, and the
//! host's cost per `cuLaunchKernel` is what bounds it. Inside a batch the driver only records
//! each launch (its kernel, grid and parameter bytes); at the end it issues them as one
//! graph. The next step records the same kernels in the same order with a few parameters
//! changed (the position's pointers, the length of the cache), so the driver keeps the
//! instantiated graph and patches only the nodes whose parameters differ
//! ([`GraphCache`]): one graph launch and a handful of node updates per step instead of
//! one launch per kernel.
//!
//! What a batch must not change is the order of effects: launches run in the order they
//! were made, and every other driver call sees them as already issued (a copy, a download,
//! a synchronisation or a mark issues what is held first; a buffer freed meanwhile is not
//! reused before they have run). The PTX interpreter implements the same batches, replaying
//! the held launches in order at the end, so the tests prove those rules, and the sampler's
//! bits with and without batches, on every machine.
//!
//! Batches are off unless [`GRAPHS_ENV`] is `1` or this thread asked for them
//! ([`launch_batches`]); they are new and wait for a GPU check on hardware.

use std::cell::Cell;
use std::sync::Arc;

use super::driver::{Driver, KernelArg, LaunchConfig, PtxModule};
use crate::error::Result;
use crate::tensor::Device;

/// The environment variable that turns launch batches on (`1`) for the sampler's steps.
pub const GRAPHS_ENV: &str = "TARFLOW_GRAPHS";

thread_local! {
    static OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether launch batches are on for this thread: its [`launch_batches`] setting, else
/// [`GRAPHS_ENV`] set to `1`.
pub fn launch_batches_enabled() -> bool {
    OVERRIDE.with(|o| o.get()).unwrap_or_else(|| {
        static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ENV.get_or_init(|| std::env::var(GRAPHS_ENV).is_ok_and(|v| v.trim() == "1"))
    })
}

/// Turns launch batches on or off for this thread until the guard drops (the previous
/// setting comes back then, so guards nest).
pub fn launch_batches(on: bool) -> BatchesGuard {
    BatchesGuard {
        previous: OVERRIDE.with(|o| o.replace(Some(on))),
    }
}

/// Restores the previous [`launch_batches`] setting when dropped.
#[must_use = "the setting reverts when the guard drops"]
pub struct BatchesGuard {
    previous: Option<bool>,
}

impl Drop for BatchesGuard {
    fn drop(&mut self) {
        OVERRIDE.with(|o| o.set(self.previous));
    }
}

/// A launch batch on one device, begun by [`LaunchBatch::begin`] and issued by
/// [`LaunchBatch::end`] (or, losing any error, when dropped).
#[must_use = "the batch is issued by end()"]
pub struct LaunchBatch {
    driver: Option<Arc<dyn Driver>>,
}

impl LaunchBatch {
    /// Begins a batch on `device` when batches are on ([`launch_batches_enabled`]) and its
    /// driver supports one; otherwise (the CPU, batches off, a batch already open, a driver
    /// without batches, a profiler timing each launch) a batch that does nothing.
    pub fn begin(device: Device) -> Result<LaunchBatch> {
        if !device.is_gpu() || !launch_batches_enabled() {
            return Ok(LaunchBatch { driver: None });
        }
        let driver = super::registry::driver(device)?;
        let begun = driver.begin_batch()?;
        Ok(LaunchBatch {
            driver: begun.then_some(driver),
        })
    }

    /// Whether this batch holds launches back (false for one that does nothing).
    pub fn is_active(&self) -> bool {
        self.driver.is_some()
    }

    /// Issues the launches held since [`LaunchBatch::begin`]; their errors show here.
    pub fn end(mut self) -> Result<()> {
        match self.driver.take() {
            Some(d) => d.end_batch(),
            None => Ok(()),
        }
    }
}

impl Drop for LaunchBatch {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            // An error path already returned its error; the held launches still run so that
            // the device's memory is what the caller's program order says.
            let _ = d.end_batch();
        }
    }
}

/// What a driver's batches have done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchCounts {
    /// Batches issued with at least one launch.
    pub batches: u64,
    /// Launches held back and issued in them.
    pub launches: u64,
    /// Graphs built (a batch whose kernels no kept graph has, in that order).
    pub graphs_built: u64,
    /// Nodes of a kept graph whose parameters or grid were patched before it ran again.
    pub nodes_patched: u64,
}

impl BatchCounts {
    /// What was done since `before`, an earlier reading of the same driver's counts.
    pub fn since(self, before: BatchCounts) -> BatchCounts {
        BatchCounts {
            batches: self.batches - before.batches,
            launches: self.launches - before.launches,
            graphs_built: self.graphs_built - before.graphs_built,
            nodes_patched: self.nodes_patched - before.nodes_patched,
        }
    }
}

/// One launch held back: what [`Driver::launch`] was given, its arguments packed (a kind
/// byte, then the parameter's little-endian bytes, per argument) so that holding one is one
/// small allocation and comparing two is a byte comparison.
#[derive(Clone, Debug)]
pub struct HeldLaunch {
    /// The kernel's module.
    pub module: PtxModule,
    /// The kernel's name.
    pub kernel: String,
    /// Grid, block and dynamic shared memory.
    pub config: LaunchConfig,
    packed: Vec<u8>,
}

impl HeldLaunch {
    /// `kernel` of `module` launched with `config` and `args`.
    pub fn new(module: &PtxModule, kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> Self {
        let len = args.iter().map(|a| 1 + arg_len(a)).sum();
        let mut packed = Vec::with_capacity(len);
        for a in args {
            let (kind, bytes): (u8, &[u8]) = match a {
                KernelArg::Ptr(p) => (0, &p.0.to_le_bytes()),
                KernelArg::U32(v) => (1, &v.to_le_bytes()),
                KernelArg::U64(v) => (2, &v.to_le_bytes()),
                KernelArg::F32(v) => (3, &v.to_le_bytes()),
                KernelArg::F64(v) => (4, &v.to_le_bytes()),
                KernelArg::TensorMap(m) => (5, &m.0),
            };
            packed.push(kind);
            packed.extend_from_slice(bytes);
        }
        HeldLaunch {
            module: *module,
            kernel: kernel.to_string(),
            config,
            packed,
        }
    }

    /// Each argument's parameter bytes, in order.
    pub fn param_bytes(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.packed[..];
        std::iter::from_fn(move || {
            let (&kind, tail) = rest.split_first()?;
            let (bytes, next) = tail.split_at(kind_len(kind));
            rest = next;
            Some(bytes)
        })
    }

    /// The arguments as they were given.
    pub fn args(&self) -> Vec<KernelArg> {
        let mut rest = &self.packed[..];
        let mut out = Vec::new();
        while let Some((&kind, tail)) = rest.split_first() {
            let (b, next) = tail.split_at(kind_len(kind));
            rest = next;
            let u32_of = || u32::from_le_bytes(b.try_into().expect("4 bytes"));
            let u64_of = || u64::from_le_bytes(b.try_into().expect("8 bytes"));
            out.push(match kind {
                0 => KernelArg::Ptr(super::driver::DevicePtr(u64_of())),
                1 => KernelArg::U32(u32_of()),
                2 => KernelArg::U64(u64_of()),
                3 => KernelArg::F32(f32::from_bits(u32_of())),
                4 => KernelArg::F64(f64::from_bits(u64_of())),
                _ => KernelArg::TensorMap(super::driver::EncodedTensorMap(
                    b.try_into().expect("a tensor map's bytes"),
                )),
            });
        }
        out
    }

    /// Whether `other` launches the same kernel (grid and arguments aside).
    fn same_kernel(&self, other: &HeldLaunch) -> bool {
        self.module.name == other.module.name && self.kernel == other.kernel
    }

    /// Whether `other` is this launch exactly: the same kernel, grid and argument bits
    /// (floats by their bits, so that a NaN argument equals itself).
    fn same_launch(&self, other: &HeldLaunch) -> bool {
        self.same_kernel(other) && self.config == other.config && self.packed == other.packed
    }
}

fn arg_len(a: &KernelArg) -> usize {
    match a {
        KernelArg::U32(_) | KernelArg::F32(_) => 4,
        KernelArg::Ptr(_) | KernelArg::U64(_) | KernelArg::F64(_) => 8,
        KernelArg::TensorMap(m) => m.0.len(),
    }
}

fn kind_len(kind: u8) -> usize {
    match kind {
        1 | 3 => 4,
        0 | 2 | 4 => 8,
        _ => super::tensor_map::TENSOR_MAP_BYTES,
    }
}

/// How a batch runs on the graphs a driver keeps.
#[derive(Debug, PartialEq, Eq)]
pub enum GraphPlan {
    /// No kept graph has these kernels in this order: build one (it is then kept, at
    /// `slot`, perhaps in place of the least recently used).
    Build {
        /// Where the new graph goes in the cache.
        slot: usize,
    },
    /// The graph at `slot` has these kernels: patch the nodes listed (their parameters or
    /// grid differ from its last run), then launch it.
    Patch {
        /// The kept graph.
        slot: usize,
        /// Indices of the nodes to patch, increasing.
        nodes: Vec<usize>,
    },
}

/// The graphs a driver keeps, by the launches they last ran, and the decision for the next
/// batch: patch a kept graph with the same kernels in the same order, or build one. The
/// driver holds its own graph objects in a parallel array indexed by slot.
#[derive(Debug)]
pub struct GraphCache {
    slots: Vec<(Vec<HeldLaunch>, u64)>,
    clock: u64,
    capacity: usize,
    counts: BatchCounts,
}

/// Graphs a driver keeps by default: the sampler's steps have a few shapes (the first
/// position, the decode forms on either side of their threshold), each block its own.
pub const GRAPHS_KEPT: usize = 8;

/// Graphs kept for one sequence of kernels before the closest is patched however much it
/// differs.
pub const VARIANTS: usize = 2;

impl Default for GraphCache {
    fn default() -> Self {
        GraphCache::new(GRAPHS_KEPT)
    }
}

impl GraphCache {
    /// A cache keeping up to `capacity` graphs (at least one).
    pub fn new(capacity: usize) -> Self {
        GraphCache {
            slots: Vec::new(),
            clock: 0,
            capacity: capacity.max(1),
            counts: BatchCounts::default(),
        }
    }

    /// How the non-empty batch `held` runs; the cache then keeps `held` as that slot's last
    /// run, where [`GraphCache::launches`] reads it (the caller builds or patches from it,
    /// and on failure calls [`GraphCache::forget`]).
    pub fn plan(&mut self, held: Vec<HeldLaunch>) -> GraphPlan {
        self.clock += 1;
        self.counts.batches += 1;
        self.counts.launches += held.len() as u64;
        // Every kept graph with these kernels in this order, with the nodes it would need
        // patched; the one needing fewest.
        let candidates: Vec<(usize, Vec<usize>)> = (0..self.slots.len())
            .filter(|&i| {
                let last = &self.slots[i].0;
                last.len() == held.len() && last.iter().zip(&held).all(|(a, b)| a.same_kernel(b))
            })
            .map(|i| {
                let last = &self.slots[i].0;
                let nodes = (0..held.len())
                    .filter(|&j| !last[j].same_launch(&held[j]))
                    .collect();
                (i, nodes)
            })
            .collect();
        let kept = candidates.len();
        let close = |nodes: &Vec<usize>| nodes.len() * 4 <= held.len();
        // A step whose buffers alternate between two sets of addresses (a last-in, first-out
        // cache hands them out in turn) matches neither graph's last run well: keep up to
        // VARIANTS graphs of the same kernels, and when none is close, patch the one used
        // least recently, so that each settles on one phase of the alternation.
        let best = candidates
            .iter()
            .filter(|(_, nodes)| close(nodes))
            .min_by_key(|(_, nodes)| nodes.len())
            .cloned()
            .or_else(|| {
                (kept >= VARIANTS)
                    .then(|| {
                        candidates
                            .into_iter()
                            .min_by_key(|(slot, _)| self.slots[*slot].1)
                    })
                    .flatten()
            });
        let plan = match best {
            Some((slot, nodes)) => {
                self.counts.nodes_patched += nodes.len() as u64;
                GraphPlan::Patch { slot, nodes }
            }
            _ => {
                self.counts.graphs_built += 1;
                let slot = if self.slots.len() < self.capacity {
                    self.slots.push((Vec::new(), 0));
                    self.slots.len() - 1
                } else {
                    (0..self.slots.len())
                        .min_by_key(|&i| self.slots[i].1)
                        .expect("capacity is at least one")
                };
                GraphPlan::Build { slot }
            }
        };
        let slot = match &plan {
            GraphPlan::Build { slot } | GraphPlan::Patch { slot, .. } => *slot,
        };
        self.slots[slot] = (held, self.clock);
        plan
    }

    /// The launches slot `slot` last ran (what [`GraphCache::plan`] was given for it).
    pub fn launches(&self, slot: usize) -> &[HeldLaunch] {
        self.slots.get(slot).map_or(&[], |s| &s.0)
    }

    /// Drops what slot `slot` remembers (its graph failed to build or to patch), so that the
    /// next batch with those kernels builds afresh.
    pub fn forget(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = (Vec::new(), 0);
        }
    }

    /// What the batches planned so far did.
    pub fn counts(&self) -> BatchCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: PtxModule = PtxModule { name: "m", ptx: "" };

    fn held_with(kernel: &str, grid: u32, arg: u64, x: f32) -> HeldLaunch {
        let args = [KernelArg::U64(arg), KernelArg::F32(x)];
        HeldLaunch::new(&M, kernel, LaunchConfig::linear(grid, 32), &args)
    }

    fn held(kernel: &str, grid: u32, arg: u64) -> HeldLaunch {
        held_with(kernel, grid, arg, 1.5)
    }

    #[test]
    fn a_held_launch_gives_back_its_arguments() {
        let map =
            crate::gpu::driver::EncodedTensorMap([7; crate::gpu::tensor_map::TENSOR_MAP_BYTES]);
        let args = [
            KernelArg::Ptr(crate::gpu::DevicePtr(1 << 40)),
            KernelArg::U32(3),
            KernelArg::U64(u64::MAX),
            KernelArg::F32(f32::NAN),
            KernelArg::F64(-0.5),
            KernelArg::TensorMap(map),
        ];
        let h = HeldLaunch::new(&M, "k", LaunchConfig::linear(1, 32), &args);
        let back = h.args();
        assert_eq!(back.len(), args.len());
        for (a, b) in args.iter().zip(&back) {
            assert_eq!(a.to_bytes(), b.to_bytes(), "{a:?}");
        }
        let bytes: Vec<Vec<u8>> = h.param_bytes().map(<[u8]>::to_vec).collect();
        let want: Vec<Vec<u8>> = args.iter().map(|a| a.to_bytes()).collect();
        assert_eq!(bytes, want);
        // A NaN argument is the same launch as itself; a pointer and a u64 of the same bits
        // are not the same argument.
        assert!(h.same_launch(&h.clone()));
        let p = HeldLaunch::new(
            &M,
            "k",
            LaunchConfig::linear(1, 32),
            &[KernelArg::Ptr(crate::gpu::DevicePtr(5))],
        );
        let u = HeldLaunch::new(&M, "k", LaunchConfig::linear(1, 32), &[KernelArg::U64(5)]);
        assert!(!p.same_launch(&u));
    }

    fn patch(slot: usize, nodes: &[usize]) -> GraphPlan {
        GraphPlan::Patch {
            slot,
            nodes: nodes.to_vec(),
        }
    }

    #[test]
    fn a_batch_patches_the_kept_graph_with_its_kernels_or_builds_one() {
        let mut c = GraphCache::new(2);
        let a = vec![
            held("x", 1, 10),
            held("y", 4, 20),
            held("x", 1, 30),
            held("y", 1, 40),
        ];
        assert_eq!(c.plan(a.clone()), GraphPlan::Build { slot: 0 });
        // The same launches: nothing to patch; one argument changed: that node.
        assert_eq!(c.plan(a.clone()), patch(0, &[]));
        let mut b = a.clone();
        b[2] = held("x", 1, 31);
        assert_eq!(c.plan(b.clone()), patch(0, &[2]));
        // Compared with its last run, not its first.
        assert_eq!(c.plan(b.clone()), patch(0, &[]));
        // Two of four nodes changed (a grid, an argument): not close, so a second graph of
        // the same kernels.
        let mut d = b.clone();
        d[1].config.grid.0 = 5;
        d[3] = held_with("y", 1, 40, 2.5);
        assert_eq!(c.plan(d.clone()), GraphPlan::Build { slot: 1 });
        // Each batch goes to the graph it is close to.
        assert_eq!(c.plan(b.clone()), patch(0, &[]));
        let mut d2 = d.clone();
        d2[2] = held("x", 1, 99);
        assert_eq!(c.plan(d2.clone()), patch(1, &[2]));
        // Close to neither, with two kept: the one used least recently, patched whole.
        let e: Vec<HeldLaunch> = (0..4)
            .map(|i| held(["x", "y"][i % 2], 7, 70 + i as u64))
            .collect();
        assert_eq!(c.plan(e.clone()), patch(0, &[0, 1, 2, 3]));
        // Other kernels: a new graph in place of the least recently used.
        let f: Vec<HeldLaunch> = (0..4).map(|i| held("z", 1, i)).collect();
        assert_eq!(c.plan(f.clone()), GraphPlan::Build { slot: 1 });
        // A forgotten slot builds again.
        c.forget(0);
        assert_eq!(c.plan(b.clone()), GraphPlan::Build { slot: 0 });
        let n = c.counts();
        assert_eq!(
            (n.batches, n.launches, n.graphs_built, n.nodes_patched),
            (10, 40, 4, 6)
        );
    }

    #[test]
    fn the_switch_is_per_thread_and_nests() {
        let _off = launch_batches(false);
        assert!(!launch_batches_enabled());
        {
            let _on = launch_batches(true);
            assert!(launch_batches_enabled());
            std::thread::spawn(|| {
                let _off = launch_batches(false);
                assert!(!launch_batches_enabled());
            })
            .join()
            .unwrap();
            assert!(launch_batches_enabled());
        }
        assert!(!launch_batches_enabled());
    }
}
