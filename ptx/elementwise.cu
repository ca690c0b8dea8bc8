// Elementwise unary and binary ops over strided / broadcast operands, selected by op code.
//
// Gradient-write convention: the output is written (`=`), contiguous, row-major over the
// broadcast shape; backward passes use the `*_BACKWARD` codes, which compute `g * f'(x)` (or
// `g * f'(y)` from the saved output) exactly as src/ops/unary.rs and binary.rs do, and the
// autograd engine sums the results.
//
// Launch configuration (both kernels): 1-d grid of 1-d blocks of 256 threads; any grid size
// >= 1 works (grid-stride loop), the host uses min(ceil(n / 256), 65535) CTAs.
//
// Operands: up to 8 dimensions (`rank` used, outermost first, unused slots 0); strides in
// elements, 0 for a broadcast dimension. `n` is the product of the shape, < 2^31.
//
// Formulas follow the CPU's f32 code operation for operation. Products and sums are written
// with __fmul_rn / __fadd_rn where the CPU rounds twice, so nvcc does not contract them into
// one fma (Rust never contracts); the polynomial steps of GELU's erf are fmaf, as in the
// CPU's FMA build (src/tensor/element.rs, `erf_f32_with::<Fused>`). Transcendental library
// functions (expf, logf, tanhf, powf, log1pf) are CUDA's accurate versions (not the
// __expf-style intrinsics): within a few ulp of the CPU's, not bit-identical.
//
// The op codes are those of src/backend/op.rs (`UnaryOp::code`, `BinaryOp::code`), which every
// device shares; a test in src/gpu/kernels parses these enums and fails if the two disagree. Append new codes; never renumber.

#define MAX_DIMS 8

#define DIMS(p) unsigned p##0, unsigned p##1, unsigned p##2, unsigned p##3, \
                unsigned p##4, unsigned p##5, unsigned p##6, unsigned p##7
#define STRIDES(p) int p##0, int p##1, int p##2, int p##3, int p##4, int p##5, int p##6, int p##7
#define ARR(p) {p##0, p##1, p##2, p##3, p##4, p##5, p##6, p##7}

enum UnaryOp {
  UNARY_NEG = 0,
  UNARY_EXP = 1,
  UNARY_LOG = 2,
  UNARY_SQRT = 3,
  UNARY_SQUARE = 4,
  UNARY_TANH = 5,
  UNARY_SIGMOID = 6,
  UNARY_SOFTPLUS = 7,
  UNARY_GELU_TANH = 8,
  UNARY_RELU = 9,
  UNARY_ABS = 10,
  UNARY_POW_SCALAR = 11,  // x^p0
  UNARY_CLAMP = 12,       // min(max(x, p0), p1)
  UNARY_ADD_SCALAR = 13,  // x + p0
  UNARY_MUL_SCALAR = 14,  // x * p0
  UNARY_NON_ZERO = 15,    // x != 0 ? 1 : 0
  UNARY_GELU = 16,
};

enum BinaryOp {
  BINARY_ADD = 0,
  BINARY_SUB = 1,
  BINARY_MUL = 2,
  BINARY_DIV = 3,
  BINARY_MAXIMUM = 4,              // a >= b ? a : b
  BINARY_GE_MASK = 5,              // a >= b ? 1 : 0
  BINARY_EQ_MASK = 6,              // a == b ? 1 : 0
  BINARY_MUL_ONE_MINUS = 7,        // a * (1 - b)
  BINARY_SELECT_IF_NON_ZERO = 8,   // b != 0 ? a : 0
  BINARY_SELECT_IF_ZERO = 9,       // b != 0 ? 0 : a
  BINARY_DIV_RHS_BACKWARD = 10,    // -a / (b * b), a = g * numerator
  BINARY_SQRT_BACKWARD = 11,       // g * 0.5 / y
  BINARY_TANH_BACKWARD = 12,       // g * (1 - y * y)
  BINARY_SIGMOID_BACKWARD = 13,    // g * y * (1 - y)
  BINARY_LOG_BACKWARD = 14,        // g * (1 / x)
  BINARY_SQUARE_BACKWARD = 15,     // g * (x + x)
  BINARY_SOFTPLUS_BACKWARD = 16,   // g * sigmoid(x)
  BINARY_GELU_TANH_BACKWARD = 17,  // g * gelu_tanh'(x)
  BINARY_RELU_BACKWARD = 18,       // g * (x > 0)
  BINARY_ABS_BACKWARD = 19,        // g * sign(x)
  BINARY_POW_BACKWARD = 20,        // g * (p0 * x^p1), p1 = p0 - 1 rounded from f64 by the host
  BINARY_CLAMP_BACKWARD = 21,      // g * (p0 < x < p1)
  BINARY_GELU_BACKWARD = 22,       // g * gelu'(x)
};

