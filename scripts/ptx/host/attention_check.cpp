// attention.cu on the host, launched as src/gpu/kernels/attention.rs launches it (128 threads;
// grid x = ceil(Nq / 32) forward and dQ, ceil(Nq / 4) for D, ceil(Nk / 16) for dK / dV,
// ceil(Nq / 64) bf16; y = heads, z = batch), against an f64 reference of the semantics at the
// top of attention.cu, with the tolerances of tests/gpu_kernels/attention.rs:
// - attn_fwd_f32 (output and base-2 lse), attn_bwd_dot_f32 (D), attn_bwd_dkdv_f32 and
//   attn_bwd_dq_f32 (dK, dV, dQ): causal and not, Nq = Nk = 70 (ragged query, key and
//   16-key tiles), Nq = 38 < Nk = 71 under the causal offset (33, not a multiple of a tile),
//   a temperature in scale_log2, Dh / Dv = 24 / 40 and 64 / 64 on operands with NaN padding
//   after each row and batch, and q / k / v cut from one fused [B, N, 3C] buffer (2 batches,
//   2 heads, N = 20) with a heads-merged output and the three gradients written into one
//   fused buffer.
// - attn_decode_partial_f32 + attn_decode_combine_f32: one query over a cache of 600 keys
//   (two chunks of 256 and a ragged one) whose unused slots hold NaN, and over 3 keys (fewer
//   than the 4 warps: one warp's state stays empty).
// - attn_fwd_bf16_d64: against the reference on bf16-rounded q, k, v, within 5e-3 of
//   sum_j p_ij |v_jc| (P is rounded to bf16 for P V), causal and not, Nq = Nk = 70 and
//   Nq = 38 < Nk = 100.
// - attn_fwd_bf16s_d64, attn_fwd_bf16s_d128 (bf16 inputs by cp.async, reversed causal tiles):
//   output and lse bit for bit those of attn_fwd_bf16_d64 / _d128 on the same bf16-exact
//   values, causal (offset 0 and 33) and not, over three or more query tiles; the output's
//   bf16 copy (`o16`, token-major [B, Nq, H, D]) the output rounded, nothing written past it.
// - attn_bwd_dot_round_bf16s, attn_bwd_dkdv_bf16_d64, attn_bwd_dq_bf16_d64 (the tensor-core
//   backward; its dot kernel's bf16 copy of dO checked bit for bit and for writes past its
//   end): against the f64 gradients within bf16's rounding of
//   dO, P and dS, ragged 64-tiles, causal and not.
// - attn_bwd_dot_bf16s, attn_bwd_dkdv_bf16s, attn_bwd_dq_bf16s: on q, k, v and o rounded to
//   bf16 (o from attn_fwd_f32), stored as bf16 in the same NaN-padded layouts, dQ, dK, dV
//   bit for bit those of the f32 kernels, causal and not, Nq = 38 < Nk = 71, Dh / Dv = 24 / 40
//   and 64 / 64.
// Every output buffer is NaN-poisoned: each element must be written, every padding slot and
// the guard past the end left alone.
#include "shim.h"
#include "../../../ptx/attention.cu"

static const unsigned GUARD = 29;

// Where a [B, H, N, D] operand sits in its buffer.
struct Lay {
  size_t off;
  unsigned st[4];
  size_t at(unsigned b, unsigned h, unsigned n, unsigned d) const {
    return off + (size_t)b * st[0] + (size_t)h * st[1] + (size_t)n * st[2] + (size_t)d * st[3];
  }
};

struct Dims {
  unsigned b, h, nq, nk, dh, dv;
};

// [B, H, n, d] with NaN padding: 3 slots after each row, 7 after each batch, 2 in front.
static Lay padded(const Dims& s, unsigned n, unsigned d) {
  unsigned row = d + 3;
  return {2, {s.h * n * row + 7, n * row, row, 1}};
}

// Elements a buffer holding `lay` of [B, H, n, d] needs, plus the guard.
static size_t span(const Lay& lay, const Dims& s, unsigned n, unsigned d) {
  return lay.at(s.b - 1, s.h - 1, n - 1, d - 1) + 1 + GUARD;
}

static std::vector<double> gather(const std::vector<float>& buf, const Lay& lay, const Dims& s, unsigned n, unsigned d) {
  std::vector<double> out;
  for (unsigned b = 0; b < s.b; ++b)
    for (unsigned h = 0; h < s.h; ++h)
      for (unsigned i = 0; i < n; ++i)
        for (unsigned e = 0; e < d; ++e) out.push_back(buf[lay.at(b, h, i, e)]);
  return out;
}

static void scatter_random(std::vector<float>& buf, const Lay& lay, const Dims& s, unsigned n, unsigned d, float scale) {
  for (unsigned b = 0; b < s.b; ++b)
    for (unsigned h = 0; h < s.h; ++h)
      for (unsigned i = 0; i < n; ++i)
        for (unsigned e = 0; e < d; ++e) buf[lay.at(b, h, i, e)] = scale * rnd();
}

struct Part {
  Lay lay;
  unsigned n, d;
};

// Every element of the parts written (not NaN), every other slot of `buf` still NaN.
static void check_cover(const char* what, const char* tag, const std::vector<float>& buf, const Dims& s, std::initializer_list<Part> parts) {
  std::vector<char> elem(buf.size(), 0);
  for (const Part& p : parts)
    for (unsigned b = 0; b < s.b; ++b)
      for (unsigned h = 0; h < s.h; ++h)
        for (unsigned i = 0; i < p.n; ++i)
          for (unsigned e = 0; e < p.d; ++e) elem[p.lay.at(b, h, i, e)] = 1;
  size_t unwritten = 0, stray = 0;
  for (size_t k = 0; k < buf.size(); ++k) {
    if (elem[k] && std::isnan(buf[k])) unwritten++;
    if (!elem[k] && !std::isnan(buf[k])) stray++;
  }
  CHECK(unwritten == 0, "%s, %s: %zu elements not written", what, tag, unwritten);
  CHECK(stray == 0, "%s, %s: %zu slots outside the tensor written", what, tag, stray);
}

