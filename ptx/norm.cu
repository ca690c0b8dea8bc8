// Softmax / log-softmax over the last axis (forward and backward) and layer normalisation
// over the last axis (forward saving mean and rstd; backward for dx and, in a fixed-order
// two-pass reduction, dweight and dbias). Inputs are contiguous rows of length `d`.
//
// Gradient-write convention: activations and dx are written (`=`). The parameter-gradient
// partials of layer_norm_bwd_params_f32 are written (`=`) per chunk; the host sums them
// over chunks with reduce.cu's reduce_chunks_f32 with accumulate = 1, which adds (`+=`) into
// the parameters' gradient buffers.
//
// Launch configuration:
// - softmax_rows_f32, softmax_bwd_rows_f32, layer_norm_fwd_f32, layer_norm_bwd_dx_f32: one
//   warp per row, blocks of 256 threads (8 rows per CTA), grid ceil(rows / 8).
// - layer_norm_bwd_params_f32: one thread per (chunk, column), blocks of 256, grid
//   (ceil(d / 256), ceil(rows / chunk_len)).
//
// Reduction order (fixed, no atomics): within a row, lane l accumulates columns l, l + 32,
// ... in order, then a butterfly (xor 16, 8, 4, 2, 1) combines the lanes, lower lane first,
// so every lane holds the same bits. Parameter gradients: each chunk of `chunk_len` rows is
// summed in row order, then the chunks in chunk order.
//
// Formulas follow src/ops/softmax.rs and src/ops/layer_norm.rs; the sums run in a different
// order than the CPU's (8 accumulators), so results agree to rounding, not bit for bit.
// Degenerate softmax rows follow the CPU: a row with no finite maximum (all -inf) becomes 0
// (softmax) or stays -inf (log-softmax); with a NaN in it, it becomes NaN.

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
  unsigned lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float other = __shfl_xor_sync(FULL_MASK, v, o);
    v = (lane & o) ? __fadd_rn(other, v) : __fadd_rn(v, other);
  }
  return v;
}

// Largest element ignoring NaN (the CPU's `max_of`): -inf when nothing is larger.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float other = __shfl_xor_sync(FULL_MASK, v, o);
    v = other > v ? other : v;
  }
  return v;
}

__device__ __forceinline__ bool warp_any(bool p) { return __any_sync(FULL_MASK, p); }

// y = softmax(x) (log_softmax when `log` is 1) over rows of length d.
extern "C" __global__ void softmax_rows_f32(float* __restrict__ y, const float* __restrict__ x,
                                            unsigned rows, unsigned d, unsigned log) {
  unsigned lane = threadIdx.x & 31;
  unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* xr = x + (size_t)row * d;
  float* yr = y + (size_t)row * d;
  float m = __int_as_float(0xff800000);
  bool nan = false;
  for (unsigned j = lane; j < d; j += 32) {
    float v = xr[j];
    m = v > m ? v : m;
    nan |= isnan(v);
  }
  m = warp_max(m);
  if (m == __int_as_float(0xff800000)) {
    float fill = warp_any(nan) ? __int_as_float(0x7fffffff)
                               : (log ? __int_as_float(0xff800000) : 0.0f);
    for (unsigned j = lane; j < d; j += 32) yr[j] = fill;
    return;
  }
  float s = 0.0f;
  for (unsigned j = lane; j < d; j += 32) {
    s = __fadd_rn(s, expf(__fsub_rn(xr[j], m)));
  }
  s = warp_sum(s);
  if (log) {
    float ls = logf(s);
    for (unsigned j = lane; j < d; j += 32) yr[j] = __fsub_rn(__fsub_rn(xr[j], m), ls);
  } else {
    float inv = __fdiv_rn(1.0f, s);
    for (unsigned j = lane; j < d; j += 32) yr[j] = __fmul_rn(expf(__fsub_rn(xr[j], m)), inv);
  }
}

// softmax:     dx = y * (g - sum_k g_k y_k)
// log_softmax: dx = g - exp(y) * sum_k g_k
extern "C" __global__ void softmax_bwd_rows_f32(float* __restrict__ dx,
                                                const float* __restrict__ y,
                                                const float* __restrict__ g, unsigned rows,
                                                unsigned d, unsigned log) {
  unsigned lane = threadIdx.x & 31;
  unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  size_t base = (size_t)row * d;
  float c = 0.0f;
  for (unsigned j = lane; j < d; j += 32) {
    c = log ? __fadd_rn(c, g[base + j]) : __fadd_rn(c, __fmul_rn(g[base + j], y[base + j]));
  }
  c = warp_sum(c);
  for (unsigned j = lane; j < d; j += 32) {
    float gj = g[base + j], yj = y[base + j];
    dx[base + j] = log ? __fsub_rn(gj, __fmul_rn(expf(yj), c)) : __fmul_rn(yj, __fsub_rn(gj, c));
  }
}

// Bits of `flags` for the layer-norm kernels.
enum LayerNormFlags {
  LN_HAS_WEIGHT = 1,  // `w` points at [d] weights (else weight 1 and `w` is not read)
  LN_HAS_BIAS = 2,    // `b` points at [d] biases (else bias 0 and `b` is not read)
  LN_SAVE_STATS = 4,  // write [mean, rstd] per row into `stats` ([rows, 2])
};

