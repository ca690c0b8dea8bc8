// Fused scaled dot-product attention (flash style): forward with an online softmax, and a
// backward that recomputes the probabilities from the saved log-sum-exp, so no
// [Nq, Nk] score or probability matrix is ever stored.
//
// Operands, per (batch b, head h): Q [Nq, Dh], K [Nk, Dh], V [Nk, Dv], O [Nq, Dv], each
// given by a base pointer and four element strides (batch, head, position, feature), so the
// q / k / v views cut out of a fused [B, N, 3C] projection and a heads-merged [B, N, C]
// output are read and written in place. Strides are unsigned (the host copies a view with a
// negative stride first).
//
// Semantics (those of src/ops/attention): S = alpha Q K^T with alpha = scale / temperature;
// with `causal`, query i sees key j only when j <= i + (Nk - Nq) (the queries are the last Nq
// positions; the host guarantees Nq <= Nk then); P = row softmax of the visible scores;
// O = P V. A query that sees no key gets O = 0 and lse = -inf.
//
// Units: the kernels work in base 2. The host passes `scale_log2 = alpha * log2(e)`, scores
// are t = scale_log2 * (q . k), and the saved `lse` is log2(sum_j exp2(t_j)) per query
// ([B, H, Nq], contiguous): the natural-log log-sum-exp times log2(e). The backward
// recomputes P = exp2(t - lse).
//
// Gradient-write convention: every output (O, lse, D, dQ, dK, dV) is written (`=`) in full;
// nothing is accumulated into an existing buffer and nothing is read before it is written.
//
// Tiles and launch (all kernels: 128 threads = 4 warps, grid y = heads, grid z = batch):
// - attn_fwd_f32: 32 queries per CTA (8 per warp), key tiles of 32 (one key per lane);
//   grid x = ceil(Nq / 32). Under the causal rule the key loop stops at the last key any
//   query of the tile sees (tiles above the diagonal are never loaded).
// - attn_bwd_dot_f32: D_i = sum_d dO_id O_id, one warp per query; grid x = ceil(Nq / 4).
// - attn_bwd_dkdv_f32: 16 keys per CTA (4 per warp), looping over query tiles of 32 (one
//   query per lane) in increasing order from the first tile that sees the CTA's keys;
//   grid x = ceil(Nk / 16).
// - attn_bwd_dq_f32: 32 queries per CTA (8 per warp), looping over key tiles of 32 in
//   increasing order up to the causal bound; grid x = ceil(Nq / 32).
// - attn_bwd_dot_bf16s, attn_bwd_dkdv_bf16s, attn_bwd_dq_bf16s ("bf16 storage"): the three
//   backward kernels above with q, k, v and o read as bf16 (any strides, like the f32
//   operands) and widened to f32 as they are loaded; dO, lse, D and every output stay f32
//   and the arithmetic is the f32 kernels' in the same order, so on bf16-exact operands the
//   two families give identical bits. bf16 training saves its attention operands this way.
// Shared memory: tiles of up to 32 rows x 128 features (Dh, Dv <= 128, checked by the
// host), 48 KiB per CTA in every kernel. Rows are stored with a rotation,
// element (r, d) at [r * 128 + ((d + r) mod 128)], so that both access patterns are free of
// bank conflicts: a warp reading one feature of 32 rows (lane = row) and a warp reading 32
// consecutive features of one row.
//
// Reduction order (fixed by the shape, no atomics): dot products over features in
// increasing order (one fma each); softmax row max and sum per key tile by a warp butterfly
// (xor 16, 8, 4, 2, 1, lower lane first), tiles in increasing order; P V, dS K, P^T dO and
// dS^T Q over keys (or queries) in increasing order within a tile, tiles in increasing order.

#ifndef TARFLOW_HOST_EMULATION
#include <cuda_bf16.h>
#endif

#define FULL_MASK 0xffffffffu
#define DMAX 128
#define NT 128
#define NWARP (NT / 32)

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Index of element (r, d) of a rotated tile.
__device__ __forceinline__ unsigned sw(unsigned r, unsigned d) {
  return r * DMAX + ((d + r) & (DMAX - 1));
}

__device__ __forceinline__ float warp_sum(float v) {
  unsigned lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float other = __shfl_xor_sync(FULL_MASK, v, o);
    v = (lane & o) ? __fadd_rn(other, v) : __fadd_rn(v, other);
  }
  return v;
}

// Largest element, NaN ignored unless all are NaN (fmaxf); -inf when all are -inf.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}

// One stored element as f32: the backward kernels read q, k, v and o either as f32 or as
// bf16 (the `_bf16s` entries, "bf16 storage"); a bf16 widens to f32 exactly, so the
// arithmetic after the load is the same for both.
__device__ __forceinline__ float ld_f32(const float* p) { return *p; }
__device__ __forceinline__ float ld_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }

// Stages rows row0 .. row0 + ROWS - 1 (features 0 .. width - 1) of a strided matrix into a
// rotated f32 tile; rows at or beyond `rows` become zeros. Warp w loads rows w, w + 4, ...;
// lanes walk the features, so a feature-contiguous source is read coalesced.
template <int ROWS, typename T>
__device__ __forceinline__ void load_rows(float* s, const T* __restrict__ g, unsigned row0,
                                          unsigned rows, unsigned rs, unsigned cs,
                                          unsigned width) {
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (unsigned r = warp; r < ROWS; r += NWARP) {
    unsigned gr = row0 + r;
    bool in = gr < rows;
    for (unsigned d = lane; d < width; d += 32) {
      s[sw(r, d)] = in ? ld_f32(g + ((size_t)gr * rs + (size_t)d * cs)) : 0.0f;
    }
  }
}

// Whether query i sees key j (both in range is the caller's business).
__device__ __forceinline__ bool visible(unsigned causal, unsigned i, unsigned j, unsigned off) {
  return !causal || j <= i + off;
}

extern "C" __global__ void __launch_bounds__(NT)
    attn_fwd_f32(float* __restrict__ o, float* __restrict__ lse, const float* __restrict__ q,
                 const float* __restrict__ k, const float* __restrict__ v, unsigned nq,
                 unsigned nk, unsigned dh, unsigned dv, unsigned q_sb, unsigned q_sh,
                 unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh, unsigned k_sn,
                 unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
                 unsigned o_sb, unsigned o_sh, unsigned o_sn, unsigned o_sd, float scale_log2,
                 unsigned causal) {
  __shared__ float Qs[32 * DMAX];
  __shared__ float Ks[32 * DMAX];
  __shared__ float Vs[32 * DMAX];
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  o += (size_t)bz * o_sb + (size_t)hy * o_sh;
  lse += ((size_t)bz * gridDim.y + hy) * nq;
  unsigned q0 = blockIdx.x * 32;
  unsigned off = causal ? nk - nq : 0;
  unsigned qend = min(nq, q0 + 32);
  unsigned kend = causal ? min(nk, qend + off) : nk;
  load_rows<32>(Qs, q, q0, nq, q_sn, q_sd, dh);

  float acc[8][4], m[8], l[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    m[r] = neg_inf();
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
  }

  for (unsigned k0 = 0; k0 < kend; k0 += 32) {
    // The previous tile's readers are done before it is overwritten.
    __syncthreads();
    load_rows<32>(Ks, k, k0, nk, k_sn, k_sd, dh);
    load_rows<32>(Vs, v, k0, nk, v_sn, v_sd, dv);
    __syncthreads();
    float s[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) s[r] = 0.0f;
    for (unsigned d = 0; d < dh; ++d) {
      float kd = Ks[sw(lane, d)];
#pragma unroll
      for (int r = 0; r < 8; ++r) s[r] = fmaf(Qs[sw(warp * 8 + r, d)], kd, s[r]);
    }
    unsigned j = k0 + lane;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      unsigned i = q0 + warp * 8 + r;
      float t = (j < nk && visible(causal, i, j, off)) ? s[r] * scale_log2 : neg_inf();
      float mn = fmaxf(m[r], warp_max(t));
      // All hidden so far: subtract 0 so that exp2(-inf - 0) = 0 (not -inf - -inf = NaN).
      float mu = mn == neg_inf() ? 0.0f : mn;
      float p = exp2f(t - mu);
      float corr = exp2f(m[r] - mu);
      l[r] = fmaf(l[r], corr, warp_sum(p));
      m[r] = mn;
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] *= corr;
      s[r] = p;
    }
    unsigned jn = min(32u, kend - k0);
    for (unsigned jj = 0; jj < jn; ++jj) {
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        float pj = __shfl_sync(FULL_MASK, s[r], jj);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          unsigned e = lane + 32 * c;
          if (e < dv) acc[r][c] = fmaf(pj, Vs[sw(jj, e)], acc[r][c]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 8; ++r) {
    unsigned i = q0 + warp * 8 + r;
    if (i >= nq) continue;
    float inv = l[r] > 0.0f ? __frcp_rn(l[r]) : 0.0f;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      unsigned e = lane + 32 * c;
      if (e < dv) o[(size_t)i * o_sn + (size_t)e * o_sd] = acc[r][c] * inv;
    }
    if (lane == 0) lse[i] = l[r] > 0.0f ? m[r] + __log2f(l[r]) : neg_inf();
  }
}

