//! Per-launch profiles of a stretch of work on one device: which kernels ran, how often, and
//! what each cost. On a GPU the cost is device time, read from a mark (a CUDA event) recorded
//! before and after each launch; on the PTX interpreter it is the launch's warp-instructions
//! and global traffic. Copies between host and device are not launches and are not counted.
//!
//! Off by default: while off, a launch pays one relaxed atomic load. Every driver the
//! registry hands out carries a [`Profiler`], so a profile covers every tensor on the device,
//! whichever code launched its kernels.
//!
//! ```
//! use tarflow::gpu::profile;
//! use tarflow::{Device, Tensor};
//! let a = Tensor::<f32>::ones(&[4, 4]).to_device(Device::PtxSim)?;
//! profile::start(Device::PtxSim)?;
//! let b = a.add(&a)?;
//! let p = profile::finish(Device::PtxSim)?;
//! assert_eq!(p.launches.len(), 1);
//! let k = &p.by_kernel()[0];
//! assert!(k.work.unwrap().bytes_written >= 64);
//! # drop(b);
//! # Ok::<(), tarflow::Error>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use super::driver::{DeviceMark, Driver, KernelArg, LaunchConfig, LaunchWork, PtxModule};
use crate::error::{Error, Result};
use crate::tensor::Device;

/// One profiled launch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LaunchRecord {
    /// The PTX module, e.g. `"attention"`.
    pub module: &'static str,
    /// The kernel (the module's `.entry`).
    pub kernel: String,
    /// CTAs per grid dimension.
    pub grid: (u32, u32, u32),
    /// Threads per CTA dimension.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per CTA, in bytes.
    pub shared_bytes: u32,
    /// Device time of the launch in milliseconds, on a driver with marks (a GPU).
    pub device_ms: Option<f64>,
    /// What the launch did, on a driver that counts it (the interpreter).
    pub work: Option<LaunchWork>,
    /// Host time of the driver's launch call in seconds: on a GPU, issuing the launch (the
    /// kernel runs after); on the interpreter, running it.
    pub host_s: f64,
}

/// The launches of one kernel in a profile, added up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelShare {
    /// The kernel.
    pub kernel: String,
    /// How many times it was launched.
    pub launches: usize,
    /// Its device time in milliseconds, when every launch has one.
    pub device_ms: Option<f64>,
    /// Its work, when every launch has it.
    pub work: Option<LaunchWork>,
}

/// The launches between [`start`] and [`finish`], in the order they were issued.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LaunchProfile {
    /// Every launch.
    pub launches: Vec<LaunchRecord>,
    /// Host time the profiler spent on its own around the launches, in seconds: recording
    /// and reading marks, keeping the records. A run's wall time less this and the launch
    /// calls' [`LaunchProfile::launch_host_s`] and the other driver calls' [`LaunchProfile::driver_other_s`] is the host's own work between launches
    /// (shape checks, the engine's bookkeeping).
    pub profiler_s: f64,
    /// Host time of the driver's other calls in seconds: allocating, freeing, copying to and
    /// from the device, synchronising (through the registry's driver).
    pub driver_other_s: f64,
}

fn sum_ms(ms: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    ms.sum()
}

impl LaunchProfile {
    /// Device time of all launches in milliseconds, when every launch has one (`Some(0.0)`
    /// for no launches).
    pub fn device_ms(&self) -> Option<f64> {
        sum_ms(self.launches.iter().map(|l| l.device_ms))
    }

    /// Host time of all launch calls in seconds (see [`LaunchRecord::host_s`]).
    pub fn launch_host_s(&self) -> f64 {
        self.launches.iter().map(|l| l.host_s).sum()
    }

    /// The work of all launches, when every launch has it.
    pub fn work(&self) -> Option<LaunchWork> {
        add_work(self.launches.iter().map(|l| l.work))
    }

