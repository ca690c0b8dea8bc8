// coupling.cu on the host: the forward (z and the per-image log-det), the backward (all three
// gradients, and subsets through its flags) and the inverse (guided and not), against f64
// references written from the semantics of src/ops/coupling.rs. Operands are read as the model
// passes them: x through a flipped token order (a negative token stride), alpha and mu as the
// two halves of one [B, L, 2D] projection (a second case flips those too and pads the batch
// stride with NaN). Images of L * D = 13 * 23 = 299 values (one full 256-thread pass and a
// ragged one); with and without the soft clip. Every output is NaN-poisoned and followed by a
// NaN guard: each element must be written, the guard and any unrequested gradient untouched.
#include "shim.h"
#include "../../../ptx/coupling.cu"

static const unsigned B = 3, L = 13, D = 23, PER = L * D, N = B * PER, GUARD = 37;

// The Rust wrapper's launch of the grid-stride kernels: min(ceil(n / 256), 65535) CTAs of 256.
static Dim3 linear_grid(unsigned n) { return {std::clamp((n + 255) / 256, 1u, 65535u), 1, 1}; }

// A strided [B, L, D] view into `buf`: element (b, i, j) at base + b s0 + i s1 + j s2.
struct View {
  const float* buf;
  long long base;
  int s0, s1, s2;
  const float* ptr() const { return buf + base; }
  double operator()(unsigned b, unsigned i, unsigned j) const {
    return buf[base + (long long)b * s0 + (long long)i * s1 + (long long)j * s2];
  }
};

static bool poison_kept(const std::vector<float>& v, size_t from) {
  for (size_t k = from; k < v.size(); ++k)
    if (!std::isnan(v[k])) return false;
  return true;
}

// Whether |got - want| <= bound, keeping the largest |got - want| / bound seen.
static double worst = 0;
static bool near(double got, double want, double bound) {
  double r = std::fabs(got - want) / bound;
  if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
  return r <= 1;
}

// n values in [-s, s].
static std::vector<float> filled(size_t n, float s) {
  std::vector<float> v(n);
  for (auto& e : v) e = s * rnd();
  return v;
}

