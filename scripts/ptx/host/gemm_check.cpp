// gemm.cu on the host: the four bf16 tensor-core layouts on both tiles (64 and 128), their
// epilogue entries (against the plain product and the stage, bit for bit), the 128 tile
// against the 64 tile bit for bit, and the f32 GEMM against f64 references, on ragged
// shapes (m, n not multiples of the tile, k over four 32-wide k-tiles and ragged), batched, with padding around the operands filled with NaN (a read
// outside an operand shows), bias, alpha and beta, and C's padding columns left untouched.
#include "shim.h"
#include "../../../ptx/gemm.cu"

static unsigned short to_bf16(float f) { return __float2bfloat16_rn(f).bits; }

using Bf16Entry = decltype(&gemm_bf16_nn);
using Bf16EpiEntry = decltype(&gemm_bf16_nt_gelu);
static const Bf16Entry SMALL[4] = {gemm_bf16_nn, gemm_bf16_nt, gemm_bf16_tn, gemm_bf16_tt};
static const Bf16Entry LARGE[4] = {gemm_bf16_nn_128, gemm_bf16_nt_128, gemm_bf16_tn_128, gemm_bf16_tt_128};

// The last product of each layout on the 64 tile, for the 128 tile to match bit for bit.
static std::vector<float> small_results[4];

// The tile's size, and its shapes: ragged against it, three tiles and a part on the large
// one, so that whole, partial and edge tiles all occur.
static void bf16_case(int layout, bool large) {
  const char* names[4] = {"nn", "nt", "tn", "tt"};
  const unsigned tile = large ? 128 : 64;
  rng_state = 0x2545F4914F6CDD1DULL + layout;  // the same operands for both tiles
  const unsigned M = 300, N = 270, K = 100, batch = 2;
  bool a_t = layout >= 2, b_t = layout % 2 == 1;
  unsigned lda = a_t ? 312 : 104, ldb = b_t ? 104 : 280, ldc = 275;
  unsigned a_bs = (a_t ? K : M) * lda, b_bs = (b_t ? N : K) * ldb, c_bs = M * ldc;
  std::vector<unsigned short> A(batch * a_bs, to_bf16(NAN)), B(batch * b_bs, to_bf16(NAN));
  std::vector<float> Av(batch * M * K), Bv(batch * K * N);
  for (unsigned z = 0; z < batch; ++z) {
    for (unsigned i = 0; i < M; ++i)
      for (unsigned l = 0; l < K; ++l) {
        unsigned short v = to_bf16(rnd());
        Av[(z * M + i) * K + l] = bf16_bits_to_float(v);
        A[z * a_bs + (a_t ? l * lda + i : i * lda + l)] = v;
      }
    for (unsigned l = 0; l < K; ++l)
      for (unsigned j = 0; j < N; ++j) {
        unsigned short v = to_bf16(rnd());
        Bv[(z * K + l) * N + j] = bf16_bits_to_float(v);
        B[z * b_bs + (b_t ? j * ldb + l : l * ldb + j)] = v;
      }
  }
  std::vector<float> bias(N), C(batch * c_bs);
  for (auto& v : bias) v = rnd();
  for (auto& v : C) v = rnd();
  const std::vector<float> C0 = C;
  const float alpha = 1.5f, beta = 0.5f;
  auto a = reinterpret_cast<const __nv_bfloat16*>(A.data());
  auto b = reinterpret_cast<const __nv_bfloat16*>(B.data());
  auto kernel = (large ? LARGE : SMALL)[layout];
  launch({(N + tile - 1) / tile, (M + tile - 1) / tile, batch}, 128, [&] {
    kernel(C.data(), a, b, bias.data(), M, N, K, lda, ldb, ldc, a_bs, b_bs, c_bs, alpha, beta, GEMM_HAS_BIAS);
  });
  double worst = 0;
  for (unsigned z = 0; z < batch; ++z)
    for (unsigned i = 0; i < M; ++i)
      for (unsigned j = 0; j < ldc; ++j) {
        size_t at = z * c_bs + i * ldc + j;
        if (j >= N) {
          CHECK(C[at] == C0[at], "gemm_bf16_%s wrote C's padding at %u, %u", names[layout], i, j);
          continue;
        }
        double acc = 0, mag = 0;
        for (unsigned l = 0; l < K; ++l) {
          double p = (double)Av[(z * M + i) * K + l] * Bv[(z * K + l) * N + j];
          acc += p;
          mag += std::fabs(p);
        }
        double want = alpha * acc + beta * C0[at] + bias[j];
        double scale = alpha * mag + std::fabs(beta * C0[at]) + std::fabs(bias[j]);
        double err = std::fabs(C[at] - want) / scale;
        if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
        CHECK(err < 1e-5, "gemm_bf16_%s batch %u (%u, %u): %g, want %g", names[layout], z, i, j, C[at], want);
      }
  printf("gemm_bf16_%s%s: worst error %.2g relative to the sum of |products|\n", names[layout], large ? "_128" : "",
         worst);
  if (!large) {
    small_results[layout] = C;
  } else {
    CHECK(memcmp(C.data(), small_results[layout].data(), C.size() * 4) == 0, "gemm_bf16_%s_128 differs from gemm_bf16_%s",
          names[layout], names[layout]);
  }
}

