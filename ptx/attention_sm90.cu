// ptx-arch: compute_90a
//
// The bf16-input attention forward of attention.cu (`attn_fwd_bf16s_d64`: the same
// arguments, semantics, units and results; see there) on Hopper's warpgroup tensor cores,
// `wgmma.mma_async`, which needs sm_90a: compiled for compute_90a, so the module loads on a
// compute-capability 9.0 GPU and in the interpreter only.
//
// attn_fwd_bf16s_d64_wgmma: head dims Dh = Dv = 64; q, k, v stored as bf16 with feature
//   stride 1, the other strides and the base offsets multiples of 8 elements (the host
//   checks). 256 threads as two warpgroups of 64 queries each, 128 queries per CTA, key
//   tiles of 64 through a two-stage cp.async ring. Q, K and V sit in shared memory in the
//   canonical no-swizzle layout (core matrices of eight 16-byte rows, 128 contiguous bytes):
//   Q and K k-major (a row block of 8 positions is 8 core matrices along the features, 128
//   bytes apart, row blocks 1,024 bytes apart), V the transposed way (8 consecutive features
//   of one key per 16 bytes: keys along k 128 bytes apart per block of 8, feature blocks
//   1,024 bytes apart), read with imm-trans-b 1. Per key tile a warpgroup issues
//   S = Q K^T as four m64n64k16 (A and B from shared memory), waits, runs the online
//   softmax on its accumulators, and issues O += P V as four m64n64k16 with P from
//   registers: the S accumulators of a 16-key step, rounded to bf16 in pairs, are the A
//   fragment (as mma.m16n8k16's). Under the causal rule a warpgroup skips the key tiles none
//   of its 64 rows sees, and the CTAs run the longest query tiles first.
//   Launch: 256 threads, grid (ceil(Nq / 128), heads, batch), 48 KiB of dynamic shared
//   memory (Q 16 KiB, then two stages of K and V).
//
// attn_bwd_dkdv_bf16_d64_wgmma, attn_bwd_dq_bf16_d64_wgmma: attention.cu's tensor-core
//   backward (`attn_bwd_dkdv_bf16_d64`, `attn_bwd_dq_bf16_d64`: the same arguments, launch,
//   order and results, dO read from attn_bwd_dot_round_bf16s's bf16 copy) on wgmma. One
//   warpgroup per CTA: 64 keys (dK/dV) or 64 queries (dQ), held as A fragments in registers
//   (loaded straight from global memory, 4 bytes at a time, once); the ring carries the other
//   side's tiles (Q and dO, or K and V) in the canonical k-major layout. Every product is an
//   m64n64k16 with A from registers: S^T = K Q^T and dP^T = V dO^T read the tiles k-major;
//   dV += P^T dO, dK += dS^T Q and dQ += dS K read the same bytes transposed (features along
//   n, positions along k: leading byte offset 1,024, stride byte offset 128, imm-trans-b 1).
//   Launch as the mma.sync kernels: 128 threads, 64 rows per CTA, 32 KiB of dynamic shared
//   memory (two stages of two 64 x 64 tiles).
//
// Reduction order: as attn_fwd_bf16s_d64 (each 16-wide k-step of either product in the
// tensor core's order, steps increasing; softmax sums per tile in the same order), so on the
// interpreter the two give the same bits; on a GPU wgmma and mma.sync may round a step
// differently.

#include <cuda_bf16.h>

#include "async_copy_mma.cuh"
#include "sm90.cuh"

#define FULL_MASK 0xffffffffu
#define W_D 64
#define W_BK 64
#define W_BQ 128
// Bytes of a block of 8 rows of a 64-feature tile: 8 core matrices of 128 bytes.
#define W_ROW_BLOCK 1024
#define W_Q_BYTES (W_BQ * W_D * 2)
#define W_KV_BYTES (W_BK * W_D * 2)
#define W_STAGES 2

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ bool visible(unsigned causal, unsigned i, unsigned j, unsigned off) {
  return !causal || j <= i + off;
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
  __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&p);
}

extern __shared__ __align__(128) unsigned char attn_wg_smem[];

// S += Q K^T for one 16-feature step: m64n64k16, A and B by descriptor.
__device__ __forceinline__ void wgmma_ss(float* d, unsigned long long da, unsigned long long db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(1));
}

// O += P V for one 16-key step: m64n64k16, A (P) from registers, B (V) by descriptor,
// transposed (MN-major) with TB 1.
template <int TB = 1>
__device__ __forceinline__ void wgmma_rs(float* d, const unsigned* a, unsigned long long db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1), "n"(TB));
}

// Rows row0 .. row0 + ROWS - 1 (64 features, feature stride 1, row stride rs) of a bf16
// matrix into `s` by cp.async, rows at or beyond `rows` zero-filled. K-major (Q, K): the
// chunk of row r and features 8 c .. 8 c + 7 goes to (r / 8) * 1024 + c * 128 + (r % 8) * 16.
// Transposed (V): to c * (ROWS * 16) + r * 16, i.e. feature block c, key r. Consecutive
// threads take consecutive rows of one core matrix: 128 contiguous bytes per 8 threads.
template <int ROWS, bool KMAJOR, int THREADS = 256>
__device__ __forceinline__ void load_rows(unsigned char* s, const __nv_bfloat16* __restrict__ g,
                                          unsigned row0, unsigned rows, unsigned rs) {
  constexpr int CHUNKS = ROWS * (W_D / 8);
  static_assert(CHUNKS % THREADS == 0, "chunks must divide among the threads");
#pragma unroll
  for (int q = 0; q < CHUNKS / THREADS; ++q) {
    unsigned e = threadIdx.x + THREADS * q;
    unsigned r = (e & 7) | (e >> 6) << 3, c = (e >> 3) & 7;
    unsigned gr = row0 + r;
    bool in = gr < rows;
    // A row with nothing to read points at the operand's start, which is always mapped.
    const __nv_bfloat16* src = in ? g + (size_t)gr * rs + c * 8 : g;
    unsigned at = KMAJOR ? (r >> 3) * W_ROW_BLOCK + c * 128 + (r & 7) * 16 : c * (ROWS * 16) + r * 16;
    cp_async16_zfill(s + at, src, in ? 16u : 0u);
  }
}