// The largest |got - want| / bound over all comparisons, per family.
static double worst_f32 = 0, worst_bf16 = 0, worst_decode = 0;

static void close_to(double& worst, const char* what, const char* tag, const std::vector<double>& got, const std::vector<double>& want,
                     const std::vector<double>& bound) {
  for (size_t k = 0; k < want.size(); ++k) {
    double r = got[k] == want[k] ? 0 : std::fabs(got[k] - want[k]) / bound[k];
    if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
    CHECK(r <= 1, "%s, %s [%zu]: %.9g, want %.9g", what, tag, k, got[k], want[k]);
  }
}

// tests/gpu_kernels/attention.rs's `close`: 1e-4 relative plus 1e-4 of the largest |want|.
static void close_rel(double& worst, const char* what, const char* tag, const std::vector<double>& got, const std::vector<double>& want) {
  const double rel = 1e-4, of_max = 1e-4;
  double scale = 1e-3;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  std::vector<double> bound(want.size());
  for (size_t k = 0; k < want.size(); ++k) bound[k] = rel * std::fabs(want[k]) + of_max * scale;
  close_to(worst, what, tag, got, want, bound);
}

// The Rust test's `assert_close`: within abs + rel |want|.
static void close_abs(double& worst, const char* what, const char* tag, const std::vector<double>& got, const std::vector<double>& want,
                      double rel, double abs) {
  std::vector<double> bound(want.size());
  for (size_t k = 0; k < want.size(); ++k) bound[k] = abs + rel * std::fabs(want[k]);
  close_to(worst, what, tag, got, want, bound);
}

// f64 reference on logical contiguous tensors.
struct Reference {
  std::vector<double> o, o_mag, lse2, dq, dk, dv;
};

static Reference reference(const Dims& s, double alpha, bool causal, const std::vector<double>& q, const std::vector<double>& k,
                           const std::vector<double>& v, const std::vector<double>& g) {
  const unsigned nq = s.nq, nk = s.nk, dh = s.dh, dv = s.dv, bh_n = s.b * s.h;
  const unsigned off = causal ? nk - nq : 0;
  Reference r{std::vector<double>(bh_n * nq * dv, 0), std::vector<double>(bh_n * nq * dv, 0),
              std::vector<double>(bh_n * nq, -INFINITY), std::vector<double>(bh_n * nq * dh, 0),
              std::vector<double>(bh_n * nk * dh, 0), std::vector<double>(bh_n * nk * dv, 0)};
  for (unsigned bh = 0; bh < bh_n; ++bh) {
    const double *qh = &q[bh * nq * dh], *kh = &k[bh * nk * dh], *vh = &v[bh * nk * dv];
    const double* gh = g.empty() ? nullptr : &g[bh * nq * dv];
    for (unsigned i = 0; i < nq; ++i) {
      unsigned seen = causal ? std::min(i + off + 1, nk) : nk;
      if (seen == 0) continue;
      std::vector<double> sc(seen), p(seen);
      double m = -INFINITY, l = 0;
      for (unsigned j = 0; j < seen; ++j) {
        double t = 0;
        for (unsigned e = 0; e < dh; ++e) t += qh[i * dh + e] * kh[j * dh + e];
        sc[j] = alpha * t;
        m = std::max(m, sc[j]);
      }
      for (unsigned j = 0; j < seen; ++j) l += std::exp(sc[j] - m);
      for (unsigned j = 0; j < seen; ++j) p[j] = std::exp(sc[j] - m) / l;
      r.lse2[bh * nq + i] = (m + std::log(l)) * M_LOG2E;
      double* oi = &r.o[(bh * nq + i) * dv];
      double* mi = &r.o_mag[(bh * nq + i) * dv];
      for (unsigned j = 0; j < seen; ++j)
        for (unsigned e = 0; e < dv; ++e) {
          oi[e] += p[j] * vh[j * dv + e];
          mi[e] += p[j] * std::fabs(vh[j * dv + e]);
        }
      if (!gh) continue;
      const double* gi = &gh[i * dv];
      double big_d = 0;
      for (unsigned e = 0; e < dv; ++e) big_d += gi[e] * oi[e];
      for (unsigned j = 0; j < seen; ++j) {
        double dp = 0;
        for (unsigned e = 0; e < dv; ++e) dp += gi[e] * vh[j * dv + e];
        double ds = p[j] * (dp - big_d);
        for (unsigned e = 0; e < dh; ++e) {
          r.dq[(bh * nq + i) * dh + e] += alpha * ds * kh[j * dh + e];
          r.dk[(bh * nk + j) * dh + e] += alpha * ds * qh[i * dh + e];
        }
        for (unsigned e = 0; e < dv; ++e) r.dv[(bh * nk + j) * dv + e] += p[j] * gi[e];
      }
    }
  }
  return r;
}

static unsigned ceil_div(unsigned a, unsigned b) { return (a + b - 1) / b; }

// The wrapper's scale_log2: alpha (an f32) times log2(e) in f64, rounded to f32.
static float scale_log2_of(float alpha) { return (float)((double)alpha * M_LOG2E); }

