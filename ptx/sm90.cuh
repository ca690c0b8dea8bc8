// The Hopper helpers gemm_sm90.cu and attention_sm90.cu share: the wgmma fences and
// descriptors, the mbarriers and the tensor-map parameter of a TMA copy. Included by both
// after async_copy_mma.cuh (scripts/ptx.sh hashes a .cu together with the headers it
// includes, so a change here shows in both modules' `check`).

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

// Keeps the compiler from moving the writes of `r` past this point: called on accumulators
// before wgmma_fence, so that their initialisation is not sunk between two groups of
// wgmma in flight (where ptxas must wait for the first group before it can write them).
template <int N>
__device__ __forceinline__ void pin_accumulators(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
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

// A CUtensorMap, passed by value as a __grid_constant__ parameter (128 bytes, 64-aligned).
struct alignas(64) TensorMap {
  unsigned long long bytes[16];
};

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}

__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_expect_bytes(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}

// The mbarriers of a TMA ring of `stages` stages: `full` (at full0, 8 bytes apart: one
// arrival, the one that expects the stage's bytes) and `empty` (at empty0: one arrival per
// consumer warp, 8), initialised by thread 0 and made visible before the CTA's first barrier,
// which this ends with. A kernel with more mbarriers initialises them on thread 0 first.
__device__ __forceinline__ void ring_init(unsigned full0, unsigned empty0, int stages) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
}

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  unsigned done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