// D[b, h, i] = sum_d dO[i, d] O[i, d] (contiguous [B, H, Nq]); O stored as T. With ROUND,
// dO is also written rounded to bf16 (nearest even) into g16, contiguous [B, H, Nq, Dv]: the
// operand the tensor-core backward loads by cp.async, made in the same pass over dO.
template <typename T, bool ROUND>
__device__ __forceinline__ void attn_bwd_dot(float* __restrict__ dd,
                                             __nv_bfloat16* __restrict__ g16,
                                             const T* __restrict__ o,
                                             const float* __restrict__ g, unsigned nq,
                                             unsigned dv, unsigned o_sb, unsigned o_sh,
                                             unsigned o_sn, unsigned o_sd, unsigned g_sb,
                                             unsigned g_sh, unsigned g_sn, unsigned g_sd) {
  unsigned lane = threadIdx.x & 31;
  unsigned i = blockIdx.x * NWARP + (threadIdx.x >> 5);
  if (i >= nq) return;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  size_t row = ((size_t)bz * gridDim.y + hy) * nq + i;
  o += (size_t)bz * o_sb + (size_t)hy * o_sh + (size_t)i * o_sn;
  g += (size_t)bz * g_sb + (size_t)hy * g_sh + (size_t)i * g_sn;
  float s = 0.0f;
  for (unsigned d = lane; d < dv; d += 32) {
    float gv = g[(size_t)d * g_sd];
    s = fmaf(gv, ld_f32(o + (size_t)d * o_sd), s);
    if (ROUND) g16[row * dv + d] = __float2bfloat16_rn(gv);
  }
  s = warp_sum(s);
  if (lane == 0) dd[row] = s;
}

#define ATTN_BWD_DOT_ENTRY(NAME, T)                                                          \
  extern "C" __global__ void __launch_bounds__(NT)                                           \
      NAME(float* __restrict__ dd, const T* __restrict__ o, const float* __restrict__ g,     \
           unsigned nq, unsigned dv, unsigned o_sb, unsigned o_sh, unsigned o_sn,            \
           unsigned o_sd, unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd) {      \
    attn_bwd_dot<T, false>(dd, nullptr, o, g, nq, dv, o_sb, o_sh, o_sn, o_sd, g_sb, g_sh,    \
                           g_sn, g_sd);                                                      \
  }

// attn_bwd_dot_round_bf16s: attn_bwd_dot_bf16s (the same D) that also writes dO rounded to
// bf16 into g16 (contiguous [B, H, Nq, Dv]); first of the tensor-core backward's launches.
extern "C" __global__ void __launch_bounds__(NT) attn_bwd_dot_round_bf16s(
    float* __restrict__ dd, __nv_bfloat16* __restrict__ g16,
    const __nv_bfloat16* __restrict__ o, const float* __restrict__ g, unsigned nq, unsigned dv,
    unsigned o_sb, unsigned o_sh, unsigned o_sn, unsigned o_sd, unsigned g_sb, unsigned g_sh,
    unsigned g_sn, unsigned g_sd) {
  attn_bwd_dot<__nv_bfloat16, true>(dd, g16, o, g, nq, dv, o_sb, o_sh, o_sn, o_sd, g_sb, g_sh,
                                    g_sn, g_sd);
}

ATTN_BWD_DOT_ENTRY(attn_bwd_dot_f32, float)
ATTN_BWD_DOT_ENTRY(attn_bwd_dot_bf16s, __nv_bfloat16)

// dK = alpha dS^T Q and dV = P^T dO for 16 keys per CTA, over every query that sees them;
// Q, K, V stored as T.
template <typename T>
__device__ __forceinline__ void attn_bwd_dkdv(
    float* __restrict__ dk, float* __restrict__ dvo, const T* __restrict__ q,
    const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ g,
    const float* __restrict__ lse, const float* __restrict__ dd, unsigned nq, unsigned nk,
    unsigned dh, unsigned dv, unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd,
    unsigned k_sb, unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh,
    unsigned v_sn, unsigned v_sd, unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd,
    unsigned dk_sb, unsigned dk_sh, unsigned dk_sn, unsigned dk_sd, unsigned dv_sb,
    unsigned dv_sh, unsigned dv_sn, unsigned dv_sd, float scale_log2, float alpha,
    unsigned causal) {
  __shared__ float Ks[16 * DMAX];
  __shared__ float Vs[16 * DMAX];
  __shared__ float Qs[32 * DMAX];
  __shared__ float Gs[32 * DMAX];
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
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
  unsigned k0 = blockIdx.x * 16;
  unsigned off = causal ? nk - nq : 0;
  // The first query that sees key k0 is k0 - off; start at its tile.
  unsigned i_first = (causal && k0 > off) ? k0 - off : 0;
  load_rows<16>(Ks, k, k0, nk, k_sn, k_sd, dh);
  load_rows<16>(Vs, v, k0, nk, v_sn, v_sd, dv);

  float dka[4][4], dva[4][4];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      dka[r][c] = 0.0f;
      dva[r][c] = 0.0f;
    }

  for (unsigned i0 = i_first & ~31u; i0 < nq; i0 += 32) {
    __syncthreads();
    load_rows<32>(Qs, q, i0, nq, q_sn, q_sd, dh);
    load_rows<32>(Gs, g, i0, nq, g_sn, g_sd, dv);
    __syncthreads();
    unsigned i = i0 + lane;
    bool iv = i < nq;
    float lse_i = iv ? lse[i] : 0.0f;
    float d_i = iv ? dd[i] : 0.0f;
    float s[4], dp[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      s[r] = 0.0f;
      dp[r] = 0.0f;
    }
    for (unsigned d = 0; d < dh; ++d) {
      float qd = Qs[sw(lane, d)];
#pragma unroll
      for (int r = 0; r < 4; ++r) s[r] = fmaf(qd, Ks[sw(warp * 4 + r, d)], s[r]);
    }
    for (unsigned d = 0; d < dv; ++d) {
      float gd = Gs[sw(lane, d)];
#pragma unroll
      for (int r = 0; r < 4; ++r) dp[r] = fmaf(gd, Vs[sw(warp * 4 + r, d)], dp[r]);
    }
    float p[4], ds[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      unsigned j = k0 + warp * 4 + r;
      bool vis = iv && j < nk && visible(causal, i, j, off);
      p[r] = vis ? exp2f(fmaf(s[r], scale_log2, -lse_i)) : 0.0f;
      ds[r] = vis ? p[r] * (dp[r] - d_i) : 0.0f;
    }
    unsigned in_tile = min(32u, nq - i0);
    for (unsigned ii = 0; ii < in_tile; ++ii) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        float pi = __shfl_sync(FULL_MASK, p[r], ii);
        float dsi = __shfl_sync(FULL_MASK, ds[r], ii);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          unsigned e = lane + 32 * c;
          if (e < dv) dva[r][c] = fmaf(pi, Gs[sw(ii, e)], dva[r][c]);
          if (e < dh) dka[r][c] = fmaf(dsi, Qs[sw(ii, e)], dka[r][c]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 4; ++r) {
    unsigned j = k0 + warp * 4 + r;
    if (j >= nk) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      unsigned e = lane + 32 * c;
      if (e < dh) dk[(size_t)j * dk_sn + (size_t)e * dk_sd] = alpha * dka[r][c];
      if (e < dv) dvo[(size_t)j * dv_sn + (size_t)e * dv_sd] = dva[r][c];
    }
  }
}

#define ATTN_BWD_DKDV_ENTRY(NAME, T)                                                         \
  extern "C" __global__ void __launch_bounds__(NT) NAME(                                     \
      float* __restrict__ dk, float* __restrict__ dvo, const T* __restrict__ q,              \
      const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ g,         \
      const float* __restrict__ lse, const float* __restrict__ dd, unsigned nq, unsigned nk, \
      unsigned dh, unsigned dv, unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd,  \
      unsigned k_sb, unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb,             \
      unsigned v_sh, unsigned v_sn, unsigned v_sd, unsigned g_sb, unsigned g_sh,             \
      unsigned g_sn, unsigned g_sd, unsigned dk_sb, unsigned dk_sh, unsigned dk_sn,          \
      unsigned dk_sd, unsigned dv_sb, unsigned dv_sh, unsigned dv_sn, unsigned dv_sd,        \
      float scale_log2, float alpha, unsigned causal) {                                      \
    attn_bwd_dkdv<T>(dk, dvo, q, k, v, g, lse, dd, nq, nk, dh, dv, q_sb, q_sh, q_sn, q_sd,   \
                     k_sb, k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd, g_sb, g_sh, g_sn, g_sd, \
                     dk_sb, dk_sh, dk_sn, dk_sd, dv_sb, dv_sh, dv_sn, dv_sd, scale_log2,     \
                     alpha, causal);                                                         \
  }

