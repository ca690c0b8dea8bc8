//! Incremental decoding: the key/value cache and single-step attention over it (online
//! softmax, nothing recorded).

use super::*;

/// Keys and values of past positions for incremental (autoregressive) decoding.
///
/// Both buffers are allocated once, `[batch, heads, max_len, head_dim]`, so that each
/// (batch, head) pair's positions are contiguous for the decode loop. The cache holds plain
/// values: appending detaches from any graph.
pub struct KvCache<E: Element> {
    pub(super) batch: usize,
    pub(super) heads: usize,
    pub(super) max_len: usize,
    pub(super) head_dim: usize,
    pub(super) len: usize,
    pub(super) k: Vec<E>,
    pub(super) v: Vec<E>,
}

impl<E: Element> KvCache<E> {
    /// An empty cache with room for `max_len` positions. Fails when
    /// `batch * heads * max_len * head_dim` elements do not fit in memory (a size product
    /// past `usize`, or an allocation the system refuses), instead of aborting.
    pub fn new(batch: usize, heads: usize, max_len: usize, head_dim: usize) -> Result<Self> {
        let op = "KvCache::new";
        let size = [batch, heads, max_len, head_dim];
        let too_big = || {
            Error::arg(
                op,
                format!("a cache of {size:?} (batch, heads, positions, head_dim) is too large"),
            )
        };
        let n = checked_product(size).ok_or_else(too_big)?;
        let zeros = || -> Result<Vec<E>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| too_big())?;
            v.resize(n, E::ZERO);
            Ok(v)
        };
        Ok(KvCache {
            batch,
            heads,
            max_len,
            head_dim,
            len: 0,
            k: zeros()?,
            v: zeros()?,
        })
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.max_len
    }

    /// Batch size the cache was made for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of heads the cache was made for.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Width of each cached key and value vector.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Forgets every stored position (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Appends `T >= 1` positions: `k` and `v` are `[batch, heads, T, head_dim]`, any strides.
    /// Fails, leaving the cache unchanged, when a shape differs or the cache would overflow.
    pub fn append(&mut self, k: &Tensor<E>, v: &Tensor<E>) -> Result<()> {
        crate::backend::cpu_only("kv_cache_append", &[k, v])?;
        let want = [self.batch, self.heads, 0, self.head_dim];
        let ok = |t: &Tensor<E>| {
            t.rank() == 4
                && t.shape()[0] == want[0]
                && t.shape()[1] == want[1]
                && t.shape()[3] == want[3]
        };
        if !ok(k) || !ok(v) || k.shape() != v.shape() {
            return Err(Error::shape(
                "KvCache::append",
                &[k.shape(), v.shape()],
                E::DTYPE.name(),
                format!(
                    "k and v must both be [{}, {}, T, {}]",
                    want[0], want[1], want[3]
                ),
            ));
        }
        let t = k.shape()[2];
        if self.len.checked_add(t).is_none_or(|n| n > self.max_len) {
            return Err(Error::arg(
                "KvCache::append",
                format!(
                    "{t} new positions do not fit: {} of {} already used",
                    self.len, self.max_len
                ),
            ));
        }
        let (lk, lv) = (Strided4::of(k.layout()), Strided4::of(v.layout()));
        let (dh, len, max_len) = (self.head_dim, self.len, self.max_len);
        let (kbuf, vbuf) = (&mut self.k, &mut self.v);
        read_storages(&[k, v], |s| {
            for (src, l, dst) in [(s[0], lk, &mut *kbuf), (s[1], lv, &mut *vbuf)] {
                for i in 0..want[0] * want[1] {
                    let (b, h) = (i / want[1], i % want[1]);
                    for p in 0..t {
                        let o = (i * max_len + len + p) * dh;
                        let row = &mut dst[o..o + dh];
                        let base = l.head(b, h) + p as isize * l.st[2];
                        if l.st[3] == 1 {
                            row.copy_from_slice(&src[base as usize..base as usize + dh]);
                        } else {
                            for (c, x) in row.iter_mut().enumerate() {
                                *x = src[(base + c as isize * l.st[3]) as usize];
                            }
                        }
                    }
                }
            }
        });
        self.len += t;
        Ok(())
    }

    /// The stored keys, `[batch, heads, len, head_dim]` (a copy).
    pub fn keys(&self) -> Tensor<E> {
        self.gather(&self.k)
    }

    /// The stored values, `[batch, heads, len, head_dim]` (a copy).
    pub fn values(&self) -> Tensor<E> {
        self.gather(&self.v)
    }

    pub(super) fn gather(&self, buf: &[E]) -> Tensor<E> {
        let row = self.len * self.head_dim;
        if row == 0 {
            return Tensor::from_raw(
                Vec::new(),
                &[self.batch, self.heads, self.len, self.head_dim],
            );
        }
        let mut out = Vec::with_capacity(self.batch * self.heads * row);
        for i in 0..self.batch * self.heads {
            let o = i * self.max_len * self.head_dim;
            out.extend_from_slice(&buf[o..o + row]);
        }
        Tensor::from_raw(out, &[self.batch, self.heads, self.len, self.head_dim])
    }
}

/// Attention of new queries over a [`KvCache`]: `q` is `[B, H, T, Dh]` (usually `T == 1`, one
/// decode step; any strides), and its queries are the last `T` of the cached positions, so
/// with `opts.causal` query `t` sees cached positions `0..=len - T + t` (for `T == 1`, all
/// of them). `opts.causal == false` lets every query see every cached position.
///
/// One pass per query over blocks of keys with a running maximum and sum (online softmax)
/// accumulating straight into the output row: nothing is allocated beyond the output (the
/// scores of a block sit on the stack), and nothing is recorded.
pub fn attention_decode<E: Element>(
    q: &Tensor<E>,
    cache: &KvCache<E>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let op = "attention_decode";
    crate::backend::cpu_only(op, &[q])?;
    let qs = q.shape();
    if q.rank() != 4 || qs[0] != cache.batch || qs[1] != cache.heads || qs[3] != cache.head_dim {
        return Err(Error::shape(
            op,
            &[qs],
            E::DTYPE.name(),
            format!(
                "q must be [{}, {}, T, {}] to match the cache",
                cache.batch, cache.heads, cache.head_dim
            ),
        ));
    }
    let t = qs[2];
    if t > cache.len {
        return Err(Error::arg(
            op,
            format!(
                "{t} queries but only {} cached positions (append the new keys and values first)",
                cache.len
            ),
        ));
    }
    let alpha = E::from_f64(opts.alpha(op)?);
    checked_numel(op, qs, &[qs], E::DTYPE.name())?;
    let (bh, dh, len) = (cache.batch * cache.heads, cache.head_dim, cache.len);
    let d = Dims {
        b: cache.batch,
        h: cache.heads,
        nq: t,
        nk: len,
        dh,
        dv: dh,
    };
    let mut out = vec![E::ZERO; bh * t * dh];
    if out.is_empty() {
        return Ok(Tensor::from_raw(out, &[d.b, d.h, t, dh]));
    }
    q.with_data(|qv, _| {
        decode_heads(
            &mut out,
            qv,
            Strided4::of(q.layout()),
            (&cache.k, &cache.v, cache.max_len),
            &d,
            opts.causal,
            alpha,
        )
    });
    Ok(Tensor::from_raw(out, &[d.b, d.h, t, dh]))
}
