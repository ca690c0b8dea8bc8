// copy.cu on the host: a permuted, reversed 3-d view copied into a contiguous buffer and into
// a strided sub-view (concat-style), f32 -> bf16 rounding to nearest even, bf16 -> f32, fill.
#include "shim.h"
#include "../../../ptx/copy.cu"

int main() {
  std::vector<float> src(120), dst(120, -1);
  for (int i = 0; i < 120; ++i) src[i] = (float)i;
  // View (4, 6, 5) of src [4][5][6]: element (i, j, k) = src[3 - i][k][j], offset 90, strides (-30, 1, 6).
  launch({3, 1, 1}, 7, [&] {
    strided_copy_f32(dst.data(), src.data() + 90, 120, 3, 4, 6, 5, 0, 0, 0, 0, 0, 30, 5, 1, 0, 0, 0, 0, 0, -30, 1, 6, 0, 0, 0, 0, 0);
  });
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 6; ++j)
      for (int k = 0; k < 5; ++k)
        CHECK(dst[i * 30 + j * 5 + k] == src[(3 - i) * 30 + k * 6 + j], "copy (%d, %d, %d)", i, j, k);
  // Concat along the last axis: [3, 2] and [3, 4] into a [3, 6] filled with 9.
  std::vector<float> out(18, NAN), p(6), q(12);
  for (int i = 0; i < 6; ++i) p[i] = 100.0f + i;
  for (int i = 0; i < 12; ++i) q[i] = 200.0f + i;
  launch({1, 1, 1}, 32, [&] { fill_f32(out.data(), 18, 9.0f); });
  launch({1, 1, 1}, 32, [&] { strided_copy_f32(out.data(), p.data(), 6, 2, 3, 2, 0, 0, 0, 0, 0, 0, 6, 1, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0); });
  launch({1, 1, 1}, 32, [&] { strided_copy_f32(out.data() + 2, q.data(), 12, 2, 3, 4, 0, 0, 0, 0, 0, 0, 6, 1, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0); });
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 6; ++c)
      CHECK(out[r * 6 + c] == (c < 2 ? p[r * 2 + c] : q[r * 4 + c - 2]), "concat (%d, %d): %g", r, c, out[r * 6 + c]);
  // bf16: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 and rounds to even (1); 1 + 3 * 2^-8 rounds up.
  float f[4] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, NAN};
  __nv_bfloat16 h[4];
  float back[4];
  launch({1, 1, 1}, 4, [&] { strided_copy_f32_bf16(h, f, 4, 1, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0); });
  launch({1, 1, 1}, 4, [&] { strided_copy_bf16_f32(back, h, 4, 1, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0); });
  CHECK(back[0] == 1.0f && back[1] == 1.0f + 4.0f / 256 && back[2] == -2.5f && std::isnan(back[3]),
        "bf16 round trip: %g %g %g %g", back[0], back[1], back[2], back[3]);
  return finish("copy.cu");
}
