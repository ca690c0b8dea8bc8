// Matrix products C = alpha * op(A) op(B) + beta * C + bias, batched over grid z.
//
// Gradient-write convention: C is written (`=`) when beta == 0 (C is then never read, so a
// NaN-poisoned output buffer is fine) and accumulated (`C = beta * C + ...`) otherwise: the
// host passes beta = 1 to add a weight gradient into its buffer (`+=`).
//
// gemm_f32: f32 operands with any non-negative element strides (transposed operands are
//   just strides). A[i, l] = a[i * a_rs + l * a_cs], B[l, j] = b[l * b_rs + j * b_cs],
//   C[i, j] = c[i * c_rs + j]. 64 x 64 output tile per CTA, k-tiles of 16 staged in shared
//   memory, 256 threads, each computing a 4 x 4 block (rows ty + 16 r, columns tx + 16 s).
//   Launch: block (256), grid (ceil(n / 64), ceil(m / 64), batch).
// gemm_bf16_{nn,nt,tn,tt}: bf16 operands on tensor cores (mma.sync m16n8k16, f32
//   accumulation), f32 C. The first letter says how A ([m, k]) is stored: n = row-major
//   (k contiguous, a[i * lda + l]), t = transposed (a[l * lda + i]); the second says how B
//   ([k, n]) is stored: n = row-major (b[l * ldb + j]), t = transposed (b[j * ldb + l], the
//   layout of a Linear weight [out, in]: y = x W^T is gemm_bf16_nt). Two tiles (Bf16Small,
//   Bf16Large below): the plain names are 64 x 64 per CTA (4 warps of 32 x 32, two stages),
//   the `_128` names 128 x 128 (4 warps of 64 x 64, four stages). k-tiles of 32 are loaded
//   with cp.async into a ring of stages (the next tiles load while this one multiplies);
//   fragments are read with ldmatrix (.trans for a k-strided operand); the accumulators
//   leave through shared memory so that C is written row by row. Requirements the host
//   checks: lda, ldb and the batch strides are multiples of 8 elements and a, b are 16-byte
//   aligned (so every 8-element chunk starts 16-byte aligned). Ragged edges: cp.async's
//   zero-fill loads the part of a chunk inside the m, n or k edge and zeros beyond it.
//   Launch: block (128), grid (ceil(n / T), ceil(m / T), batch) for tile T, dynamic shared
//   memory Bf16Tile::SMEM_BYTES (20 KiB for 64, 80 KiB for 128).
//
// gemm_splitk_reduce: the second pass of a product split over k (the host runs the bf16 GEMM
//   with the k-ranges as batches, alpha 1, beta 0, no bias, into a workspace ws of `splits`
//   [m, n] matrices): C[i, j] = epilogue(ws[0][i, j] + ws[1][i, j] + ... in increasing s),
//   with the first epilogue stage above (alpha, beta, bias). Launch: block (256), grid
//   ceil(m * n / 256) up to 65,535, grid-stride.
//
// Reduction order: for each output, k runs in increasing order, one fma per k for f32; for
// bf16 the tensor core sums each 16-wide k-step in an order the hardware fixes, then the
// steps in increasing order, on either tile. Fixed per shape: results are reproducible run
// to run, and both tiles give the same bits.
//
// Epilogue (both): v = alpha * acc; if beta != 0, v = fma(beta, C, v); with GEMM_HAS_BIAS,
// v += bias[j] (f32, one per output column); each step rounded, none contracted.
//
// gemm_f32_gelu, gemm_f32_residual: gemm_f32 with a second epilogue stage on v over an
// auxiliary [m, n] matrix (aux[i * aux_rs + j], batch stride c_bs):
//   gemm_f32_gelu:     aux = v (the pre-activation, written `=`, kept for the backward),
//                      C = gelu(v), the exact erf GELU of src/backend/cpu/scalar.rs with the
//                      crate's f32 erf (as elementwise.cu's UNARY_GELU);
//   gemm_f32_residual: C = aux + v (aux read: the residual stream; r + (x W^T + b) in the
//                      CPU's operand order);
//   gemm_f32_gelu_grad: C = v * gelu'(aux) (aux read: the saved pre-activation; the MLP's
//                      data gradient (g W2) * gelu'(pre) in one GEMM, with the bits of
//                      elementwise.cu's BINARY_GELU_BACKWARD on (v, aux)).
// Launch as gemm_f32.
// gemm_bf16_{nn,nt}_{gelu,residual,gelu_grad}{,_128}: gemm_bf16_nn / _nt with the same
//   three stages on v (aux as above, f32, row stride aux_rs, batch stride c_bs), so a bf16
//   product and its stage are one launch with the bits of the plain product followed by the
//   elementwise kernels. Launch as gemm_bf16_nn on the same tile.

