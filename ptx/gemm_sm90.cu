// ptx-arch: compute_90a
//
// The bf16 GEMMs of gemm.cu (C = alpha * op(A) op(B) + beta * C + bias, f32 C, the four
// layouts and the three epilogue stages, with gemm.cu's arguments and meaning) on Hopper's
// warpgroup tensor-core instruction `wgmma.mma_async`, which needs sm_90a: this file is
// compiled for compute_90a (the line above tells scripts/ptx.sh) and its module loads only
// on a compute-capability 9.0 GPU.
//
// gemm_bf16_<layout>_wgmma_<BN>, gemm_bf16_{nn,nt}_{gelu,residual,gelu_grad}_wgmma_<BN>: a
//   128 x BN output tile per CTA (BN = 128 or 256), 256 threads as two warpgroups of 64 x BN
//   each. k-tiles of 64 are loaded with cp.async into a ring of STAGES stages, in the
//   canonical no-swizzle layouts wgmma reads: "core matrices" of 128 contiguous bytes, eight
//   16-byte rows (k-major: 8 rows of 8 k values; MN-major, the transposed operand: 8 k values
//   of 8 consecutive rows each, read with imm-trans 1), the 8 core matrices along k of a block
//   of 8 rows 128 bytes apart (leading byte offset), blocks of 8 rows 1,024 bytes apart
//   (stride byte offset); both majors take the same descriptors.
//   Each k-tile is four m64nBNk16 instructions per warpgroup, issued asynchronously: the
//   batch of k-tile kt runs while the threads wait for k-tile kt + 1 and issue the load of
//   kt + STAGES - 2 into the stage of kt - 2, which the barrier proves no batch still reads
//   (`wgmma.wait_group 1` leaves at most the newest batch in flight).
//   Requirements the host checks (as for gemm.cu): lda, ldb and the batch strides multiples
//   of 8 elements, a and b 16-byte aligned. Ragged edges: cp.async's zero-fill. The epilogue
//   stages: gemm.cu's (ptx/gemm_epilogue.cuh, included by both).
//   Launch: block (256), grid (ceil(n / BN), ceil(m / 128), batch), dynamic shared memory
//   STAGES * (128 + BN) * 64 * 2 bytes (needs the opt-in above 48 KiB).
//
// Reduction order: for each output, the tensor core sums each 16-wide k-step in an order the
// hardware fixes, then the steps in increasing order: reproducible run to run. The
// interpreter's sums are exact per step, as for mma.sync; on a GPU wgmma and mma.sync may
// round a step differently, so this kernel's bits need not be gemm.cu's.
//
// Epilogue: v = alpha * acc; if beta != 0, v = fma(beta, C, v); with GEMM_HAS_BIAS,
// v += bias[j]; each step rounded, as gemm.cu's `epilogue`; then the stage.

#include <cuda_bf16.h>

#include "crate_math.cuh"
#include "gemm_epilogue.cuh"
#include "async_copy_mma.cuh"
#include "sm90.cuh"

extern __shared__ __align__(128) unsigned char wg_dynamic_smem[];

// One wgmma.mma_async.m64nNk16 with f32 accumulators d (N / 2 per thread) added to
// (scale-d 1): A and B from shared memory through their descriptors, TA / TB 1 for an
// MN-major (transposed) operand.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_n128(float* d, unsigned long long da,
                                          unsigned long long db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
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
      : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
}

template <int TA, int TB>
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
      "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
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
      : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
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

