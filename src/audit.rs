//! Exactness audit of a TarFlow model: invertibility, the log-determinant against a
//! brute-force Jacobian, and the triangular structure the log-determinant relies on.
//!
//! Everything runs in the model's element type; use `f64` for a meaningful audit (the
//! tolerances below are set for it). See docs/logdet.md for the mathematics.

use serde::Serialize;

use crate::autograd;
use crate::error::{Error, Result};
use crate::model::memory::check_fits;
use crate::model::{Guidance, Sampler, TarFlow};
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// What to check and how strictly.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Random inputs to check (uniform in [-1, 1]). The round trip and the whole-model
    /// Jacobian check every one; the per-block checks (triangularity, windowed log-det) build
    /// one `N*D x N*D` Jacobian per block and use the first input only.
    pub samples: usize,
    /// Seed for the random inputs and their class labels.
    pub seed: u64,
    /// Largest image dimension (C*H*W) for which the Jacobian of the whole model is built;
    /// above it each block is checked on a window of `window` tokens.
    pub full_jacobian_max_dim: usize,
    /// Tokens per block in the windowed log-determinant check (clamped to `1..=seq_len`).
    pub window: usize,
    /// Relative tolerance on log-determinants.
    pub logdet_rtol: f64,
    /// Absolute tolerance on reconstruction. Inversion multiplies rounding errors by
    /// `exp(alpha)`, which a trained model makes large (a trained MNIST model reaches
    /// ~7e-11 in f64), so the default leaves room above that; a broken inverse is off by far
    /// more.
    pub roundtrip_atol: f64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            samples: 2,
            seed: 0,
            full_jacobian_max_dim: 256,
            window: 4,
            logdet_rtol: 1e-10,
            roundtrip_atol: 1e-8,
        }
    }
}

/// One line of the audit table.
#[derive(Clone, Debug, Serialize)]
pub struct AuditCheck {
    /// What was checked, as printed in the table.
    pub name: String,
    /// Measured error (an absolute or relative discrepancy, per the check's name).
    pub value: f64,
    /// Largest `value` that passes.
    pub limit: f64,
    /// Whether `value` is finite and at most `limit`.
    pub passed: bool,
    /// Extra note shown in brackets after the result; empty if none.
    pub detail: String,
}

/// A check the audit did not make (or made on part of the inputs only), and why.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedCheck {
    /// The check, named as in the table when it runs.
    pub name: String,
    /// Why it was skipped, and the option that would run it.
    pub reason: String,
}

/// All checks plus the per-block log-determinants of each input.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    /// Element type the audit ran in (`"f32"` or `"f64"`).
    pub dtype: String,
    /// Every check in the order it ran.
    pub checks: Vec<AuditCheck>,
    /// Every check not made (in full), with the reason; `passed` says nothing about these.
    pub skipped: Vec<SkippedCheck>,
    /// `logdet_blocks[s][t]`: log-determinant of block `t` on sample `s`.
    pub logdet_blocks: Vec<Vec<f64>>,
}

impl AuditReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// A plain-text table for people.
    pub fn table(&self) -> String {
        let mut s = format!("{:<44} {:>14} {:>12}  result\n", "check", "value", "limit");
        for c in &self.checks {
            s += &format!(
                "{:<44} {:>14.3e} {:>12.1e}  {}{}\n",
                c.name,
                c.value,
                c.limit,
                if c.passed { "ok" } else { "FAIL" },
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", c.detail)
                }
            );
        }
        if !self.skipped.is_empty() {
            s += "\nskipped:\n";
            for k in &self.skipped {
                s += &format!("  {}: {}\n", k.name, k.reason);
            }
        }
        s += "\nper-block log-determinant (nats):\n";
        for (i, row) in self.logdet_blocks.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>12.6}")).collect();
            s += &format!(
                "  sample {i}: {}   total {:.6}\n",
                cells.join(" "),
                row.iter().sum::<f64>()
            );
        }
        s
    }
}

/// `ln |det A|` of a dense `n x n` row-major matrix by LU with partial pivoting.
pub fn log_abs_det(a: &[f64], n: usize) -> f64 {
    let mut m = a.to_vec();
    let mut total = 0.0;
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs()))
            .unwrap_or(col);
        let p = m[piv * n + col];
        if p == 0.0 {
            return f64::NEG_INFINITY;
        }
        if piv != col {
            for j in 0..n {
                m.swap(col * n + j, piv * n + j);
            }
        }
        total += p.abs().ln();
        for r in col + 1..n {
            let f = m[r * n + col] / p;
            if f != 0.0 {
                for j in col..n {
                    m[r * n + j] -= f * m[col * n + j];
                }
            }
        }
    }
    total
}

