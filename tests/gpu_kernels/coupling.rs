//! `ptx/coupling.cu`: the affine coupling's forward (z and the per-image log-det), backward
//! and guided inverse, on strided operands as the model passes them (flipped tokens,
//! parameters narrowed out of one projection), against the CPU op and its autograd.

use tarflow::gpu::kernels::{
    coupling_bwd_f32, coupling_fwd_f32, coupling_inverse_f32, CouplingGrads, CouplingShape, Tokens,
};
use tarflow::gpu::{DevicePtr, Driver};
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// Three images (three forward CTAs) of 37 tokens x 11 values: 407 elements per image, two
/// sweeps of 256 threads with a ragged second one; the backward's 1221 elements span five
/// CTAs, the last ragged.
const B: usize = 3;
const L: usize = 37;
const D: usize = 11;

struct Case {
    xs: Vec<f32>,
    proj: Vec<f32>,
    x: Tokens,
    alpha: Tokens,
    mu: Tokens,
}

/// Tokens `[B, L, D]` read flipped along the tokens, and a `[B, L, 2D]` projection whose
/// halves are alpha and mu.
fn upload_case(d: &dyn Driver, rng: &mut Rng) -> Case {
    let xs = normal(rng, B * L * D);
    let proj: Vec<f32> = normal(rng, B * L * 2 * D).iter().map(|v| 2.0 * v).collect();
    let (xb, pb) = (upload::<f32>(d, &xs), upload::<f32>(d, &proj));
    let ld = (L * D) as isize;
    let (l2d, di) = ((L * 2 * D) as isize, D as isize);
    Case {
        x: Tokens {
            ptr: xb.offset(((L - 1) * D * 4) as u64),
            strides: [ld, -di, 1],
        },
        alpha: Tokens {
            ptr: pb,
            strides: [l2d, 2 * di, 1],
        },
        mu: Tokens {
            ptr: pb.offset((D * 4) as u64),
            strides: [l2d, 2 * di, 1],
        },
        xs,
        proj,
    }
}

/// The same views on the CPU: `(xp, alpha, mu)`, every one requiring a gradient.
fn cpu_views(c: &Case) -> (Tensor<f32>, Tensor<f32>, Tensor<f32>) {
    let x = Tensor::from_vec(c.xs.clone(), &[B, L, D])
        .unwrap()
        .requires_grad_();
    let p = Tensor::from_vec(c.proj.clone(), &[B, L, 2 * D])
        .unwrap()
        .requires_grad_();
    (
        x.flip(1).unwrap(),
        p.narrow(2, 0, D).unwrap(),
        p.narrow(2, D, D).unwrap(),
    )
}

fn forward(d: &dyn Driver) {
    let mut rng = Rng::new(71);
    let c = upload_case(d, &mut rng);
    let (xp, a, m) = cpu_views(&c);
    for clip in [None, Some(1.5)] {
        let (z, ld) = xp.affine_coupling(&a, &m, clip).unwrap();
        let out = poisoned_f32(d, B * L * D + B + 1);
        let shape = CouplingShape {
            dims: [B, L, D],
            clip,
        };
        coupling_fwd_f32(d, out, c.x, c.alpha, c.mu, shape).unwrap();
        let got = download::<f32>(d, out, B * L * D + B + 1);
        let what = format!("coupling forward (clip {clip:?}) on {}", d.name());
        assert_close(
            &format!("{what}: z"),
            &got[..B * L * D],
            &wide(&z.to_vec()),
            1e-5,
            1e-6,
        );
        // The log-det sums 407 values in another order than the CPU's.
        let ldw = wide(&ld.to_vec());
        assert_close(
            &format!("{what}: logdet"),
            &got[B * L * D..B * L * D + B],
            &ldw,
            1e-5,
            1e-3,
        );
        assert!(
            got[B * L * D + B].is_nan(),
            "{what}: wrote past the log-dets"
        );
    }
    // No tokens: each log-det is minus an empty sum.
    let out = poisoned_f32(d, 2);
    let none = CouplingShape {
        dims: [2, 0, D],
        clip: None,
    };
    coupling_fwd_f32(d, out, c.x, c.alpha, c.mu, none).unwrap();
    let got = download::<f32>(d, out, 2);
    assert_bits("coupling forward without tokens", &got, &[-0.0, -0.0]);
}

