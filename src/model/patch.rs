//! Images <-> token sequences.
//!
//! An image `[C, H, W]` is cut into non-overlapping `p x p` patches taken in row-major order;
//! each token holds its patch channel-major (`c*p*p + row*p + col`). Both directions are views
//! plus one copy, and both are differentiable.

use crate::error::{Error, Result};
use crate::tensor::layout::checked_product;
use crate::tensor::{Element, Tensor};

/// `[B, C, H, W]` -> `[B, N, C p^2]`.
pub fn patchify<E: Element>(x: &Tensor<E>, p: usize) -> Result<Tensor<E>> {
    let s = x.shape();
    if s.len() != 4 || p == 0 || !s[2].is_multiple_of(p) || !s[3].is_multiple_of(p) {
        return Err(Error::shape(
            "patchify",
            &[s],
            E::DTYPE.name(),
            format!("expected [B, C, H, W] with H and W divisible by the patch size {p}"),
        ));
    }
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    let (gh, gw) = (h / p, w / p);
    x.reshape(&[b, c, gh, p, gw, p])?
        .permute(&[0, 2, 4, 1, 3, 5])?
        .reshape(&[b, gh * gw, c * p * p])
}

/// `[B, N, C p^2]` -> `[B, C, H, W]` (inverse of [`patchify`]).
pub fn unpatchify<E: Element>(
    t: &Tensor<E>,
    channels: usize,
    size: usize,
    p: usize,
) -> Result<Tensor<E>> {
    let s = t.shape();
    let g = size.checked_div(p).unwrap_or(0);
    let tokens = g.checked_mul(g);
    let token_dim = checked_product([channels, p, p]);
    if s.len() != 3
        || p == 0
        || !size.is_multiple_of(p)
        || Some(s[1]) != tokens
        || Some(s[2]) != token_dim
    {
        let show = |v: Option<usize>| v.map_or_else(|| "(overflow)".to_string(), |v| v.to_string());
        return Err(Error::shape(
            "unpatchify",
            &[s],
            E::DTYPE.name(),
            format!(
                "expected [B, {}, {}] for {channels}x{size}x{size} images with patch {p}",
                show(tokens),
                show(token_dim)
            ),
        ));
    }
    let b = s[0];
    t.reshape(&[b, g, g, channels, p, p])?
        .permute(&[0, 3, 1, 4, 2, 5])?
        .reshape(&[b, channels, size, size])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_layout_and_roundtrip() {
        // 1 image, 2 channels, 4x4, patch 2.
        let x = Tensor::<f64>::arange(0.0, 32.0, 1.0)
            .unwrap()
            .reshape(&[1, 2, 4, 4])
            .unwrap();
        let t = patchify(&x, 2).unwrap();
        assert_eq!(t.shape(), &[1, 4, 8]);
        // Token 1 is the top-right patch: channel 0 rows 0-1, cols 2-3, then channel 1.
        let tok1: Vec<f64> = t.narrow(1, 1, 1).unwrap().to_vec();
        assert_eq!(tok1, vec![2.0, 3.0, 6.0, 7.0, 18.0, 19.0, 22.0, 23.0]);
        let back = unpatchify(&t, 2, 4, 2).unwrap();
        assert_eq!(back.to_vec(), x.to_vec());
        assert!(patchify(&x, 3).is_err());
        assert!(unpatchify(&t, 1, 4, 2).is_err());
    }
}
