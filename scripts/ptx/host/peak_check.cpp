// peak.cu on the host: the mma ceiling's exact sum (a = 1, b = 2^-8: PEAK_CHAINS * iters / 4
// per thread) and the copy over a grid-stride loop with a ragged end, nothing written past n.
#include "shim.h"
#include "../../../ptx/peak.cu"

int main() {
  const unsigned iters = 5, ctas = 2;
  std::vector<float> out(ctas * 128, NAN);
  launch({ctas, 1, 1}, 128, [&] { peak_mma_bf16(out.data(), 0x3f803f80u, 0x3b803b80u, iters); });
  for (size_t t = 0; t < out.size(); ++t)
    CHECK(out[t] == PEAK_CHAINS * iters / 4.0f, "peak_mma_bf16 thread %zu: %g, want %g", t, out[t],
          PEAK_CHAINS * iters / 4.0f);

  // 3 CTAs of 256 threads over 1000 elements: every thread loops once or twice.
  const unsigned long long n = 1000;
  std::vector<uint4> src(n), dst(n + 8, uint4{7, 7, 7, 7});
  for (unsigned long long i = 0; i < n; ++i)
    src[i] = {(unsigned)i, (unsigned)(3 * i), ~(unsigned)i, 0x9e3779b9u ^ (unsigned)i};
  launch({3, 1, 1}, 256, [&] { peak_copy_b128(dst.data(), src.data(), n); });
  for (unsigned long long i = 0; i < n + 8; ++i) {
    uint4 want = i < n ? src[i] : uint4{7, 7, 7, 7};
    CHECK(memcmp(&dst[i], &want, 16) == 0, "peak_copy_b128 element %llu", i);
  }
  return finish("peak.cu");
}