// q, k, v (and the output, its gradient and the three input gradients) in their buffers.
struct Operands {
  std::vector<float> *qb, *kb, *vb;  // may alias
  Lay lq, lk, lv, lo;
  std::vector<float> ob;             // poisoned, sized for lo
  std::vector<float> gb;             // dO in layout lo
  std::vector<float> *dqb, *dkb, *dvb;  // poisoned, may alias
  Lay ldq, ldk, ldv;
};

static void run_f32(const char* tag, const Dims& s, float alpha, bool causal, Operands& x) {
  const float sl2 = scale_log2_of(alpha);
  auto q = gather(*x.qb, x.lq, s, s.nq, s.dh), k = gather(*x.kb, x.lk, s, s.nk, s.dh), v = gather(*x.vb, x.lv, s, s.nk, s.dv);
  auto g = gather(x.gb, x.lo, s, s.nq, s.dv);
  Reference want = reference(s, alpha, causal, q, k, v, g);
  const float *qp = x.qb->data() + x.lq.off, *kp = x.kb->data() + x.lk.off, *vp = x.vb->data() + x.lv.off;
  float* op = x.ob.data() + x.lo.off;
  const float* gp = x.gb.data() + x.lo.off;
  const unsigned rows = s.b * s.h * s.nq;
  std::vector<float> lse(rows + GUARD, NAN), dd(rows + GUARD, NAN);
  const Lay &lq = x.lq, &lk = x.lk, &lv = x.lv, &lo = x.lo;

  launch({ceil_div(s.nq, 32), s.h, s.b}, 128, [&] {
    attn_fwd_f32(op, lse.data(), qp, kp, vp, s.nq, s.nk, s.dh, s.dv, lq.st[0], lq.st[1], lq.st[2], lq.st[3], lk.st[0], lk.st[1],
                 lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3], sl2, causal);
  });
  close_rel(worst_f32, "attn_fwd_f32 output", tag, gather(x.ob, lo, s, s.nq, s.dv), want.o);
  close_abs(worst_f32, "attn_fwd_f32 lse", tag, std::vector<double>(lse.begin(), lse.begin() + rows), want.lse2, 1e-5, 1e-5);
  check_cover("attn_fwd_f32 output", tag, x.ob, s, {{lo, s.nq, s.dv}});
  CHECK(std::all_of(lse.begin() + rows, lse.end(), [](float f) { return std::isnan(f); }), "attn_fwd_f32 lse, %s: wrote past the end", tag);

  // D = rowsum(dO * O) of the kernel's own O.
  launch({ceil_div(s.nq, 4), s.h, s.b}, 128, [&] {
    attn_bwd_dot_f32(dd.data(), op, gp, s.nq, s.dv, lo.st[0], lo.st[1], lo.st[2], lo.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3]);
  });
  {
    auto o_got = gather(x.ob, lo, s, s.nq, s.dv);
    std::vector<double> dw(rows), db(rows);
    for (unsigned r = 0; r < rows; ++r) {
      double acc = 0, mag = 0;
      for (unsigned e = 0; e < s.dv; ++e) {
        acc += g[r * s.dv + e] * o_got[r * s.dv + e];
        mag += std::fabs(g[r * s.dv + e] * o_got[r * s.dv + e]);
      }
      dw[r] = acc;
      db[r] = 1e-6 * mag + 1e-30;
    }
    close_to(worst_f32, "attn_bwd_dot_f32 D", tag, std::vector<double>(dd.begin(), dd.begin() + rows), dw, db);
    CHECK(std::all_of(dd.begin() + rows, dd.end(), [](float f) { return std::isnan(f); }), "attn_bwd_dot_f32, %s: wrote past the end", tag);
  }

  const Lay &ldq = x.ldq, &ldk = x.ldk, &ldv = x.ldv;
  float *dqp = x.dqb->data() + ldq.off, *dkp = x.dkb->data() + ldk.off, *dvp = x.dvb->data() + ldv.off;
  launch({ceil_div(s.nk, 16), s.h, s.b}, 128, [&] {
    attn_bwd_dkdv_f32(dkp, dvp, qp, kp, vp, gp, lse.data(), dd.data(), s.nq, s.nk, s.dh, s.dv, lq.st[0], lq.st[1], lq.st[2],
                      lq.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3], lo.st[0], lo.st[1],
                      lo.st[2], lo.st[3], ldk.st[0], ldk.st[1], ldk.st[2], ldk.st[3], ldv.st[0], ldv.st[1], ldv.st[2], ldv.st[3],
                      sl2, alpha, causal);
  });
  launch({ceil_div(s.nq, 32), s.h, s.b}, 128, [&] {
    attn_bwd_dq_f32(dqp, qp, kp, vp, gp, lse.data(), dd.data(), s.nq, s.nk, s.dh, s.dv, lq.st[0], lq.st[1], lq.st[2], lq.st[3],
                    lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3], lo.st[0], lo.st[1], lo.st[2],
                    lo.st[3], ldq.st[0], ldq.st[1], ldq.st[2], ldq.st[3], sl2, alpha, causal);
  });
  close_rel(worst_f32, "attn_bwd dq", tag, gather(*x.dqb, ldq, s, s.nq, s.dh), want.dq);
  close_rel(worst_f32, "attn_bwd dk", tag, gather(*x.dkb, ldk, s, s.nk, s.dh), want.dk);
  close_rel(worst_f32, "attn_bwd dv", tag, gather(*x.dvb, ldv, s, s.nk, s.dv), want.dv);
  if (x.dqb == x.dkb) {
    check_cover("attn_bwd fused dq, dk, dv", tag, *x.dqb, s, {{ldq, s.nq, s.dh}, {ldk, s.nk, s.dh}, {ldv, s.nk, s.dv}});
  } else {
    check_cover("attn_bwd dq", tag, *x.dqb, s, {{ldq, s.nq, s.dh}});
    check_cover("attn_bwd dk", tag, *x.dkb, s, {{ldk, s.nk, s.dh}});
    check_cover("attn_bwd dv", tag, *x.dvb, s, {{ldv, s.nk, s.dv}});
  }
}