fn backward(d: &dyn Driver) {
    let mut rng = Rng::new(72);
    let c = upload_case(d, &mut rng);
    let gs = normal(&mut rng, B * L * D + B);
    let g = upload::<f32>(d, &gs);
    for clip in [None, Some(1.5)] {
        let (xp, a, m) = cpu_views(&c);
        let (z, ld) = xp.affine_coupling(&a, &m, clip).unwrap();
        let r = Tensor::from_vec(gs[..B * L * D].to_vec(), &[B, L, D]).unwrap();
        let s = Tensor::from_vec(gs[B * L * D..].to_vec(), &[B]).unwrap();
        let loss = z
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&ld.mul(&s).unwrap().sum_all().unwrap())
            .unwrap();
        let want = tarflow::autograd::grad(&loss, &[&xp, &a, &m]).unwrap();
        let shape = CouplingShape {
            dims: [B, L, D],
            clip,
        };
        let n = B * L * D;
        let outs: Vec<DevicePtr> = (0..3).map(|_| poisoned_f32(d, n + 1)).collect();
        let grads = CouplingGrads {
            dx: Some(outs[0]),
            dalpha: Some(outs[1]),
            dmu: Some(outs[2]),
        };
        coupling_bwd_f32(d, grads, g, c.x, c.alpha, c.mu, shape).unwrap();
        for (k, name) in ["dx", "dalpha", "dmu"].iter().enumerate() {
            let got = download::<f32>(d, outs[k], n + 1);
            let what = format!("coupling backward (clip {clip:?}) {name} on {}", d.name());
            assert_close(&what, &got[..n], &wide(&want[k].to_vec()), 1e-5, 1e-6);
            assert!(got[n].is_nan(), "{what}: wrote past the end");
        }
        // One gradient alone (the kernel reads no other output pointer).
        let only = poisoned_f32(d, n);
        let grads = CouplingGrads {
            dx: None,
            dalpha: None,
            dmu: Some(only),
        };
        coupling_bwd_f32(d, grads, g, c.x, c.alpha, c.mu, shape).unwrap();
        let got = download::<f32>(d, only, n);
        assert_close(
            "coupling backward dmu alone",
            &got,
            &wide(&want[2].to_vec()),
            1e-5,
            1e-6,
        );
    }
}

/// The guided and plain inverse on the sampler's views: z read with its tokens flipped, each
/// branch's alpha and mu narrowed out of one `[B, L, 2D]` projection, the output contiguous.
fn inverse(d: &dyn Driver) {
    let mut rng = Rng::new(73);
    let (b, l, dd) = (2, 20, 25); // 1000 values: four CTAs, the last ragged
    let n = b * l * dd;
    let z = normal(&mut rng, n);
    let (pc, pu) = (normal(&mut rng, 2 * n), normal(&mut rng, 2 * n));
    let (zt, pct, put) = (
        Tensor::from_vec(z.clone(), &[b, l, dd]).unwrap(),
        Tensor::from_vec(pc.clone(), &[b, l, 2 * dd]).unwrap(),
        Tensor::from_vec(pu.clone(), &[b, l, 2 * dd]).unwrap(),
    );
    let half = |t: &Tensor<f32>, k: usize| t.narrow(2, k * dd, dd).unwrap();
    let (zb, pcb, pub_) = (
        upload::<f32>(d, &z),
        upload::<f32>(d, &pc),
        upload::<f32>(d, &pu),
    );
    let (ld, di) = ((l * dd) as isize, dd as isize);
    let zv = Tokens {
        ptr: zb.offset(((l - 1) * dd * 4) as u64),
        strides: [ld, -di, 1],
    };
    let proj = |p: DevicePtr, k: usize| Tokens {
        ptr: p.offset((k * dd * 4) as u64),
        strides: [2 * ld, 2 * di, 1],
    };
    for guided in [false, true] {
        let w = 0.6;
        let zf = zt.flip(1).unwrap();
        let want = if guided {
            let u = (&half(&put, 0), &half(&put, 1), w);
            zf.affine_coupling_inverse(&half(&pct, 0), &half(&pct, 1), Some(u))
        } else {
            zf.affine_coupling_inverse(&half(&pct, 0), &half(&pct, 1), None)
        }
        .unwrap();
        let out = poisoned_f32(d, n + 1);
        let g = guided.then_some((proj(pub_, 0), proj(pub_, 1), w as f32));
        let dims = [b, l, dd];
        let ov = Tokens::contiguous(out, dims);
        coupling_inverse_f32(d, ov, zv, proj(pcb, 0), proj(pcb, 1), g, dims).unwrap();
        let got = download::<f32>(d, out, n + 1);
        let what = format!("coupling inverse (guided {guided}) on {}", d.name());
        assert_close(&what, &got[..n], &wide(&want.to_vec()), 1e-5, 1e-6);
        assert!(got[n].is_nan(), "{what}: wrote past the end");
    }
}

#[test]
fn coupling_forward_matches_cpu() {
    on_each_device(forward);
}

#[test]
fn coupling_backward_matches_cpu_autograd() {
    on_each_device(backward);
}

#[test]
fn coupling_inverse_matches_cpu() {
    on_each_device(inverse);
}