// Loads rows [row0, row0 + ROWS) x k [k0, k0 + 64) of an operand, bounded by (row_lim,
// k_lim), into the canonical layout at `s`. K-major (element (r, l) at g[r * ld + l]): the
// 16-byte chunk of row r and k-chunk c goes to (r / 8) * 1024 + c * 128 + (r % 8) * 16.
// MN-major (element (r, l) at g[l * ld + r]): the chunk of rows 8 b .. 8 b + 7 at k = l goes
// to b * 1024 + l * 16. Either way each 8 consecutive threads fill 128 contiguous bytes (no
// bank conflicts) and each 32 read 8 lines x 64 bytes of global memory.
template <int ROWS, bool KMAJOR>
__device__ __forceinline__ void load_ktile(unsigned char* s, const __nv_bfloat16* __restrict__ g,
                                           unsigned ld, unsigned row0, unsigned k0,
                                           unsigned row_lim, unsigned k_lim) {
  constexpr int CHUNKS = ROWS * (WG_BK / 8);
  static_assert(CHUNKS % 256 == 0, "chunks must divide among the threads");
#pragma unroll
  for (int q = 0; q < CHUNKS / 256; ++q) {
    unsigned e = threadIdx.x + 256 * q;
    if (KMAJOR) {
      unsigned r = (e & 7) | (e >> 6) << 3, c = (e >> 3) & 7;
      unsigned gr = row0 + r, gc = k0 + c * 8;
      unsigned valid = gr < row_lim && gc < k_lim ? min(k_lim - gc, 8u) : 0u;
      // A chunk with nothing to read points at the operand's start, which is always mapped.
      const __nv_bfloat16* src = valid ? g + (size_t)gr * ld + gc : g;
      cp_async16_zfill(s + (r >> 3) * WG_ROW_BLOCK + c * 128 + (r & 7) * 16, src, 2 * valid);
    } else {
      constexpr unsigned BLOCKS = ROWS / 8;
      unsigned b = (e >> 3) % BLOCKS, l = (e & 7) | (e >> 3) / BLOCKS << 3;
      unsigned gr = row0 + b * 8, gl = k0 + l;
      unsigned valid = gl < k_lim && gr < row_lim ? min(row_lim - gr, 8u) : 0u;
      const __nv_bfloat16* src = valid ? g + (size_t)gl * ld + gr : g;
      cp_async16_zfill(s + b * WG_ROW_BLOCK + l * 16, src, 2 * valid);
    }
  }
}

// Writes a CTA's 128 x BN accumulators (thread `ct` of the 256 that hold them, two
// warpgroups of 64 rows) to C through the epilogue, staging them in `smem` (at least
// 128 * (BN + 8) floats, free once every batch has retired). Holds two __syncthreads: every
// thread of the CTA must call it.
// The accumulators go through shared memory so that the epilogue walks C row by row, a
// warp storing 32 consecutive floats, in one loop rather than one copy per accumulator.
// Accumulator i of lane (g, t) of warp w in the warpgroup: row 16 w + g + 8 ((i / 2) % 2),
// columns 8 (i / 4) + 2 t + (i % 2) (the m16n8 C fragment, once per 8 columns).
template <int BN, int EPI>
__device__ __forceinline__ void store_tile(const float* acc, unsigned ct, unsigned char* smem,
                                           float* __restrict__ c, float* aux,
                                           const float* __restrict__ bias, unsigned m,
                                           unsigned n, unsigned m0, unsigned n0, unsigned ldc,
                                           unsigned aux_rs, unsigned c_bs, float alpha,
                                           float beta, unsigned flags) {
  constexpr int CS = BN + 8;  // row stride: conflict-free float2 stores of fragments
  float* cs = reinterpret_cast<float*>(smem);
  __syncthreads();
  if (ct < 256) {
    unsigned wg = ct >> 7, lane = ct & 31, w = (ct >> 5) & 3;
    unsigned g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int f = 0; f < BN / 8; ++f) {
        unsigned r = wg * 64 + w * 16 + g + 8 * h;
        *reinterpret_cast<float2*>(cs + r * CS + f * 8 + 2 * t) =
            make_float2(acc[4 * f + 2 * h], acc[4 * f + 2 * h + 1]);
      }
  }
  __syncthreads();
  static_assert(256 % BN == 0, "each thread keeps one column");
  unsigned col = ct % BN, j = n0 + col;
  if (ct >= 256 || j >= n) return;
  constexpr unsigned ROW_STEP = 256 / BN;
  unsigned rows = min(m - m0, (unsigned)WG_BM);
  auto store = [&](unsigned r) {
    unsigned i = m0 + r;
    float* cij = c + (size_t)i * ldc + j;
    float v = epilogue(cs[r * CS + col], alpha, beta, cij, bias, j, flags);
    *cij = epilogue_stage<EPI>(v, aux, blockIdx.z, c_bs, i, aux_rs, j);
  };
  if (EPI == GEMM_EPI_NONE) {
#pragma unroll 4
    for (unsigned r = ct / BN; r < rows; r += ROW_STEP) store(r);
  } else {
#pragma unroll 1
    for (unsigned r = ct / BN; r < rows; r += ROW_STEP) store(r);
  }
}