// Separate NaN-padded operands for each tensor.
static void f32_padded(const char* tag, Dims s, float alpha, bool causal) {
  Lay lq = padded(s, s.nq, s.dh), lk = padded(s, s.nk, s.dh), lv = padded(s, s.nk, s.dv), lo = padded(s, s.nq, s.dv);
  std::vector<float> qb(span(lq, s, s.nq, s.dh), NAN), kb(span(lk, s, s.nk, s.dh), NAN), vb(span(lv, s, s.nk, s.dv), NAN);
  scatter_random(qb, lq, s, s.nq, s.dh, 2);
  scatter_random(kb, lk, s, s.nk, s.dh, 2);
  scatter_random(vb, lv, s, s.nk, s.dv, 1);
  std::vector<float> dqb(qb.size(), NAN), dkb(kb.size(), NAN), dvb(vb.size(), NAN);
  Operands x{&qb, &kb, &vb, lq, lk, lv, lo, std::vector<float>(span(lo, s, s.nq, s.dv), NAN), {}, &dqb, &dkb, &dvb, lq, lk, lv};
  x.gb.assign(x.ob.size(), NAN);
  scatter_random(x.gb, lo, s, s.nq, s.dv, 1);
  run_f32(tag, s, alpha, causal, x);
}

// Self-attention on one fused [B, N, 3C] projection (C = H Dh), output [B, N, C] with heads
// merged, gradients into one fused [B, N, 3C] buffer.
static void f32_fused(const char* tag, Dims s, float alpha, bool causal) {
  const unsigned n = s.nq, c = s.h * s.dh;
  auto part = [&](unsigned i) { return Lay{(size_t)i * c, {n * 3 * c, s.dh, 3 * c, 1}}; };
  Lay lo{0, {n * c, s.dv, c, 1}};
  std::vector<float> qkv(s.b * n * 3 * c), grads(s.b * n * 3 * c, NAN);
  for (auto& e : qkv) e = 2 * rnd();
  Operands x{&qkv, &qkv, &qkv, part(0), part(1), part(2), lo, std::vector<float>(s.b * n * c, NAN), std::vector<float>(s.b * n * c),
             &grads, &grads, &grads, part(0), part(1), part(2)};
  for (auto& e : x.gb) e = rnd();
  run_f32(tag, s, alpha, causal, x);
}

// One query per (batch, head) over a cache of capacity `cap` holding `nk` keys (NaN beyond).
static void decode(const char* tag, unsigned b, unsigned h, unsigned nk, unsigned cap) {
  const Dims s{b, h, 1, nk, 24, 40};
  const unsigned chunk = 256, splits = std::max(1u, ceil_div(nk, chunk));
  const float alpha = (float)(1 / std::sqrt(24.0) / 0.7), sl2 = scale_log2_of(alpha);
  // q: one row of a [B, 3C]-wide fused projection; k, v: [B, H, cap, D] caches.
  const unsigned qrow = 3 * s.h * s.dh;
  std::vector<float> qb(s.b * qrow);
  for (auto& e : qb) e = 2 * rnd();
  Lay lq{0, {qrow, s.dh, 0, 1}}, lk{0, {s.h * cap * s.dh, cap * s.dh, s.dh, 1}}, lv{0, {s.h * cap * s.dv, cap * s.dv, s.dv, 1}};
  std::vector<float> kb(s.b * s.h * cap * s.dh, NAN), vb(s.b * s.h * cap * s.dv, NAN);
  scatter_random(kb, lk, s, nk, s.dh, 2);
  scatter_random(vb, lv, s, nk, s.dv, 1);
  // o: heads merged, [B, H Dv] with 3 padding slots per batch.
  Lay lo{0, {s.h * s.dv + 3, s.dv, 0, 1}};
  std::vector<float> ob(s.b * lo.st[0] + GUARD, NAN), lse(s.b * s.h + GUARD, NAN);
  std::vector<float> part(s.b * s.h * splits * (s.dv + 2) + GUARD, NAN);
  launch({splits, s.h, s.b}, 128, [&] {
    attn_decode_partial_f32(part.data(), qb.data(), kb.data(), vb.data(), nk, s.dh, s.dv, chunk, lq.st[0], lq.st[1], lq.st[3],
                            lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3], sl2,
                            nullptr, nullptr, nullptr, nullptr, 0, 0, 0, 0, 0, 0);
  });
  CHECK(std::all_of(part.end() - GUARD, part.end(), [](float f) { return std::isnan(f); }), "decode partial, %s: wrote past the scratch", tag);
  launch({1, s.h, s.b}, 32, [&] {
    attn_decode_combine_f32(ob.data(), lse.data(), part.data(), splits, s.dv, lo.st[0], lo.st[1], lo.st[3]);
  });
  Reference want = reference(s, alpha, false, gather(qb, lq, s, 1, s.dh), gather(kb, lk, s, nk, s.dh), gather(vb, lv, s, nk, s.dv), {});
  close_rel(worst_decode, "decode output", tag, gather(ob, lo, s, 1, s.dv), want.o);
  close_abs(worst_decode, "decode lse", tag, std::vector<double>(lse.begin(), lse.begin() + s.b * s.h), want.lse2, 1e-5, 1e-5);
  check_cover("decode output", tag, ob, s, {{lo, 1, s.dv}});
  CHECK(std::all_of(lse.end() - GUARD, lse.end(), [](float f) { return std::isnan(f); }), "decode lse, %s: wrote past the end", tag);
}

