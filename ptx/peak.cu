// The card's own ceilings, for `tarflow bench --kernels --device cuda`: what a kernel of ours
// can reach at best on this GPU, measured in the same run as the kernels it judges.
//
// Gradient-write convention: both kernels write their output with `=`; nothing is
// accumulated.
//
// peak_mma_bf16: the tensor cores' rate for the instruction our bf16 kernels use
//   (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32), with every operand in registers:
//   no memory traffic, no address arithmetic. Each warp runs `iters` rounds of PEAK_CHAINS
//   independent mma chains (enough in flight to cover the instruction's latency), then
//   each thread writes the sum of its accumulators (so nothing can be dropped), in a fixed
//   order: out[blockIdx.x * blockDim.x + threadIdx.x]. Every A element is the bf16 pair in
//   `a_bits`, every B element the pair in `b_bits`; with a = 1 and b = 2^-8 every mma adds
//   exactly 16 * 2^-8 to each accumulator, so the output is PEAK_CHAINS * iters / 4 exactly
//   (the tests check this). One mma is 2 * 16 * 8 * 16 = 4096 flops.
//   Launch: block (128), any grid.
// peak_copy_b128: dst[i] = src[i] for i < n over 16-byte elements, grid-stride: the copy
//   bandwidth a streaming kernel can reach (each byte read once and written once).
//   Launch: block (256), any grid.

// The kernels' own mma_bf16 (the host shim has its version for `scripts/ptx.sh host`).
#ifndef TARFLOW_HOST_EMULATION
#include "async_copy_mma.cuh"
#endif

#define PEAK_CHAINS 8

extern "C" __global__ void __launch_bounds__(128)
    peak_mma_bf16(float* __restrict__ out, unsigned a_bits, unsigned b_bits, unsigned iters) {
  const unsigned a[4] = {a_bits, a_bits, a_bits, a_bits};
  const unsigned b[2] = {b_bits, b_bits};
  float acc[PEAK_CHAINS][4];
#pragma unroll
  for (int c = 0; c < PEAK_CHAINS; ++c)
#pragma unroll
    for (int t = 0; t < 4; ++t) acc[c][t] = 0.0f;
#pragma unroll 1
  for (unsigned it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < PEAK_CHAINS; ++c) mma_bf16(acc[c], a, b);
  }
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < PEAK_CHAINS; ++c)
#pragma unroll
    for (int t = 0; t < 4; ++t) s = __fadd_rn(s, acc[c][t]);
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(256)
    peak_copy_b128(uint4* __restrict__ dst, const uint4* __restrict__ src,
                   unsigned long long n) {
  unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = src[i];
  }
}