// The descriptors of one key tile's operands in shared memory: Q's 64 rows (k-major), the
// tile's keys (k-major, as B of S = Q K^T) and its values (B of O += P V, features along n,
// keys along k: MN-major), for k-step `ks` (features 16 ks ..) or `kk` (keys 16 kk ..).
// SWIZZLED false: the canonical no-swizzle layouts load_rows writes; true: the 128-byte
// swizzled layouts a TMA copy of a box of 64 features by the rows writes (a 128-byte line per
// row, 8-line atoms of 1,024 bytes; swizzle mode 1; a k16 step is 32 bytes further along a
// line for Q and K, and two atoms further for V).
// A step's descriptor is the tile's plus the step's offset in 16-byte units, added to the
// start-address field (a shared address stays below 2^18, so the field cannot carry into
// the next): one descriptor per tile, an immediate add per step.
template <bool SWIZZLED>
struct FwdDescs {
  static __device__ __forceinline__ unsigned long long qk(unsigned base, int ks) {
    if (SWIZZLED)
      return ((unsigned long long)((base & 0x3FFFF) >> 4) | 1ull << 16 |
              (unsigned long long)(1024 >> 4) << 32 | 1ull << 62) +
             2 * ks;
    return smem_desc(base, 128, W_ROW_BLOCK) + 16 * ks;
  }
  static __device__ __forceinline__ unsigned long long v(unsigned base, int kk) {
    if (SWIZZLED)
      return ((unsigned long long)((base & 0x3FFFF) >> 4) |
              (unsigned long long)(W_KV_BYTES >> 4) << 16 |
              (unsigned long long)(1024 >> 4) << 32 | 1ull << 62) +
             128 * kk;
    // Keys 16 kk .. 16 kk + 15: two blocks of 8 keys, 128 bytes apart; feature blocks
    // W_BK * 16 bytes apart.
    return smem_desc(base, 128, W_BK * 16) + 16 * kk;
  }
};

// The running state of a warpgroup's 64 query rows (this thread's two of them, rows g and
// g + 8 of its warp's 16): the output accumulators, the running max and sum.
struct FwdRows {
  float acc[32];
  float m[2], l[2];
  unsigned i_row[2];
};

// One key tile (keys k0 .. k0 + 63) for a warpgroup whose rows start at r0: S = Q K^T, scale,
// mask (only tiles that reach past the keys or the warpgroup's diagonal), online softmax,
// O += P V; both products retired before it returns.
template <bool SWIZZLED>
__device__ __forceinline__ void fwd_tile(FwdRows& st, unsigned q_base, unsigned k_base,
                                         unsigned v_base, unsigned k0, unsigned r0,
                                         unsigned nk, unsigned off, unsigned causal,
                                         float scale_log2, unsigned tig) {
  using D = FwdDescs<SWIZZLED>;
  float s[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.0f;
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < W_D / 16; ++ks) wgmma_ss(s, D::qk(q_base, ks), D::qk(k_base, ks));
  wgmma_commit();
  wgmma_wait<0>();

  // Accumulator i: row g + 8 ((i / 2) % 2), key k0 + 8 (i / 4) + 2 tig + (i % 2).
  bool edge = k0 + W_BK > nk || (causal && k0 + W_BK > r0 + off + 1);
  float mt[2] = {neg_inf(), neg_inf()};
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    unsigned h = (i >> 1) & 1, j = k0 + (i >> 2) * 8 + 2 * tig + (i & 1);
    float x = s[i] * scale_log2;
    if (edge && !(j < nk && visible(causal, st.i_row[h], j, off))) x = neg_inf();
    s[i] = x;
    mt[h] = fmaxf(mt[h], x);
  }
  float mu[2], corr[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mt[h] = fmaxf(mt[h], __shfl_xor_sync(FULL_MASK, mt[h], 1));
    mt[h] = fmaxf(mt[h], __shfl_xor_sync(FULL_MASK, mt[h], 2));
    float mn = fmaxf(st.m[h], mt[h]);
    mu[h] = mn == neg_inf() ? 0.0f : mn;
    corr[h] = exp2f(st.m[h] - mu[h]);
    st.m[h] = mn;
    st.l[h] *= corr[h];
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) st.acc[i] *= corr[(i >> 1) & 1];
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    float p = exp2f(s[i] - mu[(i >> 1) & 1]);
    st.l[(i >> 1) & 1] += p;
    s[i] = p;
  }
  // O += P V: the accumulators of keys 16 kk .. 16 kk + 15 are the A fragment.
  unsigned pa[W_BK / 16][4];
#pragma unroll
  for (int kk = 0; kk < W_BK / 16; ++kk) {
    pa[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < W_BK / 16; ++kk) wgmma_rs<1>(st.acc, pa[kk], D::v(v_base, kk));
  wgmma_commit();
  wgmma_wait<0>();
}

// The rows' outputs O / l (and their bf16 copy, token-major [B, Nq, H, Dv] as
// attention.cu's) and base-2 log-sum-exps.
__device__ __forceinline__ void fwd_store(FwdRows& st, float* __restrict__ o,
                                          float* __restrict__ lse,
                                          __nv_bfloat16* __restrict__ o16, unsigned nq,
                                          unsigned o_sn, unsigned o_sd, unsigned tig) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    st.l[h] = __fadd_rn(st.l[h], __shfl_xor_sync(FULL_MASK, st.l[h], 1));
    st.l[h] = __fadd_rn(st.l[h], __shfl_xor_sync(FULL_MASK, st.l[h], 2));
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    unsigned i = st.i_row[h];
    if (i >= nq) continue;
    float inv = st.l[h] > 0.0f ? __frcp_rn(st.l[h]) : 0.0f;
#pragma unroll
    for (int f = 0; f < W_D / 8; ++f) {
      float x[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        unsigned c = f * 8 + 2 * tig + e;
        x[e] = st.acc[4 * f + 2 * h + e] * inv;
        o[(size_t)i * o_sn + (size_t)c * o_sd] = x[e];
      }
      // The bf16 copy the backward reads: the same values rounded, two per 4-byte store.
      if (o16)
        *reinterpret_cast<unsigned*>(o16 + (size_t)i * (gridDim.y * W_D) + f * 8 + 2 * tig) =
            pack_bf16(x[0], x[1]);
    }
    if (tig == 0) lse[i] = st.l[h] > 0.0f ? st.m[h] + __log2f(st.l[h]) : neg_inf();
  }
}