// attn_fwd_bf16_d64 against the f64 reference on bf16-rounded q, k, v.
static void bf16_d64(const char* tag, Dims s, float alpha, bool causal) {
  Lay lq = padded(s, s.nq, 64), lk = padded(s, s.nk, 64), lv = padded(s, s.nk, 64), lo = padded(s, s.nq, 64);
  std::vector<float> qb(span(lq, s, s.nq, 64), NAN), kb(span(lk, s, s.nk, 64), NAN), vb(span(lv, s, s.nk, 64), NAN);
  scatter_random(qb, lq, s, s.nq, 64, 2);
  scatter_random(kb, lk, s, s.nk, 64, 2);
  scatter_random(vb, lv, s, s.nk, 64, 1);
  std::vector<float> ob(span(lo, s, s.nq, 64), NAN), lse(s.b * s.h * s.nq + GUARD, NAN);
  const float sl2 = scale_log2_of(alpha);
  launch({ceil_div(s.nq, 64), s.h, s.b}, 128, [&] {
    attn_fwd_bf16_d64(ob.data() + lo.off, lse.data(), nullptr, qb.data() + lq.off, kb.data() + lk.off, vb.data() + lv.off, s.nq, s.nk, 64,
                      64, lq.st[0], lq.st[1], lq.st[2], lq.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1],
                      lv.st[2], lv.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3], sl2, causal);
  });
  auto round = [](std::vector<double> v) {
    for (auto& e : v) e = __bfloat162float(__float2bfloat16_rn((float)e));
    return v;
  };
  Reference want = reference(s, alpha, causal, round(gather(qb, lq, s, s.nq, 64)), round(gather(kb, lk, s, s.nk, 64)),
                             round(gather(vb, lv, s, s.nk, 64)), {});
  std::vector<double> bound(want.o.size());
  for (size_t k = 0; k < bound.size(); ++k) bound[k] = 5e-3 * want.o_mag[k] + 1e-6;
  close_to(worst_bf16, "attn_fwd_bf16_d64 output", tag, gather(ob, lo, s, s.nq, 64), want.o, bound);
  const unsigned rows = s.b * s.h * s.nq;
  close_abs(worst_bf16, "attn_fwd_bf16_d64 lse", tag, std::vector<double>(lse.begin(), lse.begin() + rows), want.lse2, 1e-4, 1e-4);
  check_cover("attn_fwd_bf16_d64 output", tag, ob, s, {{lo, s.nq, 64}});
  CHECK(std::all_of(lse.begin() + rows, lse.end(), [](float f) { return std::isnan(f); }), "attn_fwd_bf16_d64 lse, %s: wrote past the end", tag);
}

// The bf16-storage backward against the f32 one on bf16-exact operands: identical bits.
// attn_fwd_bf16s_D (q, k, v stored bf16 with rows and batches padded to multiples of 8
// elements) against attn_fwd_bf16_D (the same values as f32 in the NaN-padded layout): the
// same bits. `fwd` / `fwd_s` are the two kernels, `bq` the bf16-input kernel's query tile.
template <unsigned D, class F, class G>
static void bf16_inputs(const char* tag, Dims s, float alpha, bool causal, F fwd, G fwd_s, unsigned bq) {
  Lay lq = padded(s, s.nq, D), lk = padded(s, s.nk, D), lv = padded(s, s.nk, D), lo = padded(s, s.nq, D);
  std::vector<float> qb(span(lq, s, s.nq, D), NAN), kb(span(lk, s, s.nk, D), NAN), vb(span(lv, s, s.nk, D), NAN);
  scatter_random(qb, lq, s, s.nq, D, 2);
  scatter_random(kb, lk, s, s.nk, D, 2);
  scatter_random(vb, lv, s, s.nk, D, 1);
  for (auto* v : {&qb, &kb, &vb})
    for (auto& e : *v) e = __bfloat162float(__float2bfloat16_rn(e));
  // bf16 storage: 8 slots after each row, 16 after each batch, 8 in front.
  auto lay8 = [&](unsigned n) { return Lay{8, {s.h * n * (D + 8) + 16, n * (D + 8), D + 8, 1}}; };
  auto stored = [&](const std::vector<float>& src, const Lay& from, unsigned n) {
    Lay to = lay8(n);
    std::vector<__nv_bfloat16> out(span(to, s, n, D), __float2bfloat16_rn(NAN));
    for (unsigned b = 0; b < s.b; ++b)
      for (unsigned h = 0; h < s.h; ++h)
        for (unsigned i = 0; i < n; ++i)
          for (unsigned e = 0; e < D; ++e) out[to.at(b, h, i, e)] = __float2bfloat16_rn(src[from.at(b, h, i, e)]);
    return out;
  };
  auto q16 = stored(qb, lq, s.nq), k16 = stored(kb, lk, s.nk), v16 = stored(vb, lv, s.nk);
  Lay l8q = lay8(s.nq), l8k = lay8(s.nk);
  const float sl2 = scale_log2_of(alpha);
  const unsigned rows = s.b * s.h * s.nq;
  std::vector<float> o_want(span(lo, s, s.nq, D), NAN), o_got(o_want.size(), NAN);
  std::vector<float> lse_want(rows + GUARD, NAN), lse_got(rows + GUARD, NAN);
  // The bf16-input run also writes the output's bf16 copy, contiguous [B, H, Nq, D].
  std::vector<__nv_bfloat16> o16((size_t)rows * D + GUARD, __float2bfloat16_rn(NAN));
  launch({ceil_div(s.nq, 64), s.h, s.b}, 128, [&] {
    fwd(o_want.data() + lo.off, lse_want.data(), nullptr, qb.data() + lq.off, kb.data() + lk.off, vb.data() + lv.off, s.nq, s.nk, D, D,
        lq.st[0], lq.st[1], lq.st[2], lq.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3],
        lo.st[0], lo.st[1], lo.st[2], lo.st[3], sl2, causal);
  });
  launch({ceil_div(s.nq, bq), s.h, s.b}, 128, [&] {
    fwd_s(o_got.data() + lo.off, lse_got.data(), o16.data(), q16.data() + l8q.off, k16.data() + l8k.off, v16.data() + l8k.off, s.nq, s.nk, D,
          D, l8q.st[0], l8q.st[1], l8q.st[2], l8q.st[3], l8k.st[0], l8k.st[1], l8k.st[2], l8k.st[3], l8k.st[0], l8k.st[1],
          l8k.st[2], l8k.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3], sl2, causal);
  });
  check_cover("attn_fwd_bf16s output", tag, o_got, s, {{lo, s.nq, D}});
  CHECK(std::all_of(lse_got.begin() + rows, lse_got.end(), [](float f) { return std::isnan(f); }), "attn_fwd_bf16s lse, %s: wrote past the end", tag);
  size_t diff = 0;
  for (size_t i = 0; i < o_want.size(); ++i)
    diff += !std::isnan(o_want[i]) && __float_as_uint(o_want[i]) != __float_as_uint(o_got[i]);
  for (unsigned i = 0; i < rows; ++i) diff += __float_as_uint(lse_want[i]) != __float_as_uint(lse_got[i]);
  CHECK(diff == 0, "attn_fwd_bf16s, %s: %zu outputs differ from attn_fwd_bf16's bits", tag, diff);
  size_t bad16 = 0;
  for (unsigned b = 0; b < s.b; ++b)
    for (unsigned h = 0; h < s.h; ++h)
      for (unsigned i = 0; i < s.nq; ++i)
        for (unsigned e = 0; e < D; ++e) {
          __nv_bfloat16 want = __float2bfloat16_rn(o_got[lo.at(b, h, i, e)]);
          bad16 += memcmp(&o16[(((size_t)b * s.nq + i) * s.h + h) * D + e], &want, 2) != 0;
        }
  for (size_t k = (size_t)rows * D; k < o16.size(); ++k) bad16 += !std::isnan(__bfloat162float(o16[k]));
  CHECK(bad16 == 0, "attn_fwd_bf16s, %s: %zu elements of the bf16 output copy wrong or past its end", tag, bad16);
}

