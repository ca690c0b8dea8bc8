// The affine coupling of a TarFlow block: forward (z and the per-image log-determinant in one
// kernel), backward, and the inverse fused with the guidance combination for sampling.
//
// Gradient-write convention: every output is written (`=`), contiguous: z and logdet into one
// packed buffer (z row-major [B, L, D], then the B log-determinants), dx / dalpha / dmu into
// fresh [B, L, D] buffers. The autograd engine sums them into whatever else reaches the
// inputs; nothing here accumulates.
//
// Semantics (src/ops/coupling.rs): the parameters are unshifted, row i holding those of token
// i + 1; the shift is done by indexing, token 0 getting alpha = mu = 0. With has_clip the
// log-scales are soft-clipped, a_s = tanh(alpha * inv_c) * c (the CPU's mul_scalar(1 / c),
// tanh, mul_scalar(c)). z = (x - mu_s) * exp(-a_s), logdet = -sum a_s over tokens and values.
//
// Launch configuration:
// - coupling_fwd_f32: one CTA of 256 threads per image, grid (B, 1, 1). Thread t handles the
//   elements t, t + 256, ... of its image in order, summing its a_s as it goes.
// - coupling_bwd_f32, coupling_inverse_f32: grid-stride loops over the B * L * D elements,
//   blocks of 256, min(ceil(n / 256), 65535) CTAs.
//
// Operands x, alpha, mu of the forward and backward and every operand of the inverse are
// strided [B, L, D] views (strides in elements, any sign: a flipped token order is read in
// place), pointers at element (0, 0, 0). g of the backward is contiguous. Sizes < 2^31.
//
// Reduction order of the log-det (fixed, no atomics): per thread in element order, then a
// butterfly within each warp (xor 16, 8, 4, 2, 1, lower lane first), then warp 0 combines the
// 8 warp sums the same way. The CPU sums with 8 strided accumulators instead, so the log-det
// agrees to rounding, not bit for bit; expf / tanhf are CUDA's accurate versions (a few ulp).

#define FULL_MASK 0xffffffffu
#define CTA 256

__device__ __forceinline__ float warp_sum(float v) {
  unsigned lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float other = __shfl_xor_sync(FULL_MASK, v, o);
    v = (lane & o) ? __fadd_rn(other, v) : __fadd_rn(v, other);
  }
  return v;
}

// Element (b, i, j) of a strided [B, L, D] view.
__device__ __forceinline__ long long at(unsigned b, unsigned i, unsigned j, int s0, int s1,
                                        int s2) {
  return (long long)b * s0 + (long long)i * s1 + (long long)j * s2;
}

__device__ __forceinline__ float soft_clip(float v, float c, float inv_c) {
  return __fmul_rn(tanhf(__fmul_rn(v, inv_c)), c);
}

// g * d soft_clip / dv in the CPU's order: ((g * c) * (1 - y * y)) * inv_c, y = tanh(v / c).
__device__ __forceinline__ float soft_clip_grad(float g, float v, float c, float inv_c) {
  float y = tanhf(__fmul_rn(v, inv_c));
  return __fmul_rn(__fmul_rn(__fmul_rn(g, c), __fsub_rn(1.0f, __fmul_rn(y, y))), inv_c);
}

// out = [z (B * L * D), logdet (B)].
extern "C" __global__ void coupling_fwd_f32(float* __restrict__ out, const float* __restrict__ x,
                                            const float* __restrict__ alpha,
                                            const float* __restrict__ mu, unsigned images,
                                            unsigned l, unsigned d, int xs0, int xs1, int xs2,
                                            int as0, int as1, int as2, int ms0, int ms1, int ms2,
                                            unsigned has_clip, float c, float inv_c) {
  __shared__ float partial[CTA / 32];
  unsigned b = blockIdx.x;
  unsigned per = l * d;
  float* z = out + (size_t)b * per;
  float s = 0.0f;
  for (unsigned k = threadIdx.x; k < per; k += CTA) {
    unsigned i = k / d, j = k - i * d;
    float a = 0.0f, m = 0.0f;
    if (i > 0) {
      a = alpha[at(b, i - 1, j, as0, as1, as2)];
      if (has_clip) a = soft_clip(a, c, inv_c);
      m = mu[at(b, i - 1, j, ms0, ms1, ms2)];
    }
    z[k] = __fmul_rn(__fsub_rn(x[at(b, i, j, xs0, xs1, xs2)], m), expf(-a));
    s = __fadd_rn(s, a);
  }
  s = warp_sum(s);
  unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    float v = lane < CTA / 32 ? partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) out[(size_t)images * per + b] = -v;
  }
}