// The rows this thread keeps: warpgroup rows r0 .. r0 + 63, warp w's 16 of them.
__device__ __forceinline__ void fwd_rows_init(FwdRows& st, unsigned r0, unsigned w,
                                              unsigned group) {
#pragma unroll
  for (int i = 0; i < 32; ++i) st.acc[i] = 0.0f;
  st.m[0] = st.m[1] = neg_inf();
  st.l[0] = st.l[1] = 0.0f;
  st.i_row[0] = r0 + w * 16 + group;
  st.i_row[1] = r0 + w * 16 + group + 8;
}

extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_bf16s_d64_wgmma(
    float* __restrict__ o, float* __restrict__ lse, __nv_bfloat16* __restrict__ o16,
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
    const __nv_bfloat16* __restrict__ v, unsigned nq, unsigned nk, unsigned dh, unsigned dv,
    unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh,
    unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
    unsigned o_sb, unsigned o_sh, unsigned o_sn, unsigned o_sd, float scale_log2,
    unsigned causal) {
  unsigned char* qs = attn_wg_smem;
  unsigned char* ring = qs + W_Q_BYTES;  // stage st: K at st * 2 * KV, V after it
  unsigned lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3, wg = threadIdx.x >> 7;
  unsigned group = lane >> 2, tig = lane & 3;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  o += (size_t)bz * o_sb + (size_t)hy * o_sh;
  lse += ((size_t)bz * gridDim.y + hy) * nq;
  if (o16) o16 += (size_t)bz * nq * gridDim.y * W_D + (size_t)hy * W_D;
  unsigned q0 = (causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * W_BQ;
  unsigned off = causal ? nk - nq : 0;
  unsigned qend = min(nq, q0 + W_BQ);
  unsigned kend = causal ? min(nk, qend + off) : nk;
  unsigned ntiles = (kend + W_BK - 1) / W_BK;
  // The warpgroup's rows: r0 .. r0 + 63.
  unsigned r0 = q0 + wg * 64;
  FwdRows st;
  fwd_rows_init(st, r0, w, group);

  // Group 0: Q and key tile 0; then the ring keeps one tile ahead.
  load_rows<W_BQ, true>(qs, q, q0, nq, q_sn);
  if (ntiles > 0) {
    load_rows<W_BK, true>(ring, k, 0, nk, k_sn);
    load_rows<W_BK, false>(ring + W_KV_BYTES, v, 0, nk, v_sn);
  }
  cp_async_commit();
  unsigned q_base = smem_addr(qs) + wg * 8 * W_ROW_BLOCK;

  for (unsigned t = 0; t < ntiles; ++t) {
    cp_async_wait<0>();
    fence_proxy_async();
    // Every thread's copies of tile t have landed, and every warpgroup is done with the
    // stage the next load overwrites (tile t - 1's: both of its batches were waited for).
    __syncthreads();
    if (t + 1 < ntiles) {
      unsigned char* nxt = ring + ((t + 1) % W_STAGES) * 2 * W_KV_BYTES;
      load_rows<W_BK, true>(nxt, k, (t + 1) * W_BK, nk, k_sn);
      load_rows<W_BK, false>(nxt + W_KV_BYTES, v, (t + 1) * W_BK, nk, v_sn);
    }
    cp_async_commit();
    unsigned k0 = t * W_BK;
    // The warpgroup's last row sees keys up to r0 + 63 + off; a tile past it is skipped.
    if (causal && k0 > r0 + 63 + off) continue;
    unsigned k_base = smem_addr(ring + (t % W_STAGES) * 2 * W_KV_BYTES);
    fwd_tile<false>(st, q_base, k_base, k_base + W_KV_BYTES, k0, r0, nk, off, causal,
                    scale_log2, tig);
  }
  fwd_store(st, o, lse, o16, nq, o_sn, o_sd, tig);
}

// ---- the forward fed by TMA ----
//
// attn_fwd_bf16s_d64_tma: attn_fwd_bf16s_d64_wgmma's computation (the same fwd_tile per key
//   tile, so the same bits) on a warp-specialized CTA of three warpgroups, with the tensor
//   maps of q, k and v (made by the host: dims {64 features, positions, heads, batch}, the
//   views' strides, boxes of 64 features by 128 queries or 64 keys, 128-byte swizzle) in
//   place of their pointers. The first warpgroup only feeds: one thread copies the Q tile
//   (one box, completing on `q_full`) and then each key tile's K and V boxes into a ring of
//   T_STAGES stages (`full` / `empty` mbarriers as gemm_sm90.cu's TMA tile). The other two
//   only compute, 64 queries each: wait for `full`, fwd_tile from the swizzled stage (K read
//   k-major; V, a line of 64 features per key, read MN-major), release the stage with one
//   arrival per warp. A warpgroup that skips a tile under the causal rule still waits for
//   its copies before it releases the stage, so a release never runs ahead of the other
//   warpgroup's. No thread computes a load address and no __syncthreads orders the ring;
//   positions past the ends are the copies' zero fill.
//   Launch: 384 threads, grid (ceil(Nq / 128), heads, batch), T_SMEM bytes of dynamic shared
//   memory (Q, the ring, 1 KiB to align it, the mbarriers).

#define T_STAGES 3
#define T_RING (T_STAGES * 2 * W_KV_BYTES)
#define T_SMEM (W_Q_BYTES + T_RING + 1024 + (1 + 2 * T_STAGES) * 8)

// Box {0, pos, head, batch} of `map` into shared memory at `dst`, completing on `bar`.
__device__ __forceinline__ void tma_load_rows(unsigned dst, const TensorMap* map, int pos,
                                              int head, int batch, unsigned bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"((unsigned long long)map), "r"(0), "r"(pos), "r"(head), "r"(batch), "r"(bar)
      : "memory");
}