static void f32_case() {
  // A stored transposed (a_rs = 1, a_cs = m), B row-major, beta = 0 over a NaN-filled C.
  const unsigned M = 70, N = 45, K = 37;
  std::vector<float> A(2 * K * M), B(2 * K * N), C(2 * M * N, NAN), bias(N);
  for (auto& v : A) v = rnd();
  for (auto& v : B) v = rnd();
  for (auto& v : bias) v = rnd();
  launch({1, 2, 2}, 256, [&] {
    gemm_f32(C.data(), A.data(), B.data(), bias.data(), M, N, K, 1, M, N, 1, N, K * M, K * N, M * N, 1.0f, 0.0f, GEMM_HAS_BIAS);
  });
  for (unsigned z = 0; z < 2; ++z)
    for (unsigned i = 0; i < M; ++i)
      for (unsigned j = 0; j < N; ++j) {
        double acc = 0, mag = 0;
        for (unsigned l = 0; l < K; ++l) {
          double p = (double)A[z * K * M + l * M + i] * B[z * K * N + l * N + j];
          acc += p;
          mag += std::fabs(p);
        }
        double want = acc + bias[j], got = C[z * M * N + i * N + j];
        CHECK(std::fabs(got - want) <= 1e-6 * (mag + std::fabs(bias[j])), "gemm_f32 (%u, %u): %g, want %g", i, j, got, want);
      }
}

// The epilogue entries gemm_bf16_{nn,nt}_{gelu,residual,gelu_grad}: bit for bit the plain
// product of the same layout followed by the stage (gemm.cu's own gelu / gelu_grad on the
// host), two batches, a bias and alpha != 1; the GELU's pre-activation is the plain product;
// C's and aux's padding columns are left untouched.
static void bf16_epilogue_case(int b_t, int epi, bool large) {
  const char* stages[3] = {"gelu", "residual", "gelu_grad"};
  const char* tile_name = large ? "_128" : "";
  const unsigned tile = large ? 128 : 64;
  const unsigned M = large ? 300 : 70, N = large ? 270 : 45, K = 100, batch = 2, lda = 104;
  const unsigned ldb = b_t ? 104 : N + 3, ldc = N + 5;
  unsigned a_bs = M * lda, b_bs = (b_t ? N : K) * ldb, c_bs = M * ldc;
  std::vector<unsigned short> A(batch * a_bs, to_bf16(NAN)), B(batch * b_bs, to_bf16(NAN));
  for (unsigned z = 0; z < batch; ++z) {
    for (unsigned i = 0; i < M; ++i)
      for (unsigned l = 0; l < K; ++l) A[z * a_bs + i * lda + l] = to_bf16(rnd());
    for (unsigned l = 0; l < K; ++l)
      for (unsigned j = 0; j < N; ++j) B[z * b_bs + (b_t ? j * ldb + l : l * ldb + j)] = to_bf16(rnd());
  }
  std::vector<float> bias(N), plain(batch * c_bs, NAN), fused(batch * c_bs, NAN), aux(batch * c_bs, NAN);
  for (auto& v : bias) v = rnd();
  for (unsigned z = 0; z < batch; ++z)
    for (unsigned i = 0; i < M; ++i)
      for (unsigned j = 0; j < N; ++j) aux[z * c_bs + i * ldc + j] = 3 * rnd();
  const std::vector<float> aux0 = aux;
  auto a = reinterpret_cast<const __nv_bfloat16*>(A.data());
  auto b = reinterpret_cast<const __nv_bfloat16*>(B.data());
  const float alpha = 0.75f;
  Dim3 grid = {(N + tile - 1) / tile, (M + tile - 1) / tile, batch};
  launch(grid, 128, [&] {
    (large ? LARGE : SMALL)[b_t](plain.data(), a, b, bias.data(), M, N, K, lda, ldb, ldc, a_bs, b_bs, c_bs, alpha, 0.0f,
                                         GEMM_HAS_BIAS);
  });
  const Bf16EpiEntry all[2][2][3] = {
      {{gemm_bf16_nn_gelu, gemm_bf16_nn_residual, gemm_bf16_nn_gelu_grad},
       {gemm_bf16_nt_gelu, gemm_bf16_nt_residual, gemm_bf16_nt_gelu_grad}},
      {{gemm_bf16_nn_gelu_128, gemm_bf16_nn_residual_128, gemm_bf16_nn_gelu_grad_128},
       {gemm_bf16_nt_gelu_128, gemm_bf16_nt_residual_128, gemm_bf16_nt_gelu_grad_128}}};
  const Bf16EpiEntry* entries = all[large][b_t];
  launch(grid, 128, [&] {
    entries[epi](fused.data(), a, b, bias.data(), aux.data(), M, N, K, lda, ldb, ldc, ldc, a_bs, b_bs, c_bs, alpha, 0.0f,
                 GEMM_HAS_BIAS);
  });
  for (size_t at = 0; at < fused.size(); ++at) {
    unsigned j = at % ldc;
    if (j >= N) {
      CHECK(std::isnan(fused[at]) && std::isnan(aux[at]), "gemm_bf16_%s_%s%s wrote padding at %zu", b_t ? "nt" : "nn", stages[epi], tile_name,
            at);
      continue;
    }
    float v = plain[at];
    float want = epi == 0 ? gelu(v) : epi == 1 ? __fadd_rn(aux0[at], v) : __fmul_rn(v, gelu_grad(aux0[at]));
    float aux_want = epi == 0 ? v : aux0[at];
    CHECK(memcmp(&fused[at], &want, 4) == 0, "gemm_bf16_%s_%s%s at %zu: %.9g, want %.9g", b_t ? "nt" : "nn", stages[epi], tile_name,
          at, fused[at], want);
    CHECK(memcmp(&aux[at], &aux_want, 4) == 0, "gemm_bf16_%s_%s%s aux at %zu: %.9g, want %.9g", b_t ? "nt" : "nn", stages[epi],
          tile_name, at, aux[at], aux_want);
  }
}