// Bits of the backward's `flags`: which gradients to write (the others' pointers are unread).
enum CouplingGrads {
  COUPLING_DX = 1,
  COUPLING_DALPHA = 2,
  COUPLING_DMU = 4,
};

// g = [gz (B * L * D), glogdet (B)], contiguous. Thread k writes element k of each gradient:
// dx at token i from the shifted parameters of token i; dalpha, dmu at raw row i from token
// i + 1 (none past the last token, where dalpha is the clip's derivative times 0).
extern "C" __global__ void coupling_bwd_f32(float* __restrict__ dx, float* __restrict__ dalpha,
                                            float* __restrict__ dmu, const float* __restrict__ g,
                                            const float* __restrict__ x,
                                            const float* __restrict__ alpha,
                                            const float* __restrict__ mu, unsigned images,
                                            unsigned l, unsigned d, int xs0, int xs1, int xs2,
                                            int as0, int as1, int as2, int ms0, int ms1, int ms2,
                                            unsigned has_clip, float c, float inv_c,
                                            unsigned flags) {
  unsigned per = l * d, n = images * per;
  for (unsigned k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += gridDim.x * blockDim.x) {
    unsigned b = k / per, r = k - b * per;
    unsigned i = r / d, j = r - i * d;
    float v = alpha[at(b, i, j, as0, as1, as2)];
    float a_next = has_clip ? soft_clip(v, c, inv_c) : v;
    float e_next = expf(-a_next);
    if (flags & COUPLING_DX) {
      float a = 0.0f;
      if (i > 0) {
        a = alpha[at(b, i - 1, j, as0, as1, as2)];
        if (has_clip) a = soft_clip(a, c, inv_c);
      }
      dx[k] = __fmul_rn(g[k], expf(-a));
    }
    bool last = i + 1 == l;
    if (flags & COUPLING_DMU) {
      dmu[k] = last ? 0.0f : -__fmul_rn(g[k + d], e_next);
    }
    if (flags & COUPLING_DALPHA) {
      float ga = 0.0f;
      if (!last) {
        float xm = __fsub_rn(x[at(b, i + 1, j, xs0, xs1, xs2)], mu[at(b, i, j, ms0, ms1, ms2)]);
        ga = __fadd_rn(-__fmul_rn(__fmul_rn(g[k + d], xm), e_next), -g[n + b]);
      }
      dalpha[k] = has_clip ? soft_clip_grad(ga, v, c, inv_c) : ga;
    }
  }
}

// x = z * exp(a) + m with, when has_guide, a = a_c + w * (a_c - a_u) and likewise m (the
// sampler's order). Every operand, the output included, is a strided [B, L, D] view, so the
// sampler reads the parameters from the projection and writes the recovered token into its
// slot in place; thread k computes element k in row-major order.
extern "C" __global__ void coupling_inverse_f32(
    float* __restrict__ out, const float* __restrict__ z, const float* __restrict__ alpha,
    const float* __restrict__ mu, const float* __restrict__ alpha_u,
    const float* __restrict__ mu_u, unsigned images, unsigned l, unsigned d, int os0, int os1,
    int os2, int zs0, int zs1, int zs2, int as0, int as1, int as2, int ms0, int ms1, int ms2,
    int us0, int us1, int us2, int vs0, int vs1, int vs2, unsigned has_guide, float w) {
  unsigned per = l * d, n = images * per;
  for (unsigned k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += gridDim.x * blockDim.x) {
    unsigned b = k / per, r = k - b * per;
    unsigned i = r / d, j = r - i * d;
    float a = alpha[at(b, i, j, as0, as1, as2)], m = mu[at(b, i, j, ms0, ms1, ms2)];
    if (has_guide) {
      a = __fadd_rn(a, __fmul_rn(w, __fsub_rn(a, alpha_u[at(b, i, j, us0, us1, us2)])));
      m = __fadd_rn(m, __fmul_rn(w, __fsub_rn(m, mu_u[at(b, i, j, vs0, vs1, vs2)])));
    }
    float zv = z[at(b, i, j, zs0, zs1, zs2)];
    out[at(b, i, j, os0, os1, os2)] = __fadd_rn(__fmul_rn(zv, expf(a)), m);
  }
}