#ifndef TARFLOW_HOST_EMULATION
#include <cuda_bf16.h>
#endif

#include "crate_math.cuh"
#include "gemm_epilogue.cuh"

#define F_BM 64
#define F_BN 64
#define F_BK 16

// The body of gemm_f32 and gemm_f32_ep (EPI is a GemmEpilogue; aux is unread for NONE).
template <int EPI>
__device__ __forceinline__ void gemm_f32_body(float* __restrict__ c, const float* __restrict__ a,
                                              const float* __restrict__ b,
                                              const float* __restrict__ bias, float* aux,
                                              unsigned m, unsigned n, unsigned k, unsigned a_rs,
                                              unsigned a_cs, unsigned b_rs, unsigned b_cs,
                                              unsigned c_rs, unsigned aux_rs, unsigned a_bs,
                                              unsigned b_bs, unsigned c_bs, float alpha,
                                              float beta, unsigned flags) {
  __shared__ float As[F_BK][F_BM + 4];
  __shared__ float Bs[F_BK][F_BN + 4];
  unsigned tid = threadIdx.x;
  unsigned tx = tid & 15, ty = tid >> 4;
  unsigned m0 = blockIdx.y * F_BM, n0 = blockIdx.x * F_BN;
  a += (size_t)blockIdx.z * a_bs;
  b += (size_t)blockIdx.z * b_bs;
  c += (size_t)blockIdx.z * c_bs;
  float acc[4][4];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int s = 0; s < 4; ++s) acc[r][s] = 0.0f;

  for (unsigned k0 = 0; k0 < k; k0 += F_BK) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      unsigned e = tid + 256 * q;
      // A: k fastest across threads (coalesced when A is row-major).
      unsigned ar = e / F_BK, ak = e % F_BK;
      unsigned gi = m0 + ar, gl = k0 + ak;
      As[ak][ar] = (gi < m && gl < k) ? a[(size_t)gi * a_rs + (size_t)gl * a_cs] : 0.0f;
      // B: columns fastest (coalesced when B is row-major).
      unsigned bk = e / F_BN, bc = e % F_BN;
      unsigned gk = k0 + bk, gj = n0 + bc;
      Bs[bk][bc] = (gk < k && gj < n) ? b[(size_t)gk * b_rs + (size_t)gj * b_cs] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < F_BK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = As[kk][ty + 16 * r];
#pragma unroll
      for (int s = 0; s < 4; ++s) bv[s] = Bs[kk][tx + 16 * s];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) acc[r][s] = fmaf(av[r], bv[s], acc[r][s]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    unsigned i = m0 + ty + 16 * r;
    if (i >= m) continue;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      unsigned j = n0 + tx + 16 * s;
      if (j >= n) continue;
      float* cij = c + (size_t)i * c_rs + j;
      float v = epilogue(acc[r][s], alpha, beta, cij, bias, j, flags);
      *cij = epilogue_stage<EPI>(v, aux, blockIdx.z, c_bs, i, aux_rs, j);
    }
  }
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32(float* __restrict__ c, const float* __restrict__ a, const float* __restrict__ b,
             const float* __restrict__ bias, unsigned m, unsigned n, unsigned k,
             unsigned a_rs, unsigned a_cs, unsigned b_rs, unsigned b_cs, unsigned c_rs,
             unsigned a_bs, unsigned b_bs, unsigned c_bs, float alpha, float beta,
             unsigned flags) {
  gemm_f32_body<GEMM_EPI_NONE>(c, a, b, bias, nullptr, m, n, k, a_rs, a_cs, b_rs, b_cs, c_rs, 0,
                               a_bs, b_bs, c_bs, alpha, beta, flags);
}

