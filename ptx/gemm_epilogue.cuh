// The GEMM epilogue both GEMM modules share (gemm.cu and gemm_sm90.cu): alpha, beta and
// the bias, then the second stage (GELU, residual add, or the GELU derivative) with
// crate_math.cuh's functions, which the including file includes first (so the stages give
// elementwise.cu's bits).

enum GemmFlags {
  GEMM_HAS_BIAS = 1,
};

__device__ __forceinline__ float epilogue(float acc, float alpha, float beta, const float* cij,
                                          const float* __restrict__ bias, unsigned j,
                                          unsigned flags) {
  // Rounded steps, never contracted: nvcc would fuse alpha * acc + bias into one fma in some
  // kernels and not others, and the epilogue kernels promise the plain kernels' bits.
  float v = __fmul_rn(alpha, acc);
  if (beta != 0.0f) v = fmaf(beta, *cij, v);
  if (flags & GEMM_HAS_BIAS) v = __fadd_rn(v, bias[j]);
  return v;
}

enum GemmEpilogue {
  GEMM_EPI_NONE = 0,
  GEMM_EPI_GELU = 1,
  GEMM_EPI_RESIDUAL = 2,
  GEMM_EPI_GELU_GRAD = 3,
};

// The second epilogue stage of both GEMMs on an output value v at (i, j) of batch z, over
// aux[z * c_bs + i * aux_rs + j] (unread for GEMM_EPI_NONE).
template <int EPI>
__device__ __forceinline__ float epilogue_stage(float v, float* aux, unsigned z, unsigned c_bs,
                                                unsigned i, unsigned aux_rs, unsigned j) {
  if (EPI == GEMM_EPI_NONE) return v;
  float* at = aux + (size_t)z * c_bs + (size_t)i * aux_rs + j;
  if (EPI == GEMM_EPI_GELU) {
    *at = v;
    return gelu(v);
  }
  if (EPI == GEMM_EPI_RESIDUAL) return __fadd_rn(*at, v);
  return __fmul_rn(v, gelu_grad(*at));
}
