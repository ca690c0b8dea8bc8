// Optimiser updates: AdamW, the EMA of the parameters, and the gradient sum of squares.
//
// Gradient-write convention: no gradients are written here. adamw_f32 updates the parameter
// and its moments in place; ema_f32 updates the shadow in place; the sum-of-squares kernels
// write (`=`) their partials and total.
//
// adamw_f32 and ema_f32 compute, in f32, exactly the CPU's expressions (src/optim/adamw.rs
// `update_chunk`, src/optim/ema.rs `ema_chunk`) from the same f32 coefficients, which the
// host derives from the f64 hyper-parameters as the CPU does. Every product and sum is
// written with __fmul_rn / __fadd_rn (nvcc would otherwise contract them into fma, which
// rounds once where the CPU rounds twice), sqrt is sqrt.rn and division div.rn, so the
// results are bit-identical to the CPU's.
//
// Sum of squares (src/nn/params.rs `sum_squares`): squares and sums in f64, as on the CPU.
// sum_squares_partial_f32 gives one f64 partial per CTA chunk of `chunk_len` elements
// (threads stride over the chunk in order, then a shared-memory tree with a fixed shape);
// sum_f64 adds `n` partials in one CTA the same way. No atomics: the order is fixed by n,
// chunk_len and the block size (256), so a run is reproducible. The CPU adds in a different
// order (sequential chunks of 32768): the two agree to f64 rounding, not bit for bit.
//
// Launch configuration: adamw_f32, ema_f32: 1-d blocks of 256, grid-stride, min(ceil(n /
// 256), 65535) CTAs. sum_squares_partial_f32: blocks of 256, grid ceil(n / chunk_len) (one
// CTA per chunk). sum_f64: one CTA of 256 threads.

#define MUL(a, b) __fmul_rn((a), (b))
#define ADD(a, b) __fadd_rn((a), (b))
#define SUB(a, b) __fsub_rn((a), (b))

// p <- p * decay; m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
// p <- p - step_size * m / (sqrt(v) * inv_bc2_sqrt + eps).
extern "C" __global__ void adamw_f32(float* __restrict__ p, float* __restrict__ m,
                                     float* __restrict__ v, const float* __restrict__ g,
                                     unsigned n, float decay, float b1, float one_minus_b1,
                                     float b2, float one_minus_b2, float inv_bc2_sqrt, float eps,
                                     float step_size) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float gi = g[i];
    float pi = MUL(p[i], decay);
    float mi = ADD(MUL(b1, m[i]), MUL(one_minus_b1, gi));
    float vi = ADD(MUL(b2, v[i]), MUL(MUL(one_minus_b2, gi), gi));
    float denom = ADD(MUL(__fsqrt_rn(vi), inv_bc2_sqrt), eps);
    pi = SUB(pi, __fdiv_rn(MUL(step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
  }
}

// s <- decay * s + keep * p, keep = 1 - decay (rounded from f64 by the host).
extern "C" __global__ void ema_f32(float* __restrict__ s, const float* __restrict__ p, unsigned n,
                                   float decay, float keep) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    s[i] = ADD(MUL(decay, s[i]), MUL(keep, p[i]));
  }
}

#define SS_THREADS 256

// Sums buf[0..256) into buf[0] by a fixed tree (halving strides); every thread takes part.
__device__ __forceinline__ double block_tree_sum(double* buf) {
#pragma unroll
  for (int s = SS_THREADS / 2; s > 0; s >>= 1) {
    __syncthreads();
    if ((int)threadIdx.x < s) buf[threadIdx.x] = __dadd_rn(buf[threadIdx.x], buf[threadIdx.x + s]);
  }
  __syncthreads();
  return buf[0];
}

// partial[blockIdx.x] = sum of x[i]^2 (in f64) over the CTA's chunk.
extern "C" __global__ void __launch_bounds__(SS_THREADS)
    sum_squares_partial_f32(double* __restrict__ partial, const float* __restrict__ x,
                            unsigned n, unsigned chunk_len) {
  __shared__ double buf[SS_THREADS];
  size_t lo = (size_t)blockIdx.x * chunk_len;
  size_t hi = lo + chunk_len < n ? lo + chunk_len : n;
  double acc = 0.0;
  for (size_t i = lo + threadIdx.x; i < hi; i += SS_THREADS) {
    double v = (double)x[i];
    acc = __dadd_rn(acc, __dmul_rn(v, v));
  }
  buf[threadIdx.x] = acc;
  double total = block_tree_sum(buf);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// out[0] = sum of partial[0..n), in f64.
extern "C" __global__ void __launch_bounds__(SS_THREADS)
    sum_f64(double* __restrict__ out, const double* __restrict__ partial, unsigned n) {
  __shared__ double buf[SS_THREADS];
  double acc = 0.0;
  for (unsigned i = threadIdx.x; i < n; i += SS_THREADS) acc = __dadd_rn(acc, partial[i]);
  buf[threadIdx.x] = acc;
  double total = block_tree_sum(buf);
  if (threadIdx.x == 0) out[0] = total;
}