// gemm_f32 with the GELU epilogue: aux = pre-activation (written), C = gelu(pre). The 16
// inlined GELUs per thread need more registers than ptxas gives gemm_f32's bounds on sm_80
// (it spilled); a minimum of 1 CTA per SM lets it use 72.
extern "C" __global__ void __launch_bounds__(256, 1)
    gemm_f32_gelu(float* __restrict__ c, const float* __restrict__ a,
                  const float* __restrict__ b, const float* __restrict__ bias,
                  float* __restrict__ aux, unsigned m, unsigned n, unsigned k, unsigned a_rs,
                  unsigned a_cs, unsigned b_rs, unsigned b_cs, unsigned c_rs, unsigned aux_rs,
                  unsigned a_bs, unsigned b_bs, unsigned c_bs, float alpha, float beta,
                  unsigned flags) {
  gemm_f32_body<GEMM_EPI_GELU>(c, a, b, bias, aux, m, n, k, a_rs, a_cs, b_rs, b_cs, c_rs, aux_rs,
                               a_bs, b_bs, c_bs, alpha, beta, flags);
}

// gemm_f32 with the residual epilogue: C = aux + v (aux: the residual, read only).
extern "C" __global__ void __launch_bounds__(256)
    gemm_f32_residual(float* __restrict__ c, const float* __restrict__ a,
                      const float* __restrict__ b, const float* __restrict__ bias,
                      float* __restrict__ aux, unsigned m, unsigned n, unsigned k,
                      unsigned a_rs, unsigned a_cs, unsigned b_rs, unsigned b_cs, unsigned c_rs,
                      unsigned aux_rs, unsigned a_bs, unsigned b_bs, unsigned c_bs, float alpha,
                      float beta, unsigned flags) {
  gemm_f32_body<GEMM_EPI_RESIDUAL>(c, a, b, bias, aux, m, n, k, a_rs, a_cs, b_rs, b_cs, c_rs,
                                   aux_rs, a_bs, b_bs, c_bs, alpha, beta, flags);
}

// gemm_f32 with the GELU-derivative epilogue: C = v * gelu'(aux) (aux: the pre-activation,
// read only). gemm_f32's bounds suffice here: ptxas fits it in 61 registers on sm_80 without
// spilling, so it keeps gemm_f32's occupancy.
extern "C" __global__ void __launch_bounds__(256)
    gemm_f32_gelu_grad(float* __restrict__ c, const float* __restrict__ a,
                       const float* __restrict__ b, const float* __restrict__ bias,
                       float* __restrict__ aux, unsigned m, unsigned n, unsigned k,
                       unsigned a_rs, unsigned a_cs, unsigned b_rs, unsigned b_cs,
                       unsigned c_rs, unsigned aux_rs, unsigned a_bs, unsigned b_bs,
                       unsigned c_bs, float alpha, float beta, unsigned flags) {
  gemm_f32_body<GEMM_EPI_GELU_GRAD>(c, a, b, bias, aux, m, n, k, a_rs, a_cs, b_rs, b_cs, c_rs,
                                    aux_rs, a_bs, b_bs, c_bs, alpha, beta, flags);
}

// ---- bf16 tensor-core GEMM ----