static void bf16_storage(const char* tag, Dims s, float alpha, bool causal) {
  Lay lq = padded(s, s.nq, s.dh), lk = padded(s, s.nk, s.dh), lv = padded(s, s.nk, s.dv), lo = padded(s, s.nq, s.dv);
  std::vector<float> qb(span(lq, s, s.nq, s.dh), NAN), kb(span(lk, s, s.nk, s.dh), NAN), vb(span(lv, s, s.nk, s.dv), NAN);
  scatter_random(qb, lq, s, s.nq, s.dh, 2);
  scatter_random(kb, lk, s, s.nk, s.dh, 2);
  scatter_random(vb, lv, s, s.nk, s.dv, 1);
  std::vector<float> ob(span(lo, s, s.nq, s.dv), NAN), gb(ob.size(), NAN);
  scatter_random(gb, lo, s, s.nq, s.dv, 1);
  auto exact = [](std::vector<float>& v) {
    for (auto& e : v) e = __bfloat162float(__float2bfloat16_rn(e));
  };
  auto stored = [](const std::vector<float>& v) {
    std::vector<__nv_bfloat16> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
    return out;
  };
  exact(qb), exact(kb), exact(vb);
  const float sl2 = scale_log2_of(alpha);
  const unsigned rows = s.b * s.h * s.nq;
  std::vector<float> lse(rows + GUARD, NAN);
  launch({ceil_div(s.nq, 32), s.h, s.b}, 128, [&] {
    attn_fwd_f32(ob.data() + lo.off, lse.data(), qb.data() + lq.off, kb.data() + lk.off, vb.data() + lv.off, s.nq, s.nk, s.dh,
                 s.dv, lq.st[0], lq.st[1], lq.st[2], lq.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1],
                 lv.st[2], lv.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3], sl2, causal);
  });
  exact(ob);
  auto q16 = stored(qb), k16 = stored(kb), v16 = stored(vb), o16 = stored(ob);
  const float* gp = gb.data() + lo.off;
  // One backward with operands of type T; returns dq, dk, dv (NaN-poisoned, padded).
  auto backward = [&](auto* qp, auto* kp, auto* vp, auto* op, auto dot, auto dkdv, auto dq) {
    std::vector<float> dd(rows + GUARD, NAN), dqb(qb.size(), NAN), dkb(kb.size(), NAN), dvb(vb.size(), NAN);
    float *dqp = dqb.data() + lq.off, *dkp = dkb.data() + lk.off, *dvp = dvb.data() + lv.off;
    launch({ceil_div(s.nq, 4), s.h, s.b}, 128, [&] {
      dot(dd.data(), op, gp, s.nq, s.dv, lo.st[0], lo.st[1], lo.st[2], lo.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3]);
    });
    launch({ceil_div(s.nk, 16), s.h, s.b}, 128, [&] {
      dkdv(dkp, dvp, qp, kp, vp, gp, lse.data(), dd.data(), s.nq, s.nk, s.dh, s.dv, lq.st[0], lq.st[1], lq.st[2], lq.st[3],
           lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3], lo.st[0], lo.st[1], lo.st[2],
           lo.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3], sl2, alpha, causal);
    });
    launch({ceil_div(s.nq, 32), s.h, s.b}, 128, [&] {
      dq(dqp, qp, kp, vp, gp, lse.data(), dd.data(), s.nq, s.nk, s.dh, s.dv, lq.st[0], lq.st[1], lq.st[2], lq.st[3], lk.st[0],
         lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3],
         lq.st[0], lq.st[1], lq.st[2], lq.st[3], sl2, alpha, causal);
    });
    return std::vector<std::vector<float>>{dqb, dkb, dvb};
  };
  auto f32 = backward(qb.data() + lq.off, kb.data() + lk.off, vb.data() + lv.off, ob.data() + lo.off, attn_bwd_dot_f32,
                      attn_bwd_dkdv_f32, attn_bwd_dq_f32);
  auto b16 = backward(q16.data() + lq.off, k16.data() + lk.off, v16.data() + lv.off, o16.data() + lo.off, attn_bwd_dot_bf16s,
                      attn_bwd_dkdv_bf16s, attn_bwd_dq_bf16s);
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    size_t finite = 0;
    for (float e : f32[i]) finite += std::isfinite(e);
    CHECK(finite > 0, "attn_bwd f32 %s, %s: nothing written", names[i], tag);
    CHECK(f32[i].size() == b16[i].size() && memcmp(f32[i].data(), b16[i].data(), f32[i].size() * 4) == 0,
          "attn_bwd_*_bf16s %s, %s: not the f32 kernels' bits", names[i], tag);
  }
}