template <int BN, int STAGES, bool A_KMAJOR, bool B_KMAJOR, int EPI>
__device__ __forceinline__ void gemm_bf16_wgmma(float* __restrict__ c,
                                                const __nv_bfloat16* __restrict__ a,
                                                const __nv_bfloat16* __restrict__ b,
                                                const float* __restrict__ bias, float* aux,
                                                unsigned m, unsigned n, unsigned k,
                                                unsigned lda, unsigned ldb, unsigned ldc,
                                                unsigned aux_rs, unsigned a_bs, unsigned b_bs,
                                                unsigned c_bs, float alpha, float beta,
                                                unsigned flags) {
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
    load_ktile<WG_BM, A_KMAJOR>(As + stage * T::A_STAGE, a, lda, m0, k0, m, k);
    load_ktile<BN, B_KMAJOR>(Bs + stage * T::B_STAGE, b, ldb, n0, k0, n, k);
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
      // k-step ks is core-matrix columns 2 ks and 2 ks + 1 (128 bytes apart): 256 bytes
      // further, added to the descriptor's start-address field (in 16-byte units; a shared
      // address stays below 2^18, so the field cannot carry into the next).
      unsigned long long da = smem_desc(a_base + stage * T::A_STAGE, 128, WG_ROW_BLOCK) + 16 * ks;
      unsigned long long db = smem_desc(b_base + stage * T::B_STAGE, 128, WG_ROW_BLOCK) + 16 * ks;
      if (BN == 256) {
        wgmma_n256<!A_KMAJOR, !B_KMAJOR>(acc, da, db);
      } else {
        wgmma_n128<!A_KMAJOR, !B_KMAJOR>(acc, da, db);
      }
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  static_assert(WG_BM * (BN + 8) * 4 <= T::SMEM_BYTES, "the C tile must fit the stages' memory");
  store_tile<BN, EPI>(acc, threadIdx.x, wg_dynamic_smem, c, aux, bias, m, n, m0, n0, ldc,
                      aux_rs, c_bs, alpha, beta, flags);
}

// Entries: gemm.cu's names with `_wgmma_<BN>`; the same parameters.
#define GEMM_WGMMA_ENTRY(NAME, BN, AK, BK)                                                   \
  extern "C" __global__ void __launch_bounds__(256, 1)                                       \
      NAME(float* __restrict__ c, const __nv_bfloat16* __restrict__ a,                      \
           const __nv_bfloat16* __restrict__ b, const float* __restrict__ bias, unsigned m, \
           unsigned n, unsigned k, unsigned lda, unsigned ldb, unsigned ldc, unsigned a_bs, \
           unsigned b_bs, unsigned c_bs, float alpha, float beta, unsigned flags) {         \
    gemm_bf16_wgmma<BN, 4, AK, BK, GEMM_EPI_NONE>(c, a, b, bias, nullptr, m, n, k, lda, ldb, \
                                                  ldc, 0, a_bs, b_bs, c_bs, alpha, beta,     \
                                                  flags);                                    \
  }

GEMM_WGMMA_ENTRY(gemm_bf16_nn_wgmma_128, 128, true, false)
GEMM_WGMMA_ENTRY(gemm_bf16_nt_wgmma_128, 128, true, true)
GEMM_WGMMA_ENTRY(gemm_bf16_tn_wgmma_128, 128, false, false)
GEMM_WGMMA_ENTRY(gemm_bf16_tt_wgmma_128, 128, false, true)
GEMM_WGMMA_ENTRY(gemm_bf16_nn_wgmma_256, 256, true, false)
GEMM_WGMMA_ENTRY(gemm_bf16_nt_wgmma_256, 256, true, true)
GEMM_WGMMA_ENTRY(gemm_bf16_tn_wgmma_256, 256, false, false)
GEMM_WGMMA_ENTRY(gemm_bf16_tt_wgmma_256, 256, false, true)