// Two tile shapes share one body: `Bf16Small` (64 x 64 per CTA, 4 warps of 32 x 32, two
// stages) and `Bf16Large` (128 x 128 per CTA, 4 warps of 64 x 64, four stages). A warp's
// 64 x 64 tile reads 8 ldmatrix.x4 per 32 mma, twice the 32 x 32 tile's ratio, so the large
// tile asks half as much of shared memory per flop (and of global memory: twice the reuse).
// The small tile keeps more CTAs in flight for small products. Each output sums the same
// 16-wide k-steps in the same increasing order in both, so both give the same bits.
#define T_BK 32
#define T_PAD 8

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct Bf16Tile {
  static constexpr int BM = BM_, BN = BN_, STAGES = STAGES_;
  static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  // m16 fragments and n8 fragments per warp.
  static constexpr int MI = BM / WARPS_M / 16, NF = BN / WARPS_N / 8;
  // Elements per operand stage: the larger of [BM][32 + 8] (k contiguous) and
  // [32][BM + 8] (stored transposed); likewise for B with BN.
  static constexpr int A_STAGE = BM * (T_BK + T_PAD) > T_BK * (BM + T_PAD)
                                     ? BM * (T_BK + T_PAD)
                                     : T_BK * (BM + T_PAD);
  static constexpr int B_STAGE = BN * (T_BK + T_PAD) > T_BK * (BN + T_PAD)
                                     ? BN * (T_BK + T_PAD)
                                     : T_BK * (BN + T_PAD);
  // Dynamic shared memory per CTA, in bytes (the host passes the same figure).
  static constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 2;
};
using Bf16Small = Bf16Tile<64, 64, 2, 2, 2>;
using Bf16Large = Bf16Tile<128, 128, 2, 2, 4>;

// The inline-PTX helpers. scripts/ptx/host/shim.h gives host versions of these for
// `scripts/ptx.sh host`, which runs this file on the CPU.
#ifndef TARFLOW_HOST_EMULATION
extern __shared__ __align__(16) unsigned char gemm_dynamic_smem[];

#include "async_copy_mma.cuh"

#else
#define gemm_dynamic_smem host_dynamic_smem
#endif

// Loads one operand tile into shared memory `s`: `ROWS` x `COLS` elements of a matrix whose
// element (row, col) sits at g[row * ld + col], starting at (row0, col0), bounded by
// (row_lim, col_lim), stored at s[r * (COLS + T_PAD) + col]. Chunks of 8 elements, spread
// over the CTA's threads; every chunk is one cp.async, whose zero-fill covers the part of a
// chunk beyond col_lim and a whole chunk beyond row_lim (ld, col0 and the base are multiples
// of 8 elements, so each chunk's first element is 16-byte aligned).
template <int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_tile(__nv_bfloat16* s, const __nv_bfloat16* __restrict__ g,
                                          unsigned ld, unsigned row0, unsigned col0,
                                          unsigned row_lim, unsigned col_lim) {
  constexpr int CPR = COLS / 8;  // chunks per row
  constexpr int PER_THREAD = ROWS * CPR / THREADS;
  static_assert(ROWS * CPR % THREADS == 0, "chunks must divide among the threads");
#pragma unroll
  for (int q = 0; q < PER_THREAD; ++q) {
    unsigned e = threadIdx.x + THREADS * q;
    unsigned r = e / CPR, cc = (e % CPR) * 8;
    unsigned gr = row0 + r, gc = col0 + cc;
    unsigned valid = gr < row_lim && gc < col_lim ? min(col_lim - gc, 8u) : 0u;
    // A chunk with nothing to read points at the operand's start, which is always mapped.
    const __nv_bfloat16* src = valid ? g + (size_t)gr * ld + gc : g;
    cp_async16_zfill(s + r * (COLS + T_PAD) + cc, src, 2 * valid);
  }
}