// The tensor-core backward (attn_bwd_dkdv_bf16_d64, attn_bwd_dq_bf16_d64, after
// attn_bwd_dot_round_bf16s) on bf16 q, k, v, o and the f32 forward's lse, against the f64 gradients
// of the same values: it rounds dO, P and dS to bf16, so the bound is the Rust test's, 1.5 %
// of each tensor's largest |want| plus 3 % of the element; padding is never written.
static double worst_tc = 0;
static void bf16_tensor_cores(const char* tag, Dims s, float alpha, bool causal) {
  Lay lq = padded(s, s.nq, 64), lk = padded(s, s.nk, 64), lv = padded(s, s.nk, 64), lo = padded(s, s.nq, 64);
  std::vector<float> qb(span(lq, s, s.nq, 64), NAN), kb(span(lk, s, s.nk, 64), NAN), vb(span(lv, s, s.nk, 64), NAN);
  scatter_random(qb, lq, s, s.nq, 64, 2);
  scatter_random(kb, lk, s, s.nk, 64, 2);
  scatter_random(vb, lv, s, s.nk, 64, 1);
  std::vector<float> ob(span(lo, s, s.nq, 64), NAN), gb(ob.size(), NAN);
  scatter_random(gb, lo, s, s.nq, 64, 1);
  auto exact = [](std::vector<float>& v) {
    for (auto& e : v) e = __bfloat162float(__float2bfloat16_rn(e));
  };
  auto stored = [](const std::vector<float>& v) {
    std::vector<__nv_bfloat16> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
    return out;
  };
  exact(qb), exact(kb), exact(vb);
  const float sl2 = scale_log2_of(alpha);
  const unsigned rows = s.b * s.h * s.nq;
  std::vector<float> lse(rows + GUARD, NAN), dd(rows + GUARD, NAN);
  launch({ceil_div(s.nq, 32), s.h, s.b}, 128, [&] {
    attn_fwd_f32(ob.data() + lo.off, lse.data(), qb.data() + lq.off, kb.data() + lk.off, vb.data() + lv.off, s.nq, s.nk, 64, 64,
                 lq.st[0], lq.st[1], lq.st[2], lq.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2],
                 lv.st[3], lo.st[0], lo.st[1], lo.st[2], lo.st[3], sl2, causal);
  });
  auto q16 = stored(qb), k16 = stored(kb), v16 = stored(vb), o16 = stored(ob);
  const __nv_bfloat16 *qp = q16.data() + lq.off, *kp = k16.data() + lk.off, *vp = v16.data() + lv.off;
  const float* gp = gb.data() + lo.off;
  // attn_bwd_dot_round_bf16s writes dO rounded to bf16, contiguous [B, H, Nq, 64] (+ guard).
  std::vector<__nv_bfloat16> g16((size_t)rows * 64 + GUARD, __float2bfloat16_rn(NAN));
  const __nv_bfloat16* g16p = g16.data();
  const unsigned gs[4] = {s.h * s.nq * 64, s.nq * 64, 64, 1};
  std::vector<float> dqb(qb.size(), NAN), dkb(kb.size(), NAN), dvb(vb.size(), NAN);
  launch({ceil_div(s.nq, 4), s.h, s.b}, 128, [&] {
    attn_bwd_dot_round_bf16s(dd.data(), g16.data(), o16.data() + lo.off, gp, s.nq, 64, lo.st[0], lo.st[1], lo.st[2], lo.st[3], lo.st[0], lo.st[1],
                       lo.st[2], lo.st[3]);
  });
  {
    size_t bad = 0;
    for (unsigned b = 0; b < s.b; ++b)
      for (unsigned h = 0; h < s.h; ++h)
        for (unsigned i = 0; i < s.nq; ++i)
          for (unsigned e = 0; e < 64; ++e) {
            __nv_bfloat16 want = __float2bfloat16_rn(gb[lo.at(b, h, i, e)]);
            bad += memcmp(&g16[b * gs[0] + h * gs[1] + i * gs[2] + e], &want, 2) != 0;
          }
    for (size_t k = (size_t)rows * 64; k < g16.size(); ++k) bad += !std::isnan(__bfloat162float(g16[k]));
    CHECK(bad == 0, "attn_bwd_dot_round_bf16s, %s: %zu elements of the bf16 dO copy wrong or past its end", tag, bad);
  }
  launch({ceil_div(s.nk, 64), s.h, s.b}, 128, [&] {
    attn_bwd_dkdv_bf16_d64(dkb.data() + lk.off, dvb.data() + lv.off, qp, kp, vp, g16p, lse.data(), dd.data(), s.nq, s.nk, 64, 64,
                           lq.st[0], lq.st[1], lq.st[2], lq.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1],
                           lv.st[2], lv.st[3], gs[0], gs[1], gs[2], gs[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3],
                           lv.st[0], lv.st[1], lv.st[2], lv.st[3], sl2, alpha, causal);
  });
  launch({ceil_div(s.nq, 64), s.h, s.b}, 128, [&] {
    attn_bwd_dq_bf16_d64(dqb.data() + lq.off, qp, kp, vp, g16p, lse.data(), dd.data(), s.nq, s.nk, 64, 64, lq.st[0], lq.st[1],
                         lq.st[2], lq.st[3], lk.st[0], lk.st[1], lk.st[2], lk.st[3], lv.st[0], lv.st[1], lv.st[2], lv.st[3],
                         gs[0], gs[1], gs[2], gs[3], lq.st[0], lq.st[1], lq.st[2], lq.st[3], sl2, alpha, causal);
  });
  Reference want = reference(s, alpha, causal, gather(qb, lq, s, s.nq, 64), gather(kb, lk, s, s.nk, 64),
                             gather(vb, lv, s, s.nk, 64), gather(gb, lo, s, s.nq, 64));
  const std::vector<double>* wants[3] = {&want.dq, &want.dk, &want.dv};
  const std::vector<float>* bufs[3] = {&dqb, &dkb, &dvb};
  const Lay lays[3] = {lq, lk, lv};
  const unsigned ns[3] = {s.nq, s.nk, s.nk};
  const char* names[3] = {"attn_bwd_dq_bf16_d64 dq", "attn_bwd_dkdv_bf16_d64 dk", "attn_bwd_dkdv_bf16_d64 dv"};
  for (int i = 0; i < 3; ++i) {
    double scale = 0;
    for (double w : *wants[i]) scale = std::max(scale, std::fabs(w));
    std::vector<double> bound(wants[i]->size());
    for (size_t k = 0; k < bound.size(); ++k) bound[k] = 1.5e-2 * scale + 3e-2 * std::fabs((*wants[i])[k]);
    close_to(worst_tc, names[i], tag, gather(*bufs[i], lays[i], s, ns[i], 64), *wants[i], bound);
    check_cover(names[i], tag, *bufs[i], s, {{lays[i], ns[i], 64}});
  }
}