/// Jacobian `d f(x) / d x` of a map on `[1, ...]` inputs, rows = outputs, built by one
/// backward pass per output element through a single forward graph.
pub fn jacobian<E: Element>(
    f: impl Fn(&Tensor<E>) -> Result<Tensor<E>>,
    x: &Tensor<E>,
) -> Result<Vec<f64>> {
    let xin = x.detach().requires_grad_();
    let y = f(&xin)?;
    let (m, n) = (y.numel(), x.numel());
    let mut jac = vec![0.0; m * n];
    for i in 0..m {
        let mut onehot = vec![E::ZERO; m];
        onehot[i] = E::ONE;
        xin.zero_grad();
        y.backward_with(&Tensor::from_vec(onehot, y.shape())?)?;
        if let Some(g) = xin.grad() {
            for (j, v) in g.to_f64_vec().into_iter().enumerate() {
                jac[i * n + j] = v;
            }
        }
    }
    Ok(jac)
}

fn check(name: &str, value: f64, limit: f64, detail: String) -> AuditCheck {
    AuditCheck {
        name: name.into(),
        value,
        limit,
        passed: value.is_finite() && value <= limit,
        detail,
    }
}

/// The worst error seen and where. `f64::max` drops a NaN operand, which once let a model
/// with a NaN log-determinant pass every check; here a NaN (or infinity) is the worst value
/// there is, and the first one seen is kept along with where it was.
struct Worst {
    value: f64,
    at: String,
}

impl Worst {
    fn new() -> Self {
        Worst {
            value: 0.0,
            at: String::new(),
        }
    }

    fn see(&mut self, v: f64, at: impl FnOnce() -> String) {
        let worse = if self.value.is_nan() {
            false
        } else {
            v.is_nan() || v > self.value
        };
        if worse {
            self.value = v;
            self.at = at();
        }
    }

    fn of(values: impl IntoIterator<Item = f64>, at: impl Fn(usize) -> String) -> Self {
        let mut w = Worst::new();
        for (i, v) in values.into_iter().enumerate() {
            w.see(v, || at(i));
        }
        w
    }

    /// `note` followed by where the worst value was, when it is not finite or `always`.
    fn detail(&self, note: &str, always: bool) -> String {
        let at = if self.at.is_empty() || (self.value.is_finite() && !always) {
            String::new()
        } else if self.value.is_finite() {
            format!("worst at {}", self.at)
        } else {
            format!("{} at {}", self.value, self.at)
        };
        match (note.is_empty(), at.is_empty()) {
            (true, _) => at,
            (false, true) => note.to_string(),
            (false, false) => format!("{note}; {at}"),
        }
    }
}

/// Counts the NaN and infinite entries of `values` and names the first, e.g.
/// `"3 non-finite in z, first NaN at [0, 17]"`; `None` when all are finite.
fn non_finite(name: &str, values: &[f64], shape: &[usize]) -> Option<String> {
    let bad: Vec<usize> = (0..values.len())
        .filter(|&i| !values[i].is_finite())
        .collect();
    let first = *bad.first()?;
    let mut idx = vec![0; shape.len()];
    let mut rest = first;
    for (k, &d) in shape.iter().enumerate().rev() {
        idx[k] = rest % d.max(1);
        rest /= d.max(1);
    }
    let idx: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
    Some(format!(
        "{} non-finite in {name}, first {} at [{}]",
        bad.len(),
        values[first],
        idx.join(", ")
    ))
}

/// Name of the whole-model Jacobian check, in the table or among the skipped.
const FULL_JACOBIAN: &str = "model log-det vs log|det J| (full Jacobian)";

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1.0)
}