template <class T, bool A_KMAJOR, bool B_KMAJOR, int EPI>
__device__ __forceinline__ void gemm_bf16(float* __restrict__ c,
                                          const __nv_bfloat16* __restrict__ a,
                                          const __nv_bfloat16* __restrict__ b,
                                          const float* __restrict__ bias, float* aux,
                                          unsigned m, unsigned n, unsigned k, unsigned lda,
                                          unsigned ldb, unsigned ldc, unsigned aux_rs,
                                          unsigned a_bs, unsigned b_bs, unsigned c_bs,
                                          float alpha, float beta, unsigned flags) {
  __nv_bfloat16* As = reinterpret_cast<__nv_bfloat16*>(gemm_dynamic_smem);
  __nv_bfloat16* Bs = As + T::STAGES * T::A_STAGE;
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned wm = warp / T::WARPS_N, wn = warp % T::WARPS_N;
  unsigned m0 = blockIdx.y * T::BM, n0 = blockIdx.x * T::BN;
  a += (size_t)blockIdx.z * a_bs;
  b += (size_t)blockIdx.z * b_bs;
  c += (size_t)blockIdx.z * c_bs;

  float acc[T::MI][T::NF][4];
#pragma unroll
  for (int i = 0; i < T::MI; ++i)
#pragma unroll
    for (int j = 0; j < T::NF; ++j)
#pragma unroll
      for (int t = 0; t < 4; ++t) acc[i][j][t] = 0.0f;

  auto load = [&](int stage, unsigned k0) {
    __nv_bfloat16* as = As + stage * T::A_STAGE;
    __nv_bfloat16* bs = Bs + stage * T::B_STAGE;
    if (A_KMAJOR) {
      load_tile<T::BM, T_BK, T::THREADS>(as, a, lda, m0, k0, m, k);
    } else {
      load_tile<T_BK, T::BM, T::THREADS>(as, a, lda, k0, m0, k, m);
    }
    if (B_KMAJOR) {
      load_tile<T::BN, T_BK, T::THREADS>(bs, b, ldb, n0, k0, n, k);
    } else {
      load_tile<T_BK, T::BN, T::THREADS>(bs, b, ldb, k0, n0, k, n);
    }
  };

  // Pipeline: STAGES - 1 tiles in flight ahead of the one being multiplied; one commit group
  // per tile (empty past the last), so `wait_group STAGES - 2` at iteration kt means tile kt
  // has landed. One barrier per tile: after it, every warp is done with tile kt - 1, whose
  // stage the load issued next overwrites.
  unsigned ktiles = (k + T_BK - 1) / T_BK;
#pragma unroll
  for (int s = 0; s < T::STAGES - 1; ++s) {
    if ((unsigned)s < ktiles) load(s, s * T_BK);
    cp_async_commit();
  }
  for (unsigned kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<T::STAGES - 2>();
    __syncthreads();
    unsigned next = kt + T::STAGES - 1;
    if (next < ktiles) load(next % T::STAGES, next * T_BK);
    cp_async_commit();
    const __nv_bfloat16* as = As + (kt % T::STAGES) * T::A_STAGE;
    const __nv_bfloat16* bs = Bs + (kt % T::STAGES) * T::B_STAGE;
#pragma unroll
    for (int ks = 0; ks < T_BK; ks += 16) {
      unsigned af[T::MI][4], bf[T::NF][2];
#pragma unroll
      for (int mi = 0; mi < T::MI; ++mi) {
        unsigned base = wm * (T::MI * 16) + mi * 16;
        if (A_KMAJOR) {
          // Matrices: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (8-15, 8-15).
          unsigned row = base + (lane & 15), col = ks + (lane >> 4) * 8;
          ldmatrix_x4(af[mi], as + row * (T_BK + T_PAD) + col);
        } else {
          // Stored [k][m]: the same four matrices, read transposed.
          unsigned q = lane >> 3, r = lane & 7;
          unsigned kr = ks + r + (q >> 1) * 8, mc = base + (q & 1) * 8;
          ldmatrix_x4_trans(af[mi], as + kr * (T::BM + T_PAD) + mc);
        }
      }
#pragma unroll
      for (int p = 0; p < T::NF / 2; ++p) {
        unsigned nb = wn * (T::NF * 8) + p * 16;
        unsigned r4[4];
        if (B_KMAJOR) {
          // Stored [n][k]: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
          unsigned nr = nb + (lane & 7) + (lane >> 4) * 8, kc = ks + ((lane >> 3) & 1) * 8;
          ldmatrix_x4(r4, bs + nr * (T_BK + T_PAD) + kc);
        } else {
          // Stored [k][n]: the same four matrices, read transposed.
          unsigned q = lane >> 3, r = lane & 7;
          unsigned kr = ks + r + (q & 1) * 8, nc = nb + (q >> 1) * 8;
          ldmatrix_x4_trans(r4, bs + kr * (T::BN + T_PAD) + nc);
        }
        bf[2 * p][0] = r4[0];
        bf[2 * p][1] = r4[1];
        bf[2 * p + 1][0] = r4[2];
        bf[2 * p + 1][1] = r4[3];
      }
#pragma unroll
      for (int mi = 0; mi < T::MI; ++mi)
#pragma unroll
        for (int nf = 0; nf < T::NF; ++nf) mma_bf16(acc[mi][nf], af[mi], bf[nf]);
    }
  }
  // The accumulators go through shared memory, so that the epilogue walks C row by row (a
  // warp stores 32 consecutive floats) and its code is one loop, not one copy per
  // accumulator. Only empty cp.async groups are pending here, and the barrier ends every
  // warp's reads of the last stage.
  constexpr int CS = T::BN + 8;  // row stride: conflict-free float2 stores of fragments
  static_assert(T::BM * CS * 4 <= T::SMEM_BYTES, "the C tile must fit the stages' memory");
  static_assert(T::THREADS % T::BN == 0, "each thread keeps one column");
  float* cs = reinterpret_cast<float*>(gemm_dynamic_smem);
  __syncthreads();
  unsigned group = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mi = 0; mi < T::MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int nf = 0; nf < T::NF; ++nf) {
        unsigned r = wm * (T::MI * 16) + mi * 16 + group + 8 * h;
        unsigned col = wn * (T::NF * 8) + nf * 8 + 2 * tig;
        *reinterpret_cast<float2*>(cs + r * CS + col) =
            make_float2(acc[mi][nf][2 * h], acc[mi][nf][2 * h + 1]);
      }
  __syncthreads();
  unsigned col = threadIdx.x % T::BN, j = n0 + col;
  if (j >= n) return;
  constexpr unsigned ROW_STEP = T::THREADS / T::BN;
  unsigned rows = min(m - m0, (unsigned)T::BM);
  auto store = [&](unsigned r) {
    unsigned i = m0 + r;
    float* cij = c + (size_t)i * ldc + j;
    float v = epilogue(cs[r * CS + col], alpha, beta, cij, bias, j, flags);
    *cij = epilogue_stage<EPI>(v, aux, blockIdx.z, c_bs, i, aux_rs, j);
  };
  if (EPI == GEMM_EPI_NONE) {
#pragma unroll 4
    for (unsigned r = threadIdx.x / T::BN; r < rows; r += ROW_STEP) store(r);
  } else {
#pragma unroll 1
    for (unsigned r = threadIdx.x / T::BN; r < rows; r += ROW_STEP) store(r);
  }
}