ATTN_BWD_DKDV_ENTRY(attn_bwd_dkdv_f32, float)
ATTN_BWD_DKDV_ENTRY(attn_bwd_dkdv_bf16s, __nv_bfloat16)

// dQ = alpha dS K for 32 queries per CTA, over every key they see; Q, K, V stored as T.
template <typename T>
__device__ __forceinline__ void attn_bwd_dq(
    float* __restrict__ dq, const T* __restrict__ q, const T* __restrict__ k,
    const T* __restrict__ v, const float* __restrict__ g, const float* __restrict__ lse,
    const float* __restrict__ dd, unsigned nq, unsigned nk, unsigned dh, unsigned dv,
    unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh,
    unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
    unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd, unsigned dq_sb,
    unsigned dq_sh, unsigned dq_sn, unsigned dq_sd, float scale_log2, float alpha,
    unsigned causal) {
  __shared__ float Qs[32 * DMAX];
  __shared__ float Gs[32 * DMAX];
  // V, then K, of the current key tile.
  __shared__ float KVs[32 * DMAX];
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  g += (size_t)bz * g_sb + (size_t)hy * g_sh;
  dq += (size_t)bz * dq_sb + (size_t)hy * dq_sh;
  size_t row0 = ((size_t)bz * gridDim.y + hy) * nq;
  unsigned q0 = blockIdx.x * 32;
  unsigned off = causal ? nk - nq : 0;
  unsigned qend = min(nq, q0 + 32);
  unsigned kend = causal ? min(nk, qend + off) : nk;
  load_rows<32>(Qs, q, q0, nq, q_sn, q_sd, dh);
  load_rows<32>(Gs, g, q0, nq, g_sn, g_sd, dv);

  float acc[8][4], lse_r[8], d_r[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    unsigned i = q0 + warp * 8 + r;
    lse_r[r] = i < nq ? lse[row0 + i] : 0.0f;
    d_r[r] = i < nq ? dd[row0 + i] : 0.0f;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
  }

  for (unsigned k0 = 0; k0 < kend; k0 += 32) {
    __syncthreads();
    load_rows<32>(KVs, v, k0, nk, v_sn, v_sd, dv);
    __syncthreads();
    float dp[8], s[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      dp[r] = 0.0f;
      s[r] = 0.0f;
    }
    for (unsigned d = 0; d < dv; ++d) {
      float vd = KVs[sw(lane, d)];
#pragma unroll
      for (int r = 0; r < 8; ++r) dp[r] = fmaf(Gs[sw(warp * 8 + r, d)], vd, dp[r]);
    }
    __syncthreads();
    load_rows<32>(KVs, k, k0, nk, k_sn, k_sd, dh);
    __syncthreads();
    for (unsigned d = 0; d < dh; ++d) {
      float kd = KVs[sw(lane, d)];
#pragma unroll
      for (int r = 0; r < 8; ++r) s[r] = fmaf(Qs[sw(warp * 8 + r, d)], kd, s[r]);
    }
    unsigned j = k0 + lane;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      unsigned i = q0 + warp * 8 + r;
      bool vis = i < nq && j < nk && visible(causal, i, j, off);
      float p = vis ? exp2f(fmaf(s[r], scale_log2, -lse_r[r])) : 0.0f;
      s[r] = vis ? p * (dp[r] - d_r[r]) : 0.0f;
    }
    unsigned jn = min(32u, kend - k0);
    for (unsigned jj = 0; jj < jn; ++jj) {
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        float dsj = __shfl_sync(FULL_MASK, s[r], jj);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          unsigned e = lane + 32 * c;
          if (e < dh) acc[r][c] = fmaf(dsj, KVs[sw(jj, e)], acc[r][c]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 8; ++r) {
    unsigned i = q0 + warp * 8 + r;
    if (i >= nq) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      unsigned e = lane + 32 * c;
      if (e < dh) dq[(size_t)i * dq_sn + (size_t)e * dq_sd] = alpha * acc[r][c];
    }
  }
}

#define ATTN_BWD_DQ_ENTRY(NAME, T)                                                           \
  extern "C" __global__ void __launch_bounds__(NT) NAME(                                     \
      float* __restrict__ dq, const T* __restrict__ q, const T* __restrict__ k,              \
      const T* __restrict__ v, const float* __restrict__ g, const float* __restrict__ lse,   \
      const float* __restrict__ dd, unsigned nq, unsigned nk, unsigned dh, unsigned dv,      \
      unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb,             \
      unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh,             \
      unsigned v_sn, unsigned v_sd, unsigned g_sb, unsigned g_sh, unsigned g_sn,             \
      unsigned g_sd, unsigned dq_sb, unsigned dq_sh, unsigned dq_sn, unsigned dq_sd,         \
      float scale_log2, float alpha, unsigned causal) {                                      \
    attn_bwd_dq<T>(dq, q, k, v, g, lse, dd, nq, nk, dh, dv, q_sb, q_sh, q_sn, q_sd, k_sb,    \
                   k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd, g_sb, g_sh, g_sn, g_sd, dq_sb,  \
                   dq_sh, dq_sn, dq_sd, scale_log2, alpha, causal);                          \
  }

ATTN_BWD_DQ_ENTRY(attn_bwd_dq_f32, float)
ATTN_BWD_DQ_ENTRY(attn_bwd_dq_bf16s, __nv_bfloat16)

// ---- bf16 tensor-core forward ----
//
// attn_fwd_bf16_d64, attn_fwd_bf16_d128, attn_fwd_bf16s_d64, attn_fwd_bf16s_d128: the forward
// above (same parameters, same f32 outputs, same base-2 lse) for Dh = Dv = 64 or 128, with
// q, k, v as bf16 (f32 inputs rounded to nearest even as they are staged; `bf16s`: stored
// as bf16), S = Q K^T and O += P V on mma.sync.m16n8k16 with f32 accumulation, fragments
// read with ldmatrix. P is rounded to bf16 for the P V product; the row sums use the f32
// values. Order: the tensor core's within each 16-wide k-step, steps and key tiles in
// increasing order; row maxima over the 4 lanes holding a row by a butterfly; each lane's
// share of a row sum accumulated over tiles, the 4 shares summed (butterfly) at the end.
// Parameters: those of attn_fwd_f32 with one more after lse, `o16`: when not null, the
// output is also written there rounded to bf16 (to nearest even), contiguous
// [B, Nq, H, Dv] (token-major: the rows of the output projection's bf16 input, which shares
// the copy), the copy bf16 training keeps for the backward. Tiles, loads and launch:
// at `attn_fwd_tc` below.

// The inline-PTX helpers (ptx/async_copy_mma.cuh, as gemm.cu's). scripts/ptx/host/shim.h
// gives host versions of these for `scripts/ptx.sh host`, which runs this file on the CPU.
#ifndef TARFLOW_HOST_EMULATION
#include "async_copy_mma.cuh"

extern __shared__ __align__(16) unsigned char attn_dynamic_smem[];

#else
#define attn_dynamic_smem host_dynamic_smem
#endif

// Two f32 as one bf16 pair, `lo` in the low half (the lower k index of a fragment).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
  __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&p);
}

// Rows row0 .. row0 + ROWS - 1 of a strided f32 (or bf16) matrix, D features each, rounded
// to bf16 (a bf16 source is copied exactly) into s[r * (D + 8) + d]; rows at or beyond `rows`
// become zeros. Each thread converts
// chunks of 8 features and stores each chunk with one 16-byte store.
template <int ROWS, int D, typename T = float>
__device__ __forceinline__ void stage_bf16(__nv_bfloat16* s, const T* __restrict__ g,
                                           unsigned row0, unsigned rows, unsigned rs,
                                           unsigned cs) {
  constexpr int CPR = D / 8;
#pragma unroll
  for (int e = threadIdx.x; e < ROWS * CPR; e += NT) {
    unsigned r = e / CPR, c = (e % CPR) * 8;
    unsigned gr = row0 + r;
    float x[8];
#pragma unroll
    for (int t = 0; t < 8; ++t)
      x[t] = gr < rows ? ld_f32(g + ((size_t)gr * rs + (size_t)(c + t) * cs)) : 0.0f;
    uint4 w;
    w.x = pack_bf16(x[0], x[1]);
    w.y = pack_bf16(x[2], x[3]);
    w.z = pack_bf16(x[4], x[5]);
    w.w = pack_bf16(x[6], x[7]);
    *reinterpret_cast<uint4*>(s + r * (D + 8) + c) = w;
  }
}