// gemm_splitk_reduce: three partial [37, 29] products summed in order, then alpha, beta over
// C (row stride 31, padding untouched) and the bias, bit for bit against gemm.cu's own
// epilogue on the host; 2 CTAs of 256 threads over 1,073 outputs, so the grid-stride loop
// turns.
static void splitk_reduce_case() {
  const unsigned M = 37, N = 29, LDC = 31, S = 3;
  std::vector<float> ws(S * M * N), bias(N), C(M * LDC);
  for (auto& v : ws) v = rnd();
  for (auto& v : bias) v = rnd();
  for (auto& v : C) v = rnd();
  const std::vector<float> C0 = C;
  launch({2, 1, 1}, 256, [&] {
    gemm_splitk_reduce(C.data(), ws.data(), bias.data(), M, N, LDC, S, 1.25f, 1.0f, GEMM_HAS_BIAS);
  });
  for (unsigned i = 0; i < M; ++i)
    for (unsigned j = 0; j < LDC; ++j) {
      size_t at = i * LDC + j;
      if (j >= N) {
        CHECK(C[at] == C0[at], "gemm_splitk_reduce wrote C's padding at %u, %u", i, j);
        continue;
      }
      float acc = ws[i * N + j];
      for (unsigned s = 1; s < S; ++s) acc = __fadd_rn(acc, ws[s * M * N + i * N + j]);
      float c0 = C0[at];
      float want = epilogue(acc, 1.25f, 1.0f, &c0, bias.data(), j, GEMM_HAS_BIAS);
      CHECK(memcmp(&C[at], &want, 4) == 0, "gemm_splitk_reduce (%u, %u): %.9g, want %.9g", i, j, C[at], want);
    }
  printf("gemm_splitk_reduce: checked bit for bit against the in-order sum and the epilogue\n");
}

int main() {
  for (int large = 0; large < 2; ++large)
    for (int layout = 0; layout < 4; ++layout) bf16_case(layout, large);
  printf("gemm_bf16_{nn,nt,tn,tt}_128: the same bits as the 64 tile\n");
  for (int b_t = 0; b_t < 2; ++b_t)
    for (int epi = 0; epi < 3; ++epi)
      for (int large = 0; large < 2; ++large) bf16_epilogue_case(b_t, epi, large);
  printf("gemm_bf16_{nn,nt}_{gelu,residual,gelu_grad}{,_128}: checked bit for bit against the plain product and the stage\n");
  f32_case();
  splitk_reduce_case();
  return finish("gemm.cu");
}