// Entries: `gemm_bf16_<layout>` on the small tile, `gemm_bf16_<layout>_128` on the large one.
#define GEMM_BF16_ENTRY(NAME, T, AK, BK)                                                     \
  extern "C" __global__ void __launch_bounds__(T::THREADS)                                   \
      NAME(float* __restrict__ c, const __nv_bfloat16* __restrict__ a,                      \
           const __nv_bfloat16* __restrict__ b, const float* __restrict__ bias, unsigned m, \
           unsigned n, unsigned k, unsigned lda, unsigned ldb, unsigned ldc, unsigned a_bs, \
           unsigned b_bs, unsigned c_bs, float alpha, float beta, unsigned flags) {         \
    gemm_bf16<T, AK, BK, GEMM_EPI_NONE>(c, a, b, bias, nullptr, m, n, k, lda, ldb, ldc, 0,   \
                                        a_bs, b_bs, c_bs, alpha, beta, flags);               \
  }

GEMM_BF16_ENTRY(gemm_bf16_nn, Bf16Small, true, false)
GEMM_BF16_ENTRY(gemm_bf16_nt, Bf16Small, true, true)
GEMM_BF16_ENTRY(gemm_bf16_tn, Bf16Small, false, false)
GEMM_BF16_ENTRY(gemm_bf16_tt, Bf16Small, false, true)
GEMM_BF16_ENTRY(gemm_bf16_nn_128, Bf16Large, true, false)
GEMM_BF16_ENTRY(gemm_bf16_nt_128, Bf16Large, true, true)
GEMM_BF16_ENTRY(gemm_bf16_tn_128, Bf16Large, false, false)
GEMM_BF16_ENTRY(gemm_bf16_tt_128, Bf16Large, false, true)