// y = (x - mean) * rstd * w + b with the biased variance; rstd = 1 / sqrt(var + eps).
extern "C" __global__ void layer_norm_fwd_f32(float* __restrict__ y, float* __restrict__ stats,
                                              const float* __restrict__ x,
                                              const float* __restrict__ w,
                                              const float* __restrict__ b, unsigned rows,
                                              unsigned d, float eps, unsigned flags) {
  unsigned lane = threadIdx.x & 31;
  unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* xr = x + (size_t)row * d;
  float* yr = y + (size_t)row * d;
  float inv_d = __fdiv_rn(1.0f, (float)d);
  float s = 0.0f;
  for (unsigned j = lane; j < d; j += 32) s = __fadd_rn(s, xr[j]);
  float mean = __fmul_rn(warp_sum(s), inv_d);
  float q = 0.0f;
  for (unsigned j = lane; j < d; j += 32) {
    float c = __fsub_rn(xr[j], mean);
    q = __fadd_rn(q, __fmul_rn(c, c));
  }
  float var = __fmul_rn(warp_sum(q), inv_d);
  float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
  if ((flags & LN_SAVE_STATS) && lane == 0) {
    stats[2 * (size_t)row] = mean;
    stats[2 * (size_t)row + 1] = rstd;
  }
  for (unsigned j = lane; j < d; j += 32) {
    float v = __fmul_rn(__fsub_rn(xr[j], mean), rstd);
    if (flags & LN_HAS_WEIGHT) v = __fmul_rn(v, w[j]);
    if (flags & LN_HAS_BIAS) v = __fadd_rn(v, b[j]);
    yr[j] = v;
  }
}

// With xhat = (x - mean) * rstd and gh = g * w:
// dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)).
extern "C" __global__ void layer_norm_bwd_dx_f32(float* __restrict__ dx,
                                                 const float* __restrict__ x,
                                                 const float* __restrict__ g,
                                                 const float* __restrict__ stats,
                                                 const float* __restrict__ w, unsigned rows,
                                                 unsigned d, unsigned flags) {
  unsigned lane = threadIdx.x & 31;
  unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  size_t base = (size_t)row * d;
  float mean = stats[2 * (size_t)row], rstd = stats[2 * (size_t)row + 1];
  float inv_d = __fdiv_rn(1.0f, (float)d);
  float s_gh = 0.0f, s_ghx = 0.0f;
  for (unsigned j = lane; j < d; j += 32) {
    float xh = __fmul_rn(__fsub_rn(x[base + j], mean), rstd);
    float gh = (flags & LN_HAS_WEIGHT) ? __fmul_rn(g[base + j], w[j]) : g[base + j];
    s_gh = __fadd_rn(s_gh, gh);
    s_ghx = __fadd_rn(s_ghx, __fmul_rn(gh, xh));
  }
  float a = __fmul_rn(warp_sum(s_gh), inv_d);
  float c = __fmul_rn(warp_sum(s_ghx), inv_d);
  for (unsigned j = lane; j < d; j += 32) {
    float xh = __fmul_rn(__fsub_rn(x[base + j], mean), rstd);
    float gh = (flags & LN_HAS_WEIGHT) ? __fmul_rn(g[base + j], w[j]) : g[base + j];
    dx[base + j] = __fmul_rn(rstd, __fsub_rn(__fsub_rn(gh, a), __fmul_rn(xh, c)));
  }
}

// Per chunk of `chunk_len` rows: dw_part[chunk, j] = sum g * xhat, db_part[chunk, j] = sum g
// (rows in increasing order). Either output may be skipped: LN_HAS_WEIGHT asks for dw,
// LN_HAS_BIAS for db.
extern "C" __global__ void layer_norm_bwd_params_f32(float* __restrict__ dw_part,
                                                     float* __restrict__ db_part,
                                                     const float* __restrict__ x,
                                                     const float* __restrict__ g,
                                                     const float* __restrict__ stats,
                                                     unsigned rows, unsigned d,
                                                     unsigned chunk_len, unsigned flags) {
  unsigned j = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned chunk = blockIdx.y;
  if (j >= d) return;
  unsigned r0 = chunk * chunk_len;
  unsigned r1 = min(rows, r0 + chunk_len);
  float sw = 0.0f, sb = 0.0f;
  for (unsigned r = r0; r < r1; ++r) {
    size_t at = (size_t)r * d + j;
    float gv = g[at];
    // (g * (x - mean)) * rstd, rounded as the CPU rounds it.
    float gx = __fmul_rn(gv, __fsub_rn(x[at], stats[2 * (size_t)r]));
    sw = __fadd_rn(sw, __fmul_rn(gx, stats[2 * (size_t)r + 1]));
    sb = __fadd_rn(sb, gv);
  }
  size_t dst = (size_t)chunk * d + j;
  if (flags & LN_HAS_WEIGHT) dw_part[dst] = sw;
  if (flags & LN_HAS_BIAS) db_part[dst] = sb;
}