// ---- the bf16 tensor-core forward, one template for f32 and bf16 inputs ----
//
// attn_fwd_bf16s_d64, attn_fwd_bf16s_d128 take q, k, v stored as bf16 and load them by
// cp.async. They need feature stride 1, and the batch, head and position strides and each
// base offset multiples of 8 elements (the host checks), so that every 8-feature chunk is
// one 16-byte copy; rows past the end are zero-filled without a read. attn_fwd_bf16_d64 /
// _d128 run the same code on f32 q, k, v (any strides), rounding each element as it is
// staged (cp.async cannot convert; the ring's waits then have nothing to wait for and its
// barriers alone order the stores). Both give the same bits on the same bf16 values.
// Key tiles (K and V: BK = 64 rows at D = 64, 32 at D = 128) go through a ring of STAGES
// stages, the next tiles loading while this one multiplies, with one barrier per tile; Q is
// loaded once into the ring's last stage and moved into registers before the ring reaches
// it.
// - bf16s at D = 64: 128 queries per CTA (MB = 2), 32 per warp as two 16-row blocks that
//   share every K and V fragment the warp reads from shared memory (half the ldmatrix
//   traffic per product).
// - the others: 64 queries per CTA (16 per warp).
// Under the causal rule a warp skips a key tile for a row block none of whose rows sees it
// (for finite values the skipped update is exact: a factor of 1 and zero terms), and the
// CTAs take the query tiles from the last one down, so the longest start first. Launch: 128
// threads, grid (ceil(Nq / (64 MB)), heads, batch), STAGES * 2 * BK * (D + 8) * 2 bytes of
// dynamic shared memory (the host passes the same figure).

// Rows row0 .. row0 + ROWS - 1 (D features) of a bf16 matrix with feature stride 1 and row
// stride rs into s[r * (D + 8) + d] by cp.async; rows at or beyond `rows` are zero-filled.
template <int ROWS, int D>
__device__ __forceinline__ void load_rows_async(__nv_bfloat16* s,
                                                const __nv_bfloat16* __restrict__ g,
                                                unsigned row0, unsigned rows, unsigned rs) {
  constexpr int CPR = D / 8;
  static_assert(ROWS * CPR % NT == 0, "chunks must divide among the threads");
#pragma unroll
  for (int c = 0; c < ROWS * CPR / NT; ++c) {
    unsigned e = threadIdx.x + NT * c;
    unsigned r = e / CPR, col = (e % CPR) * 8;
    unsigned gr = row0 + r;
    bool in = gr < rows;
    // A row with nothing to read points at the operand's start, which is always mapped.
    const __nv_bfloat16* src = in ? g + (size_t)gr * rs + col : g;
    cp_async16_zfill(s + r * (D + 8) + col, src, in ? 16u : 0u);
  }
}

// One forward tile: bf16 rows by cp.async (feature stride 1), f32 rows rounded as staged.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile(__nv_bfloat16* s, const __nv_bfloat16* __restrict__ g,
                                          unsigned row0, unsigned rows, unsigned rs,
                                          unsigned) {
  load_rows_async<ROWS, D>(s, g, row0, rows, rs);
}

template <int ROWS, int D>
__device__ __forceinline__ void load_tile(__nv_bfloat16* s, const float* __restrict__ g,
                                          unsigned row0, unsigned rows, unsigned rs,
                                          unsigned cs) {
  stage_bf16<ROWS, D>(s, g, row0, rows, rs, cs);
}

template <int D, int BK, int MB, int STAGES, typename T>
__device__ __forceinline__ void attn_fwd_tc(
    float* __restrict__ o, float* __restrict__ lse, __nv_bfloat16* __restrict__ o16,
    const T* __restrict__ q,
    const T* __restrict__ k, const T* __restrict__ v, unsigned nq, unsigned nk, unsigned q_sb,
    unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh, unsigned k_sn,
    unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd, unsigned o_sb,
    unsigned o_sh, unsigned o_sn, unsigned o_sd, float scale_log2, unsigned causal) {
  constexpr int LD = D + 8;
  constexpr int BQ = 64 * MB;      // queries per CTA
  constexpr int KV = BK * LD;      // one K (or V) tile
  constexpr int STAGE = 2 * KV;    // K, then V
  constexpr int DF = D / 8;        // output n-fragments per row block
  constexpr int KF = BK / 8;       // score n-fragments per row block
  constexpr int DK = D / 16;       // k-steps of Q K^T
  static_assert(BQ * LD <= STAGE, "Q must fit in one stage");
  static_assert(STAGES >= 2, "the ring needs two stages");
  __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(attn_dynamic_smem);
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned group = lane >> 2, tig = lane & 3;
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  o += (size_t)bz * o_sb + (size_t)hy * o_sh;
  lse += ((size_t)bz * gridDim.y + hy) * nq;
  if (o16) o16 += (size_t)bz * nq * gridDim.y * D + (size_t)hy * D;
  unsigned q0 = (causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * BQ;
  unsigned off = causal ? nk - nq : 0;
  unsigned qend = min(nq, q0 + BQ);
  unsigned kend = causal ? min(nk, qend + off) : nk;
  unsigned ntiles = (kend + BK - 1) / BK;

  // Group 0: Q (into the last stage) and key tile 0; groups 1 .. STAGES - 2: the next tiles
  // (empty past the last), so that `wait_group STAGES - 2` at iteration t means tile t is in.
  load_tile<BQ, D>(smem + (STAGES - 1) * STAGE, q, q0, nq, q_sn, q_sd);
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < ntiles) {
      load_tile<BK, D>(smem + st * STAGE, k, st * BK, nk, k_sn, k_sd);
      load_tile<BK, D>(smem + st * STAGE + KV, v, st * BK, nk, v_sn, v_sd);
    }
    cp_async_commit();
  }
  cp_async_wait<STAGES - 2>();
  __syncthreads();
  // Row block mb of the warp: rows q0 + (warp MB + mb) 16 + (0 .. 15).
  unsigned qa[MB][DK][4];
#pragma unroll
  for (int mb = 0; mb < MB; ++mb)
#pragma unroll
    for (int ks = 0; ks < DK; ++ks) {
      unsigned row = (warp * MB + mb) * 16 + (lane & 15), col = ks * 16 + (lane >> 4) * 8;
      ldmatrix_x4(qa[mb][ks], smem + (STAGES - 1) * STAGE + row * LD + col);
    }

  float acc[MB][DF][4];
  float m[MB][2], l[MB][2];
  unsigned i_row[MB][2], r0[MB];
#pragma unroll
  for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
    for (int f = 0; f < DF; ++f)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mb][f][e] = 0.0f;
    r0[mb] = q0 + (warp * MB + mb) * 16;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m[mb][h] = neg_inf();
      l[mb][h] = 0.0f;
      i_row[mb][h] = r0[mb] + group + 8 * h;
    }
  }

  for (unsigned t = 0; t < ntiles; ++t) {
    cp_async_wait<STAGES - 2>();
    // Every thread's copies of tile t are visible, and every warp is done with the stage the
    // next load overwrites (tile t - 1's; at t = 0, Q's).
    __syncthreads();
    {
      unsigned tn = t + STAGES - 1;
      __nv_bfloat16* nxt = smem + (tn % STAGES) * STAGE;
      if (tn < ntiles) {
        load_tile<BK, D>(nxt, k, tn * BK, nk, k_sn, k_sd);
        load_tile<BK, D>(nxt + KV, v, tn * BK, nk, v_sn, v_sd);
      }
      cp_async_commit();
    }
    const __nv_bfloat16* ks_ = smem + (t % STAGES) * STAGE;
    const __nv_bfloat16* vs_ = ks_ + KV;
    unsigned k0 = t * BK;
    // A block's last row sees keys up to r0 + 15 + off; later blocks see more.
    bool live[MB];
#pragma unroll
    for (int mb = 0; mb < MB; ++mb) live[mb] = !causal || k0 <= r0[mb] + 15 + off;
    if (!live[MB - 1]) continue;

    float s[MB][KF][4];
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int f = 0; f < KF; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mb][f][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < DK; ++ks) {
#pragma unroll
      for (int p = 0; p < KF / 2; ++p) {
        unsigned r4[4];
        unsigned nr = p * 16 + (lane & 7) + (lane >> 4) * 8, kc = ks * 16 + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(r4, ks_ + nr * LD + kc);
#pragma unroll
        for (int mb = 0; mb < MB; ++mb) {
          if (!live[mb]) continue;
          mma_bf16(s[mb][2 * p], qa[mb][ks], r4);
          mma_bf16(s[mb][2 * p + 1], qa[mb][ks], r4 + 2);
        }
      }
    }
    // Scale, mask (only tiles that reach past the keys or a block's diagonal), online softmax.