// The epilogue stages, for A stored row-major (an activation or a gradient) and B either
// way: `_nt` for a Linear layer's x W^T (the GELU and residual stages), `_nn` for its input
// gradient g W (the GELU derivative). aux follows C's arguments and aux_rs follows ldc, as
// in gemm_f32_gelu.
#define GEMM_BF16_EPI_ENTRY(NAME, T, BK, EPI)                                                \
  extern "C" __global__ void __launch_bounds__(T::THREADS)                                   \
      NAME(float* __restrict__ c, const __nv_bfloat16* __restrict__ a,                      \
           const __nv_bfloat16* __restrict__ b, const float* __restrict__ bias,             \
           float* __restrict__ aux, unsigned m, unsigned n, unsigned k, unsigned lda,       \
           unsigned ldb, unsigned ldc, unsigned aux_rs, unsigned a_bs, unsigned b_bs,       \
           unsigned c_bs, float alpha, float beta, unsigned flags) {                        \
    gemm_bf16<T, true, BK, EPI>(c, a, b, bias, aux, m, n, k, lda, ldb, ldc, aux_rs, a_bs,    \
                                b_bs, c_bs, alpha, beta, flags);                             \
  }

GEMM_BF16_EPI_ENTRY(gemm_bf16_nn_gelu, Bf16Small, false, GEMM_EPI_GELU)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nn_residual, Bf16Small, false, GEMM_EPI_RESIDUAL)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nn_gelu_grad, Bf16Small, false, GEMM_EPI_GELU_GRAD)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nt_gelu, Bf16Small, true, GEMM_EPI_GELU)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nt_residual, Bf16Small, true, GEMM_EPI_RESIDUAL)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nt_gelu_grad, Bf16Small, true, GEMM_EPI_GELU_GRAD)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nn_gelu_128, Bf16Large, false, GEMM_EPI_GELU)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nn_residual_128, Bf16Large, false, GEMM_EPI_RESIDUAL)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nn_gelu_grad_128, Bf16Large, false, GEMM_EPI_GELU_GRAD)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nt_gelu_128, Bf16Large, true, GEMM_EPI_GELU)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nt_residual_128, Bf16Large, true, GEMM_EPI_RESIDUAL)
GEMM_BF16_EPI_ENTRY(gemm_bf16_nt_gelu_grad_128, Bf16Large, true, GEMM_EPI_GELU_GRAD)

extern "C" __global__ void __launch_bounds__(256)
    gemm_splitk_reduce(float* __restrict__ c, const float* __restrict__ ws,
                       const float* __restrict__ bias, unsigned m, unsigned n, unsigned ldc,
                       unsigned splits, float alpha, float beta, unsigned flags) {
  size_t total = (size_t)m * n;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    float acc = ws[e];
    for (unsigned s = 1; s < splits; ++s) acc = __fadd_rn(acc, ws[s * total + e]);
    unsigned i = (unsigned)(e / n), j = (unsigned)(e % n);
    float* cij = c + (size_t)i * ldc + j;
    *cij = epilogue(acc, alpha, beta, cij, bias, j, flags);
  }
}