// The epilogue stages, as gemm.cu's GEMM_BF16_EPI_ENTRY: A stored as is, B either way.
#define GEMM_WGMMA_EPI_ENTRY(NAME, BN, BK, EPI)                                              \
  extern "C" __global__ void __launch_bounds__(256, 1)                                       \
      NAME(float* __restrict__ c, const __nv_bfloat16* __restrict__ a,                      \
           const __nv_bfloat16* __restrict__ b, const float* __restrict__ bias,             \
           float* __restrict__ aux, unsigned m, unsigned n, unsigned k, unsigned lda,       \
           unsigned ldb, unsigned ldc, unsigned aux_rs, unsigned a_bs, unsigned b_bs,       \
           unsigned c_bs, float alpha, float beta, unsigned flags) {                        \
    gemm_bf16_wgmma<BN, 4, true, BK, EPI>(c, a, b, bias, aux, m, n, k, lda, ldb, ldc, aux_rs, \
                                          a_bs, b_bs, c_bs, alpha, beta, flags);             \
  }

GEMM_WGMMA_EPI_ENTRY(gemm_bf16_nn_gelu_wgmma_256, 256, false, GEMM_EPI_GELU)
GEMM_WGMMA_EPI_ENTRY(gemm_bf16_nn_residual_wgmma_256, 256, false, GEMM_EPI_RESIDUAL)
GEMM_WGMMA_EPI_ENTRY(gemm_bf16_nn_gelu_grad_wgmma_256, 256, false, GEMM_EPI_GELU_GRAD)
GEMM_WGMMA_EPI_ENTRY(gemm_bf16_nt_gelu_wgmma_256, 256, true, GEMM_EPI_GELU)
GEMM_WGMMA_EPI_ENTRY(gemm_bf16_nt_residual_wgmma_256, 256, true, GEMM_EPI_RESIDUAL)
GEMM_WGMMA_EPI_ENTRY(gemm_bf16_nt_gelu_grad_wgmma_256, 256, true, GEMM_EPI_GELU_GRAD)

// ---------------------------------------------------------------------------------------
// gemm_bf16_<layout>_tma_256, gemm_bf16_{nn,nt}_{gelu,residual,gelu_grad}_tma_256: the
//   products of every layout on a warp-specialized 128 x 256 tile.
//   Three warpgroups: the first only feeds the ring (one thread issues the k-tile's TMA
//   copies, `cp.async.bulk.tensor`, each completing on the stage's `full` mbarrier; the
//   warpgroup gives up registers with `setmaxnreg`), the other two only multiply (64 x 256
//   each, `wgmma` straight from the stage in the 128-byte swizzled layouts the copies write)
//   and release each stage on its `empty` mbarrier (one arrival per consumer warp) once the
//   `wgmma.wait_group 1` after the next batch has retired the batch that read it. No thread
//   computes an address for a load and no __syncthreads orders the ring; ragged edges are
//   the copies' zero fill.
//   A k-major operand (A as stored, B stored [n, k]) is one box of 64 k values by the tile's
//   rows: rows of 128 bytes, 8-row atoms of 1,024 bytes, descriptors with swizzle mode 1 and
//   a start that steps 32 bytes per k16. An MN-major operand (A stored [k, m], B stored
//   [k, n]) is one box of 64 rows (columns of the stored matrix) by 64 k values per 64 rows
//   of the tile, 8 KiB apart: k-rows of 128 bytes, 8-k-row atoms of 1,024 bytes (stride byte
//   offset), the boxes at the leading byte offset, read with imm-trans 1 from a start that
//   steps 2,048 bytes (two atoms) per k16.
//   Parameters: gemm_bf16_<layout>_wgmma_256's with the tensor maps of A and B (made by the
//   host: dims {k, rows, batch} with boxes {64, 128 or 256, 1} for a k-major operand, dims
//   {rows, k, batch} with boxes {64, 64, 1} for an MN-major one; 128-byte swizzle) in place
//   of the pointers; lda and ldb are unused, a_bs or b_bs 0 reads batch 0 of that operand.
//   Launch: block (384), grid (ceil(n / 256), ceil(m / 128), batch), dynamic shared memory
//   TMA_SMEM (the ring, 1 KiB to align it, the mbarriers).
// ---------------------------------------------------------------------------------------