// One forward and backward for views x, alpha, mu (their buffers NaN wherever no element is).
static void case_fwd_bwd(const char* tag, View x, View al, View mu, bool has_clip) {
  const float c = 1.5f, inv_c = (float)(1.0 / 1.5);
  auto clip = [&](double v) { return has_clip ? std::tanh(v * inv_c) * c : v; };
  auto clip_d = [&](double v) {  // d clip / dv
    double y = std::tanh(v * inv_c);
    return has_clip ? (double)c * inv_c * (1 - y * y) : 1.0;
  };
  // Shifted, clipped log-scale and shift of token i.
  auto a_s = [&](unsigned b, unsigned i, unsigned j) { return i ? clip(al(b, i - 1, j)) : 0.0; };
  auto m_s = [&](unsigned b, unsigned i, unsigned j) { return i ? mu(b, i - 1, j) : 0.0; };

  std::vector<float> out(N + B + GUARD, NAN);
  launch({B, 1, 1}, 256, [&] {
    coupling_fwd_f32(out.data(), x.ptr(), al.ptr(), mu.ptr(), B, L, D, x.s0, x.s1, x.s2, al.s0,
                     al.s1, al.s2, mu.s0, mu.s1, mu.s2, has_clip, c, inv_c);
  });
  for (unsigned b = 0; b < B; ++b) {
    double ld = 0, mag = 0;
    for (unsigned i = 0; i < L; ++i)
      for (unsigned j = 0; j < D; ++j) {
        double a = a_s(b, i, j), xm = x(b, i, j) - m_s(b, i, j);
        double want = xm * std::exp(-a), got = out[(b * L + i) * D + j];
        double scale = (std::fabs(x(b, i, j)) + std::fabs(m_s(b, i, j))) * std::exp(-a);
        CHECK(near(got, want, 1e-6 * scale + 1e-30), "%s fwd z (%u, %u, %u): %g, want %g", tag, b, i, j, got, want);
        ld -= a;
        mag += std::fabs(a);
      }
    double got = out[N + b];
    CHECK(near(got, ld, 1e-6 * mag), "%s fwd logdet %u: %g, want %g", tag, b, got, ld);
  }
  CHECK(poison_kept(out, N + B), "%s fwd wrote past the packed output", tag);

  // Backward: g = [gz, glogdet].
  std::vector<float> g = filled(N + B, 1.0f);
  std::vector<double> dx(N), da(N), dm(N), da_mag(N);
  for (unsigned b = 0; b < B; ++b)
    for (unsigned i = 0; i < L; ++i)
      for (unsigned j = 0; j < D; ++j) {
        unsigned k = (b * L + i) * D + j;
        dx[k] = g[k] * std::exp(-a_s(b, i, j));
        if (i + 1 == L) {
          dm[k] = 0;
          da[k] = 0;
          da_mag[k] = 0;
          continue;
        }
        double e = std::exp(-a_s(b, i + 1, j)), xm = x(b, i + 1, j) - mu(b, i, j);
        dm[k] = -g[k + D] * e;
        double t = -g[k + D] * xm * e;
        da[k] = (t - g[N + b]) * clip_d(al(b, i, j));
        da_mag[k] = (std::fabs(t) + std::fabs(g[N + b])) * clip_d(al(b, i, j));
      }
  // All three, then subsets in which each gradient is missing while another one is asked.
  const unsigned subsets[4] = {COUPLING_DX | COUPLING_DALPHA | COUPLING_DMU, COUPLING_DALPHA,
                               COUPLING_DX, COUPLING_DALPHA | COUPLING_DMU};
  for (unsigned flags : subsets) {
    std::vector<float> gx(N + GUARD, NAN), ga(N + GUARD, NAN), gm(N + GUARD, NAN);
    launch(linear_grid(N), 256, [&] {
      coupling_bwd_f32(gx.data(), ga.data(), gm.data(), g.data(), x.ptr(), al.ptr(), mu.ptr(), B,
                       L, D, x.s0, x.s1, x.s2, al.s0, al.s1, al.s2, mu.s0, mu.s1, mu.s2, has_clip,
                       c, inv_c, flags);
    });
    struct {
      const char* name;
      unsigned bit;
      const std::vector<float>& got;
      const std::vector<double>& want;
    } grads[3] = {{"dx", COUPLING_DX, gx, dx}, {"dalpha", COUPLING_DALPHA, ga, da}, {"dmu", COUPLING_DMU, gm, dm}};
    for (auto& gr : grads) {
      if (!(flags & gr.bit)) {
        CHECK(poison_kept(gr.got, 0), "%s bwd flags %u wrote %s, not asked for", tag, flags, gr.name);
        continue;
      }
      for (unsigned k = 0; k < N; ++k) {
        double scale = gr.bit == COUPLING_DALPHA ? da_mag[k] : std::fabs(gr.want[k]);
        CHECK(near(gr.got[k], gr.want[k], 1e-6 * scale + 1e-30), "%s bwd flags %u %s [%u]: %g, want %g", tag, flags, gr.name, k, gr.got[k], gr.want[k]);
      }
      CHECK(poison_kept(gr.got, N), "%s bwd flags %u wrote past %s", tag, flags, gr.name);
    }
  }
}

