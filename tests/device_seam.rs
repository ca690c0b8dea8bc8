//! The host side of "a tensor can live on a device": moving tensors to a GPU-like device and
//! back, reading them, ops reaching the device's driver (and its errors), and freeing device
//! memory. The device here is an in-test `Driver` backed by host memory (it runs no kernels),
//! registered in place of the devices' own drivers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tarflow::gpu::{registry, DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule};
use tarflow::{Device, Error, Result, Tensor};

/// Global memory as host byte vectors, with counters of what was asked of it.
#[derive(Default)]
struct HostDriver {
    mem: Mutex<BTreeMap<u64, Vec<u8>>>,
    next: AtomicUsize,
    allocs: AtomicUsize,
    frees: AtomicUsize,
    uploads: AtomicUsize,
}

impl HostDriver {
    fn live(&self) -> usize {
        self.mem.lock().unwrap().len()
    }

    /// Runs `f` on the allocation holding `[ptr, ptr + len)`, from `ptr`'s offset in it.
    fn with_range<R>(
        &self,
        op: &'static str,
        ptr: DevicePtr,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R> {
        let mut mem = self.mem.lock().unwrap();
        let found = mem.range_mut(..=ptr.0).next_back();
        match found {
            Some((&base, buf)) if ptr.0 - base + len as u64 <= buf.len() as u64 => {
                let o = (ptr.0 - base) as usize;
                Ok(f(&mut buf[o..o + len]))
            }
            _ => Err(Error::Device {
                op,
                detail: format!("{len} bytes at {:#x} are outside every allocation", ptr.0),
            }),
        }
    }
}

impl Driver for HostDriver {
    fn name(&self) -> String {
        "host-test".into()
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        // 256-byte aligned, never 0, never adjacent (a stray offset falls in a gap).
        let step = bytes.div_ceil(256) * 256 + 256;
        let addr = 0x1000 + self.next.fetch_add(step, Ordering::Relaxed) as u64;
        // Fresh memory holds a NaN pattern, as the interpreter's does.
        self.mem.lock().unwrap().insert(addr, vec![0xFF; bytes]);
        self.allocs.fetch_add(1, Ordering::Relaxed);
        Ok(DevicePtr(addr))
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.frees.fetch_add(1, Ordering::Relaxed);
        match self.mem.lock().unwrap().remove(&ptr.0) {
            Some(_) => Ok(()),
            None => Err(Error::Device {
                op: "free",
                detail: format!("{:#x} is not an allocation", ptr.0),
            }),
        }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.with_range("upload", dst, src.len(), |d| d.copy_from_slice(src))
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.with_range("download", src, dst.len(), |s| dst.copy_from_slice(s))
    }

    fn launch(
        &self,
        _module: &PtxModule,
        kernel: &str,
        _config: LaunchConfig,
        _args: &[KernelArg],
    ) -> Result<()> {
        Err(Error::Device {
            op: "launch",
            detail: format!("{kernel}: the test driver runs no kernels"),
        })
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// The shared test device: `ptx-sim`, backed by one `HostDriver` for the whole binary.
fn sim() -> Device {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        registry::register(Device::PtxSim, Arc::new(HostDriver::default())).unwrap();
    });
    Device::PtxSim
}

/// A device of its own for a test that counts what its driver was asked to do.
fn private_device(ordinal: usize) -> (Device, Arc<HostDriver>) {
    let d = Arc::new(HostDriver::default());
    let device = Device::Cuda(ordinal);
    registry::register(device, d.clone()).unwrap();
    (device, d)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Values whose bits a lossy path would change: signed zero, NaN payloads, infinities,
/// subnormals, the extremes.
fn awkward() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        f32::from_bits(0x7fc0_1234),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE / 8.0,
        f32::MAX,
        f32::MIN,
        1.0e-30,
        std::f32::consts::PI,
    ]
}

#[test]
fn round_trip_is_bit_exact() {
    let dev = sim();
    let x = Tensor::<f32>::from_vec(awkward(), &[3, 4]).unwrap();
    let g = x.to_device(dev).unwrap();
    assert_eq!(g.device(), dev);
    assert_eq!(g.shape(), &[3, 4]);
    // Reading a device tensor downloads it.
    assert_eq!(bits(&g.to_vec()), bits(&x.to_vec()));
    assert_eq!(bits(&g.try_to_vec().unwrap()), bits(&x.to_vec()));
    let back = g.to_host().unwrap();
    assert_eq!(back.device(), Device::Cpu);
    assert_eq!(bits(&back.to_vec()), bits(&x.to_vec()));
    assert_eq!(
        g.get(&[1, 0]).unwrap().to_bits(),
        x.get(&[1, 0]).unwrap().to_bits()
    );
    // A strided view uploads its elements in row-major order.
    let t = x.t().unwrap();
    let gt = t.to_device(dev).unwrap();
    assert_eq!(bits(&gt.to_host().unwrap().to_vec()), bits(&t.to_vec()));
    // Views of a device tensor read through their own layout.
    let gtv = g.t().unwrap();
    assert_eq!(bits(&gtv.to_vec()), bits(&t.to_vec()));
    // Moving to where the tensor already is shares its storage.
    assert!(g.to_device(dev).unwrap().shares_storage(&g));
    // One element and zero elements.
    let s = Tensor::<f32>::scalar(-2.5).to_device(dev).unwrap();
    assert_eq!(s.item().unwrap().to_bits(), (-2.5f32).to_bits());
    let e = Tensor::<f32>::zeros(&[0, 3]).to_device(dev).unwrap();
    assert_eq!(e.to_host().unwrap().shape(), &[0, 3]);
}