    /// One row per kernel: the most expensive first (device time where there is one, else
    /// warp-instructions, else launches), ties by name.
    pub fn by_kernel(&self) -> Vec<KernelShare> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut groups: Vec<Vec<&LaunchRecord>> = Vec::new();
        for l in &self.launches {
            let i = *index.entry(l.kernel.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push(l);
        }
        let mut rows: Vec<KernelShare> = groups
            .into_iter()
            .map(|g| KernelShare {
                kernel: g[0].kernel.clone(),
                launches: g.len(),
                device_ms: sum_ms(g.iter().map(|l| l.device_ms)),
                work: add_work(g.iter().map(|l| l.work)),
            })
            .collect();
        let cost = |k: &KernelShare| match (k.device_ms, k.work) {
            (Some(ms), _) => ms,
            (None, Some(w)) => w.warp_instructions as f64,
            (None, None) => k.launches as f64,
        };
        rows.sort_by(|a, b| {
            cost(b)
                .total_cmp(&cost(a))
                .then_with(|| a.kernel.cmp(&b.kernel))
        });
        rows
    }
}

/// The sum of `w`, or `None` when any is missing.
fn add_work(w: impl Iterator<Item = Option<LaunchWork>>) -> Option<LaunchWork> {
    w.sum()
}

/// A launch recorded, its marks not yet read.
struct Pending {
    module: &'static str,
    kernel: String,
    config: LaunchConfig,
    start: Option<DeviceMark>,
    end: Option<DeviceMark>,
    work: Option<LaunchWork>,
    host_s: f64,
}

impl Pending {
    /// The record, its device time read from `driver` (which waits for the end mark).
    fn resolve(self, driver: &dyn Driver) -> Result<LaunchRecord> {
        let device_ms = match (&self.start, &self.end) {
            (Some(s), Some(e)) => Some(driver.mark_ms(s, e)?),
            _ => None,
        };
        Ok(LaunchRecord {
            module: self.module,
            kernel: self.kernel,
            grid: self.config.grid,
            block: self.config.block,
            shared_bytes: self.config.shared_bytes,
            device_ms,
            work: self.work,
            host_s: self.host_s,
        })
    }
}

/// Most launches whose marks a profile keeps unread: past this the oldest is waited for, so
/// that a long run (sampling is hundreds of thousands of launches) holds a bounded number
/// of device events.
pub const MAX_UNREAD: usize = 1 << 14;

#[derive(Default)]
struct State {
    /// Launches whose marks are not read yet, oldest first.
    unread: VecDeque<Pending>,
    /// Launches read, in order.
    done: Vec<LaunchRecord>,
    /// The first error reading a mark (reported by [`Profiler::finish`]).
    failed: Option<Error>,
    /// See [`LaunchProfile::profiler_s`].
    profiler_s: f64,
    /// See [`LaunchProfile::driver_other_s`].
    driver_other_s: f64,
}

/// The launch profiler a registry driver carries: passes launches on to the driver and, while
/// on, records each one. Marks are read as soon as the device has passed them, so a profile
/// holds at most [`MAX_UNREAD`] unread ones.
#[derive(Default)]
pub struct Profiler {
    on: AtomicBool,
    state: Mutex<State>,
}

impl Profiler {
    /// A profiler that is off.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Records are pushed whole; a panic elsewhere cannot leave one half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Launches on `driver` (the driver this profiler belongs to), recording the launch
    /// while the profiler is on.
    pub fn launch(
        &self,
        driver: &dyn Driver,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        if !self.on.load(Ordering::Relaxed) {
            return driver.launch(module, kernel, config, args);
        }
        let t0 = Instant::now();
        let start = driver.mark()?;
        let t1 = Instant::now();
        driver.launch(module, kernel, config, args)?;
        let t2 = Instant::now();
        let end = driver.mark()?;
        let work = driver.last_launch_work();
        let mut st = self.lock();
        st.unread.push_back(Pending {
            module: module.name,
            kernel: kernel.to_string(),
            config,
            start,
            end,
            work,
            host_s: (t2 - t1).as_secs_f64(),
        });
        // Read what the device has passed; wait for the oldest past the bound.
        while let Some(first) = st.unread.front() {
            let passed = match &first.end {
                Some(e) => driver.mark_passed(e),
                None => Ok(true),
            };
            match passed {
                Ok(false) if st.unread.len() <= MAX_UNREAD => break,
                Ok(_) => {
                    let first = st.unread.pop_front().expect("looked at above");
                    match first.resolve(driver) {
                        Ok(r) => st.done.push(r),
                        Err(e) => {
                            st.failed.get_or_insert(e);
                        }
                    }
                }
                Err(e) => {
                    st.failed.get_or_insert(e);
                    break;
                }
            }
        }
        st.profiler_s += (t1 - t0 + t2.elapsed()).as_secs_f64();
        Ok(())
    }

