// Reductions over one axis (sum, mean, max) in a fixed order: no atomics, and the order of
// every addition depends only on the shape and the launch parameters the host derives from
// it, so a run is reproducible bit for bit on one device.
//
// The input is contiguous and viewed as [outer, r, inner]; the host makes a strided operand
// contiguous first (copy.cu) and reduces several axes by merging or repeating.
//
// Gradient-write convention: `out` is written (`=`) unless `accumulate` is 1, in which case
// the result is added to it (`+=`, for parameter gradients such as a bias's column sums).
//
// reduce_rows_f32 (inner == 1): one warp per row, blocks of 256 threads (8 rows per CTA),
//   grid ceil(outer / 8). Lane l accumulates elements l, l + 32, l + 64, ... in order; the 32
//   lane sums are then combined by a butterfly (xor 16, 8, 4, 2, 1), identical in every lane.
// reduce_chunks_f32 (any inner): one thread per (outer, chunk, inner) output, blocks of 256,
//   grid (ceil(inner / 256), chunks, outer) with chunks = ceil(r / chunk_len). Each thread
//   combines its chunk's rows in increasing order. With chunk_len < r it writes partials of
//   shape [outer, chunks, inner]; the host reduces those with a second launch (chunk_len >=
//   chunks), giving a two-pass reduction whose order is fixed by chunk_len.
//
// `scale` multiplies the final value (1/r for a mean, 1 otherwise); max ignores it.
// max follows the CPU's `combine`: a NaN anywhere makes the result NaN; an empty axis gives
// -inf (max) or 0 (sum), as on the CPU.

#define FULL_MASK 0xffffffffu

enum ReduceOp {
  REDUCE_SUM = 0,
  REDUCE_MAX = 1,
};

__device__ __forceinline__ float combine(unsigned op, float a, float b) {
  if (op == REDUCE_MAX) {
    return (b > a || isnan(b)) ? b : a;
  }
  return __fadd_rn(a, b);
}

__device__ __forceinline__ float identity(unsigned op) {
  return op == REDUCE_MAX ? __int_as_float(0xff800000) : 0.0f;
}

__device__ __forceinline__ float finish(unsigned op, float v, float scale, float* out,
                                        unsigned accumulate) {
  float r = op == REDUCE_MAX ? v : __fmul_rn(v, scale);
  return accumulate ? __fadd_rn(*out, r) : r;
}

extern "C" __global__ void reduce_rows_f32(float* __restrict__ out, const float* __restrict__ x,
                                           unsigned outer, unsigned r, unsigned op,
                                           float scale, unsigned accumulate) {
  unsigned lane = threadIdx.x & 31;
  unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  // Whole warps leave together, so the shuffles below always see all 32 lanes.
  if (row >= outer) return;
  const float* xr = x + (size_t)row * r;
  float acc = identity(op);
  for (unsigned j = lane; j < r; j += 32) {
    acc = combine(op, acc, xr[j]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float other = __shfl_xor_sync(FULL_MASK, acc, o);
    // Lower lane first, so both partners compute the same value in the same order.
    acc = (lane & o) ? combine(op, other, acc) : combine(op, acc, other);
  }
  if (lane == 0) {
    out[row] = finish(op, acc, scale, out + row, accumulate);
  }
}

extern "C" __global__ void reduce_chunks_f32(float* __restrict__ out,
                                             const float* __restrict__ x, unsigned outer,
                                             unsigned r, unsigned inner, unsigned chunk_len,
                                             unsigned op, float scale, unsigned accumulate) {
  unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned chunk = blockIdx.y;
  unsigned o = blockIdx.z;
  unsigned chunks = gridDim.y;
  if (c >= inner || o >= outer) return;
  unsigned j0 = chunk * chunk_len;
  unsigned j1 = min(r, j0 + chunk_len);
  const float* xo = x + (size_t)o * r * inner + c;
  float acc = identity(op);
  for (unsigned j = j0; j < j1; ++j) {
    acc = combine(op, acc, xo[(size_t)j * inner]);
  }
  size_t dst = ((size_t)o * chunks + chunk) * inner + c;
  out[dst] = finish(op, acc, scale, out + dst, accumulate);
}