#pragma unroll
    for (int mb = 0; mb < MB; ++mb) {
      if (!live[mb]) continue;
      bool edge = k0 + BK > nk || (causal && k0 + BK > r0[mb] + off + 1);
      float mt[2] = {neg_inf(), neg_inf()};
#pragma unroll
      for (int f = 0; f < KF; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          unsigned j = k0 + f * 8 + 2 * tig + (e & 1);
          float x = s[mb][f][e] * scale_log2;
          if (edge && !(j < nk && visible(causal, i_row[mb][e >> 1], j, off))) x = neg_inf();
          s[mb][f][e] = x;
          mt[e >> 1] = fmaxf(mt[e >> 1], x);
        }
      float mu[2], corr[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mt[h] = fmaxf(mt[h], __shfl_xor_sync(FULL_MASK, mt[h], 1));
        mt[h] = fmaxf(mt[h], __shfl_xor_sync(FULL_MASK, mt[h], 2));
        float mn = fmaxf(m[mb][h], mt[h]);
        mu[h] = mn == neg_inf() ? 0.0f : mn;
        corr[h] = exp2f(m[mb][h] - mu[h]);
        m[mb][h] = mn;
        l[mb][h] *= corr[h];
      }
#pragma unroll
      for (int f = 0; f < DF; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mb][f][e] *= corr[e >> 1];
#pragma unroll
      for (int f = 0; f < KF; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float p = exp2f(s[mb][f][e] - mu[e >> 1]);
          l[mb][e >> 1] += p;
          s[mb][f][e] = p;
        }
    }
    // O += P V: P's accumulator fragments are the A fragments of the next product.
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      unsigned pa[MB][4];
#pragma unroll
      for (int mb = 0; mb < MB; ++mb) {
        pa[mb][0] = pack_bf16(s[mb][2 * kk][0], s[mb][2 * kk][1]);
        pa[mb][1] = pack_bf16(s[mb][2 * kk][2], s[mb][2 * kk][3]);
        pa[mb][2] = pack_bf16(s[mb][2 * kk + 1][0], s[mb][2 * kk + 1][1]);
        pa[mb][3] = pack_bf16(s[mb][2 * kk + 1][2], s[mb][2 * kk + 1][3]);
      }
#pragma unroll
      for (int p = 0; p < DF / 2; ++p) {
        unsigned r4[4];
        unsigned qq = lane >> 3, r = lane & 7;
        unsigned kr = kk * 16 + r + (qq & 1) * 8, nc = p * 16 + (qq >> 1) * 8;
        ldmatrix_x4_trans(r4, vs_ + kr * LD + nc);
#pragma unroll
        for (int mb = 0; mb < MB; ++mb) {
          if (!live[mb]) continue;
          mma_bf16(acc[mb][2 * p], pa[mb], r4);
          mma_bf16(acc[mb][2 * p + 1], pa[mb], r4 + 2);
        }
      }
    }
  }

#pragma unroll
  for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[mb][h] = __fadd_rn(l[mb][h], __shfl_xor_sync(FULL_MASK, l[mb][h], 1));
      l[mb][h] = __fadd_rn(l[mb][h], __shfl_xor_sync(FULL_MASK, l[mb][h], 2));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      unsigned i = i_row[mb][h];
      if (i >= nq) continue;
      float inv = l[mb][h] > 0.0f ? __frcp_rn(l[mb][h]) : 0.0f;
#pragma unroll
      for (int f = 0; f < DF; ++f) {
        float x[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          unsigned c = f * 8 + 2 * tig + e;
          x[e] = acc[mb][f][2 * h + e] * inv;
          o[(size_t)i * o_sn + (size_t)c * o_sd] = x[e];
        }
        // The bf16 copy the backward reads: the same values rounded, two per 4-byte store.
        if (o16)
          *reinterpret_cast<unsigned*>(o16 + (size_t)i * (gridDim.y * D) + f * 8 + 2 * tig) =
              pack_bf16(x[0], x[1]);
      }
      if (tig == 0) lse[i] = l[mb][h] > 0.0f ? m[mb][h] + __log2f(l[mb][h]) : neg_inf();
    }
  }
}

#define ATTN_FWD_TC_ENTRY(NAME, T, D, BK, MB, STAGES)                                         \
  extern "C" __global__ void __launch_bounds__(NT) NAME(                                      \
      float* __restrict__ o, float* __restrict__ lse, __nv_bfloat16* __restrict__ o16,       \
      const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, unsigned nq,\
      unsigned nk,                                                                           \
      unsigned dh, unsigned dv, unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd,  \
      unsigned k_sb, unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb,             \
      unsigned v_sh, unsigned v_sn, unsigned v_sd, unsigned o_sb, unsigned o_sh,             \
      unsigned o_sn, unsigned o_sd, float scale_log2, unsigned causal) {                     \
    attn_fwd_tc<D, BK, MB, STAGES, T>(o, lse, o16, q, k, v, nq, nk, q_sb, q_sh, q_sn, q_sd, k_sb,  \
                                      k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd, o_sb, o_sh,  \
                                      o_sn, o_sd, scale_log2, causal);                       \
  }

ATTN_FWD_TC_ENTRY(attn_fwd_bf16_d64, float, 64, 64, 1, 2)
ATTN_FWD_TC_ENTRY(attn_fwd_bf16_d128, float, 128, 32, 1, 2)
ATTN_FWD_TC_ENTRY(attn_fwd_bf16s_d64, __nv_bfloat16, 64, 64, 2, 2)
ATTN_FWD_TC_ENTRY(attn_fwd_bf16s_d128, __nv_bfloat16, 128, 32, 1, 2)

// ---- bf16 tensor-core backward ----
//
// attn_bwd_dkdv_bf16_d64, attn_bwd_dq_bf16_d64: the backward for Dh = Dv = 64 with q, k, v
// and dO stored as bf16 (the `_bf16s` kernels' parameters and launch order, but dO as bf16:
// attn_bwd_dot_round_bf16s first writes D and a contiguous bf16 copy of dO), every product on
// mma.sync.m16n8k16 with f32 accumulation. P and dS are rounded to bf16 as the A operands of
// the products that follow them (P^T dO, dS^T Q, dS K); S, dP, P and dS themselves are f32,
// as in the forward. lse, D and every output stay f32.
// - attn_bwd_dkdv_bf16_d64: 64 keys per CTA (16 per warp), query tiles of 64 in increasing
//   order from the first that sees the CTA's keys. Per tile: S^T = K Q^T and dP^T = V dO^T
//   (the warp's 16 keys by 64 queries), P^T = exp2(S^T scale_log2 - lse), dS^T = P^T (dP^T -
//   D), then dV += P^T dO and dK += dS^T Q, their A fragments taken from the accumulators;
//   dK = alpha dK at the end. Grid (ceil(Nk / 64), heads, batch).
// - attn_bwd_dq_bf16_d64: 64 queries per CTA (16 per warp), key tiles of 64 in increasing
//   order up to the causal bound. Per tile: S = Q K^T, dP = dO V^T, P, dS as above, dQ +=
//   dS K; dQ = alpha dQ at the end. Grid (ceil(Nq / 64), heads, batch); under the causal rule
//   the CTAs take the query tiles last first, the longest first.
// Loads: q, k, v and dO follow the bf16-input forward's 16-byte rule and every 8-feature
// chunk is one cp.async, through a two-stage ring (the next tile loads while this one
// multiplies, one barrier per tile). dK/dV: K and V pass through the ring's second stage
// once and are then held as A fragments in registers; the ring carries the query tiles (Q
// and dO), and the next tile's lse and D are loaded into registers before the current tile
// is multiplied and stored to shared memory after it. dQ: Q and dO pass through the second
// stage once (then A fragments); the ring carries the key tiles (K and V).
// Shared memory: two stages of two bf16 tiles of 64 rows x (64 + 8) (the forward's padded
// rows), 36,864 bytes dynamic, and (dK/dV) lse and D of two query tiles. Order: fixed by the
// shape (the tensor core's within each 16-wide k-step, steps and tiles in increasing order);
// no atomics.

#define TC_D 64
#define TC_LD (TC_D + 8)
#define TC_TILE (64 * TC_LD)

