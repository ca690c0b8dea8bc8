// ptx-arch: compute_90
// A two-stage TMA ring for the interpreter's tests: warp 0 (one thread) copies boxes of 8
// rows x 64 u16 (1 KiB, 128-byte swizzled) into shared memory, completing on `full[s]`;
// warps 1 and 2 wait for each box, copy it out un-swizzled and release the stage on
// `empty[s]`. `mode` breaks one rule: 1 the consumers read without waiting, 2 they release
// the stage before reading it, 3 they wait on the wrong parity, 4 nobody waits for the
// mbarriers' initialisation.
// tma_box_5d: one copy of a five-dimensional box (coordinates c0..c4, `bytes` of it) into
// shared memory, written out as it landed.
#include <cstdint>

struct alignas(64) TensorMap {
  unsigned long long bytes[16];
};

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ bool try_wait(unsigned bar, unsigned parity) {
  unsigned ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}

__device__ __forceinline__ void wait(unsigned bar, unsigned parity) {
  while (!try_wait(bar, parity)) {
  }
}

extern "C" __global__ void __launch_bounds__(96)
    tma_ring(const __grid_constant__ TensorMap map, uint4* out, int tiles, int mode) {
  __shared__ __align__(1024) unsigned char stage[2][1024];
  __shared__ __align__(8) unsigned long long full[2], empty[2];
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < 2; ++s) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(&full[s])), "r"(1));
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(&empty[s])), "r"(64));
    }
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  if (mode != 4) __syncthreads();
  if (tid < 32) {
    if (tid == 0) {
      for (int t = 0; t < tiles; ++t) {
        const int s = t & 1;
        wait(smem_addr(&empty[s]), ((t >> 1) & 1) ^ 1);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                         smem_addr(&full[s])),
                     "r"(1024)
                     : "memory");
        asm volatile(
            "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
            " [%0], [%1, {%2, %3}], [%4];" ::"r"(smem_addr(stage[s])),
            "l"((unsigned long long)&map), "r"(0), "r"(8 * t), "r"(smem_addr(&full[s]))
            : "memory");
      }
    }
    return;
  }
  const int c = tid - 32;  // 0..63: row c / 8, 16-byte chunk c % 8
  for (int t = 0; t < tiles; ++t) {
    const int s = t & 1;
    const unsigned parity = ((t >> 1) & 1) ^ (mode == 3 ? 1 : 0);
    if (mode != 1) wait(smem_addr(&full[s]), parity);
    if (mode == 2)
      asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(&empty[s]))
                   : "memory");
    const int row = c / 8, chunk = c % 8;
    const uint4 v = *reinterpret_cast<const uint4*>(stage[s] + row * 128 + 16 * (chunk ^ row));
    out[(t * 8 + row) * 8 + chunk] = v;
    if (mode != 2)
      asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(&empty[s]))
                   : "memory");
  }
}

extern "C" __global__ void __launch_bounds__(64)
    tma_box_5d(const __grid_constant__ TensorMap map, uint4* out, int bytes, int c0, int c1,
               int c2, int c3, int c4) {
  __shared__ __align__(128) unsigned char box[2048];
  __shared__ __align__(8) unsigned long long bar;
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(&bar)), "r"(1));
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(&bar)),
                 "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3, %4, %5, %6}], [%7];" ::"r"(smem_addr(box)),
        "l"((unsigned long long)&map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4),
        "r"(smem_addr(&bar))
        : "memory");
  }
  wait(smem_addr(&bar), 0);
  for (int i = threadIdx.x; i < bytes / 16; i += 64) out[i] = reinterpret_cast<const uint4*>(box)[i];
}
