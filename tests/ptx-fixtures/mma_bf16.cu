// C (M x N, f32) = A (M x K, bf16 row-major) * B (K x N, bf16 row-major), with K % 8 == 0 and
// N % 8 == 0 (16-byte cp.async chunks); M and N may be ragged against the 32 x 16 CTA tile.
// Four warps (2 x 2), each one m16n8k16 accumulator tile; k-tiles of 32 double-buffered with
// cp.async; A fragments by ldmatrix.x4, B fragments by ldmatrix.x2.trans.
#include <cuda_bf16.h>
#include <stdint.h>

#define BM 32
#define BN 16
#define BK 32
#define APAD 8
#define BPAD 8

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void load_tile(__nv_bfloat16 (*As)[BK + APAD], __nv_bfloat16 (*Bs)[BN + BPAD],
                                          const __nv_bfloat16* A, const __nv_bfloat16* B,
                                          int M, int N, int K, int m0, int n0, int k0) {
    int t = threadIdx.x;
    {   // A: 32 rows x 4 chunks of 8 bf16
        int r = t / 4, c = (t % 4) * 8;
        int gr = m0 + r, gc = k0 + c;
        bool ok = gr < M && gc < K;
        const __nv_bfloat16* src = ok ? A + (size_t)gr * K + gc : A;
        cp_async16(&As[r][c], src, ok ? 16 : 0);
    }
    if (t < 64) {   // B: 32 k-rows x 2 chunks of 8 bf16
        int r = t / 2, c = (t % 2) * 8;
        int gr = k0 + r, gc = n0 + c;
        bool ok = gr < K && gc < N;
        const __nv_bfloat16* src = ok ? B + (size_t)gr * N + gc : B;
        cp_async16(&Bs[r][c], src, ok ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;\n" ::);
}

extern "C" __global__ void __launch_bounds__(128) mma_bf16_gemm(const __nv_bfloat16* __restrict__ A,
                                                                const __nv_bfloat16* __restrict__ B,
                                                                float* __restrict__ C, int M, int N, int K) {
    __shared__ __align__(16) __nv_bfloat16 As[2][BM][BK + APAD];
    __shared__ __align__(16) __nv_bfloat16 Bs[2][BK][BN + BPAD];
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int wm = warp / 2, wn = warp % 2;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int tiles = (K + BK - 1) / BK;
    load_tile(As[0], Bs[0], A, B, M, N, K, m0, n0, 0);
    for (int kt = 0; kt < tiles; ++kt) {
        if (kt + 1 < tiles) {
            load_tile(As[(kt + 1) % 2], Bs[(kt + 1) % 2], A, B, M, N, K, m0, n0, (kt + 1) * BK);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        int buf = kt % 2;
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            uint32_t a[4], b[2];
            int ar = wm * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
            int ac = ks + (lane / 16) * 8;
            unsigned aaddr = (unsigned)__cvta_generic_to_shared(&As[buf][ar][ac]);
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(aaddr));
            unsigned baddr = (unsigned)__cvta_generic_to_shared(&Bs[buf][ks + (lane % 16)][wn * 8]);
            asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                         : "=r"(b[0]), "=r"(b[1]) : "r"(baddr));
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                         "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                         : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
        }
        __syncthreads();
    }
    int g = lane / 4, q = lane % 4;
    int row = m0 + wm * 16 + g, col = n0 + wn * 8 + 2 * q;
    if (row < M && col < N) C[(size_t)row * N + col] = acc[0];
    if (row < M && col + 1 < N) C[(size_t)row * N + col + 1] = acc[1];
    if (row + 8 < M && col < N) C[(size_t)(row + 8) * N + col] = acc[2];
    if (row + 8 < M && col + 1 < N) C[(size_t)(row + 8) * N + col + 1] = acc[3];
}

// Packs pairs of f32 into bf16x2 (round to nearest even): out[i] = {lo: x[2i], hi: x[2i+1]}.
extern "C" __global__ void pack_bf16x2(const float* __restrict__ x, __nv_bfloat162* __restrict__ out, int pairs) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < pairs) out[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
}