extern "C" __global__ void __launch_bounds__(384, 1) attn_fwd_bf16s_d64_tma(
    float* __restrict__ o, float* __restrict__ lse, __nv_bfloat16* __restrict__ o16,
    const __grid_constant__ TensorMap q_map, const __grid_constant__ TensorMap k_map,
    const __grid_constant__ TensorMap v_map, unsigned nq, unsigned nk, unsigned dh,
    unsigned dv, unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb,
    unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn,
    unsigned v_sd, unsigned o_sb, unsigned o_sh, unsigned o_sn, unsigned o_sd,
    float scale_log2, unsigned causal) {
  unsigned base = (smem_addr(attn_wg_smem) + 1023) & ~1023u;
  unsigned qs = base, ring = base + W_Q_BYTES;
  unsigned q_full = ring + T_RING, full0 = q_full + 8, empty0 = full0 + 8 * T_STAGES;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  unsigned q0 = (causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * W_BQ;
  unsigned off = causal ? nk - nq : 0;
  unsigned qend = min(nq, q0 + W_BQ);
  unsigned kend = causal ? min(nk, qend + off) : nk;
  unsigned ntiles = (kend + W_BK - 1) / W_BK;
  if (threadIdx.x == 0) mbar_init(q_full, 1);
  ring_init(full0, empty0, T_STAGES);
  if (threadIdx.x < 128) {
    if (threadIdx.x == 0) {
      mbar_expect_bytes(q_full, W_Q_BYTES);
      tma_load_rows(qs, &q_map, q0, hy, bz, q_full);
      for (unsigned t = 0; t < ntiles; ++t) {
        unsigned s = t % T_STAGES;
        mbar_wait(empty0 + 8 * s, ((t / T_STAGES) & 1) ^ 1);
        unsigned full = full0 + 8 * s, k_at = ring + s * 2 * W_KV_BYTES;
        mbar_expect_bytes(full, 2 * W_KV_BYTES);
        tma_load_rows(k_at, &k_map, t * W_BK, hy, bz, full);
        tma_load_rows(k_at + W_KV_BYTES, &v_map, t * W_BK, hy, bz, full);
      }
    }
    return;
  }
  unsigned ct = threadIdx.x - 128;
  unsigned lane = ct & 31, w = (ct >> 5) & 3, wg = ct >> 7;
  unsigned group = lane >> 2, tig = lane & 3;
  o += (size_t)bz * o_sb + (size_t)hy * o_sh;
  lse += ((size_t)bz * gridDim.y + hy) * nq;
  if (o16) o16 += (size_t)bz * nq * gridDim.y * W_D + (size_t)hy * W_D;
  unsigned r0 = q0 + wg * 64;
  FwdRows st;
  fwd_rows_init(st, r0, w, group);
  unsigned q_base = qs + wg * 64 * 128;
  mbar_wait(q_full, 0);
  for (unsigned t = 0; t < ntiles; ++t) {
    unsigned s = t % T_STAGES;
    mbar_wait(full0 + 8 * s, (t / T_STAGES) & 1);
    unsigned k0 = t * W_BK;
    if (!(causal && k0 > r0 + 63 + off)) {
      unsigned k_at = ring + s * 2 * W_KV_BYTES;
      fwd_tile<true>(st, q_base, k_at, k_at + W_KV_BYTES, k0, r0, nk, off, causal, scale_log2,
                     tig);
    }
    if (lane == 0) mbar_arrive(empty0 + 8 * s);
  }
  fwd_store(st, o, lse, o16, nq, o_sn, o_sd, tig);
}

// ---- the backward ----

// The A fragments (k-steps of 16 features) of rows r0 + 16 w + g and + 8 of a bf16 matrix
// with feature stride 1 and row stride rs, read from global memory; rows at or beyond
// `rows` are zeros.
__device__ __forceinline__ void rows_as_a(unsigned (*a)[4], const __nv_bfloat16* __restrict__ g,
                                          unsigned r0, unsigned rows, unsigned rs) {
  unsigned lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  unsigned r = r0 + w * 16 + (lane >> 2), c = 2 * (lane & 3);
  const unsigned* lo = reinterpret_cast<const unsigned*>(g + (size_t)r * rs);
  const unsigned* hi = reinterpret_cast<const unsigned*>(g + (size_t)(r + 8) * rs);
#pragma unroll
  for (int ks = 0; ks < W_D / 16; ++ks) {
    unsigned f = (ks * 16 + c) / 2;
    a[ks][0] = r < rows ? lo[f] : 0u;
    a[ks][1] = r + 8 < rows ? hi[f] : 0u;
    a[ks][2] = r < rows ? lo[f + 4] : 0u;
    a[ks][3] = r + 8 < rows ? hi[f + 4] : 0u;
  }
}

// The A fragment (16 rows, k = columns 16 kk .. 16 kk + 15) of a warp's 16 x 64 f32
// accumulators (s[4 f + e]: n-fragment f), rounded to bf16.
__device__ __forceinline__ void acc_as_a(unsigned* a, const float* s, int kk) {
  a[0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
  a[1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
  a[2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
  a[3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
}

// Descriptors of a 64 x 64 tile at `base` (64 positions by 64 features) read with the rows
// along n and the features along k (k-step ks), or transposed, features along n and rows
// along k (k-step kk of 16 rows). SWIZZLED false: the canonical k-major no-swizzle layout
// load_rows writes; true: the 128-byte swizzled box a TMA copy writes, read k-major or
// MN-major as the forward reads its Q and K, or its V.
template <bool SWIZZLED>
struct BwdDescs {
  static __device__ __forceinline__ unsigned long long rows(unsigned base, int ks) {
    if (SWIZZLED) return FwdDescs<true>::qk(base, ks);
    return smem_desc(base, 128, W_ROW_BLOCK) + 16 * ks;
  }
  static __device__ __forceinline__ unsigned long long cols(unsigned base, int kk) {
    if (SWIZZLED) return FwdDescs<true>::v(base, kk);
    return smem_desc(base, W_ROW_BLOCK, 128) + 128 * kk;
  }
};

#define BWD_TILE (64 * W_D * 2)

// Rows row0 .. row0 + 63 of two bf16 matrices (the tile pair of one ring stage) into
// `stage`: a's tile, then b's.
__device__ __forceinline__ void load_pair(unsigned char* stage,
                                          const __nv_bfloat16* __restrict__ a, unsigned a_rs,
                                          const __nv_bfloat16* __restrict__ b, unsigned b_rs,
                                          unsigned row0, unsigned rows) {
  load_rows<64, true, 128>(stage, a, row0, rows, a_rs);
  load_rows<64, true, 128>(stage + BWD_TILE, b, row0, rows, b_rs);
}

// s = A1 T1^T and dp = A2 T2^T for the 64 x 64 tiles at t1 and t2 (read by rows), A1 and
// A2 the warpgroup's rows as A fragments; waits for both.
template <bool SWIZZLED>
__device__ __forceinline__ void two_products(float* s, float* dp, const unsigned (*a1)[4],
                                             const unsigned (*a2)[4], unsigned t1, unsigned t2) {
  using D = BwdDescs<SWIZZLED>;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    s[i] = 0.0f;
    dp[i] = 0.0f;
  }
  pin_accumulators<32>(s);
  pin_accumulators<32>(dp);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < W_D / 16; ++ks) wgmma_rs<0>(s, a1[ks], D::rows(t1, ks));
#pragma unroll
  for (int ks = 0; ks < W_D / 16; ++ks) wgmma_rs<0>(dp, a2[ks], D::rows(t2, ks));
  wgmma_commit();
  wgmma_wait<0>();
}

// The state of a warpgroup's 64 keys in the dK / dV kernels: K and V as A fragments, the
// gradients' accumulators, and this thread's two keys (group and group + 8 of its warp's 16).
struct KeyRows {
  unsigned ka[W_D / 16][4], va[W_D / 16][4];
  float dka[32], dva[32];
  unsigned j_row[2];
};

// The warpgroup's keys k0 .. k0 + 63 of k and v (already offset to the head), the
// accumulators zeroed.
__device__ __forceinline__ void key_rows_init(KeyRows& st, const __nv_bfloat16* __restrict__ k,
                                              const __nv_bfloat16* __restrict__ v, unsigned k0,
                                              unsigned nk, unsigned k_sn, unsigned v_sn,
                                              unsigned w, unsigned group) {
  rows_as_a(st.ka, k, k0, nk, k_sn);
  rows_as_a(st.va, v, k0, nk, v_sn);
  st.j_row[0] = k0 + w * 16 + group;
  st.j_row[1] = k0 + w * 16 + group + 8;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    st.dka[i] = 0.0f;
    st.dva[i] = 0.0f;
  }
}

// Whether the 64 x 64 block of queries q0 .. and keys k0 .. has entries to mask: it reaches
// past the queries or the keys, or the causal diagonal crosses it (its last key past its
// first query's reach). The other blocks skip the index arithmetic and the selects.
__device__ __forceinline__ bool edge_tile(unsigned q0, unsigned k0, unsigned nq, unsigned nk,
                                          unsigned off, unsigned causal) {
  return q0 + 64 > nq || k0 + 64 > nk || (causal && k0 + 63 > q0 + off);
}

// One query tile (queries i0 .. i0 + 63; Q and dO at qs and gs, their lse and D at Lt and
// Dt) for a warpgroup's keys: S^T = K Q^T and dP^T = V dO^T, P^T and dS^T in their place
// (masked entries 0), dV += P^T dO and dK += dS^T Q; every product retired before it
// returns.
template <bool SWIZZLED>
__device__ __forceinline__ void dkdv_tile(KeyRows& st, unsigned qs, unsigned gs,
                                          const float* Lt, const float* Dt, unsigned i0,
                                          unsigned k0, unsigned nq, unsigned nk, unsigned off,
                                          unsigned causal, float scale_log2, unsigned tig) {
  using D = BwdDescs<SWIZZLED>;
  // The warpgroup's 64 keys (k0 ..) by the tile's 64 queries.
  float s[32], dp[32];
  two_products<SWIZZLED>(s, dp, st.ka, st.va, qs, gs);
  if (edge_tile(i0, k0, nq, nk, off, causal)) {
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      unsigned c = (x >> 2) * 8 + 2 * tig + (x & 1);
      unsigned i = i0 + c, j = st.j_row[(x >> 1) & 1];
      bool vis = i < nq && j < nk && visible(causal, i, j, off);
      float pv = vis ? exp2f(fmaf(s[x], scale_log2, -Lt[c])) : 0.0f;
      s[x] = pv;
      dp[x] = vis ? pv * (dp[x] - Dt[c]) : 0.0f;
    }
  } else {
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      unsigned c = (x >> 2) * 8 + 2 * tig + (x & 1);
      float pv = exp2f(fmaf(s[x], scale_log2, -Lt[c]));
      s[x] = pv;
      dp[x] = pv * (dp[x] - Dt[c]);
    }
  }
  // Over the tile's 64 queries, 16 at a time.
  unsigned pa[4][4], da[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    acc_as_a(pa[kk], s, kk);
    acc_as_a(da[kk], dp, kk);
  }
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(st.dva, pa[kk], D::cols(gs, kk));
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(st.dka, da[kk], D::cols(qs, kk));
  wgmma_commit();
  wgmma_wait<0>();
}