/// Runs every check on `opts.samples` random inputs.
///
/// ```
/// use tarflow::audit::{audit, AuditOptions};
/// use tarflow::model::{TarFlow, TarFlowConfig};
/// let mut cfg = TarFlowConfig::preset("tiny")?;
/// cfg.image_size = 8;
/// cfg.patch_size = 2;
/// let model = TarFlow::<f64>::new(cfg, 0)?;
/// model.randomize_output_projections(0.05, 1)?;
/// let report = audit(&model, &AuditOptions { samples: 1, ..Default::default() })?;
/// assert!(report.passed(), "{}", report.table());
/// # Ok::<(), tarflow::Error>(())
/// ```
pub fn audit<E: Element>(model: &TarFlow<E>, opts: &AuditOptions) -> Result<AuditReport> {
    model.check_structure("audit")?;
    let cfg = &model.config;
    if opts.samples == 0 {
        return Err(Error::arg("audit", "at least one sample is needed"));
    }
    // The audit inverts every input with the KV-cached sampler; a count past memory would
    // abort in the first allocation (`tarflow audit --samples 1e11`).
    let bytes = cfg.sampling_bytes(opts.samples, 1, std::mem::size_of::<E>());
    check_fits(bytes, || {
        format!(
            "auditing {} random inputs of {} values",
            opts.samples,
            cfg.image_dim()
        )
    })?;
    let mut rng = Rng::new(opts.seed);
    let (c, s) = (cfg.channels, cfg.image_size);
    let (n, d) = (cfg.seq_len(), cfg.token_dim());
    let labels: Vec<Option<usize>> = (0..opts.samples)
        .map(|_| (cfg.num_classes > 0).then(|| rng.below(cfg.num_classes as u64) as usize))
        .collect();
    let lab = (cfg.num_classes > 0).then_some(labels.as_slice());
    let x = Tensor::<E>::rand(&[opts.samples, c, s, s], -1.0, 1.0, &mut rng);
    let mut checks = Vec::new();
    let mut skipped = Vec::new();
    let mut skip = |name: &str, reason: String| {
        skipped.push(SkippedCheck {
            name: name.into(),
            reason,
        })
    };

    // 1. Forward then cached inverse, and cached vs uncached inverse.
    let out = {
        let _g = autograd::no_grad();
        model.forward(&x, lab)?
    };
    let mut bad = Vec::new();
    for (name, t) in [
        ("z", &out.z),
        ("logdet", &out.logdet),
        ("logdet_blocks", &out.logdet_blocks),
    ] {
        bad.extend(non_finite(name, &t.to_f64_vec(), t.shape()));
    }
    let sampler = Sampler::new(model)?;
    let x_cached = sampler.reverse_tokens(&out.z, &labels, Guidance::None)?;
    let x_tokens = model.to_tokens(&x)?;
    let x_ref = model.to_tokens(&model.reverse_reference(&out.z, lab)?)?;
    bad.extend(non_finite(
        "the inverse (KV cache)",
        &x_cached.to_f64_vec(),
        x_cached.shape(),
    ));
    bad.extend(non_finite(
        "the uncached inverse",
        &x_ref.to_f64_vec(),
        x_ref.shape(),
    ));
    checks.push(check(
        "outputs finite (z, log-dets, inverses)",
        if bad.is_empty() { 0.0 } else { f64::NAN },
        0.0,
        bad.join("; "),
    ));
    // Token shape [B, N, D]: where an error is, in sample and token terms.
    let (bn, bd) = (x_tokens.shape()[1], x_tokens.shape()[2]);
    let token_at = move |i: usize| format!("sample {}, token {}", i / (bn * bd), (i / bd) % bn);
    let diff = |a: &Tensor<E>, b: &Tensor<E>| {
        Worst::of(
            a.to_f64_vec()
                .iter()
                .zip(b.to_f64_vec())
                .map(|(p, q)| (p - q).abs()),
            token_at,
        )
    };
    let w = diff(&x_tokens, &x_cached);
    checks.push(check(
        "roundtrip |x - f^-1(f(x))| (KV cache)",
        w.value,
        opts.roundtrip_atol,
        w.detail("", false),
    ));
    let w = diff(&x_ref, &x_cached);
    checks.push(check(
        "cached vs uncached inverse",
        w.value,
        opts.roundtrip_atol,
        w.detail("", false),
    ));

    let logdet = out.logdet.to_f64_vec();
    let blocks = out.logdet_blocks.to_f64_vec();
    let t = cfg.blocks;
    let logdet_blocks: Vec<Vec<f64>> = (0..opts.samples)
        .map(|i| blocks[i * t..(i + 1) * t].to_vec())
        .collect();
    let sum_err = Worst::of(
        (0..opts.samples).map(|i| rel_err(logdet_blocks[i].iter().sum::<f64>(), logdet[i])),
        |i| format!("sample {i}"),
    );
    checks.push(check(
        "sum of block log-dets = model log-det",
        sum_err.value,
        opts.logdet_rtol,
        sum_err.detail("", false),
    ));

    // 2. Log-determinant against the Jacobian.
    let dim = cfg.image_dim();
    if dim <= opts.full_jacobian_max_dim {
        let mut worst = Worst::new();
        for i in 0..opts.samples {
            let xi = x.narrow(0, i, 1)?.contiguous();
            let li = labels[i..i + 1].to_vec();
            let li_ref = (cfg.num_classes > 0).then_some(li.as_slice());
            let jac = jacobian(|v| model.forward(v, li_ref).map(|o| o.z), &xi?)?;
            worst.see(rel_err(log_abs_det(&jac, dim), logdet[i]), || {
                format!("sample {i}")
            });
        }
        checks.push(check(
            FULL_JACOBIAN,
            worst.value,
            opts.logdet_rtol,
            worst.detail(&format!("{dim}x{dim} per sample"), false),
        ));
    } else {
        skip(
            FULL_JACOBIAN,
            format!(
                "the image has {dim} dimensions, above --full-jacobian-max-dim {} (a \
                 {dim}x{dim} Jacobian per sample); the windowed block checks stand in \
                 for it",
                opts.full_jacobian_max_dim
            ),
        );
    }

    // 3. Each block: triangular in its token order, and its log-det equals log|det| of the
    //    Jacobian restricted to a window of tokens (a principal block of a block-triangular
    //    matrix has the product of its diagonal blocks as determinant).
    let w = opts.window.clamp(1, n);
    if opts.samples > 1 {
        skip(
            "block checks on samples 1..",
            format!(
                "the triangularity and windowed log-det checks build one {0}x{0} Jacobian per \
                 block and run on sample 0 only",
                n * d
            ),
        );
    }
    if w < n {
        skip(
            "block log-det on the other tokens",
            format!(
                "the windowed check covers the first {w} of {n} tokens of each block \
                 (--window {n} covers them all)"
            ),
        );
    }
    let mut worst_upper = Worst::new();
    let mut worst_window = Worst::new();
    let mut h = x_tokens.narrow(0, 0, 1)?.contiguous()?;
    let l0 = labels[..1].to_vec();
    let l0_ref = (cfg.num_classes > 0).then_some(l0.as_slice());
    for (bi, blk) in model.blocks.iter().enumerate() {
        let jac = jacobian(|v| blk.forward(v, l0_ref, 1.0).map(|o| o.0), &h)?;
        let nd = n * d;
        // Block order position of canonical token i.
        let pos = |i: usize| if blk.flip { n - 1 - i } else { i };
        for r in 0..nd {
            for col in 0..nd {
                let (pc, pr) = (pos(col / d), pos(r / d));
                // Above the diagonal, and off the diagonal inside a token's own block
                // (alpha_i and mu_i do not depend on x_i, so that block is diag(exp(-alpha_i))).
                if pc > pr || (pc == pr && col != r) {
                    worst_upper.see(jac[r * nd + col].abs(), || {
                        format!("block {bi}, row {r}, column {col}")
                    });
                }
            }
        }
        // Window: the first w tokens in block order.
        let toks: Vec<usize> = (0..w)
            .map(|p| if blk.flip { n - 1 - p } else { p })
            .collect();
        let idx: Vec<usize> = toks
            .iter()
            .flat_map(|&tk| (0..d).map(move |j| tk * d + j))
            .collect();
        let m = idx.len();
        let sub: Vec<f64> = idx
            .iter()
            .flat_map(|&r| idx.iter().map(move |&cc| (r, cc)))
            .map(|(r, cc)| jac[r * nd + cc])
            .collect();
        let (z, _) = {
            let _g = autograd::no_grad();
            blk.forward(&h, l0_ref, 1.0)?
        };
        // -sum of alpha over the window tokens, from the block's own parameters.
        let p = {
            let _g = autograd::no_grad();
            blk.params(&blk.permute_seq(&h)?, l0_ref, 1.0)?
        };
        let alpha = crate::model::FlowBlock::shift(&p.alpha)?.to_f64_vec();
        let expect: f64 = (0..w)
            .flat_map(|q| (0..d).map(move |j| (q, j)))
            .map(|(q, j)| -alpha[q * d + j])
            .sum();
        worst_window.see(rel_err(log_abs_det(&sub, m), expect), || {
            format!("block {bi}")
        });
        h = z.contiguous()?;
    }
    checks.push(check(
        "block Jacobians off the triangle (max |J|)",
        worst_upper.value,
        0.0,
        worst_upper.detail("must be exactly zero; sample 0", true),
    ));
    checks.push(check(
        &format!("block log-det vs log|det J| ({w}-token window)"),
        worst_window.value,
        opts.logdet_rtol,
        worst_window.detail("sample 0", true),
    ));
    Ok(AuditReport {
        dtype: E::DTYPE.name().into(),
        checks,
        skipped,
        logdet_blocks,
    })
}