#define TMA_BN 256
#define TMA_STAGES 4
#define TMA_A_STAGE (WG_BM * WG_BK * 2)
#define TMA_B_STAGE (TMA_BN * WG_BK * 2)
#define TMA_RING (TMA_STAGES * (TMA_A_STAGE + TMA_B_STAGE))
// One MN-major box: 64 k-rows of 64 elements.
#define TMA_MN_BOX (64 * WG_BK * 2)
#define TMA_SMEM (TMA_RING + 1024 + 2 * TMA_STAGES * 8)

// Box {x, y, z} of `map` into shared memory at `dst`, completing on mbarrier `bar`.
__device__ __forceinline__ void tma_load_3d(unsigned dst, const TensorMap* map, int x, int y,
                                            int z, unsigned bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"((unsigned long long)map), "r"(x), "r"(y), "r"(z), "r"(bar)
      : "memory");
}

// The descriptor of a k-major operand in the 128-byte swizzled layout: stride byte offset
// 1,024 (an 8-row atom), leading byte offset unused (encoded 1), swizzle mode 1.
__device__ __forceinline__ unsigned long long smem_desc_sw128(unsigned addr) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | 1ull << 16 |
         (unsigned long long)(1024 >> 4) << 32 | 1ull << 62;
}

// The descriptor of an MN-major operand in the 128-byte swizzled layout: leading byte offset
// TMA_MN_BOX (the next 64 rows), stride byte offset 1,024 (the next 8 k-rows), mode 1.
__device__ __forceinline__ unsigned long long smem_desc_sw128_mn(unsigned addr) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) |
         (unsigned long long)(TMA_MN_BOX >> 4) << 16 | (unsigned long long)(1024 >> 4) << 32 |
         1ull << 62;
}

// k-tile `kt` of an operand's rows [row0, row0 + ROWS) into the stage at `dst`: one box when
// k-major, one per 64 rows when MN-major.
template <int ROWS, bool KMAJOR>
__device__ __forceinline__ void tma_load_ktile(unsigned dst, const TensorMap* map,
                                               unsigned row0, unsigned kt, int z,
                                               unsigned bar) {
  if (KMAJOR) {
    tma_load_3d(dst, map, kt * WG_BK, row0, z, bar);
  } else {
#pragma unroll
    for (int b = 0; b < ROWS / 64; ++b)
      tma_load_3d(dst + b * TMA_MN_BOX, map, row0 + 64 * b, kt * WG_BK, z, bar);
  }
}

// The descriptor of k16 step `ks` of an operand whose rows start at `at` in a stage: 32
// bytes further along the lines (k-major) or two atoms further (MN-major), added to the
// start-address field in 16-byte units as the cp.async tiles' steps are.
template <bool KMAJOR>
__device__ __forceinline__ unsigned long long tma_operand_desc(unsigned at, int ks) {
  return KMAJOR ? smem_desc_sw128(at) + 2 * ks : smem_desc_sw128_mn(at) + 128 * ks;
}

