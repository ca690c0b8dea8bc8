// The crate's f32 special functions as the CPU computes them (src/tensor/element.rs), each
// rounding step spelled out so that nvcc contracts nothing: elementwise.cu's unary and
// binary ops and the GEMM epilogue stages (gemm_epilogue.cuh) use this one copy.

// e^y for y in [-87, 0] (the caller guarantees it): the CPU's `exp_neg_f32_with`.
__device__ __forceinline__ float exp_neg(float y) {
  const float ROUND = 12582912.0f;
  const float LN2_HI = 0.693115234375f;
  const float LN2_LO = 3.1946183e-5f;
  float t = __fadd_rn(__fmul_rn(y, 1.44269504088896341f), ROUND);
  float n = __fsub_rn(t, ROUND);
  float r = __fsub_rn(__fsub_rn(y, __fmul_rn(n, LN2_HI)), __fmul_rn(n, LN2_LO));
  float p = 1.3941108e-3f;
  p = fmaf(p, r, 8.375126e-3f);
  p = fmaf(p, r, 4.1666353e-2f);
  p = fmaf(p, r, 0.16666416f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  unsigned biased = __float_as_uint(t) - __float_as_uint(ROUND) + 127u;
  return __fmul_rn(p, __uint_as_float(biased << 23));
}

// The crate's f32 erf (src/tensor/element.rs, `erf_f32_with`), Horner steps fused.
__device__ __forceinline__ float erf_crate(float x) {
  float ax = fabsf(x);
  float u = __fmul_rn(x, x);
  float s = -6.0040812e-4f;
  s = fmaf(s, u, 4.9960202e-3f);
  s = fmaf(s, u, -2.6768757e-2f);
  s = fmaf(s, u, 0.11281882f);
  s = fmaf(s, u, -0.37612501f);
  s = fmaf(s, u, 1.1283792f);
  float small = __fmul_rn(x, s);
  float t = __fmul_rn(__fsub_rn(ax < 4.0f ? ax : 4.0f, 2.4609375f), 1.0f / 1.5390625f);
  float q = -2.5252094e-6f;
  q = fmaf(q, t, 5.084193e-5f);
  q = fmaf(q, t, -2.7686909e-4f);
  q = fmaf(q, t, 1.0778235e-3f);
  q = fmaf(q, t, -3.7927477e-3f);
  q = fmaf(q, t, 1.2618846e-2f);
  q = fmaf(q, t, -4.084164e-2f);
  q = fmaf(q, t, 0.13596158f);
  q = fmaf(q, t, -0.5496212f);
  q = fmaf(q, t, -1.5429524f);
  q = __fsub_rn(q, fminf(u, 16.0f));
  float large = copysignf(__fsub_rn(1.0f, exp_neg(q)), x);
  float r = ax <= 0.921875f ? small : large;
  return isnan(x) ? x : r;
}

__device__ __forceinline__ float gelu(float x) {
  float e = erf_crate(__fmul_rn(x, 0.70710678118654752f));
  return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, e));
}

// gelu'(x) = Phi(x) + x phi(x), as elementwise.cu's gelu_grad (BINARY_GELU_BACKWARD), step for
// step.
__device__ __forceinline__ float gelu_grad(float x) {
  float cdf = __fmul_rn(0.5f, __fadd_rn(1.0f, erf_crate(__fmul_rn(x, 0.70710678118654752f))));
  float pdf = __fmul_rn(0.3989423f, exp_neg(fmaxf(__fmul_rn(__fmul_rn(-0.5f, x), x), -87.0f)));
  return __fadd_rn(cdf, __fmul_rn(x, pdf));
}
