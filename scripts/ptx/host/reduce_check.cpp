// reduce.cu on the host: warp-per-row and chunked (one and two passes) sums and maxima
// against f64 references; NaN propagates through max, accumulate adds.
#include "shim.h"
#include "../../../ptx/reduce.cu"

int main() {
  // Rows: 11 rows (two CTAs of 8 warps, the last partly empty) of 100.
  const unsigned rows = 11, r = 100;
  std::vector<float> x(rows * r), out(rows, 7.0f);
  for (auto& v : x) v = rnd();
  x[3 * r + 50] = NAN;
  for (unsigned op = 0; op < 2; ++op) {
    std::fill(out.begin(), out.end(), 7.0f);
    unsigned acc_flag = op == REDUCE_SUM;  // sums accumulate into 7, maxima overwrite
    launch({(rows + 7) / 8, 1, 1}, 256, [&] { reduce_rows_f32(out.data(), x.data(), rows, r, op, 0.5f, acc_flag); });
    for (unsigned i = 0; i < rows; ++i) {
      double s = 0;
      float m = -INFINITY;
      bool nan = false;
      for (unsigned j = 0; j < r; ++j) {
        float v = x[i * r + j];
        s += v;
        m = v > m ? v : m;
        nan |= std::isnan(v);
      }
      if (nan) {
        CHECK(std::isnan(out[i]), "rows op %u row %u: NaN lost (%g)", op, i, out[i]);
      } else if (op == REDUCE_SUM) {
        CHECK(std::fabs(out[i] - (7.0 + 0.5 * s)) < 1e-5, "rows sum row %u: %g, want %g", i, out[i], 7.0 + 0.5 * s);
      } else {
        CHECK(out[i] == m, "rows max row %u: %g, want %g", i, out[i], m);
      }
    }
  }
  // Chunks: [2, 10, 300] in chunks of 4 (three partials), then the partials.
  const unsigned outer = 2, rr = 10, inner = 300, chunk = 4, chunks = 3;
  std::vector<float> y(outer * rr * inner), part(outer * chunks * inner, NAN), res(outer * inner, NAN);
  for (auto& v : y) v = rnd();
  y[(1 * rr + 9) * inner + 299] = NAN;
  for (unsigned op = 0; op < 2; ++op) {
    launch({(inner + 255) / 256, chunks, outer}, 256,
           [&] { reduce_chunks_f32(part.data(), y.data(), outer, rr, inner, chunk, op, 1.0f, 0); });
    launch({(inner + 255) / 256, 1, outer}, 256,
           [&] { reduce_chunks_f32(res.data(), part.data(), outer, chunks, inner, chunks, op, 0.1f, 0); });
    for (unsigned o = 0; o < outer; ++o)
      for (unsigned c = 0; c < inner; ++c) {
        double s = 0;
        float m = -INFINITY;
        bool nan = false;
        for (unsigned j = 0; j < rr; ++j) {
          float v = y[(o * rr + j) * inner + c];
          s += v;
          m = v > m ? v : m;
          nan |= std::isnan(v);
        }
        float got = res[o * inner + c];
        if (nan) CHECK(std::isnan(got), "chunks op %u (%u, %u): NaN lost", op, o, c);
        else if (op == REDUCE_SUM) CHECK(std::fabs(got - 0.1 * s) < 1e-6, "chunks sum (%u, %u): %g, want %g", o, c, got, 0.1 * s);
        else CHECK(got == m, "chunks max (%u, %u): %g, want %g", o, c, got, m);
      }
  }
  // An empty axis: sum 0, max -inf.
  std::vector<float> e(3, NAN);
  launch({1, 1, 3}, 256, [&] { reduce_chunks_f32(e.data(), y.data(), 3, 0, 1, 1, REDUCE_MAX, 1.0f, 0); });
  for (float v : e) CHECK(v == -INFINITY, "max over an empty axis: %g", v);
  return finish("reduce.cu");
}