#define MUL(a, b) __fmul_rn((a), (b))
#define ADD(a, b) __fadd_rn((a), (b))
#define SUB(a, b) __fsub_rn((a), (b))

__device__ __forceinline__ long long offset_of(unsigned i, unsigned rank, const unsigned* shape,
                                               const int* stride) {
  long long o = 0;
#pragma unroll
  for (int d = MAX_DIMS - 1; d >= 0; --d) {
    if (d < (int)rank) {
      // The outermost coordinate is what is left: i < n bounds it by shape[0].
      unsigned c = d == 0 ? i : i % shape[d];
      if (d > 0) i /= shape[d];
      o += (long long)c * stride[d];
    }
  }
  return o;
}

#include "crate_math.cuh"

__device__ __forceinline__ float gelu_tanh(float x) {
  float c = 0.79788456080286536f;
  float k3 = MUL(MUL(MUL(0.044715f, x), x), x);
  float u = MUL(c, ADD(x, k3));
  return MUL(MUL(0.5f, x), ADD(1.0f, tanhf(u)));
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
  float c = 0.79788456080286536f;
  float k = 0.044715f;
  float u = MUL(c, ADD(x, MUL(MUL(MUL(k, x), x), x)));
  float t = tanhf(u);
  float du = MUL(c, ADD(1.0f, MUL(MUL(MUL(3.0f, k), x), x)));
  float a = MUL(0.5f, ADD(1.0f, t));
  float b = MUL(MUL(MUL(0.5f, x), SUB(1.0f, MUL(t, t))), du);
  return ADD(a, b);
}

__device__ __forceinline__ float sigmoid(float x) {
  if (x >= 0.0f) {
    return __fdiv_rn(1.0f, ADD(1.0f, expf(-x)));
  }
  float e = expf(x);
  return __fdiv_rn(e, ADD(1.0f, e));
}

__device__ __forceinline__ float softplus(float x) {
  return x > 0.0f ? ADD(x, log1pf(expf(-x))) : log1pf(expf(x));
}

__device__ __forceinline__ float unary(unsigned op, float x, float p0, float p1) {
  switch (op) {
    case UNARY_NEG: return -x;
    case UNARY_EXP: return expf(x);
    case UNARY_LOG: return logf(x);
    case UNARY_SQRT: return __fsqrt_rn(x);
    case UNARY_SQUARE: return MUL(x, x);
    case UNARY_TANH: return tanhf(x);
    case UNARY_SIGMOID: return sigmoid(x);
    case UNARY_SOFTPLUS: return softplus(x);
    case UNARY_GELU: return gelu(x);
    case UNARY_GELU_TANH: return gelu_tanh(x);
    case UNARY_RELU: return x > 0.0f ? x : 0.0f;
    case UNARY_ABS: return fabsf(x);
    case UNARY_POW_SCALAR: return powf(x, p0);
    case UNARY_CLAMP: return fminf(fmaxf(x, p0), p1);
    case UNARY_ADD_SCALAR: return ADD(x, p0);
    case UNARY_MUL_SCALAR: return MUL(x, p0);
    case UNARY_NON_ZERO: return x != 0.0f ? 1.0f : 0.0f;
    default: return __int_as_float(0x7fffffff);  // unknown code: NaN, never a silent value
  }
}