// A warpgroup's 64 x 64 gradient accumulators (this thread's rows[0] and rows[1], rows at
// or beyond n skipped) into `out` with row stride sn and feature stride sd; with SCALE,
// times alpha.
template <bool SCALE>
__device__ __forceinline__ void store_rows(float* __restrict__ out, const float* acc,
                                           const unsigned* rows, unsigned n, unsigned sn,
                                           unsigned sd, float alpha, unsigned tig) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    unsigned r = rows[h];
    if (r >= n) continue;
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x = acc[4 * f + 2 * h + e];
        out[(size_t)r * sn + (size_t)(f * 8 + 2 * tig + e) * sd] = SCALE ? alpha * x : x;
      }
  }
}

// The warpgroup's dK (times alpha) and dV rows.
__device__ __forceinline__ void key_rows_store(const KeyRows& st, float* __restrict__ dk,
                                               float* __restrict__ dvo, unsigned nk,
                                               unsigned dk_sn, unsigned dk_sd, unsigned dv_sn,
                                               unsigned dv_sd, float alpha, unsigned tig) {
  store_rows<true>(dk, st.dka, st.j_row, nk, dk_sn, dk_sd, alpha, tig);
  store_rows<false>(dvo, st.dva, st.j_row, nk, dv_sn, dv_sd, alpha, tig);
}

extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkdv_bf16_d64_wgmma(
    float* __restrict__ dk, float* __restrict__ dvo, const __nv_bfloat16* __restrict__ q,
    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const __nv_bfloat16* __restrict__ g, const float* __restrict__ lse,
    const float* __restrict__ dd, unsigned nq, unsigned nk, unsigned dh, unsigned dv,
    unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh,
    unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
    unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd, unsigned dk_sb, unsigned dk_sh,
    unsigned dk_sn, unsigned dk_sd, unsigned dv_sb, unsigned dv_sh, unsigned dv_sn,
    unsigned dv_sd, float scale_log2, float alpha, unsigned causal) {
  __shared__ float Ls[2][64];
  __shared__ float Ds[2][64];
  unsigned lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  unsigned group = lane >> 2, tig = lane & 3;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  g += (size_t)bz * g_sb + (size_t)hy * g_sh;
  dk += (size_t)bz * dk_sb + (size_t)hy * dk_sh;
  dvo += (size_t)bz * dv_sb + (size_t)hy * dv_sh;
  size_t row0 = ((size_t)bz * gridDim.y + hy) * nq;
  lse += row0;
  dd += row0;
  unsigned k0 = blockIdx.x * 64;
  unsigned off = causal ? nk - nq : 0;
  // The first query that sees key k0 is k0 - off; start at its tile.
  unsigned i_start = ((causal && k0 > off) ? k0 - off : 0) & ~63u;
  unsigned ntiles = nq > i_start ? (nq - i_start + 63) / 64 : 0;
  unsigned char* ring = attn_wg_smem;  // stage st: Q at st * 2 * BWD_TILE, dO after it

  if (ntiles > 0) {
    load_pair(ring, q, q_sn, g, g_sn, i_start, nq);
    if (threadIdx.x < 64) {
      unsigned i = i_start + threadIdx.x;
      Ls[0][threadIdx.x] = i < nq ? lse[i] : 0.0f;
      Ds[0][threadIdx.x] = i < nq ? dd[i] : 0.0f;
    }
  }
  cp_async_commit();
  KeyRows st;
  key_rows_init(st, k, v, k0, nk, k_sn, v_sn, w, group);

  for (unsigned t = 0; t < ntiles; ++t) {
    unsigned i0 = i_start + t * 64;
    cp_async_wait<0>();
    fence_proxy_async();
    // Tile t (Q, dO, lse, D) is visible, and the stage the next load overwrites (tile
    // t - 1's) is no longer read: its batches were waited for.
    __syncthreads();
    bool next = t + 1 < ntiles;
    if (next) load_pair(ring + ((t + 1) & 1) * 2 * BWD_TILE, q, q_sn, g, g_sn, i0 + 64, nq);
    cp_async_commit();
    float l_next = 0.0f, d_next = 0.0f;
    if (next && threadIdx.x < 64) {
      unsigned i = i0 + 64 + threadIdx.x;
      l_next = i < nq ? lse[i] : 0.0f;
      d_next = i < nq ? dd[i] : 0.0f;
    }
    unsigned qs = smem_addr(ring + (t & 1) * 2 * BWD_TILE);
    dkdv_tile<false>(st, qs, qs + BWD_TILE, Ls[t & 1], Ds[t & 1], i0, k0, nq, nk, off, causal,
                     scale_log2, tig);
    // The other lse / D buffer was last read in iteration t - 1, before this one's barrier.
    if (next && threadIdx.x < 64) {
      Ls[(t + 1) & 1][threadIdx.x] = l_next;
      Ds[(t + 1) & 1][threadIdx.x] = d_next;
    }
  }
  key_rows_store(st, dk, dvo, nk, dk_sn, dk_sd, dv_sn, dv_sd, alpha, tig);
}

// The state of a warpgroup's 64 queries in the dQ kernels: Q and dO as A fragments, the
// accumulators, and this thread's two queries with their lse and D.
struct QueryRows {
  unsigned qa[W_D / 16][4], ga[W_D / 16][4];
  float acc[32];
  unsigned i_row[2];
  float lse_r[2], d_r[2];
};

// The warpgroup's queries r0 .. r0 + 63 of q and g (offset to the head) and of lse and dd
// (offset to the head's rows).
__device__ __forceinline__ void query_rows_init(QueryRows& st, const __nv_bfloat16* __restrict__ q,
                                                const __nv_bfloat16* __restrict__ g,
                                                const float* __restrict__ lse,
                                                const float* __restrict__ dd, unsigned r0,
                                                unsigned nq, unsigned q_sn, unsigned g_sn,
                                                unsigned w, unsigned group) {
  rows_as_a(st.qa, q, r0, nq, q_sn);
  rows_as_a(st.ga, g, r0, nq, g_sn);
  st.i_row[0] = r0 + w * 16 + group;
  st.i_row[1] = r0 + w * 16 + group + 8;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    bool in = st.i_row[h] < nq;
    st.lse_r[h] = in ? lse[st.i_row[h]] : 0.0f;
    st.d_r[h] = in ? dd[st.i_row[h]] : 0.0f;
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) st.acc[i] = 0.0f;
}

// One key tile (keys k0 .. k0 + 63, K and V at ks_ and vs_) for a warpgroup's queries:
// S = Q K^T and dP = dO V^T, dS in S's place, dQ += dS K; every product retired before it
// returns.
template <bool SWIZZLED>
__device__ __forceinline__ void dq_tile(QueryRows& st, unsigned ks_, unsigned vs_, unsigned k0,
                                        unsigned r0, unsigned nq, unsigned nk, unsigned off,
                                        unsigned causal, float scale_log2, unsigned tig) {
  using D = BwdDescs<SWIZZLED>;
  // The warpgroup's 64 queries (r0 ..) by the tile's 64 keys.
  float s[32], dp[32];
  two_products<SWIZZLED>(s, dp, st.qa, st.ga, ks_, vs_);
  if (edge_tile(r0, k0, nq, nk, off, causal)) {
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      unsigned j = k0 + (x >> 2) * 8 + 2 * tig + (x & 1), h = (x >> 1) & 1, i = st.i_row[h];
      bool vis = i < nq && j < nk && visible(causal, i, j, off);
      float pv = vis ? exp2f(fmaf(s[x], scale_log2, -st.lse_r[h])) : 0.0f;
      s[x] = vis ? pv * (dp[x] - st.d_r[h]) : 0.0f;
    }
  } else {
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      unsigned h = (x >> 1) & 1;
      float pv = exp2f(fmaf(s[x], scale_log2, -st.lse_r[h]));
      s[x] = pv * (dp[x] - st.d_r[h]);
    }
  }
  // Over the tile's 64 keys, 16 at a time.
  unsigned da[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) acc_as_a(da[kk], s, kk);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(st.acc, da[kk], D::cols(ks_, kk));
  wgmma_commit();
  wgmma_wait<0>();
}

