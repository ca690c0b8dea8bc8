// norm.cu on the host: softmax / log-softmax rows (with an all -inf row and a NaN row), their
// backward, and layer_norm forward, dx and parameter gradients, against f64 references.
#include "shim.h"
#include "../../../ptx/norm.cu"

int main() {
  const unsigned rows = 10, d = 77;
  std::vector<float> x(rows * d), y(rows * d, NAN), g(rows * d), dx(rows * d, NAN);
  for (auto& v : x) v = 4 * rnd();
  for (auto& v : g) v = rnd();
  for (unsigned j = 0; j < d; ++j) x[2 * d + j] = -INFINITY;
  x[5 * d + 40] = NAN;
  for (unsigned log = 0; log < 2; ++log) {
    launch({2, 1, 1}, 256, [&] { softmax_rows_f32(y.data(), x.data(), rows, d, log); });
    for (unsigned r = 0; r < rows; ++r) {
      double m = -INFINITY, s = 0;
      for (unsigned j = 0; j < d; ++j) m = std::max(m, (double)x[r * d + j]);
      for (unsigned j = 0; j < d; ++j) s += std::exp(x[r * d + j] - m);
      for (unsigned j = 0; j < d; ++j) {
        float got = y[r * d + j];
        if (r == 2) CHECK(log ? got == -INFINITY : got == 0.0f, "all -inf row, log %u: %g", log, got);
        else if (r == 5) CHECK(std::isnan(got), "NaN row, log %u: %g", log, got);
        else {
          double want = log ? x[r * d + j] - m - std::log(s) : std::exp(x[r * d + j] - m) / s;
          CHECK(std::fabs(got - want) <= 1e-5 * std::fabs(want) + 1e-7, "softmax log %u (%u, %u): %g want %g", log, r, j, got, want);
        }
      }
    }
    launch({2, 1, 1}, 256, [&] { softmax_bwd_rows_f32(dx.data(), y.data(), g.data(), rows, d, log); });
    for (unsigned r = 0; r < rows; ++r) {
      if (r == 2 || r == 5) continue;
      double c = 0;
      for (unsigned j = 0; j < d; ++j) c += log ? g[r * d + j] : (double)g[r * d + j] * y[r * d + j];
      for (unsigned j = 0; j < d; ++j) {
        double yj = y[r * d + j], gj = g[r * d + j];
        double want = log ? gj - std::exp(yj) * c : yj * (gj - c);
        CHECK(std::fabs(dx[r * d + j] - want) <= 1e-5 * (std::fabs(gj) + std::fabs(c)) + 1e-7, "softmax bwd log %u (%u, %u): %g want %g", log, r, j, dx[r * d + j], want);
      }
    }
  }
  // Layer norm: 19 rows of 100, weight and bias, stats saved.
  const unsigned R = 19, D = 100, chunk = 8, chunks = (R + chunk - 1) / chunk;
  std::vector<float> a(R * D), w(D), b(D), out(R * D, NAN), st(2 * R, NAN), ga(R * D), da(R * D, NAN);
  std::vector<float> dwp(chunks * D, NAN), dbp(chunks * D, NAN);
  for (auto& v : a) v = 3 * rnd() + 1;
  for (auto& v : w) v = rnd();
  for (auto& v : b) v = rnd();
  for (auto& v : ga) v = rnd();
  const float eps = 1e-5f;
  launch({3, 1, 1}, 256, [&] { layer_norm_fwd_f32(out.data(), st.data(), a.data(), w.data(), b.data(), R, D, eps, LN_HAS_WEIGHT | LN_HAS_BIAS | LN_SAVE_STATS); });
  launch({3, 1, 1}, 256, [&] { layer_norm_bwd_dx_f32(da.data(), a.data(), ga.data(), st.data(), w.data(), R, D, LN_HAS_WEIGHT); });
  launch({1, chunks, 1}, 256, [&] { layer_norm_bwd_params_f32(dwp.data(), dbp.data(), a.data(), ga.data(), st.data(), R, D, chunk, LN_HAS_WEIGHT | LN_HAS_BIAS); });
  std::vector<double> dw(D, 0), db(D, 0);
  for (unsigned r = 0; r < R; ++r) {
    double mean = 0, var = 0;
    for (unsigned j = 0; j < D; ++j) mean += a[r * D + j];
    mean /= D;
    for (unsigned j = 0; j < D; ++j) var += (a[r * D + j] - mean) * (a[r * D + j] - mean);
    var /= D;
    double rstd = 1 / std::sqrt(var + eps);
    CHECK(std::fabs(st[2 * r] - mean) <= 1e-6 * std::fabs(mean) + 1e-7 && std::fabs(st[2 * r + 1] - rstd) <= 1e-5 * rstd, "stats row %u", r);
    double sgh = 0, sghx = 0;
    for (unsigned j = 0; j < D; ++j) {
      double xh = (a[r * D + j] - mean) * rstd, gh = (double)ga[r * D + j] * w[j];
      double want = xh * w[j] + b[j];
      CHECK(std::fabs(out[r * D + j] - want) <= 1e-5 * (std::fabs(xh * w[j]) + std::fabs(b[j])) + 1e-7, "ln fwd (%u, %u): %g want %g", r, j, out[r * D + j], want);
      sgh += gh;
      sghx += gh * xh;
      dw[j] += ga[r * D + j] * xh;
      db[j] += ga[r * D + j];
    }
    for (unsigned j = 0; j < D; ++j) {
      double xh = (a[r * D + j] - mean) * rstd, gh = (double)ga[r * D + j] * w[j];
      double want = rstd * (gh - sgh / D - xh * sghx / D);
      CHECK(std::fabs(da[r * D + j] - want) <= 1e-5 * rstd * (std::fabs(gh) + std::fabs(sgh / D) + std::fabs(xh * sghx / D)) + 1e-7, "ln dx (%u, %u): %g want %g", r, j, da[r * D + j], want);
    }
  }
  for (unsigned j = 0; j < D; ++j) {
    double sw = 0, sb = 0;
    for (unsigned c = 0; c < chunks; ++c) {
      sw += dwp[c * D + j];
      sb += dbp[c * D + j];
    }
    CHECK(std::fabs(sw - dw[j]) <= 1e-5 * R && std::fabs(sb - db[j]) <= 1e-5 * R, "ln params col %u: %g %g want %g %g", j, sw, sb, dw[j], db[j]);
  }
  return finish("norm.cu");
}