    /// Runs `f`, a driver call other than a launch, adding its host time to the profile
    /// while on ([`LaunchProfile::driver_other_s`]).
    pub fn other<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.on.load(Ordering::Relaxed) {
            return f();
        }
        let t0 = Instant::now();
        let r = f();
        self.lock().driver_other_s += t0.elapsed().as_secs_f64();
        r
    }

    /// Starts recording; an error if a profile is already running.
    pub fn start(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        if self.on.swap(true, Ordering::Relaxed) {
            return Err(Error::Device {
                op: "profile",
                detail: format!("{name}: a launch profile is already running"),
            });
        }
        *st = State::default();
        Ok(())
    }

    /// Stops recording and returns the launches since [`Profiler::start`], their device
    /// times read from `driver`'s marks (after waiting for the last launch).
    pub fn finish(&self, driver: &dyn Driver) -> Result<LaunchProfile> {
        let st = {
            let mut st = self.lock();
            if !self.on.swap(false, Ordering::Relaxed) {
                return Err(Error::Device {
                    op: "profile",
                    detail: format!("{}: no launch profile is running", driver.name()),
                });
            }
            std::mem::take(&mut *st)
        };
        if let Some(e) = st.failed {
            return Err(e);
        }
        driver.synchronize()?;
        let mut launches = st.done;
        for p in st.unread {
            launches.push(p.resolve(driver)?);
        }
        Ok(LaunchProfile {
            launches,
            profiler_s: st.profiler_s,
            driver_other_s: st.driver_other_s,
        })
    }

    /// Whether a profile is recording.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Launches recorded whose marks are not read yet.
    pub fn unread(&self) -> usize {
        self.lock().unread.len()
    }
}

fn profiler_of(driver: &dyn Driver, device: Device) -> Result<&Profiler> {
    driver.profiler().ok_or_else(|| Error::Device {
        op: "profile",
        detail: format!(
            "{device}: its driver ({}) keeps no launch profile",
            driver.name()
        ),
    })
}

/// Starts a launch profile on `device` (a GPU-like device): every launch from now until
/// [`finish`] is recorded. An error for the CPU, for a device that cannot be opened, and
/// when a profile is already running there.
pub fn start(device: Device) -> Result<()> {
    let driver = super::registry::driver(device)?;
    profiler_of(driver.as_ref(), device)?.start(&device.to_string())
}