template <bool A_KMAJOR, bool B_KMAJOR, int EPI>
__device__ __forceinline__ void gemm_bf16_tma(const TensorMap* a_map, const TensorMap* b_map,
                                                 float* __restrict__ c,
                                                 const float* __restrict__ bias, float* aux,
                                                 unsigned m, unsigned n, unsigned k,
                                                 unsigned ldc, unsigned aux_rs, unsigned a_bs,
                                                 unsigned b_bs, unsigned c_bs, float alpha,
                                                 float beta, unsigned flags) {
  unsigned raw = smem_addr(wg_dynamic_smem);
  unsigned base = (raw + 1023) & ~1023u;
  unsigned full0 = base + TMA_RING, empty0 = full0 + TMA_STAGES * 8;
  unsigned m0 = blockIdx.y * WG_BM, n0 = blockIdx.x * TMA_BN;
  unsigned ktiles = (k + WG_BK - 1) / WG_BK;
  ring_init(full0, empty0, TMA_STAGES);
  if (threadIdx.x < 128) {
    // The feeding warpgroup: 40 registers are plenty, and it leaves as soon as every copy is
    // issued (they complete on the mbarriers, which outlive it with the CTA).
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) {
      int za = a_bs ? blockIdx.z : 0, zb = b_bs ? blockIdx.z : 0;
      for (unsigned kt = 0; kt < ktiles; ++kt) {
        unsigned s = kt % TMA_STAGES;
        mbar_wait(empty0 + 8 * s, ((kt / TMA_STAGES) & 1) ^ 1);
        unsigned full = full0 + 8 * s;
        mbar_expect_bytes(full, TMA_A_STAGE + TMA_B_STAGE);
        unsigned a_dst = base + s * TMA_A_STAGE;
        unsigned b_dst = base + TMA_STAGES * TMA_A_STAGE + s * TMA_B_STAGE;
        tma_load_ktile<WG_BM, A_KMAJOR>(a_dst, a_map, m0, kt, za, full);
        tma_load_ktile<TMA_BN, B_KMAJOR>(b_dst, b_map, n0, kt, zb, full);
      }
    }
    return;
  }
  float acc[TMA_BN / 2];
  {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
#pragma unroll
    for (int i = 0; i < TMA_BN / 2; ++i) acc[i] = 0.0f;
    unsigned wg = (threadIdx.x >> 7) - 1;
    bool leader = (threadIdx.x & 31) == 0;
    for (unsigned kt = 0; kt < ktiles; ++kt) {
      unsigned s = kt % TMA_STAGES;
      mbar_wait(full0 + 8 * s, (kt / TMA_STAGES) & 1);
      // The warpgroup's 64 rows: 64 rows of 128 bytes (k-major) or one box (MN-major).
      unsigned a_at = base + s * TMA_A_STAGE + wg * TMA_MN_BOX;
      unsigned b_at = base + TMA_STAGES * TMA_A_STAGE + s * TMA_B_STAGE;
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < WG_BK / 16; ++ks)
        wgmma_n256<!A_KMAJOR, !B_KMAJOR>(acc, tma_operand_desc<A_KMAJOR>(a_at, ks),
                                         tma_operand_desc<B_KMAJOR>(b_at, ks));
      wgmma_commit();
      wgmma_wait<1>();
      // The batch of kt - 1 has retired: its stage may be refilled.
      if (kt > 0 && leader) mbar_arrive(empty0 + 8 * ((kt - 1) % TMA_STAGES));
    }
    wgmma_wait<0>();
  }
  // Straight from the registers (no barrier, which the feeding warpgroup could not join):
  // each thread's pairs of adjacent columns, one 8-byte store per pair when C's rows keep
  // pairs aligned (32 contiguous bytes per row and fragment for a quad of threads).
  unsigned ct = threadIdx.x - 128, wg = ct >> 7, lane = ct & 31, w = (ct >> 5) & 3;
  unsigned g = lane >> 2, t = lane & 3;
  float* cz = c + (size_t)blockIdx.z * c_bs;
  bool pairs = ((ldc | c_bs) & 1) == 0 && ((size_t)c & 7) == 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    unsigned i = m0 + wg * 64 + w * 16 + g + 8 * h;
    if (i >= m) continue;
