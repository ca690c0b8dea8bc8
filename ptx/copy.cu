// Strided copies of n-d views (f32, and bf16 <-> f32 conversions) and fills.
//
// Gradient-write convention: these kernels write (`=`) their destination view; they are
// used for activations and for concat / pad / narrow-backward, which the host composes from
// a fill and copies into sub-views of the destination.
//
// Launch configuration (every kernel here): 1-d grid of 1-d blocks of 256 threads; any grid
// size >= 1 works (grid-stride loop), the host uses min(ceil(n / 256), 65535) CTAs.
//
// Views: up to 8 dimensions, `rank` of them used, outermost first. The host passes unused
// trailing slots as 0 (they are never read). Strides are in elements and may be 0
// (broadcast) or negative; element counts and offsets fit in 31 bits (the host checks).
// Linear index i enumerates the view in row-major order; its offset in each operand is
// sum_d coord_d * stride_d.
//
// No `call`, no local memory: every helper is __forceinline__ and the dimension loops are
// fully unrolled so the shape and stride parameters stay in registers.

// scripts/ptx.sh host compiles this file for the CPU, with its own bf16 type.
#ifndef TARFLOW_HOST_EMULATION
#include <cuda_bf16.h>
#endif

#define MAX_DIMS 8

#define DIMS(p) unsigned p##0, unsigned p##1, unsigned p##2, unsigned p##3, \
                unsigned p##4, unsigned p##5, unsigned p##6, unsigned p##7
#define STRIDES(p) int p##0, int p##1, int p##2, int p##3, int p##4, int p##5, int p##6, int p##7
#define ARR(p) {p##0, p##1, p##2, p##3, p##4, p##5, p##6, p##7}

// Offsets of linear index i in two strided operands of the same shape.
__device__ __forceinline__ void offsets2(unsigned i, unsigned rank, const unsigned* shape,
                                         const int* sa, const int* sb, long long* oa,
                                         long long* ob) {
  long long a = 0, b = 0;
#pragma unroll
  for (int d = MAX_DIMS - 1; d >= 0; --d) {
    if (d < (int)rank) {
      // The outermost coordinate is what is left: i < n bounds it by shape[0].
      unsigned c = d == 0 ? i : i % shape[d];
      if (d > 0) i /= shape[d];
      a += (long long)c * sa[d];
      b += (long long)c * sb[d];
    }
  }
  *oa = a;
  *ob = b;
}

// dst[view] = src[view], f32.
extern "C" __global__ void strided_copy_f32(float* __restrict__ dst,
                                            const float* __restrict__ src, unsigned n,
                                            unsigned rank, DIMS(shape), STRIDES(ds),
                                            STRIDES(ss)) {
  const unsigned shape[MAX_DIMS] = ARR(shape);
  const int dstr[MAX_DIMS] = ARR(ds);
  const int sstr[MAX_DIMS] = ARR(ss);
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    long long od, os;
    offsets2(i, rank, shape, dstr, sstr, &od, &os);
    dst[od] = src[os];
  }
}

// dst[view] = float(src[view]): bf16 to f32 (exact).
extern "C" __global__ void strided_copy_bf16_f32(float* __restrict__ dst,
                                                 const __nv_bfloat16* __restrict__ src,
                                                 unsigned n, unsigned rank, DIMS(shape),
                                                 STRIDES(ds), STRIDES(ss)) {
  const unsigned shape[MAX_DIMS] = ARR(shape);
  const int dstr[MAX_DIMS] = ARR(ds);
  const int sstr[MAX_DIMS] = ARR(ss);
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    long long od, os;
    offsets2(i, rank, shape, dstr, sstr, &od, &os);
    dst[od] = __bfloat162float(src[os]);
  }
}

// dst[view] = bf16(src[view]): f32 to bf16, round to nearest even (NaN stays NaN).
extern "C" __global__ void strided_copy_f32_bf16(__nv_bfloat16* __restrict__ dst,
                                                 const float* __restrict__ src, unsigned n,
                                                 unsigned rank, DIMS(shape), STRIDES(ds),
                                                 STRIDES(ss)) {
  const unsigned shape[MAX_DIMS] = ARR(shape);
  const int dstr[MAX_DIMS] = ARR(ds);
  const int sstr[MAX_DIMS] = ARR(ss);
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    long long od, os;
    offsets2(i, rank, shape, dstr, sstr, &od, &os);
    dst[od] = __float2bfloat16_rn(src[os]);
  }
}

// dst[0..n) = value (contiguous): zeros for pad and gradient buffers, -inf masks, ...
extern "C" __global__ void fill_f32(float* __restrict__ dst, unsigned n, float value) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    dst[i] = value;
  }
}
