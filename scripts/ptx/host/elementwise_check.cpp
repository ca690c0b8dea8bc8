// elementwise.cu on the host: every unary op and every binary op (the backward rules among
// them) against the mathematical function in f64, over a grid of arguments, within a few
// ulp of the result; a broadcast and transposed view checks the index decomposition. (With
// the host's libm in place of CUDA's, exp/log/tanh/pow/log1p agree with the CPU's bits; on
// a GPU they are CUDA's, within their documented ulp bounds.)
#include "shim.h"
#include "../../../ptx/elementwise.cu"

static double ulps(float got, double want) {
  if (std::isnan(want)) return std::isnan(got) ? 0 : INFINITY;
  if (std::isinf((float)want)) return got == (float)want ? 0 : INFINITY;
  double ulp = std::max((double)std::fabs(std::nextafter((float)want, INFINITY) - (float)want), 1e-45);
  return std::fabs(got - want) / ulp;
}

static double sig(double x) { return 1 / (1 + std::exp(-x)); }
static double gelu(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
static double gelu_d(double x) { return 0.5 * (1 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI); }
static double gt(double x) { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
static double gt_d(double x) {
  double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), t = std::tanh(u);
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x);
}

int main() {
  std::vector<float> x, g;
  for (int i = 0; i <= 4000; ++i) x.push_back(-8.0f + 16.0f * i / 4000);
  for (float v : {0.0f, -0.0f, 1e-30f, 0.921875f, -0.921875f, 4.0f, 30.0f, -30.0f}) x.push_back(v);
  unsigned n = x.size();
  for (unsigned i = 0; i < n; ++i) g.push_back(0.5f + 0.25f * (i % 7));
  std::vector<float> y(n);
  auto un = [&](unsigned op, float p0, float p1) {
    launch({4, 1, 1}, 256, [&] { unary_f32(y.data(), x.data(), n, op, p0, p1, 1, n, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0); });
  };
  auto bin = [&](unsigned op, float p0, float p1) {
    launch({4, 1, 1}, 256, [&] {
      binary_f32(y.data(), g.data(), x.data(), n, op, p0, p1, 1, n, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0);
    });
  };
  struct Case {
    const char* name;
    bool binary;
    unsigned op;
    float p0, p1;
    std::function<double(double, double)> f;  // (x, g)
    double tol_ulp;
    // Absolute tolerance per unit of |x| and |g|: the CPU's GELU formulas (which the kernel
    // follows) are accurate in absolute terms, so their far tails round to 0 early.
    double atol = 0;
  };
  std::vector<Case> cases = {
      {"neg", 0, UNARY_NEG, 0, 0, [](double x, double) { return -x; }, 0},
      {"exp", 0, UNARY_EXP, 0, 0, [](double x, double) { return std::exp(x); }, 2},
      {"log", 0, UNARY_LOG, 0, 0, [](double x, double) { return std::log(x); }, 2},
      {"sqrt", 0, UNARY_SQRT, 0, 0, [](double x, double) { return std::sqrt(x); }, 0.5},
      {"square", 0, UNARY_SQUARE, 0, 0, [](double x, double) { return x * x; }, 0.5},
      {"tanh", 0, UNARY_TANH, 0, 0, [](double x, double) { return std::tanh(x); }, 2},
      {"sigmoid", 0, UNARY_SIGMOID, 0, 0, [](double x, double) { return sig(x); }, 4},
      {"softplus", 0, UNARY_SOFTPLUS, 0, 0, [](double x, double) { return std::log1p(std::exp(x)); }, 4},
      {"gelu", 0, UNARY_GELU, 0, 0, [](double x, double) { return gelu(x); }, 64, 3e-7},
      {"gelu_tanh", 0, UNARY_GELU_TANH, 0, 0, [](double x, double) { return gt(x); }, 64, 3e-7},
      {"relu", 0, UNARY_RELU, 0, 0, [](double x, double) { return x > 0 ? x : 0; }, 0},
      {"abs", 0, UNARY_ABS, 0, 0, [](double x, double) { return std::fabs(x); }, 0},
      {"powf", 0, UNARY_POW_SCALAR, 2.0f, 0, [](double x, double) { return x * x; }, 2},
      {"clamp", 0, UNARY_CLAMP, -0.5f, 0.75f, [](double x, double) { return std::min(std::max(x, -0.5), 0.75); }, 0},
      {"add_scalar", 0, UNARY_ADD_SCALAR, 0.25f, 0, [](double x, double) { return x + 0.25; }, 0.5},
      {"mul_scalar", 0, UNARY_MUL_SCALAR, 3.0f, 0, [](double x, double) { return x * 3; }, 0.5},
      {"non_zero", 0, UNARY_NON_ZERO, 0, 0, [](double x, double) { return x != 0 ? 1.0 : 0.0; }, 0},
      {"add", 1, BINARY_ADD, 0, 0, [](double x, double g) { return g + x; }, 0.5},
      {"sub", 1, BINARY_SUB, 0, 0, [](double x, double g) { return g - x; }, 0.5},
      {"mul", 1, BINARY_MUL, 0, 0, [](double x, double g) { return g * x; }, 0.5},
      {"div", 1, BINARY_DIV, 0, 0, [](double x, double g) { return g / x; }, 0.5},
      {"maximum", 1, BINARY_MAXIMUM, 0, 0, [](double x, double g) { return g >= x ? g : x; }, 0},
      {"maximum_mask", 1, BINARY_GE_MASK, 0, 0, [](double x, double g) { return g >= x ? 1 : 0; }, 0},
      {"eq_mask", 1, BINARY_EQ_MASK, 0, 0, [](double x, double g) { return g == x ? 1 : 0; }, 0},
      {"select_if_non_zero", 1, BINARY_SELECT_IF_NON_ZERO, 0, 0, [](double m, double g) { return m != 0 ? g : 0; }, 0},
      {"select_if_zero", 1, BINARY_SELECT_IF_ZERO, 0, 0, [](double m, double g) { return m != 0 ? 0 : g; }, 0},
      {"mul_one_minus", 1, BINARY_MUL_ONE_MINUS, 0, 0, [](double x, double g) { return g * (1 - x); }, 2},
      {"log_grad", 1, BINARY_LOG_BACKWARD, 0, 0, [](double x, double g) { return g / x; }, 2},
      {"sqrt_grad", 1, BINARY_SQRT_BACKWARD, 0, 0, [](double y, double g) { return g * 0.5 / y; }, 1},
      {"square_grad", 1, BINARY_SQUARE_BACKWARD, 0, 0, [](double x, double g) { return g * 2 * x; }, 1},
      {"tanh_grad", 1, BINARY_TANH_BACKWARD, 0, 0, [](double y, double g) { return g * (1 - y * y); }, 1e3},
      {"sigmoid_grad", 1, BINARY_SIGMOID_BACKWARD, 0, 0, [](double y, double g) { return g * y * (1 - y); }, 2},
      {"softplus_grad", 1, BINARY_SOFTPLUS_BACKWARD, 0, 0, [](double x, double g) { return g * sig(x); }, 4},
      {"gelu_grad", 1, BINARY_GELU_BACKWARD, 0, 0, [](double x, double g) { return g * gelu_d(x); }, 64, 3e-7},
      {"gelu_tanh_grad", 1, BINARY_GELU_TANH_BACKWARD, 0, 0, [](double x, double g) { return g * gt_d(x); }, 64, 3e-7},
      {"relu_grad", 1, BINARY_RELU_BACKWARD, 0, 0, [](double x, double g) { return x > 0 ? g : 0; }, 0},
      {"abs_grad", 1, BINARY_ABS_BACKWARD, 0, 0, [](double x, double g) { return x > 0 ? g : x < 0 ? -g : 0; }, 0},
      {"powf_grad", 1, BINARY_POW_BACKWARD, 3.0f, 2.0f, [](double x, double g) { return g * 3 * x * x; }, 4},
      {"clamp_grad", 1, BINARY_CLAMP_BACKWARD, -0.5f, 0.75f, [](double x, double g) { return x > -0.5 && x < 0.75 ? g : 0; }, 0},
      {"div_grad_b", 1, BINARY_DIV_RHS_BACKWARD, 0, 0, [](double b, double t) { return -t / (b * b); }, 2},
  };
  for (auto& c : cases) {
    if (c.binary) bin(c.op, c.p0, c.p1);
    else un(c.op, c.p0, c.p1);
    double worst = 0, worst_abs = 0;
    for (unsigned i = 0; i < n; ++i) {
      double want = c.f(x[i], g[i]);
      double e = ulps(y[i], want);
      double a = std::fabs(y[i] - want) / ((1 + std::fabs(x[i])) * std::fabs(g[i]));
      if (!(a <= worst_abs)) worst_abs = std::isnan(a) ? INFINITY : a;
      if (std::fabs(y[i] - want) <= c.atol * (1 + std::fabs(x[i])) * std::fabs(g[i])) e = 0;
      worst = std::max(worst, e);
      if (!(e <= c.tol_ulp)) {
        CHECK(false, "%s at x = %.9g (g = %g): %.9g, want %.9g (%.3g ulp)", c.name, x[i], g[i], y[i], want, e);
        break;
      }
    }
    if (c.atol > 0) printf("%-15s worst |error| / ((1 + |x|) |g|) %.3g\n", c.name, worst_abs);
    else printf("%-15s worst %.3g ulp\n", c.name, worst);
  }
  // A [3, 4] output from a transposed [4, 3] operand and a broadcast row.
  float a[12], b[4], out[12];
  for (int i = 0; i < 12; ++i) a[i] = (float)i;
  for (int j = 0; j < 4; ++j) b[j] = 100.0f * (j + 1);
  launch({1, 1, 1}, 32, [&] { binary_f32(out, a, b, 12, BINARY_ADD, 0, 0, 2, 3, 4, 0, 0, 0, 0, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0); });
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) CHECK(out[i * 4 + j] == a[j * 3 + i] + b[j], "broadcast (%d, %d): %g", i, j, out[i * 4 + j]);
  return finish("elementwise.cu");
}