int main() {
  // alpha = scale / temperature, temperature 0.7.
  auto alpha_for = [](unsigned dh) { return (float)(1 / std::sqrt((double)dh) / 0.7); };
  f32_padded("24/40, 70 x 70", {1, 1, 70, 70, 24, 40}, alpha_for(24), false);
  f32_padded("24/40, 70 x 70 causal", {1, 1, 70, 70, 24, 40}, alpha_for(24), true);
  // Offset 33: not a multiple of any tile, so the dK / dV loop's first query tile is the one
  // holding query 31, which sees key 64.
  f32_padded("64/64, 38 x 71 causal", {1, 1, 38, 71, 64, 64}, alpha_for(64), true);
  f32_fused("fused qkv 16/16, 2 x 2 heads, 20 x 20 causal", {2, 2, 20, 20, 16, 16}, alpha_for(16), true);
  decode("2 heads, 600 keys", 1, 2, 600, 640);
  decode("2 x 2 heads, 3 keys", 2, 2, 3, 8);
  bf16_d64("70 x 70", {1, 1, 70, 70, 64, 64}, alpha_for(64), false);
  bf16_d64("38 x 100 causal", {1, 1, 38, 100, 64, 64}, alpha_for(64), true);
  bf16_inputs<64>("d64, 2 heads, 140 x 140 causal", {1, 2, 140, 140, 64, 64}, alpha_for(64), true, attn_fwd_bf16_d64,
                  attn_fwd_bf16s_d64, 128);
  bf16_inputs<64>("d64, 267 x 300 causal", {1, 1, 267, 300, 64, 64}, alpha_for(64), true, attn_fwd_bf16_d64,
                  attn_fwd_bf16s_d64, 128);
  bf16_inputs<64>("d64, 2 batches, 150 x 197", {2, 1, 150, 197, 64, 64}, alpha_for(64), false, attn_fwd_bf16_d64,
                  attn_fwd_bf16s_d64, 128);
  bf16_inputs<128>("d128, 140 x 173 causal", {1, 1, 140, 173, 128, 128}, alpha_for(128), true, attn_fwd_bf16_d128,
                   attn_fwd_bf16s_d128, 64);
  bf16_storage("24/40, 38 x 71", {1, 1, 38, 71, 24, 40}, alpha_for(24), false);
  bf16_storage("64/64, 2 heads, 38 x 71 causal", {1, 2, 38, 71, 64, 64}, alpha_for(64), true);
  bf16_tensor_cores("2 heads, 100 x 100 causal", {1, 2, 100, 100, 64, 64}, alpha_for(64), true);
  bf16_tensor_cores("70 x 135 causal", {1, 1, 70, 135, 64, 64}, alpha_for(64), true);
  bf16_tensor_cores("70 x 100", {1, 1, 70, 100, 64, 64}, alpha_for(64), false);
  bf16_tensor_cores("200 x 230 causal (four query tiles)", {1, 1, 200, 230, 64, 64}, alpha_for(64), true);
  printf("attention.cu: worst error / bound: f32 %.2f, decode %.2f, bf16 %.2f, tensor-core backward %.2f\n", worst_f32,
         worst_decode, worst_bf16, worst_tc);
  return finish("attention.cu");
}
