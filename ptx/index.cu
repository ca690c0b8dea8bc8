// Row selection along one axis and its adjoint, in a fixed order.
//
// Tensors are contiguous and viewed as [outer, len, inner]: `src` as [outer, src_len, inner],
// the selection as [outer, n_idx, inner]. Indices are u32 on the device, checked on the host
// before upload (src/gpu/kernels.rs); an index out of range nevertheless yields NaN rows
// (index_select) or is skipped (index_add), never an out-of-bounds access.
//
// Gradient-write convention: index_select_f32 writes (`=`) its output (an activation);
// index_add_f32 adds (`+=`) into `dst`, which is how index_select's backward and embedding
// gradients accumulate.
//
// Launch configuration: 1-d grid of 1-d blocks of 256 threads, grid-stride loop; the host
// uses min(ceil(total / 256), 65535) CTAs, total = outer * n_idx * inner (index_select) or
// outer * dst_len * inner (index_add).
//
// Determinism: index_add has no atomics. The host passes the sources grouped by destination
// (a stable counting sort of the indices, `scatter_plan` in src/gpu/kernels.rs): `order`
// lists source positions sorted by index, ties in increasing position, and `starts[j] ..
// starts[j + 1]` is destination j's range. One thread per destination element sums its
// sources in increasing source position: the same order for every run and every launch size.
//
// concat and pad are not kernels of their own: the host fills the destination (copy.cu
// fill_f32) and copies each part into a sub-view with strided_copy_f32.

extern "C" __global__ void index_select_f32(float* __restrict__ out, const float* __restrict__ src,
                                            const unsigned* __restrict__ idx, unsigned outer,
                                            unsigned src_len, unsigned n_idx, unsigned inner) {
  size_t total = (size_t)outer * n_idx * inner;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    size_t c = e % inner;
    size_t i = (e / inner) % n_idx;
    size_t o = e / ((size_t)inner * n_idx);
    unsigned s = idx[i];
    out[e] = s < src_len ? src[(o * src_len + s) * inner + c] : __int_as_float(0x7fffffff);
  }
}

extern "C" __global__ void index_add_f32(float* __restrict__ dst, const float* __restrict__ src,
                                         const unsigned* __restrict__ order,
                                         const unsigned* __restrict__ starts, unsigned outer,
                                         unsigned dst_len, unsigned n_idx, unsigned inner) {
  size_t total = (size_t)outer * dst_len * inner;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    size_t c = e % inner;
    size_t j = (e / inner) % dst_len;
    size_t o = e / ((size_t)inner * dst_len);
    unsigned t0 = starts[j], t1 = min(starts[j + 1], n_idx);
    if (t0 >= t1) continue;
    float acc = dst[e];
    for (unsigned t = t0; t < t1; ++t) {
      unsigned i = order[t];
      if (i < n_idx) acc = __fadd_rn(acc, src[(o * n_idx + i) * inner + c]);
    }
    dst[e] = acc;
  }
}