// The A fragment (16 rows, k = columns 16 kk .. 16 kk + 15) of a warp's 16 x 64 f32
// accumulators (8 n-fragments), rounded to bf16: an accumulator fragment pair is laid out as
// an A fragment.
__device__ __forceinline__ void acc_as_a(unsigned* a, const float (*acc)[4], int kk) {
  a[0] = pack_bf16(acc[2 * kk][0], acc[2 * kk][1]);
  a[1] = pack_bf16(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = pack_bf16(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  a[3] = pack_bf16(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// acc (16 x 64) += A (16 x 16: k-step ks) times the transpose of a 64-row tile (rows are the
// output columns, k along a row): S = Q K^T against the K tile.
__device__ __forceinline__ void mma_by_rows(float (*acc)[4], const unsigned* a,
                                            const __nv_bfloat16* tile, int ks) {
  unsigned lane = threadIdx.x & 31;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    unsigned r4[4];
    unsigned nr = p * 16 + (lane & 7) + (lane >> 4) * 8, kc = ks * 16 + ((lane >> 3) & 1) * 8;
    ldmatrix_x4(r4, tile + nr * TC_LD + kc);
    mma_bf16(acc[2 * p], a, r4);
    mma_bf16(acc[2 * p + 1], a, r4 + 2);
  }
}

// acc (16 x 64) += A (16 x 16: k = tile rows 16 kk .. 16 kk + 15) times the tile (rows are k,
// the 64 features the output columns): dV += P^T dO against the dO tile.
__device__ __forceinline__ void mma_by_cols(float (*acc)[4], const unsigned* a,
                                            const __nv_bfloat16* tile, int kk) {
  unsigned lane = threadIdx.x & 31;
  unsigned qq = lane >> 3, r = lane & 7;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    unsigned r4[4];
    unsigned kr = kk * 16 + r + (qq & 1) * 8, nc = p * 16 + (qq >> 1) * 8;
    ldmatrix_x4_trans(r4, tile + kr * TC_LD + nc);
    mma_bf16(acc[2 * p], a, r4);
    mma_bf16(acc[2 * p + 1], a, r4 + 2);
  }
}

// A warp's rows (its 16 of the CTA's 64) of a staged tile as A fragments, k-step ks.
__device__ __forceinline__ void tile_as_a(unsigned* a, const __nv_bfloat16* tile, int ks) {
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned row = warp * 16 + (lane & 15), col = ks * 16 + (lane >> 4) * 8;
  ldmatrix_x4(a, tile + row * TC_LD + col);
}

extern "C" __global__ void __launch_bounds__(NT) attn_bwd_dkdv_bf16_d64(
    float* __restrict__ dk, float* __restrict__ dvo, const __nv_bfloat16* __restrict__ q,
    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const __nv_bfloat16* __restrict__ g, const float* __restrict__ lse,
    const float* __restrict__ dd, unsigned nq, unsigned nk, unsigned dh, unsigned dv,
    unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh,
    unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
    unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd, unsigned dk_sb, unsigned dk_sh,
    unsigned dk_sn, unsigned dk_sd, unsigned dv_sb, unsigned dv_sh, unsigned dv_sn,
    unsigned dv_sd, float scale_log2, float alpha, unsigned causal) {
  constexpr int STAGE = 2 * TC_TILE;  // Q, then dO
  __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(attn_dynamic_smem);
  __shared__ float Ls[2][64];
  __shared__ float Ds[2][64];
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
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

  // Group 0: K and V (into the second stage) and query tile 0 (the first).
  load_rows_async<64, TC_D>(smem + STAGE, k, k0, nk, k_sn);
  load_rows_async<64, TC_D>(smem + STAGE + TC_TILE, v, k0, nk, v_sn);
  if (ntiles > 0) {
    load_rows_async<64, TC_D>(smem, q, i_start, nq, q_sn);
    load_rows_async<64, TC_D>(smem + TC_TILE, g, i_start, nq, g_sn);
    if (threadIdx.x < 64) {
      unsigned i = i_start + threadIdx.x;
      Ls[0][threadIdx.x] = i < nq ? lse[i] : 0.0f;
      Ds[0][threadIdx.x] = i < nq ? dd[i] : 0.0f;
    }
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  unsigned ka[TC_D / 16][4], va[TC_D / 16][4];
#pragma unroll
  for (int ks = 0; ks < TC_D / 16; ++ks) {
    tile_as_a(ka[ks], smem + STAGE, ks);
    tile_as_a(va[ks], smem + STAGE + TC_TILE, ks);
  }
  // Keys group and group + 8 of the warp's 16.
  unsigned j_row[2] = {k0 + warp * 16 + group, k0 + warp * 16 + group + 8};

  float dka[8][4], dva[8][4];
#pragma unroll
  for (int f = 0; f < 8; ++f)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      dka[f][e] = 0.0f;
      dva[f][e] = 0.0f;
    }

  for (unsigned t = 0; t < ntiles; ++t) {
    unsigned i0 = i_start + t * 64;
    cp_async_wait<0>();
    // Tile t (Q, dO, lse, D) is visible, and every warp is done with the stage the next load
    // overwrites (tile t - 1's; at t = 0, K and V's).
    __syncthreads();
    bool next = t + 1 < ntiles;
    if (next) {
      __nv_bfloat16* nxt = smem + ((t + 1) & 1) * STAGE;
      load_rows_async<64, TC_D>(nxt, q, i0 + 64, nq, q_sn);
      load_rows_async<64, TC_D>(nxt + TC_TILE, g, i0 + 64, nq, g_sn);
    }
    cp_async_commit();
    float l_next = 0.0f, d_next = 0.0f;
    if (next && threadIdx.x < 64) {
      unsigned i = i0 + 64 + threadIdx.x;
      l_next = i < nq ? lse[i] : 0.0f;
      d_next = i < nq ? dd[i] : 0.0f;
    }
    const __nv_bfloat16* Qs = smem + (t & 1) * STAGE;
    const __nv_bfloat16* Gs = Qs + TC_TILE;
    const float* Lt = Ls[t & 1];
    const float* Dt = Ds[t & 1];
    // S^T = K Q^T and dP^T = V dO^T: the warp's 16 keys by the tile's 64 queries.
    float s[8][4], dp[8][4];
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[f][e] = 0.0f;
        dp[f][e] = 0.0f;
      }
#pragma unroll
    for (int ks = 0; ks < TC_D / 16; ++ks) {
      mma_by_rows(s, ka[ks], Qs, ks);
      mma_by_rows(dp, va[ks], Gs, ks);
    }
    // P^T and dS^T in place of S^T and dP^T (masked entries 0).
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        unsigned c = f * 8 + 2 * tig + (e & 1);
        unsigned i = i0 + c, j = j_row[e >> 1];
        bool vis = i < nq && j < nk && visible(causal, i, j, off);
        float pv = vis ? exp2f(fmaf(s[f][e], scale_log2, -Lt[c])) : 0.0f;
        s[f][e] = pv;
        dp[f][e] = vis ? pv * (dp[f][e] - Dt[c]) : 0.0f;
      }
    // dV += P^T dO and dK += dS^T Q over the tile's 64 queries, 16 at a time.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      unsigned pa[4], da[4];
      acc_as_a(pa, s, kk);
      acc_as_a(da, dp, kk);
      mma_by_cols(dva, pa, Gs, kk);
      mma_by_cols(dka, da, Qs, kk);
    }
    // The other lse / D buffer was last read in iteration t - 1, before this one's barrier.
    if (next && threadIdx.x < 64) {
      Ls[(t + 1) & 1][threadIdx.x] = l_next;
      Ds[(t + 1) & 1][threadIdx.x] = d_next;
    }
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    unsigned j = j_row[h];
    if (j >= nk) continue;
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        unsigned c = f * 8 + 2 * tig + e;
        dk[(size_t)j * dk_sn + (size_t)c * dk_sd] = alpha * dka[f][2 * h + e];
        dvo[(size_t)j * dv_sn + (size_t)c * dv_sd] = dva[f][2 * h + e];
      }
  }
}