__device__ __forceinline__ float binary(unsigned op, float a, float b, float p0, float p1) {
  switch (op) {
    case BINARY_ADD: return ADD(a, b);
    case BINARY_SUB: return SUB(a, b);
    case BINARY_MUL: return MUL(a, b);
    case BINARY_DIV: return __fdiv_rn(a, b);
    case BINARY_MAXIMUM: return a >= b ? a : b;
    case BINARY_GE_MASK: return a >= b ? 1.0f : 0.0f;
    case BINARY_EQ_MASK: return a == b ? 1.0f : 0.0f;
    case BINARY_MUL_ONE_MINUS: return MUL(a, SUB(1.0f, b));
    case BINARY_SELECT_IF_NON_ZERO: return b != 0.0f ? a : 0.0f;
    case BINARY_SELECT_IF_ZERO: return b != 0.0f ? 0.0f : a;
    case BINARY_LOG_BACKWARD: return MUL(a, __fdiv_rn(1.0f, b));
    case BINARY_SQRT_BACKWARD: return __fdiv_rn(MUL(a, 0.5f), b);
    case BINARY_SQUARE_BACKWARD: return MUL(a, ADD(b, b));
    case BINARY_TANH_BACKWARD: return MUL(a, SUB(1.0f, MUL(b, b)));
    case BINARY_SIGMOID_BACKWARD: return MUL(MUL(a, b), SUB(1.0f, b));
    case BINARY_SOFTPLUS_BACKWARD: return MUL(a, sigmoid(b));
    case BINARY_GELU_BACKWARD: return MUL(a, gelu_grad(b));
    case BINARY_GELU_TANH_BACKWARD: return MUL(a, gelu_tanh_grad(b));
    case BINARY_RELU_BACKWARD: return MUL(a, b > 0.0f ? 1.0f : 0.0f);
    case BINARY_ABS_BACKWARD: return MUL(a, b > 0.0f ? 1.0f : (b < 0.0f ? -1.0f : 0.0f));
    case BINARY_POW_BACKWARD: return MUL(a, MUL(p0, powf(b, p1)));
    case BINARY_CLAMP_BACKWARD: return MUL(a, (b > p0 && b < p1) ? 1.0f : 0.0f);
    case BINARY_DIV_RHS_BACKWARD: return __fdiv_rn(-a, MUL(b, b));
    default: return __int_as_float(0x7fffffff);
  }
}

// out[i] = f(x[view(i)]), out contiguous.
extern "C" __global__ void unary_f32(float* __restrict__ out, const float* __restrict__ x,
                                     unsigned n, unsigned op, float p0, float p1, unsigned rank,
                                     DIMS(shape), STRIDES(xs)) {
  const unsigned shape[MAX_DIMS] = ARR(shape);
  const int xstr[MAX_DIMS] = ARR(xs);
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    out[i] = unary(op, x[offset_of(i, rank, shape, xstr)], p0, p1);
  }
}

// out[i] = f(a[view_a(i)], b[view_b(i)]), out contiguous over the broadcast shape.
extern "C" __global__ void binary_f32(float* __restrict__ out, const float* __restrict__ a,
                                      const float* __restrict__ b, unsigned n, unsigned op,
                                      float p0, float p1, unsigned rank, DIMS(shape),
                                      STRIDES(as), STRIDES(bs)) {
  const unsigned shape[MAX_DIMS] = ARR(shape);
  const int astr[MAX_DIMS] = ARR(as);
  const int bstr[MAX_DIMS] = ARR(bs);
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float va = a[offset_of(i, rank, shape, astr)];
    float vb = b[offset_of(i, rank, shape, bstr)];
    out[i] = binary(op, va, vb, p0, p1);
  }
}