// The sampler's layout: z read with its tokens flipped, each branch's alpha and mu the halves
// of one [B, L, 2D] projection, the output contiguous.
static void case_inverse(bool has_guide) {
  const unsigned b = 5, l = 10, d = 14, n = b * l * d;  // two full 256-blocks and a ragged one
  const float w = 1.75f;
  std::vector<float> z = filled(n, 2), pc = filled(2 * n, 1), pu = filled(2 * n, 1);
  std::vector<float> out(n + GUARD, NAN);
  const int zs[3] = {(int)(l * d), -(int)d, 1}, ps[3] = {(int)(2 * l * d), (int)(2 * d), 1};
  const float* z0 = z.data() + (l - 1) * d;  // element (0, 0, 0) of the flipped view
  launch(linear_grid(n), 256, [&] {
    coupling_inverse_f32(out.data(), z0, pc.data(), pc.data() + d, has_guide ? pu.data() : nullptr,
                         has_guide ? pu.data() + d : nullptr, b, l, d, l * d, d, 1, zs[0], zs[1], zs[2],
                         ps[0], ps[1], ps[2], ps[0], ps[1], ps[2], ps[0], ps[1], ps[2], ps[0], ps[1], ps[2],
                         has_guide, has_guide ? w : 0.0f);
  });
  for (unsigned k = 0; k < n; ++k) {
    unsigned bi = k / (l * d), i = k / d % l, j = k % d;
    unsigned pk = bi * 2 * l * d + i * 2 * d + j;
    float zk = z0[(long)bi * zs[0] + (long)i * zs[1] + j];
    float ak = pc[pk], mk = pc[pk + d], auk = pu[pk], muk = pu[pk + d];
    double ac = ak, mc = mk, scale_a = std::fabs(ac), scale_m = std::fabs(mc);
    if (has_guide) {
      ac = ak + w * ((double)ak - auk);
      mc = mk + w * ((double)mk - muk);
      scale_a = std::fabs(ak) + w * (std::fabs(ak) + std::fabs(auk));
      scale_m = std::fabs(mk) + w * (std::fabs(mk) + std::fabs(muk));
    }
    double want = zk * std::exp(ac) + mc;
    // Rounding of the combined log-scale moves exp(a) by its relative error.
    double scale = std::fabs(zk) * std::exp(ac) * (1 + scale_a) + scale_m;
    CHECK(near(out[k], want, 1e-6 * scale), "inverse guide %d [%u]: %g, want %g", has_guide, k, out[k], want);
  }
  CHECK(poison_kept(out, n), "inverse guide %d wrote past the end", has_guide);
}

int main() {
  // The model's layout: x flipped in place (token stride -D from the last token), alpha and mu
  // the halves of one contiguous [B, L, 2D] projection.
  std::vector<float> xb = filled(N, 2), proj = filled(B * L * 2 * D, 1.5f);
  View x{xb.data(), (long long)(L - 1) * D, (int)PER, -(int)D, 1};
  View al{proj.data(), 0, (int)(2 * PER), (int)(2 * D), 1};
  View mu{proj.data(), D, (int)(2 * PER), (int)(2 * D), 1};
  for (int clip = 0; clip < 2; ++clip) case_fwd_bwd(clip ? "flipped x, clip" : "flipped x", x, al, mu, clip);
  // alpha and mu flipped too, from a projection whose images sit PAD apart (NaN between), and
  // x with its values reversed as well (value stride -1).
  const unsigned PAD = 5, PS = L * 2 * D + PAD;
  std::vector<float> proj2(B * PS, NAN);
  for (unsigned b = 0; b < B; ++b)
    for (unsigned k = 0; k < L * 2 * D; ++k) proj2[b * PS + k] = 1.5f * rnd();
  View al2{proj2.data(), (long long)(L - 1) * 2 * D, (int)PS, -(int)(2 * D), 1};
  View mu2{proj2.data(), (long long)(L - 1) * 2 * D + D, (int)PS, -(int)(2 * D), 1};
  View x2{xb.data(), (long long)PER - 1, (int)PER, -(int)D, -1};
  case_fwd_bwd("all flipped, clip", x2, al2, mu2, true);
  case_inverse(false);
  case_inverse(true);
  printf("coupling.cu: worst error %.2f of its bound\n", worst);
  return finish("coupling.cu");
}