/// Ends the launch profile on `device` and returns it (waits for the device). An error when
/// none is running.
pub fn finish(device: Device) -> Result<LaunchProfile> {
    let driver = super::registry::driver(device)?;
    profiler_of(driver.as_ref(), device)?.finish(driver.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{DevicePtr, Forward};
    use std::sync::atomic::AtomicU64;

    const MODULE: PtxModule = PtxModule {
        name: "test",
        ptx: "",
    };

    /// A driver whose launches take a fixed device time each (kernel `slow` 2.5 ms, others
    /// 1 ms) on a clock its marks read, whose device has passed the marks up to
    /// `passed_us`, and whose kernel `bad` fails.
    struct Clocked {
        clock_us: AtomicU64,
        passed_us: AtomicU64,
    }

    impl Default for Clocked {
        fn default() -> Self {
            Clocked {
                clock_us: AtomicU64::new(0),
                passed_us: AtomicU64::new(u64::MAX),
            }
        }
    }

    fn us(m: &DeviceMark) -> u64 {
        *m.0.downcast_ref::<u64>().unwrap()
    }

    impl Driver for Clocked {
        fn name(&self) -> String {
            "clocked".into()
        }
        fn alloc(&self, _: usize) -> Result<DevicePtr> {
            Ok(DevicePtr(256))
        }
        fn free(&self, _: DevicePtr) -> Result<()> {
            Ok(())
        }
        fn upload(&self, _: DevicePtr, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn download(&self, _: DevicePtr, _: &mut [u8]) -> Result<()> {
            Ok(())
        }
        fn launch(
            &self,
            _: &PtxModule,
            kernel: &str,
            _: LaunchConfig,
            _: &[KernelArg],
        ) -> Result<()> {
            if kernel == "bad" {
                return Err(Error::arg("launch", "bad kernel"));
            }
            if kernel == "busy" {
                // Host time of the call itself.
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            let us = if kernel == "slow" { 2500 } else { 1000 };
            self.clock_us.fetch_add(us, Ordering::Relaxed);
            Ok(())
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
        fn mark(&self) -> Result<Option<DeviceMark>> {
            Ok(Some(DeviceMark(Box::new(
                self.clock_us.load(Ordering::Relaxed),
            ))))
        }
        fn mark_ms(&self, start: &DeviceMark, end: &DeviceMark) -> Result<f64> {
            Ok((us(end) - us(start)) as f64 / 1e3)
        }
        fn mark_passed(&self, mark: &DeviceMark) -> Result<bool> {
            Ok(us(mark) <= self.passed_us.load(Ordering::Relaxed))
        }
    }

    /// [`Clocked`] with a profiler, as the registry wraps drivers.
    #[derive(Default)]
    struct Profiled {
        inner: Clocked,
        profiler: Profiler,
    }

    impl Forward for Profiled {
        fn inner(&self) -> &dyn Driver {
            &self.inner
        }
        fn launch(&self, m: &PtxModule, k: &str, c: LaunchConfig, a: &[KernelArg]) -> Result<()> {
            self.profiler.launch(&self.inner, m, k, c, a)
        }
        fn profiler(&self) -> Option<&Profiler> {
            Some(&self.profiler)
        }
    }

    fn launch(d: &Profiled, kernel: &str, grid: u32) -> Result<()> {
        Driver::launch(d, &MODULE, kernel, LaunchConfig::linear(grid, 32), &[])
    }

    #[test]
    fn a_profile_records_the_launches_between_start_and_finish_with_their_device_time() {
        let d = Profiled::default();
        launch(&d, "before", 1).unwrap();
        d.profiler.start("clocked").unwrap();
        assert!(d.profiler.start("clocked").is_err(), "a second start");
        for (k, g) in [
            ("fast", 1),
            ("slow", 2),
            ("fast", 3),
            ("other", 4),
            ("slow", 5),
        ] {
            launch(&d, k, g).unwrap();
        }
        // A failed launch is an error and leaves no record.
        assert!(launch(&d, "bad", 6).is_err());
        let p = d.profiler.finish(&d).unwrap();
        launch(&d, "after", 1).unwrap();
        assert!(d.profiler.finish(&d).is_err(), "finish without start");

        let names: Vec<&str> = p.launches.iter().map(|l| l.kernel.as_str()).collect();
        assert_eq!(names, ["fast", "slow", "fast", "other", "slow"]);
        assert_eq!(p.launches[1].grid, (2, 1, 1));
        assert_eq!(p.launches[1].module, "test");
        let ms: Vec<f64> = p.launches.iter().map(|l| l.device_ms.unwrap()).collect();
        assert_eq!(ms, [1.0, 2.5, 1.0, 1.0, 2.5]);
        assert_eq!(p.device_ms(), Some(8.0));
        assert_eq!(p.work(), None, "the clocked driver counts no work");
        let rows: Vec<(String, usize, Option<f64>)> = p
            .by_kernel()
            .into_iter()
            .map(|k| (k.kernel, k.launches, k.device_ms))
            .collect();
        let want = [("slow", 2, 5.0), ("fast", 2, 2.0), ("other", 1, 1.0)]
            .map(|(k, n, ms)| (k.to_string(), n, Some(ms)));
        assert_eq!(rows, want);
    }

    /// Host time is split between the launch calls, the driver's other calls and the
    /// profiler's own work, and only while the profile runs. The sleeps differ by an order
    /// of magnitude, so that a loaded machine's late wake-ups cannot pass one for another.
    #[test]
    fn host_time_is_kept_per_launch_call_and_for_other_driver_calls() {
        let d = Profiled::default();
        let nap = |ms| {
            move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(())
            }
        };
        d.profiler.other(nap(60)).unwrap();
        d.profiler.start("clocked").unwrap();
        launch(&d, "busy", 1).unwrap();
        launch(&d, "fast", 2).unwrap();
        d.profiler.other(nap(3)).unwrap();
        let p = d.profiler.finish(&d).unwrap();
        d.profiler.other(nap(60)).unwrap();
        assert!(p.launches[0].host_s >= 0.03, "{:?}", p.launches[0]);
        assert!(p.launches[1].host_s < 0.015, "{:?}", p.launches[1]);
        assert_eq!(
            p.launch_host_s(),
            p.launches[0].host_s + p.launches[1].host_s
        );
        // The short nap inside the profile, neither long one outside.
        assert!(
            (0.003..0.06).contains(&p.driver_other_s),
            "{}",
            p.driver_other_s
        );
        assert!(
            p.profiler_s >= 0.0 && p.profiler_s < 0.015,
            "{}",
            p.profiler_s
        );
    }

    /// Marks are read once the device passes them, and at most [`MAX_UNREAD`] wait unread:
    /// a device that falls behind holds the host at the oldest.
    #[test]
    fn unread_marks_are_bounded_and_all_come_back_in_order() {
        let d = Profiled::default();
        d.inner.passed_us.store(0, Ordering::Relaxed);
        d.profiler.start("clocked").unwrap();
        for i in 0..MAX_UNREAD + 10 {
            launch(&d, if i % 3 == 0 { "slow" } else { "fast" }, i as u32 + 1).unwrap();
            assert_eq!(d.profiler.unread(), (i + 1).min(MAX_UNREAD));
        }
        // With the device still behind, one more launch reads only the oldest (past the
        // bound); once the device has passed everything, the next reads them all.
        launch(&d, "fast", 0).unwrap();
        assert_eq!(d.profiler.unread(), MAX_UNREAD);
        d.inner.passed_us.store(u64::MAX, Ordering::Relaxed);
        launch(&d, "fast", 0).unwrap();
        assert_eq!(d.profiler.unread(), 0);
        let p = d.profiler.finish(&d).unwrap();
        assert_eq!(p.launches.len(), MAX_UNREAD + 12);
        for (i, l) in p.launches.iter().take(MAX_UNREAD + 10).enumerate() {
            assert_eq!(l.grid.0, i as u32 + 1, "order");
            let want = if i % 3 == 0 { 2.5 } else { 1.0 };
            assert_eq!(l.device_ms, Some(want), "launch {i}");
        }
        // Marks still unread at the finish are read there.
        d.inner.passed_us.store(0, Ordering::Relaxed);
        d.profiler.start("clocked").unwrap();
        launch(&d, "slow", 7).unwrap();
        assert_eq!(d.profiler.unread(), 1);
        let p = d.profiler.finish(&d).unwrap();
        assert_eq!(p.launches[0].device_ms, Some(2.5));
    }

    #[test]
    fn without_device_time_kernels_rank_by_work_then_launches() {
        let rec = |kernel: &str, work: Option<u64>| LaunchRecord {
            module: "m",
            kernel: kernel.into(),
            grid: (1, 1, 1),
            block: (32, 1, 1),
            shared_bytes: 0,
            device_ms: None,
            work: work.map(|w| LaunchWork {
                warp_instructions: w,
                bytes_read: 2 * w,
                bytes_written: 3,
            }),
            host_s: 0.0,
        };
        let p = LaunchProfile {
            launches: vec![rec("a", Some(10)), rec("b", Some(7)), rec("b", Some(7))],
            ..Default::default()
        };
        let k = p.by_kernel();
        assert_eq!((k[0].kernel.as_str(), k[0].launches), ("b", 2));
        assert_eq!(
            k[0].work,
            Some(LaunchWork {
                warp_instructions: 14,
                bytes_read: 28,
                bytes_written: 6
            })
        );
        assert_eq!(p.work().unwrap().warp_instructions, 24);
        assert_eq!(p.device_ms(), None);
        // One launch without work: the sums are unknown, and the kernels rank by launches.
        let p = LaunchProfile {
            launches: vec![rec("a", None), rec("b", Some(7)), rec("b", None)],
            ..Default::default()
        };
        assert_eq!(p.work(), None);
        let k = p.by_kernel();
        assert_eq!(k[0].kernel, "b");
        assert_eq!(k[0].work, None);
        assert_eq!(k[1].work, None);
    }
}
