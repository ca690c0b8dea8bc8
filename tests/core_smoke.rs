use tarflow::gradcheck::{check_gradients, GradCheck};
use tarflow::{Rng, Tensor};

fn rnd(shape: &[usize], seed: u64) -> Tensor<f64> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

#[test]
fn binary_broadcast_grads() {
    let a = rnd(&[3, 4], 1);
    let b = rnd(&[4], 2);
    check_gradients(
        |x| x[0].mul(&x[1])?.add(&x[0]),
        &[a.clone(), b.clone()],
        GradCheck::default(),
    )
    .unwrap();
    let c = rnd(&[3, 1], 3).abs().unwrap().add_scalar(0.5);
    check_gradients(|x| x[0].div(&x[1]), &[a, c.unwrap()], GradCheck::default()).unwrap();
}

#[test]
fn matmul_and_linear_grads() {
    let a = rnd(&[2, 3, 4], 4);
    let b = rnd(&[4, 5], 5);
    check_gradients(
        |x| x[0].matmul(&x[1]),
        &[a.clone(), b],
        GradCheck::default(),
    )
    .unwrap();
    let w = rnd(&[6, 4], 6);
    let bias = rnd(&[6], 7);
    check_gradients(
        |x| x[0].linear(&x[1], Some(&x[2])),
        &[a.clone(), w.clone(), bias],
        GradCheck::default(),
    )
    .unwrap();
    // Transposed operand goes through as a view.
    check_gradients(|x| x[0].matmul(&x[1].t()?), &[a, w], GradCheck::default()).unwrap();
}

#[test]
fn reductions_and_views() {
    let a = rnd(&[2, 3, 4], 8);
    check_gradients(
        |x| x[0].sum(&[0, 2], true),
        std::slice::from_ref(&a),
        GradCheck::default(),
    )
    .unwrap();
    check_gradients(
        |x| {
            x[0].permute(&[2, 0, 1])?
                .narrow(0, 1, 2)?
                .flip(1)?
                .mean(&[-1], false)
        },
        std::slice::from_ref(&a),
        GradCheck::default(),
    )
    .unwrap();
    check_gradients(|x| x[0].max(&[1], false), &[a], GradCheck::default()).unwrap();
}
