// The CUDA math and conversion idioms production kernels are likely to use, one output
// column each, so that every instruction form nvcc emits for them runs in the interpreter.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define COLS 24

extern "C" __global__ void math_zoo(const float* __restrict__ x, float* __restrict__ y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float a = fabsf(v);
    float* o = y + (size_t)i * COLS;
    o[0] = expf(v);
    o[1] = __expf(v);
    o[2] = logf(a + 1.0f);
    o[3] = __logf(a + 1.0f);
    o[4] = tanhf(v);
    o[5] = erff(v);
    o[6] = sqrtf(a);
    o[7] = rsqrtf(a + 1.0f);
    o[8] = 1.0f / (v + 3.0f);
    o[9] = __fdividef(v, a + 2.0f);
    o[10] = fmaxf(v, 0.0f) + fminf(v, 0.0f) * 0.5f;
    o[11] = copysignf(2.0f, v);
    o[12] = floorf(v * 3.0f) + ceilf(v * 5.0f) + rintf(v * 7.0f) + truncf(v * 9.0f);
    o[13] = __bfloat162float(__float2bfloat16(v));
    o[14] = __half2float(__float2half(v));
    o[15] = (float)(int)(v * 1000.0f) + (float)(unsigned)(a * 1000.0f);
    o[16] = 0.5f * v * (1.0f + erff(v * 0.70710678f));                            // GELU (erf)
    o[17] = 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v))); // GELU (tanh)
    o[18] = log1pf(a);
    o[19] = powf(a + 0.5f, 1.5f);
    o[20] = sinf(v) + cosf(v);
    o[21] = isfinite(v / (v - v)) ? 1.0f : 0.0f;
    o[22] = (float)(i / 7) + (float)(i % 5);
    o[23] = exp2f(v) + log2f(a + 1.0f);
}

// bf16x2 arithmetic as an epilogue might do it.
extern "C" __global__ void bf16x2_ops(const __nv_bfloat162* __restrict__ a, const __nv_bfloat162* __restrict__ b,
                                      __nv_bfloat162* __restrict__ out, float* __restrict__ sums, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __nv_bfloat162 p = __hmul2(a[i], b[i]);
    __nv_bfloat162 q = __hfma2(a[i], b[i], p);
    out[i] = __hadd2(p, q);
    float2 f = __bfloat1622float2(q);
    sums[i] = f.x + f.y;
}