// The warpgroup's dQ rows (times alpha).
__device__ __forceinline__ void query_rows_store(const QueryRows& st, float* __restrict__ dq,
                                                 unsigned nq, unsigned dq_sn, unsigned dq_sd,
                                                 float alpha, unsigned tig) {
  store_rows<true>(dq, st.acc, st.i_row, nq, dq_sn, dq_sd, alpha, tig);
}

extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_bf16_d64_wgmma(
    float* __restrict__ dq, const __nv_bfloat16* __restrict__ q,
    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const __nv_bfloat16* __restrict__ g, const float* __restrict__ lse,
    const float* __restrict__ dd, unsigned nq, unsigned nk, unsigned dh, unsigned dv,
    unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh,
    unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
    unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd, unsigned dq_sb, unsigned dq_sh,
    unsigned dq_sn, unsigned dq_sd, float scale_log2, float alpha, unsigned causal) {
  unsigned lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  unsigned group = lane >> 2, tig = lane & 3;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  g += (size_t)bz * g_sb + (size_t)hy * g_sh;
  dq += (size_t)bz * dq_sb + (size_t)hy * dq_sh;
  size_t row0 = ((size_t)bz * gridDim.y + hy) * nq;
  unsigned q0 = (causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * 64;
  unsigned off = causal ? nk - nq : 0;
  unsigned qend = min(nq, q0 + 64);
  unsigned kend = causal ? min(nk, qend + off) : nk;
  unsigned ntiles = (kend + 63) / 64;
  unsigned char* ring = attn_wg_smem;  // stage st: K at st * 2 * BWD_TILE, V after it

  if (ntiles > 0) load_pair(ring, k, k_sn, v, v_sn, 0, nk);
  cp_async_commit();
  QueryRows st;
  query_rows_init(st, q, g, lse + row0, dd + row0, q0, nq, q_sn, g_sn, w, group);

  for (unsigned t = 0; t < ntiles; ++t) {
    unsigned k0 = t * 64;
    cp_async_wait<0>();
    fence_proxy_async();
    // Tile t is visible, and the stage the next load overwrites (tile t - 1's) is no longer
    // read: its batches were waited for.
    __syncthreads();
    if (t + 1 < ntiles)
      load_pair(ring + ((t + 1) & 1) * 2 * BWD_TILE, k, k_sn, v, v_sn, k0 + 64, nk);
    cp_async_commit();
    unsigned ks_ = smem_addr(ring + (t & 1) * 2 * BWD_TILE);
    dq_tile<false>(st, ks_, ks_ + BWD_TILE, k0, q0, nq, nk, off, causal, scale_log2, tig);
  }
  query_rows_store(st, dq, nq, dq_sn, dq_sd, alpha, tig);
}

// ---- the backward fed by TMA ----
//
// attn_bwd_dkdv_bf16_d64_tma, attn_bwd_dq_bf16_d64_tma: the wgmma backward's computation
//   (the same dkdv_tile / dq_tile per tile, so the same bits) on warp-specialized CTAs of
//   three warpgroups, as attn_fwd_bf16s_d64_tma: the first only feeds (one thread issues
//   every copy; the warpgroup gives up registers with `setmaxnreg`), the other two compute
//   64 keys (dK / dV) or 64 queries (dQ) each, 128 per CTA, and release each stage with one
//   arrival per warp. Their own rows are loaded once from global memory as in the wgmma
//   kernels; the ring carries the other side's tiles as 128-byte swizzled TMA boxes, read
//   k-major and MN-major from the same bytes.
//   dK / dV: per query tile, Q's and dO's boxes (maps of q and of the bf16 copy of dO, as
//   the forward's: {64 features, positions, heads, batch}) and 64 entries each of lse and D
//   (one-dimensional maps over all [b, h, nq] rows: entries past a head's queries are
//   masked, past the last row zero-filled). A warpgroup skips (still waiting and releasing)
//   the tiles whose queries see none of its keys, and a warpgroup with no keys every tile.
//   dQ: per key tile, K's and V's boxes. A warpgroup skips the tiles past its last row's
//   keys, and every tile when it has no rows; the CTAs run the longest query tiles first.
//   Launch: 384 threads, grid (ceil(Nk / 128) or ceil(Nq / 128), heads, batch), BK_SMEM or
//   BQ_SMEM bytes of dynamic shared memory (the ring, 1 KiB to align it, the mbarriers).

#define B_STAGES 3
// A dK / dV stage: Q, dO, then lse and D (256 bytes each), padded to the swizzle's 1,024.
#define BK_STAGE (2 * BWD_TILE + 1024)
#define BK_SMEM (B_STAGES * BK_STAGE + 1024 + 2 * B_STAGES * 8)
#define BQ_STAGE (2 * BWD_TILE)
#define BQ_SMEM (B_STAGES * BQ_STAGE + 1024 + 2 * B_STAGES * 8)

// Entries x .. x + 63 of the one-dimensional f32 map into shared memory at `dst`.
__device__ __forceinline__ void tma_load_vec(unsigned dst, const TensorMap* map, int x,
                                             unsigned bar) {
  asm volatile(
      "cp.async.bulk.tensor.1d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2}], [%3];\n" ::"r"(dst),
      "l"((unsigned long long)map), "r"(x), "r"(bar)
      : "memory");
}

extern "C" __global__ void __launch_bounds__(384, 1) attn_bwd_dkdv_bf16_d64_tma(
    float* __restrict__ dk, float* __restrict__ dvo, const __grid_constant__ TensorMap q_map,
    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const __grid_constant__ TensorMap g_map, const __grid_constant__ TensorMap lse_map,
    const __grid_constant__ TensorMap dd_map, unsigned nq, unsigned nk, unsigned dh,
    unsigned dv, unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb,
    unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn,
    unsigned v_sd, unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd, unsigned dk_sb,
    unsigned dk_sh, unsigned dk_sn, unsigned dk_sd, unsigned dv_sb, unsigned dv_sh,
    unsigned dv_sn, unsigned dv_sd, float scale_log2, float alpha, unsigned causal) {
  unsigned smem0 = smem_addr(attn_wg_smem);
  unsigned ring = (smem0 + 1023) & ~1023u;
  unsigned full0 = ring + B_STAGES * BK_STAGE, empty0 = full0 + 8 * B_STAGES;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  unsigned kc = blockIdx.x * 128;
  unsigned off = causal ? nk - nq : 0;
  // The first query that sees key kc is kc - off; start at its tile.
  unsigned i_start = ((causal && kc > off) ? kc - off : 0) & ~63u;
  unsigned ntiles = nq > i_start ? (nq - i_start + 63) / 64 : 0;
  ring_init(full0, empty0, B_STAGES);
  if (threadIdx.x < 128) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) {
      int row0 = (int)((bz * gridDim.y + hy) * nq);
      for (unsigned t = 0; t < ntiles; ++t) {
        unsigned s = t % B_STAGES, i0 = i_start + t * 64;
        mbar_wait(empty0 + 8 * s, ((t / B_STAGES) & 1) ^ 1);
        unsigned full = full0 + 8 * s, at = ring + s * BK_STAGE;
        mbar_expect_bytes(full, 2 * BWD_TILE + 2 * 64 * 4);
        tma_load_rows(at, &q_map, i0, hy, bz, full);
        tma_load_rows(at + BWD_TILE, &g_map, i0, hy, bz, full);
        tma_load_vec(at + 2 * BWD_TILE, &lse_map, row0 + i0, full);
        tma_load_vec(at + 2 * BWD_TILE + 256, &dd_map, row0 + i0, full);
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  unsigned ct = threadIdx.x - 128;
  unsigned lane = ct & 31, w = (ct >> 5) & 3, wg = ct >> 7;
  unsigned group = lane >> 2, tig = lane & 3;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  dk += (size_t)bz * dk_sb + (size_t)hy * dk_sh;
  dvo += (size_t)bz * dv_sb + (size_t)hy * dv_sh;
  unsigned k0 = kc + wg * 64;
  KeyRows st;
  key_rows_init(st, k, v, k0, nk, k_sn, v_sn, w, group);
  // The stages' lse and D through generic pointers.
  const unsigned char* ring_g = attn_wg_smem + (ring - smem0);
  for (unsigned t = 0; t < ntiles; ++t) {
    unsigned s = t % B_STAGES, i0 = i_start + t * 64;
    mbar_wait(full0 + 8 * s, (t / B_STAGES) & 1);
    // Tile i0 reaches key k0 when its last query does: i0 + 63 + off >= k0.
    if (k0 < nk && !(causal && i0 + 63 + off < k0)) {
      unsigned qs = ring + s * BK_STAGE;
      const float* Lt = reinterpret_cast<const float*>(ring_g + s * BK_STAGE + 2 * BWD_TILE);
      dkdv_tile<true>(st, qs, qs + BWD_TILE, Lt, Lt + 64, i0, k0, nq, nk, off, causal,
                      scale_log2, tig);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * s);
  }
  key_rows_store(st, dk, dvo, nk, dk_sn, dk_sd, dv_sn, dv_sd, alpha, tig);
}

extern "C" __global__ void __launch_bounds__(384, 1) attn_bwd_dq_bf16_d64_tma(
    float* __restrict__ dq, const __nv_bfloat16* __restrict__ q,
    const __grid_constant__ TensorMap k_map, const __grid_constant__ TensorMap v_map,
    const __nv_bfloat16* __restrict__ g, const float* __restrict__ lse,
    const float* __restrict__ dd, unsigned nq, unsigned nk, unsigned dh, unsigned dv,
    unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh,
    unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
    unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd, unsigned dq_sb, unsigned dq_sh,
    unsigned dq_sn, unsigned dq_sd, float scale_log2, float alpha, unsigned causal) {
  unsigned ring = (smem_addr(attn_wg_smem) + 1023) & ~1023u;
  unsigned full0 = ring + B_STAGES * BQ_STAGE, empty0 = full0 + 8 * B_STAGES;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  unsigned q0 = (causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * 128;
  unsigned off = causal ? nk - nq : 0;
  unsigned qend = min(nq, q0 + 128);
  unsigned kend = causal ? min(nk, qend + off) : nk;
  unsigned ntiles = (kend + 63) / 64;
  ring_init(full0, empty0, B_STAGES);
  if (threadIdx.x < 128) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) {
      for (unsigned t = 0; t < ntiles; ++t) {
        unsigned s = t % B_STAGES;
        mbar_wait(empty0 + 8 * s, ((t / B_STAGES) & 1) ^ 1);
        unsigned full = full0 + 8 * s, at = ring + s * BQ_STAGE;
        mbar_expect_bytes(full, 2 * BWD_TILE);
        tma_load_rows(at, &k_map, t * 64, hy, bz, full);
        tma_load_rows(at + BWD_TILE, &v_map, t * 64, hy, bz, full);
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  unsigned ct = threadIdx.x - 128;
  unsigned lane = ct & 31, w = (ct >> 5) & 3, wg = ct >> 7;
  unsigned group = lane >> 2, tig = lane & 3;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  g += (size_t)bz * g_sb + (size_t)hy * g_sh;
  dq += (size_t)bz * dq_sb + (size_t)hy * dq_sh;
  size_t row0 = ((size_t)bz * gridDim.y + hy) * nq;
  unsigned r0 = q0 + wg * 64;
  QueryRows st;
  query_rows_init(st, q, g, lse + row0, dd + row0, r0, nq, q_sn, g_sn, w, group);
  for (unsigned t = 0; t < ntiles; ++t) {
    unsigned s = t % B_STAGES, k0 = t * 64;
    mbar_wait(full0 + 8 * s, (t / B_STAGES) & 1);
    // The warpgroup's last row sees keys up to r0 + 63 + off.
    if (r0 < nq && !(causal && k0 > r0 + 63 + off)) {
      unsigned ks_ = ring + s * BQ_STAGE;
      dq_tile<true>(st, ks_, ks_ + BWD_TILE, k0, r0, nq, nk, off, causal, scale_log2, tig);
    }
    if (lane == 0) mbar_arrive(empty0 + 8 * s);
  }
  query_rows_store(st, dq, nq, dq_sn, dq_sd, alpha, tig);
}
