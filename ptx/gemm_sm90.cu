// ptx-arch: compute_90a
//
// The bf16 GEMM of gemm.cu (`gemm_bf16_nt`: C = alpha * A B^T + beta * C + bias, A [m, k]
// and B [n, k] both k-contiguous, f32 C) on Hopper's warpgroup tensor-core instruction
// `wgmma.mma_async`, which needs sm_90a: this file is compiled for compute_90a (the line
// above tells scripts/ptx.sh) and its module loads only on a compute-capability 9.0 GPU.
//
// gemm_bf16_nt_wgmma_<BN>: a 128 x BN output tile per CTA (BN = 128 or 256), 256 threads
//   as two warpgroups of 64 x BN each. k-tiles of 64 are loaded with cp.async into a ring
//   of STAGES stages, in the canonical no-swizzle k-major layout wgmma reads: 8 x 8-element
//   "core matrices" of 128 contiguous bytes, the 8 core matrices of a k-tile's row block side
//   by side (leading byte offset 128), row blocks 1,024 bytes apart (stride byte offset).
//   Each k-tile is four m64nBNk16 instructions per warpgroup, issued asynchronously: the
//   batch of k-tile kt runs while the threads wait for k-tile kt + 1 and issue the load of
//   kt + STAGES - 2 into the stage of kt - 2, which the barrier proves no batch still reads
//   (`wgmma.wait_group 1` leaves at most the newest batch in flight).
//   Requirements the host checks (as for gemm.cu): lda, ldb and the batch strides multiples
//   of 8 elements, a and b 16-byte aligned. Ragged edges: cp.async's zero-fill.
//   Launch: block (256), grid (ceil(n / BN), ceil(m / 128), batch), dynamic shared memory
//   STAGES * (128 + BN) * 64 * 2 bytes (needs the opt-in above 48 KiB).
//
// Reduction order: for each output, the tensor core sums each 16-wide k-step in an order the
// hardware fixes, then the steps in increasing order: reproducible run to run. The
// interpreter's sums are exact per step, as for mma.sync; on a GPU wgmma and mma.sync may
// round a step differently, so this kernel's bits need not be gemm.cu's.
//
// Epilogue: v = alpha * acc; if beta != 0, v = fma(beta, C, v); with GEMM_HAS_BIAS,
// v += bias[j]; each step rounded, as gemm.cu's `epilogue`.

#include <cuda_bf16.h>

enum GemmFlags {
  GEMM_HAS_BIAS = 1,
};

__device__ __forceinline__ float epilogue(float acc, float alpha, float beta, const float* cij,
                                          const float* __restrict__ bias, unsigned j,
                                          unsigned flags) {
  float v = __fmul_rn(alpha, acc);
  if (beta != 0.0f) v = fmaf(beta, *cij, v);
  if (flags & GEMM_HAS_BIAS) v = __fadd_rn(v, bias[j]);
  return v;
}

extern __shared__ __align__(128) unsigned char wg_dynamic_smem[];

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16_zfill(void* dst, const void* src, unsigned src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Makes this thread's shared-memory writes visible to the async proxy wgmma reads through.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// The shared-memory matrix descriptor of the PTX ISA: start address, leading and stride
// byte offsets (each in 16-byte units, 14 bits), swizzle mode 0 (none) in bits 62-63.
__device__ __forceinline__ unsigned long long smem_desc(unsigned addr, unsigned lbo,
                                                        unsigned sbo) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) |
         (unsigned long long)((lbo & 0x3FFFF) >> 4) << 16 |
         (unsigned long long)((sbo & 0x3FFFF) >> 4) << 32;
}

// One wgmma.mma_async.m64nNk16 with f32 accumulators d (N / 2 per thread) added to
// (scale-d 1): A and B from shared memory through their descriptors, neither transposed.
__device__ __forceinline__ void wgmma_n128(float* d, unsigned long long da,
                                          unsigned long long db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_n256(float* d, unsigned long long da,
                                          unsigned long long db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]),
        "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),
        "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),
        "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]),
        "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]),
        "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]),
        "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),
        "+f"(d[126]), "+f"(d[127])
      : "l"(da), "l"(db), "r"(1));
}

#define WG_BM 128
#define WG_BK 64
// Bytes of one row block (8 rows) of a k-tile: 8 core matrices of 128 bytes.
#define WG_ROW_BLOCK 1024

template <int BN, int STAGES>
struct WgTile {
  static constexpr int A_STAGE = WG_BM * WG_BK * 2;  // bytes
  static constexpr int B_STAGE = BN * WG_BK * 2;
  static constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE);
};

// Loads rows [row0, row0 + ROWS) x k [k0, k0 + 64) of a k-contiguous operand (element (r, l)
// at g[r * ld + l], bounded by (row_lim, k_lim)) into the canonical layout at `s`: the
// 16-byte chunk of row r and k-chunk c goes to (r / 8) * 1024 + c * 128 + (r % 8) * 16.
// Consecutive threads take consecutive rows of one core matrix, so each 8 threads fill 128
// contiguous bytes (no bank conflicts) and each 32 read 8 rows x 64 bytes of global memory.
template <int ROWS>
__device__ __forceinline__ void load_ktile(unsigned char* s, const __nv_bfloat16* __restrict__ g,
                                           unsigned ld, unsigned row0, unsigned k0,
                                           unsigned row_lim, unsigned k_lim) {
  constexpr int CHUNKS = ROWS * (WG_BK / 8);
  static_assert(CHUNKS % 256 == 0, "chunks must divide among the threads");
#pragma unroll
  for (int q = 0; q < CHUNKS / 256; ++q) {
    unsigned e = threadIdx.x + 256 * q;
    unsigned r = (e & 7) | (e >> 6) << 3, c = (e >> 3) & 7;
    unsigned gr = row0 + r, gc = k0 + c * 8;
    unsigned valid = gr < row_lim && gc < k_lim ? min(k_lim - gc, 8u) : 0u;
    // A chunk with nothing to read points at the operand's start, which is always mapped.
    const __nv_bfloat16* src = valid ? g + (size_t)gr * ld + gc : g;
    cp_async16_zfill(s + (r >> 3) * WG_ROW_BLOCK + c * 128 + (r & 7) * 16, src, 2 * valid);
  }
}

