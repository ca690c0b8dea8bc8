// index.cu on the host: index_select (an out-of-range index gives NaN) and index_add with a
// stable grouping of the sources (what src/gpu/kernels/index.rs `scatter_plan` builds),
// against direct references, over several CTAs of a small block.
#include "shim.h"
#include "../../../ptx/index.cu"

int main() {
  const unsigned outer = 2, len = 4, n_idx = 6, inner = 3;
  unsigned idx[n_idx] = {3, 0, 3, 1, 3, 0};
  // Sources grouped by destination, ties in increasing position.
  unsigned order[n_idx] = {1, 5, 3, 0, 2, 4}, starts[len + 1] = {0, 2, 3, 3, 6};
  std::vector<float> src(outer * n_idx * inner), dst(outer * len * inner, 1.0f), want(dst);
  for (size_t i = 0; i < src.size(); ++i) src[i] = 0.1f * i + 1;
  for (unsigned o = 0; o < outer; ++o)
    for (unsigned i = 0; i < n_idx; ++i)
      for (unsigned c = 0; c < inner; ++c) want[(o * len + idx[i]) * inner + c] += src[(o * n_idx + i) * inner + c];
  launch({2, 1, 1}, 5, [&] { index_add_f32(dst.data(), src.data(), order, starts, outer, len, n_idx, inner); });
  for (size_t i = 0; i < dst.size(); ++i) CHECK(dst[i] == want[i], "index_add %zu: %g want %g", i, dst[i], want[i]);

  std::vector<float> table(outer * len * inner), sel(outer * n_idx * inner, -1);
  for (size_t i = 0; i < table.size(); ++i) table[i] = (float)i;
  unsigned idx2[n_idx] = {3, 0, 3, 1, 9, 0};  // 9 is out of range
  launch({2, 1, 1}, 5, [&] { index_select_f32(sel.data(), table.data(), idx2, outer, len, n_idx, inner); });
  for (unsigned o = 0; o < outer; ++o)
    for (unsigned i = 0; i < n_idx; ++i)
      for (unsigned c = 0; c < inner; ++c) {
        float got = sel[(o * n_idx + i) * inner + c];
        if (idx2[i] >= len) CHECK(std::isnan(got), "out-of-range index gave %g", got);
        else CHECK(got == table[(o * len + idx2[i]) * inner + c], "index_select (%u, %u, %u)", o, i, c);
      }
  return finish("index.cu");
}
