// Runs the kernels of ptx/*.cu on the CPU, for `scripts/ptx.sh host`: the CUDA built-ins the
// kernels use, each CTA as one std::thread per CUDA thread (so __syncthreads and warp
// collectives behave as barriers among real threads), and host versions of the inline-PTX
// helpers of gemm.cu and attention.cu written from the PTX ISA's tables (ldmatrix: lane
// 8i + r gives row r of matrix i, lane 4r + w receives word w of row r; mma.m16n8k16: the A,
// B and C fragment layouts of "Matrix Fragments for mma.m16n8k16 with floating point type").
//
// What this can and cannot show: index arithmetic, tiling, edge handling, fragment
// addressing and formulas, yes; timing-dependent faults (a missing cp.async wait or a
// missing barrier between stages) no: cp.async copies at once here. The PTX interpreter and a
// GPU check those.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define TARFLOW_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct Dim3 {
  unsigned x, y, z;
};
inline thread_local Dim3 threadIdx = {0, 0, 0};
inline Dim3 blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

struct uint4 {
  unsigned x, y, z, w;
};
struct float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

using std::isnan;
using std::min;

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
// CUDA's fast intrinsics as their accurate host counterparts: `__log2f` (approximate base-2
// log) as log2f, `__frcp_rn` (reciprocal, round to nearest) as a correctly rounded division.
// expf, exp2f, tanhf, fmaf and fmaxf are the C library's (fmaf fused, fmaxf ignoring a NaN as
// CUDA's does).
inline float __log2f(float a) { return std::log2(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }

struct __nv_bfloat16 {
  uint16_t bits;
};
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.bits; }
inline float __bfloat162float(__nv_bfloat16 v) { return __uint_as_float((unsigned)v.bits << 16); }
// Round to nearest even; NaN stays a (quiet) NaN.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  unsigned u = __float_as_uint(f);
  if (std::isnan(f)) return {(uint16_t)((u >> 16) | 0x40)};
  u += 0x7fff + ((u >> 16) & 1);
  return {(uint16_t)(u >> 16)};
}
// A pair, `x` in the low half of its 32 bits (as cuda_bf16.h lays it out).
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// One CTA's synchronisation: a barrier for the CTA and one per warp, with exchange slots.
struct Warp {
  std::barrier<> bar{32};
  float f[2][32];
  bool p[32];
  const void* addr[32];
  unsigned a[32][4], b[32][2];
  float c[32][4];
};
inline std::barrier<>* cta_barrier;
inline Warp* cta_warps;
inline Warp& my_warp() { return cta_warps[threadIdx.x >> 5]; }
inline unsigned my_lane() { return threadIdx.x & 31; }

inline void __syncthreads() { cta_barrier->arrive_and_wait(); }

// Shuffles take one barrier each, not two: they alternate between two exchange rows, so a
// lane writes row p again only two shuffles later, after the barrier of the shuffle between,
// which no lane passes before every lane has read row p. (The attention kernels shuffle
// hundreds of times per tile; this halves the host run's time.)
inline thread_local unsigned shfl_row = 0;
inline float shfl_exchange(float v, unsigned from) {
  Warp& w = my_warp();
  float* row = w.f[shfl_row];
  shfl_row ^= 1;
  row[my_lane()] = v;
  w.bar.arrive_and_wait();
  return row[from & 31];
}
inline float __shfl_xor_sync(unsigned, float v, int o) { return shfl_exchange(v, my_lane() ^ o); }
// Lane `src`'s value to every lane (all 32 lanes take part, as in the kernels).
inline float __shfl_sync(unsigned, float v, int src) { return shfl_exchange(v, src); }

inline bool __any_sync(unsigned, bool p) {
  Warp& w = my_warp();
  w.p[my_lane()] = p;
  w.bar.arrive_and_wait();
  bool r = false;
  for (int l = 0; l < 32; ++l) r |= w.p[l];
  w.bar.arrive_and_wait();
  return r;
}

// A CTA's dynamic shared memory (`extern __shared__`): one CTA runs at a time.
alignas(16) inline unsigned char host_dynamic_smem[227 * 1024];