template <int BN, int STAGES>
__device__ __forceinline__ void gemm_bf16_nt_wgmma(float* __restrict__ c,
                                                   const __nv_bfloat16* __restrict__ a,
                                                   const __nv_bfloat16* __restrict__ b,
                                                   const float* __restrict__ bias, unsigned m,
                                                   unsigned n, unsigned k, unsigned lda,
                                                   unsigned ldb, unsigned ldc, unsigned a_bs,
                                                   unsigned b_bs, unsigned c_bs, float alpha,
                                                   float beta, unsigned flags) {
  using T = WgTile<BN, STAGES>;
  static_assert(STAGES >= 3, "the ring keeps one stage for the batch still in flight");
  unsigned char* As = wg_dynamic_smem;
  unsigned char* Bs = As + STAGES * T::A_STAGE;
  unsigned wg = threadIdx.x >> 7;  // warpgroup: rows 64 wg .. 64 wg + 63 of the tile
  unsigned m0 = blockIdx.y * WG_BM, n0 = blockIdx.x * BN;
  a += (size_t)blockIdx.z * a_bs;
  b += (size_t)blockIdx.z * b_bs;
  c += (size_t)blockIdx.z * c_bs;

  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;

  auto load = [&](int stage, unsigned k0) {
    load_ktile<WG_BM>(As + stage * T::A_STAGE, a, lda, m0, k0, m, k);
    load_ktile<BN>(Bs + stage * T::B_STAGE, b, ldb, n0, k0, n, k);
  };

  // One cp.async group per k-tile (empty past the last): at iteration kt, STAGES - 2 + kt
  // groups are committed, so `wait_group STAGES - 3` means k-tile kt has landed.
  unsigned ktiles = (k + WG_BK - 1) / WG_BK;
#pragma unroll
  for (int s = 0; s < STAGES - 2; ++s) {
    if ((unsigned)s < ktiles) load(s, s * WG_BK);
    cp_async_commit();
  }
  unsigned a_base = smem_addr(As) + wg * 8 * WG_ROW_BLOCK;
  unsigned b_base = smem_addr(Bs);
  for (unsigned kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 3>();
    fence_proxy_async();
    // After it: every thread's part of k-tile kt has landed, and every warpgroup has
    // finished the batch of kt - 2 (its `wait_group 1` of the last iteration).
    __syncthreads();
    unsigned next = kt + STAGES - 2;
    if (next < ktiles) load(next % STAGES, next * WG_BK);
    cp_async_commit();
    unsigned stage = kt % STAGES;
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < WG_BK / 16; ++ks) {
      // k-step ks is core-matrix columns 2 ks and 2 ks + 1 (128 bytes apart).
      unsigned long long da =
          smem_desc(a_base + stage * T::A_STAGE + ks * 256, 128, WG_ROW_BLOCK);
      unsigned long long db =
          smem_desc(b_base + stage * T::B_STAGE + ks * 256, 128, WG_ROW_BLOCK);
      if (BN == 256) {
        wgmma_n256(acc, da, db);
      } else {
        wgmma_n128(acc, da, db);
      }
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();

  // Accumulator i of lane (g, t) of warp w in the warpgroup: row 16 w + g + 8 ((i / 2) % 2),
  // columns 8 (i / 4) + 2 t + (i % 2) (the m16n8 C fragment, once per 8 columns).
  unsigned lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  unsigned g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    unsigned i = m0 + wg * 64 + w * 16 + g + 8 * h;
    if (i >= m) continue;
    float* crow = c + (size_t)i * ldc;
#pragma unroll
    for (int f = 0; f < BN / 8; ++f) {
      unsigned j = n0 + f * 8 + 2 * t;
      if (j < n) crow[j] = epilogue(acc[4 * f + 2 * h], alpha, beta, crow + j, bias, j, flags);
      if (j + 1 < n)
        crow[j + 1] =
            epilogue(acc[4 * f + 2 * h + 1], alpha, beta, crow + j + 1, bias, j + 1, flags);
    }
  }
}

#define GEMM_WGMMA_ENTRY(NAME, BN, STAGES)                                                   \
  extern "C" __global__ void __launch_bounds__(256, 1)                                       \
      NAME(float* __restrict__ c, const __nv_bfloat16* __restrict__ a,                      \
           const __nv_bfloat16* __restrict__ b, const float* __restrict__ bias, unsigned m, \
           unsigned n, unsigned k, unsigned lda, unsigned ldb, unsigned ldc, unsigned a_bs, \
           unsigned b_bs, unsigned c_bs, float alpha, float beta, unsigned flags) {         \
    gemm_bf16_nt_wgmma<BN, STAGES>(c, a, b, bias, m, n, k, lda, ldb, ldc, a_bs, b_bs, c_bs,  \
                                   alpha, beta, flags);                                      \
  }

GEMM_WGMMA_ENTRY(gemm_bf16_nt_wgmma_128, 128, 4)
GEMM_WGMMA_ENTRY(gemm_bf16_nt_wgmma_256, 256, 4)
