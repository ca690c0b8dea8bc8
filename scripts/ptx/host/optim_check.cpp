// optim.cu on the host: AdamW and EMA against the CPU's expressions (bit for bit, since every
// operation is rounded as on the CPU), and the f64 sum of squares over several chunks and a
// partial buffer shared by two tensors.
#include "shim.h"
#include "../../../ptx/optim.cu"

int main() {
  const unsigned n = 1000;
  std::vector<float> p(n), m(n), v(n), g(n);
  for (unsigned i = 0; i < n; ++i) {
    p[i] = rnd();
    m[i] = 0.1f * rnd();
    v[i] = 0.01f * std::fabs(rnd());
    g[i] = rnd();
  }
  std::vector<float> p2 = p, m2 = m, v2 = v;
  // Coefficients of step 3 with lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
  double lr = 1e-3, b1 = 0.9, b2 = 0.999, wd = 0.01, eps = 1e-8;
  double bc1 = 1 - std::pow(b1, 3.0), bc2 = 1 - std::pow(b2, 3.0);
  float c[8] = {(float)(1 - lr * wd), (float)b1, (float)(1 - b1), (float)b2, (float)(1 - b2), (float)(1 / std::sqrt(bc2)), (float)eps, (float)(lr / bc1)};
  launch({2, 1, 1}, 256, [&] { adamw_f32(p.data(), m.data(), v.data(), g.data(), n, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]); });
  for (unsigned i = 0; i < n; ++i) {
    // src/optim/adamw.rs, update_chunk, in f32.
    float pp = p2[i] * c[0];
    float mm = c[1] * m2[i] + c[2] * g[i];
    float vv = c[3] * v2[i] + c[4] * g[i] * g[i];
    float denom = std::sqrt(vv) * c[5] + c[6];
    pp -= c[7] * mm / denom;
    CHECK(p[i] == pp && m[i] == mm && v[i] == vv, "adamw %u: %g %g %g want %g %g %g", i, p[i], m[i], v[i], pp, mm, vv);
  }
  std::vector<float> s = p2;
  launch({1, 1, 1}, 256, [&] { ema_f32(s.data(), g.data(), n, 0.999f, (float)(1 - 0.999)); });
  for (unsigned i = 0; i < n; ++i) CHECK(s[i] == 0.999f * p2[i] + (float)(1 - 0.999) * g[i], "ema %u", i);
  // Two tensors into one partial buffer: 1000 values in chunks of 300 (4 partials), 50 in 1.
  std::vector<double> part(5, NAN), total(1, NAN);
  launch({4, 1, 1}, 256, [&] { sum_squares_partial_f32(part.data(), g.data(), n, 300); });
  launch({1, 1, 1}, 256, [&] { sum_squares_partial_f32(part.data() + 4, p.data(), 50, 300); });
  launch({1, 1, 1}, 256, [&] { sum_f64(total.data(), part.data(), 5); });
  double want = 0;
  for (unsigned i = 0; i < n; ++i) want += (double)g[i] * g[i];
  for (unsigned i = 0; i < 50; ++i) want += (double)p[i] * p[i];
  CHECK(std::fabs(total[0] - want) <= 1e-12 * want, "sum of squares %.17g want %.17g", total[0], want);
  return finish("optim.cu");
}