#[test]
fn f64_stays_on_the_cpu() {
    let x = Tensor::<f64>::ones(&[2]);
    let e = x.to_device(sim()).unwrap_err().to_string();
    assert!(e.contains("f64") && e.contains("ptx-sim"), "{e}");
    // f64 on the CPU is untouched by the refusal.
    assert_eq!(x.to_device(Device::Cpu).unwrap().to_vec(), vec![1.0, 1.0]);
}

#[test]
fn devices_without_a_driver_say_so() {
    let x = Tensor::<f32>::ones(&[2]);
    let e = x.to_device(Device::Cuda(5)).unwrap_err().to_string();
    assert!(e.contains("cuda:5") && e.contains("CUDA"), "{e}");
}

#[test]
fn mixed_devices_name_the_op_and_both_devices() {
    let a = Tensor::<f32>::ones(&[2, 2]);
    let b = a.to_device(sim()).unwrap();
    for (op, r) in [
        ("add", a.add(&b)),
        ("mul", b.mul(&a)),
        ("matmul", a.matmul(&b)),
        ("concat", Tensor::concat(&[&a, &b], 0)),
    ] {
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains(op) && e.contains("cpu") && e.contains("ptx-sim"),
            "{op}: {e}"
        );
    }
}

/// Ops on a device go to its driver's kernels: on a driver that runs none, every op (those
/// that used to be infallible included) fails with the driver's error, naming the kernel;
/// nothing is computed on the host behind the caller's back.
#[test]
fn ops_reach_the_device_driver_and_report_its_errors() {
    let dev = sim();
    let x = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2])
        .unwrap()
        .to_device(dev)
        .unwrap();
    let w = Tensor::<f32>::ones(&[2]).to_device(dev).unwrap();
    for (kernel, r) in [
        ("binary_f32", x.add(&x)),
        ("gemm_f32", x.matmul(&x)),
        ("gemm_f32", x.linear(&x, None)),
        ("softmax_rows_f32", x.softmax(-1)),
        ("layer_norm_fwd_f32", x.layer_norm(Some(&w), None, 1e-5)),
        ("reduce", x.sum(&[0], false)),
        ("index_select_f32", x.index_select(0, &[1])),
        ("unary_f32", x.exp()),
        ("unary_f32", x.mul_scalar(2.0)),
        ("strided_copy_f32", x.t().unwrap().contiguous()),
    ] {
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains(kernel) && e.contains("runs no kernels"),
            "{kernel}: {e}"
        );
    }
    // A host closure cannot run on device memory: an error, not a silent download.
    let e = x.update_data(|d| d.fill(0.0)).unwrap_err().to_string();
    assert!(e.contains("update_data") && e.contains("ptx-sim"), "{e}");
}

#[test]
fn dropping_the_last_view_frees_device_memory() {
    let (dev, drv) = private_device(7);
    let x = Tensor::<f32>::ones(&[4, 8]);
    let g = x.to_device(dev).unwrap();
    let views = [g.t().unwrap(), g.narrow(0, 1, 2).unwrap(), g.clone()];
    assert_eq!(drv.allocs.load(Ordering::Relaxed), 1);
    assert_eq!(drv.live(), 1);
    drop(g);
    assert_eq!(drv.live(), 1, "views keep the buffer alive");
    drop(views);
    assert_eq!(drv.live(), 0);
    assert_eq!(drv.frees.load(Ordering::Relaxed), 1);
    // A second tensor: one more allocation, freed again.
    let h = x.to_device(dev).unwrap();
    assert_eq!(drv.live(), 1);
    drop(h);
    assert_eq!(drv.allocs.load(Ordering::Relaxed), 2);
    assert_eq!(drv.frees.load(Ordering::Relaxed), 2);
    assert_eq!(drv.live(), 0);
}

#[test]
fn gradients_cross_devices() {
    let (dev, drv) = private_device(8);
    let x = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0], &[3])
        .unwrap()
        .requires_grad_();
    // Down and back up: the gradient retraces both moves.
    let y = x
        .to_device(dev)
        .unwrap()
        .to_host()
        .unwrap()
        .square()
        .unwrap()
        .sum_all();
    y.unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec(), vec![2.0, 4.0, 6.0]);
    assert_eq!(x.grad().unwrap().device(), Device::Cpu);
    // A root on the device is seeded there: the seed is uploaded, then carried back.
    let before = drv.uploads.load(Ordering::Relaxed);
    let z = Tensor::<f32>::scalar(3.0).requires_grad_();
    let r = z.to_device(dev).unwrap();
    let after_forward = drv.uploads.load(Ordering::Relaxed);
    assert_eq!(after_forward, before + 1);
    r.backward().unwrap();
    assert_eq!(drv.uploads.load(Ordering::Relaxed), after_forward + 1);
    assert_eq!(z.grad().unwrap().to_vec(), vec![1.0]);
}

#[test]
fn device_names_round_trip() {
    for d in [
        Device::Cpu,
        Device::Cuda(0),
        Device::Cuda(3),
        Device::PtxSim,
    ] {
        assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
    }
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    for bad in ["tpu", "cuda:", "cuda:x", ""] {
        let e = bad.parse::<Device>().unwrap_err().to_string();
        assert!(e.contains("ptx-sim"), "{bad}: {e}");
    }
}

#[test]
fn the_host_cannot_be_registered() {
    let e = registry::register(Device::Cpu, Arc::new(HostDriver::default()))
        .err()
        .expect("the host has no driver")
        .to_string();
    assert!(e.contains("cpu"), "{e}");
}