extern "C" __global__ void __launch_bounds__(NT) attn_bwd_dq_bf16_d64(
    float* __restrict__ dq, const __nv_bfloat16* __restrict__ q,
    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const __nv_bfloat16* __restrict__ g, const float* __restrict__ lse,
    const float* __restrict__ dd, unsigned nq, unsigned nk, unsigned dh, unsigned dv,
    unsigned q_sb, unsigned q_sh, unsigned q_sn, unsigned q_sd, unsigned k_sb, unsigned k_sh,
    unsigned k_sn, unsigned k_sd, unsigned v_sb, unsigned v_sh, unsigned v_sn, unsigned v_sd,
    unsigned g_sb, unsigned g_sh, unsigned g_sn, unsigned g_sd, unsigned dq_sb, unsigned dq_sh,
    unsigned dq_sn, unsigned dq_sd, float scale_log2, float alpha, unsigned causal) {
  constexpr int STAGE = 2 * TC_TILE;  // K, then V
  __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(attn_dynamic_smem);
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
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

  // Group 0: Q and dO (into the second stage) and key tile 0 (the first).
  load_rows_async<64, TC_D>(smem + STAGE, q, q0, nq, q_sn);
  load_rows_async<64, TC_D>(smem + STAGE + TC_TILE, g, q0, nq, g_sn);
  if (ntiles > 0) {
    load_rows_async<64, TC_D>(smem, k, 0, nk, k_sn);
    load_rows_async<64, TC_D>(smem + TC_TILE, v, 0, nk, v_sn);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  unsigned qa[TC_D / 16][4], ga[TC_D / 16][4];
#pragma unroll
  for (int ks = 0; ks < TC_D / 16; ++ks) {
    tile_as_a(qa[ks], smem + STAGE, ks);
    tile_as_a(ga[ks], smem + STAGE + TC_TILE, ks);
  }
  // Queries group and group + 8 of the warp's 16.
  unsigned i_row[2] = {q0 + warp * 16 + group, q0 + warp * 16 + group + 8};
  float lse_r[2], d_r[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    bool in = i_row[h] < nq;
    lse_r[h] = in ? lse[row0 + i_row[h]] : 0.0f;
    d_r[h] = in ? dd[row0 + i_row[h]] : 0.0f;
  }
  float acc[8][4];
#pragma unroll
  for (int f = 0; f < 8; ++f)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[f][e] = 0.0f;

  for (unsigned t = 0; t < ntiles; ++t) {
    unsigned k0 = t * 64;
    cp_async_wait<0>();
    // Tile t is visible, and every warp is done with the stage the next load overwrites
    // (tile t - 1's; at t = 0, Q and dO's).
    __syncthreads();
    if (t + 1 < ntiles) {
      __nv_bfloat16* nxt = smem + ((t + 1) & 1) * STAGE;
      load_rows_async<64, TC_D>(nxt, k, k0 + 64, nk, k_sn);
      load_rows_async<64, TC_D>(nxt + TC_TILE, v, k0 + 64, nk, v_sn);
    }
    cp_async_commit();
    const __nv_bfloat16* Ks = smem + (t & 1) * STAGE;
    const __nv_bfloat16* Vs = Ks + TC_TILE;
    // S = Q K^T and dP = dO V^T: the warp's 16 queries by the tile's 64 keys.
    float s[8][4], dp[8][4];
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[f][e] = 0.0f;
        dp[f][e] = 0.0f;
      }
#pragma unroll
    for (int ks = 0; ks < TC_D / 16; ++ks) {
      mma_by_rows(s, qa[ks], Ks, ks);
      mma_by_rows(dp, ga[ks], Vs, ks);
    }
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        unsigned j = k0 + f * 8 + 2 * tig + (e & 1), i = i_row[e >> 1];
        bool vis = i < nq && j < nk && visible(causal, i, j, off);
        float pv = vis ? exp2f(fmaf(s[f][e], scale_log2, -lse_r[e >> 1])) : 0.0f;
        s[f][e] = vis ? pv * (dp[f][e] - d_r[e >> 1]) : 0.0f;
      }
    // dQ += dS K over the tile's 64 keys, 16 at a time.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      unsigned da[4];
      acc_as_a(da, s, kk);
      mma_by_cols(acc, da, Ks, kk);
    }
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    unsigned i = i_row[h];
    if (i >= nq) continue;
#pragma unroll
    for (int f = 0; f < 8; ++f)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        unsigned c = f * 8 + 2 * tig + e;
        dq[(size_t)i * dq_sn + (size_t)c * dq_sd] = alpha * acc[f][2 * h + e];
      }
  }
}

// ---- decode: one query per (batch, head) over a KV cache ----
//
// attn_decode_partial_f32: the keys of each (batch, head) are split into chunks of
// `chunk` keys, one CTA per chunk (grid (splits, H, B), 128 threads). Warp w takes keys
// w, w + 4, ... of the chunk in increasing order: a lane-parallel dot product (lanes over
// features, butterfly sum), an online base-2 softmax and the lane's features of the
// unnormalised output. The four warps' states are then merged in warp order by warp 0 and
// written as the chunk's partial `[m, l, o_0 .. o_{dv-1}]` (scratch `[B, H, splits, dv + 2]`).
// attn_decode_combine_f32: one warp per (batch, head) (grid (1, H, B), 32 threads) merges
// the partials in split order into the output (any strides) and the base-2 lse. The order of
// every sum is fixed by L and `chunk`, so results do not depend on timing.
// With `k_new` non-null both decode kernels also append: the last cached position's key and
// value are taken from `k_new`, `v_new` ([B, H, 1, D] views of the projection) and written
// into the cache through `k_w`, `v_w` (the cache's own addresses), one launch instead of a
// copy and a decode, with the same bits.

// Merges the online-softmax state (m2, l2, a2) into (m, l, a): a = a exp2(m - M) + a2
// exp2(m2 - M), with M = max(m, m2) (0 when both are -inf).
__device__ __forceinline__ void merge_state(float& m, float& l, float* a, float m2, float l2,
                                            const float* a2) {
  float mn = fmaxf(m, m2);
  float mu = mn == neg_inf() ? 0.0f : mn;
  float c1 = exp2f(m - mu), c2 = exp2f(m2 - mu);
  l = l * c1 + l2 * c2;
#pragma unroll
  for (int c = 0; c < 4; ++c) a[c] = a[c] * c1 + a2[c] * c2;
  m = mn;
}

// The position a decode step appends: its key and value are read from the projection
// (`k_new`, `v_new`: [B, H, 1, D] views) instead of the cache, and written into the cache's
// row through `k_w`, `v_w` (the cache's own addresses, its strides) by the warp that reads
// them. The cache is never read at that position, so its reads stay read-only. The kernel
// parameters as they are: the row's addresses are only worked out where it is taken.
struct DecodeAppend {
  const float* k_new;
  const float* v_new;
  float* k_w;
  float* v_w;
  unsigned kn_sb, kn_sh, kn_sd, vn_sb, vn_sh, vn_sd;
  unsigned k_sb, k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd;
  unsigned bz, hy;
};

// One key into a warp's state: the score of the row `kr` (feature stride `k_sd`) against
// the query, then the row `vr`. With `k_w`, the key and value read are also written there
// (feature strides `kw_sd`, `vw_sd`).
__device__ __forceinline__ void decode_key(const float* qr, const float* __restrict__ kr,
                                           unsigned k_sd, const float* __restrict__ vr,
                                           unsigned v_sd, float* k_w, float* v_w, unsigned dh,
                                           unsigned dv, float& m, float& l, float* a,
                                           unsigned kw_sd, unsigned vw_sd) {
  unsigned lane = threadIdx.x & 31;
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    unsigned e = lane + 32 * c;
    if (e < dh) {
      float kx = kr[(size_t)e * k_sd];
      if (k_w) k_w[(size_t)e * kw_sd] = kx;
      s = fmaf(qr[c], kx, s);
    }
  }
  s = warp_sum(s);
  float vj[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    unsigned e = lane + 32 * c;
    vj[c] = e < dv ? vr[(size_t)e * v_sd] : 0.0f;
    if (v_w && e < dv) v_w[(size_t)e * vw_sd] = vj[c];
  }
  merge_state(m, l, a, s, 1.0f, vj);
}

