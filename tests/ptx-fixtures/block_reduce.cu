// Per-block sum of x in a fixed order: warp butterfly (shfl.sync.bfly), one partial per warp
// in shared memory, then warp 0 reduces the partials. out[blockIdx.x] = sum of its slice.
extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float partial[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x / 32;
        v = lane < nw ? partial[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

// Total sum with one atomicAdd per block, and the max with atomicMax on the bit pattern
// (valid for non-negative floats).
extern "C" __global__ void atomic_sum_max(const float* __restrict__ x, float* sum, unsigned* maxbits, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(sum, v);
    if (i < n) atomicMax(maxbits, __float_as_uint(x[i]));
}

// Deliberately broken: the partials are read without a barrier after they are written.
extern "C" __global__ void block_sum_racy(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float partial[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = v;
    if (warp == 0) {
        int nw = blockDim.x / 32;
        v = lane < nw ? partial[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

// block_sum with its partials in dynamic shared memory (one float per warp, sized by the
// launch) after a static flag word.
extern "C" __global__ void block_sum_dynamic(const float* __restrict__ x, float* __restrict__ out, int n) {
    extern __shared__ float partial_dyn[];
    __shared__ int flag;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == 0) flag = 1;
    if (lane == 0) partial_dyn[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x / 32;
        v = lane < nw ? partial_dyn[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) out[blockIdx.x] = v * flag;
    }
}