#pragma unroll
    for (int f = 0; f < TMA_BN / 8; ++f) {
      unsigned j = n0 + f * 8 + 2 * t;
      float* cij = cz + (size_t)i * ldc + j;
      if (pairs && j + 1 < n) {
        float2 old = beta != 0.0f ? *reinterpret_cast<const float2*>(cij) : make_float2(0, 0);
        float v0 = epilogue(acc[4 * f + 2 * h], alpha, beta, &old.x, bias, j, flags);
        float v1 = epilogue(acc[4 * f + 2 * h + 1], alpha, beta, &old.y, bias, j + 1, flags);
        *reinterpret_cast<float2*>(cij) =
            make_float2(epilogue_stage<EPI>(v0, aux, blockIdx.z, c_bs, i, aux_rs, j),
                        epilogue_stage<EPI>(v1, aux, blockIdx.z, c_bs, i, aux_rs, j + 1));
        continue;
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (j + e >= n) continue;
        float v = epilogue(acc[4 * f + 2 * h + e], alpha, beta, cij + e, bias, j + e, flags);
        cij[e] = epilogue_stage<EPI>(v, aux, blockIdx.z, c_bs, i, aux_rs, j + e);
      }
    }
  }
}

// Entries: gemm_bf16_<layout>_wgmma_256's parameters (and the epilogue stages' of
// GEMM_WGMMA_EPI_ENTRY) with the tensor maps in place of a and b.
#define GEMM_TMA_ENTRY(NAME, AK, BK)                                                         \
  extern "C" __global__ void __launch_bounds__(384, 1)                                       \
      NAME(float* __restrict__ c, const __grid_constant__ TensorMap a_map,                   \
           const __grid_constant__ TensorMap b_map, const float* __restrict__ bias,          \
           unsigned m, unsigned n, unsigned k, unsigned lda, unsigned ldb, unsigned ldc,    \
           unsigned a_bs, unsigned b_bs, unsigned c_bs, float alpha, float beta,            \
           unsigned flags) {                                                                 \
    gemm_bf16_tma<AK, BK, GEMM_EPI_NONE>(&a_map, &b_map, c, bias, nullptr, m, n, k, ldc, 0,  \
                                         a_bs, b_bs, c_bs, alpha, beta, flags);              \
  }

GEMM_TMA_ENTRY(gemm_bf16_nn_tma_256, true, false)
GEMM_TMA_ENTRY(gemm_bf16_nt_tma_256, true, true)
GEMM_TMA_ENTRY(gemm_bf16_tn_tma_256, false, false)
GEMM_TMA_ENTRY(gemm_bf16_tt_tma_256, false, true)

#define GEMM_TMA_EPI_ENTRY(NAME, BK, EPI)                                                    \
  extern "C" __global__ void __launch_bounds__(384, 1)                                       \
      NAME(float* __restrict__ c, const __grid_constant__ TensorMap a_map,                   \
           const __grid_constant__ TensorMap b_map, const float* __restrict__ bias,          \
           float* __restrict__ aux, unsigned m, unsigned n, unsigned k, unsigned lda,        \
           unsigned ldb, unsigned ldc, unsigned aux_rs, unsigned a_bs, unsigned b_bs,        \
           unsigned c_bs, float alpha, float beta, unsigned flags) {                        \
    gemm_bf16_tma<true, BK, EPI>(&a_map, &b_map, c, bias, aux, m, n, k, ldc, aux_rs, a_bs,   \
                                 b_bs, c_bs, alpha, beta, flags);                            \
  }

GEMM_TMA_EPI_ENTRY(gemm_bf16_nn_gelu_tma_256, false, GEMM_EPI_GELU)
GEMM_TMA_EPI_ENTRY(gemm_bf16_nn_residual_tma_256, false, GEMM_EPI_RESIDUAL)
GEMM_TMA_EPI_ENTRY(gemm_bf16_nn_gelu_grad_tma_256, false, GEMM_EPI_GELU_GRAD)
GEMM_TMA_EPI_ENTRY(gemm_bf16_nt_gelu_tma_256, true, GEMM_EPI_GELU)
GEMM_TMA_EPI_ENTRY(gemm_bf16_nt_residual_tma_256, true, GEMM_EPI_RESIDUAL)
GEMM_TMA_EPI_ENTRY(gemm_bf16_nt_gelu_grad_tma_256, true, GEMM_EPI_GELU_GRAD)