// The inline-PTX helpers of gemm.cu (all five) and attention.cu (ldmatrix_x4,
// ldmatrix_x4_trans, mma_bf16), which have the same signatures in both.
inline void cp_async16_zfill(void* dst, const void* src, unsigned src_bytes) {
  memset(dst, 0, 16);
  memcpy(dst, src, src_bytes);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

inline float bf16_bits_to_float(unsigned short u) { return __uint_as_float((unsigned)u << 16); }

inline void ldmatrix_impl(unsigned* r, const void* p, bool trans) {
  Warp& w = my_warp();
  unsigned lane = my_lane(), g = lane / 4, t = lane % 4;
  w.addr[lane] = p;
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    unsigned short e0, e1;
    if (!trans) {
      auto row = static_cast<const unsigned short*>(w.addr[8 * i + g]);
      e0 = row[2 * t];
      e1 = row[2 * t + 1];
    } else {
      e0 = static_cast<const unsigned short*>(w.addr[8 * i + 2 * t])[g];
      e1 = static_cast<const unsigned short*>(w.addr[8 * i + 2 * t + 1])[g];
    }
    r[i] = e0 | ((unsigned)e1 << 16);
  }
  w.bar.arrive_and_wait();
}
inline void ldmatrix_x4(unsigned* r, const void* p) { ldmatrix_impl(r, p, false); }
inline void ldmatrix_x4_trans(unsigned* r, const void* p) { ldmatrix_impl(r, p, true); }

inline void mma_bf16(float* d, const unsigned* a, const unsigned* b) {
  Warp& w = my_warp();
  unsigned lane = my_lane();
  for (int i = 0; i < 4; ++i) {
    w.a[lane][i] = a[i];
    w.c[lane][i] = d[i];
  }
  w.b[lane][0] = b[0];
  w.b[lane][1] = b[1];
  w.bar.arrive_and_wait();
  float A[16][16], B[16][8];
  auto lo = [](unsigned v) { return bf16_bits_to_float(v & 0xffff); };
  auto hi = [](unsigned v) { return bf16_bits_to_float(v >> 16); };
  for (unsigned l = 0; l < 32; ++l) {
    unsigned g = l / 4, t = l % 4;
    A[g][2 * t] = lo(w.a[l][0]);
    A[g][2 * t + 1] = hi(w.a[l][0]);
    A[g + 8][2 * t] = lo(w.a[l][1]);
    A[g + 8][2 * t + 1] = hi(w.a[l][1]);
    A[g][2 * t + 8] = lo(w.a[l][2]);
    A[g][2 * t + 9] = hi(w.a[l][2]);
    A[g + 8][2 * t + 8] = lo(w.a[l][3]);
    A[g + 8][2 * t + 9] = hi(w.a[l][3]);
    B[2 * t][g] = lo(w.b[l][0]);
    B[2 * t + 1][g] = hi(w.b[l][0]);
    B[2 * t + 8][g] = lo(w.b[l][1]);
    B[2 * t + 9][g] = hi(w.b[l][1]);
  }
  unsigned g = lane / 4, t = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    unsigned row = g + 8 * (i / 2), col = 2 * t + (i % 2);
    float acc = w.c[lane][i];
    for (int k = 0; k < 16; ++k) acc = std::fma(A[row][k], B[k][col], acc);
    out[i] = acc;
  }
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// Runs `kernel` over `grid` CTAs of `threads` threads (1-d blocks), one CTA at a time.
inline void launch(Dim3 grid, unsigned threads, const std::function<void()>& kernel) {
  blockDim = {threads, 1, 1};
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        std::barrier<> bar(threads);
        std::unique_ptr<Warp[]> warps(new Warp[(threads + 31) / 32]);
        cta_barrier = &bar;
        cta_warps = warps.get();
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t)
          ts.emplace_back([&kernel, t] {
            threadIdx = {t, 0, 0};
            kernel();
          });
        for (auto& th : ts) th.join();
      }
}

// Test bookkeeping.
inline int failures = 0;
#define CHECK(cond, ...)                 \
  do {                                   \
    if (!(cond)) {                       \
      if (failures < 20) {               \
        printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        printf(__VA_ARGS__);             \
        printf("\n");                    \
      }                                  \
      failures++;                        \
    }                                    \
  } while (0)

inline uint64_t rng_state = 0x2545F4914F6CDD1DULL;
// Uniform in [-1, 1], from a fixed seed.
inline float rnd() {
  rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return (float)((rng_state >> 33) % 2001) / 1000.0f - 1.0f;
}

inline int finish(const char* name) {
  printf("%s: %s (%d failures)\n", name, failures ? "FAIL" : "ok", failures);
  return failures != 0;
}
