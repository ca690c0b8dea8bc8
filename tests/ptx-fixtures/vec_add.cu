// Grid-stride vector add: y[i] = a[i] + b[i] for i < n.
extern "C" __global__ void vec_add(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        y[i] = a[i] + b[i];
    }
}

// Deliberately broken: no bounds check, so threads past n write out of bounds.
extern "C" __global__ void vec_add_oob(const float* a, const float* b, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = a[i] + b[i];
}

// Deliberately broken: reads y before anything wrote it (fresh memory is a NaN pattern).
extern "C" __global__ void accumulate_uninit(const float* a, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += a[i];
}

// Deliberately broken: a misaligned f32 load (byte offset 2).
extern "C" __global__ void misaligned_load(const float* a, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = *(const float*)((const char*)(a + i) + 2);
}