// The state (m, l, a) of keys [j0, j1) of one (batch, head) for the query `qr` (this lane's
// features, scaled): warp w takes keys j0 + w, j0 + w + 4, ... in increasing order, then warp
// 0 merges the warps' states in warp order through `st`. The result is warp 0's; every
// thread of the CTA must call it (it has a barrier), and `st` is free again after the next.
// The key and value at `ap.at` come from `ap` (and are written to the cache), the same values
// a cache filled beforehand would hold.
__device__ __forceinline__ void decode_chunk(const float* qr, const float* __restrict__ k,
                                             const float* __restrict__ v, unsigned j0,
                                             unsigned j1, unsigned dh, unsigned dv,
                                             unsigned k_sn, unsigned k_sd, unsigned v_sn,
                                             unsigned v_sd, const DecodeAppend& ap,
                                             unsigned at, float (*st)[2 + DMAX], float& m,
                                             float& l, float* a) {
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  m = neg_inf();
  l = 0.0f;
#pragma unroll
  for (int c = 0; c < 4; ++c) a[c] = 0.0f;
  // The appended position `at` (nk - 1, or ~0u for none) is the chunk's last, so its warp
  // takes it after all its other keys, in the order of a filled cache.
  bool appends = at >= j0 && at < j1;
  for (unsigned j = j0 + warp; j < (appends ? at : j1); j += NWARP) {
    decode_key(qr, k + (size_t)j * k_sn, k_sd, v + (size_t)j * v_sn, v_sd, nullptr, nullptr, dh,
               dv, m, l, a, 0, 0);
  }
  if (appends && (at - j0) % NWARP == warp) {
    size_t bz = ap.bz, hy = ap.hy;
    const float* kr = ap.k_new + bz * ap.kn_sb + hy * ap.kn_sh;
    const float* vr = ap.v_new + bz * ap.vn_sb + hy * ap.vn_sh;
    float* kw = ap.k_w + bz * ap.k_sb + hy * ap.k_sh + (size_t)at * ap.k_sn;
    float* vw = ap.v_w + bz * ap.v_sb + hy * ap.v_sh + (size_t)at * ap.v_sn;
    decode_key(qr, kr, ap.kn_sd, vr, ap.vn_sd, kw, vw, dh, dv, m, l, a, ap.k_sd, ap.v_sd);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    unsigned e = lane + 32 * c;
    if (e < dv) st[warp][2 + e] = a[c];
  }
  if (lane == 0) {
    st[warp][0] = m;
    st[warp][1] = l;
  }
  __syncthreads();
  if (warp == 0) {
    for (int w = 1; w < NWARP; ++w) {
      float a2[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        unsigned e = lane + 32 * c;
        a2[c] = e < dv ? st[w][2 + e] : 0.0f;
      }
      merge_state(m, l, a, st[w][0], st[w][1], a2);
    }
  }
}

// This lane's features of the query of (bz, hy), scaled by `scale_log2`.
__device__ __forceinline__ void decode_query(float* qr, const float* __restrict__ q,
                                             unsigned dh, unsigned q_sd, float scale_log2) {
  unsigned lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    unsigned e = lane + 32 * c;
    qr[c] = e < dh ? q[(size_t)e * q_sd] * scale_log2 : 0.0f;
  }
}

// Writes the normalised output and the base-2 lse of a merged state (one warp).
__device__ __forceinline__ void decode_output(float* __restrict__ o, float* __restrict__ lse,
                                              size_t bh, unsigned dv, unsigned o_sd, float m,
                                              float l, const float* a) {
  unsigned lane = threadIdx.x & 31;
  float inv = l > 0.0f ? __frcp_rn(l) : 0.0f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    unsigned e = lane + 32 * c;
    if (e < dv) o[(size_t)e * o_sd] = a[c] * inv;
  }
  if (lane == 0) lse[bh] = l > 0.0f ? m + __log2f(l) : neg_inf();
}

extern "C" __global__ void __launch_bounds__(NT)
    attn_decode_partial_f32(float* __restrict__ part, const float* __restrict__ q,
                            const float* __restrict__ k, const float* __restrict__ v,
                            unsigned nk, unsigned dh, unsigned dv, unsigned chunk,
                            unsigned q_sb, unsigned q_sh, unsigned q_sd, unsigned k_sb,
                            unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb,
                            unsigned v_sh, unsigned v_sn, unsigned v_sd, float scale_log2,
                            const float* __restrict__ k_new, const float* __restrict__ v_new,
                            float* k_w, float* v_w, unsigned kn_sb, unsigned kn_sh,
                            unsigned kn_sd, unsigned vn_sb, unsigned vn_sh, unsigned vn_sd) {
  __shared__ float st[NWARP][2 + DMAX];
  unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned bz = blockIdx.z, hy = blockIdx.y, split = blockIdx.x;
  DecodeAppend ap = {k_new, v_new, k_w, v_w, kn_sb, kn_sh, kn_sd, vn_sb, vn_sh, vn_sd, k_sb,
                     k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd, bz, hy};
  unsigned at = k_new != nullptr && nk > 0 ? nk - 1 : ~0u;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  float qr[4];
  decode_query(qr, q, dh, q_sd, scale_log2);
  unsigned j0 = split * chunk, j1 = min(nk, j0 + chunk);
  float m, l, a[4];
  decode_chunk(qr, k, v, j0, j1, dh, dv, k_sn, k_sd, v_sn, v_sd, ap, at, st, m, l, a);
  if (warp != 0) return;
  size_t row = ((size_t)bz * gridDim.y + hy) * gridDim.x + split;
  float* out = part + row * (dv + 2);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    unsigned e = lane + 32 * c;
    if (e < dv) out[2 + e] = a[c];
  }
  if (lane == 0) {
    out[0] = m;
    out[1] = l;
  }
}

// Merges the partials of one (batch, head) in split order into (m, l, a) (one warp).
__device__ __forceinline__ void decode_merge_partials(const float* __restrict__ p,
                                                      unsigned splits, unsigned dv, float& m,
                                                      float& l, float* a) {
  unsigned lane = threadIdx.x & 31;
  m = neg_inf();
  l = 0.0f;
#pragma unroll
  for (int c = 0; c < 4; ++c) a[c] = 0.0f;
  for (unsigned s = 0; s < splits; ++s) {
    const float* ps = p + (size_t)s * (dv + 2);
    float a2[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      unsigned e = lane + 32 * c;
      a2[c] = e < dv ? ps[2 + e] : 0.0f;
    }
    merge_state(m, l, a, ps[0], ps[1], a2);
  }
}

extern "C" __global__ void __launch_bounds__(32)
    attn_decode_combine_f32(float* __restrict__ o, float* __restrict__ lse,
                            const float* __restrict__ part, unsigned splits, unsigned dv,
                            unsigned o_sb, unsigned o_sh, unsigned o_sd) {
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  size_t bh = (size_t)bz * gridDim.y + hy;
  float m, l, a[4];
  decode_merge_partials(part + bh * splits * (dv + 2), splits, dv, m, l, a);
  decode_output(o + (size_t)bz * o_sb + (size_t)hy * o_sh, lse, bh, dv, o_sd, m, l, a);
}

// attn_decode_f32: the same chunks merged in the same order in one launch, without the
// scratch: one CTA per (batch, head) (grid (1, H, B), 128 threads) computes each chunk's
// state as the partial kernel's CTA does, warp 0 merges it into a running state in chunk
// order as the combine kernel merges the partials (which hold the same f32 values), and
// writes the output. The pair's bits, for one CTA per head instead of one per chunk.
extern "C" __global__ void __launch_bounds__(NT)
    attn_decode_f32(float* __restrict__ o, float* __restrict__ lse,
                    const float* __restrict__ q, const float* __restrict__ k,
                    const float* __restrict__ v, unsigned nk, unsigned dh, unsigned dv,
                    unsigned chunk, unsigned q_sb, unsigned q_sh, unsigned q_sd,
                    unsigned k_sb, unsigned k_sh, unsigned k_sn, unsigned k_sd, unsigned v_sb,
                    unsigned v_sh, unsigned v_sn, unsigned v_sd, unsigned o_sb, unsigned o_sh,
                    unsigned o_sd, float scale_log2, const float* __restrict__ k_new,
                    const float* __restrict__ v_new, float* k_w, float* v_w, unsigned kn_sb,
                    unsigned kn_sh, unsigned kn_sd, unsigned vn_sb, unsigned vn_sh,
                    unsigned vn_sd) {
  __shared__ float st[NWARP][2 + DMAX];
  unsigned bz = blockIdx.z, hy = blockIdx.y;
  DecodeAppend ap = {k_new, v_new, k_w, v_w, kn_sb, kn_sh, kn_sd, vn_sb, vn_sh, vn_sd, k_sb,
                     k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd, bz, hy};
  unsigned at = k_new != nullptr && nk > 0 ? nk - 1 : ~0u;
  q += (size_t)bz * q_sb + (size_t)hy * q_sh;
  k += (size_t)bz * k_sb + (size_t)hy * k_sh;
  v += (size_t)bz * v_sb + (size_t)hy * v_sh;
  float qr[4];
  decode_query(qr, q, dh, q_sd, scale_log2);
  float m = neg_inf(), l = 0.0f, a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  // At least one chunk, as the pair has: an empty cache writes the zero output.
  unsigned splits = nk == 0 ? 1u : (nk + chunk - 1) / chunk;
  for (unsigned s = 0; s < splits; ++s) {
    float mc, lc, ac[4];
    decode_chunk(qr, k, v, s * chunk, min(nk, s * chunk + chunk), dh, dv, k_sn, k_sd, v_sn,
                 v_sd, ap, at, st, mc, lc, ac);
    merge_state(m, l, a, mc, lc, ac);
    // The next chunk's warps overwrite `st` only after warp 0 has read it.
    __syncthreads();
  }
  if ((threadIdx.x >> 5) != 0) return;
  size_t bh = (size_t)bz * gridDim.y + hy;
  decode_output(o + (size_t)bz * o_sb + (size_t)hy * o_sh, lse, bh, dv, o_sd, m, l, a);
}
