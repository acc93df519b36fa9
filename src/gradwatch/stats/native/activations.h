// gradwatch compiled kernels: activation statistics (sum, L2 norm, saturated count, dead
// units) of many activations in one call. Included by kernels.cpp.
#pragma once

#include <torch/csrc/autograd/python_variable.h>

#include "common.h"

namespace {

// Sum, sum of squares and (with Sat) the count of entries with |x - centre| > thr.
template <typename T, bool Sat>
void act_sums(const T* p, int64_t n, acc_t<T> centre, acc_t<T> thr, double* out) {
  if constexpr (std::is_same_v<T, float>) {
    if (gw_simd::sums(p, n, Sat, centre, thr, out)) return;
  }
  using A = acc_t<T>;
  double sum = 0.0, ss = 0.0, nsat = 0.0;
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    A s[kLanes] = {}, q[kLanes] = {}, c[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= m; j += kLanes) {
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        const A v = load(p, i + j + k);
        s[k] += v;
        q[k] += v * v;
        if constexpr (Sat) c[k] += std::fabs(v - centre) > thr ? A(1) : A(0);
      }
    }
    for (; j < m; ++j) {
      const A v = load(p, i + j);
      s[0] += v;
      q[0] += v * v;
      if constexpr (Sat) c[0] += std::fabs(v - centre) > thr ? A(1) : A(0);
    }
    for (int64_t k = 0; k < kLanes; ++k) {
      sum += s[k];
      ss += q[k];
      nsat += c[k];
    }
  }
  out[0] = sum;
  out[1] = ss;
  out[2] = nsat;
}

// Activation families (gradwatch.stats.activation.FAMILY_CODE): 1 sigmoid, 2 tanh, 3 rectifier.
template <typename T>
void act_one(const at::Tensor& a, int64_t fam, int64_t unit_dim, bool detail, float* row) {
  using A = acc_t<T>;
  const T* p = a.const_data_ptr<T>();
  const bool sat = detail && (fam == 1 || fam == 2);
  const A centre = fam == 1 ? static_cast<A>(0.5) : static_cast<A>(0);
  const A thr = fam == 1 ? static_cast<A>(0.47) : static_cast<A>(0.97);
  double sums[3];
  if (sat) {
    act_sums<T, true>(p, a.numel(), centre, thr, sums);
  } else {
    act_sums<T, false>(p, a.numel(), centre, thr, sums);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  row[0] = static_cast<float>(sums[0]);
  row[1] = static_cast<float>(std::sqrt(sums[1]));
  row[2] = sat ? static_cast<float>(sums[2]) : nan;
  row[3] = (detail && fam == 3) ? 0.0f : nan;  // a rectifier without units: none dead
  if (detail && fam == 3 && unit_dim >= 0) {
    // dead units: never positive over every other dimension (a NaN counts as dead, as the
    // NaN of amax does in the torch path)
    const auto sizes = a.sizes();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < unit_dim; ++d) outer *= sizes[d];
    for (int64_t d = unit_dim + 1; d < a.dim(); ++d) inner *= sizes[d];
    const int64_t U = sizes[unit_dim];
    std::vector<uint8_t> alive(U, 0), bad(U, 0);
    for (int64_t o = 0; o < outer; ++o) {
      const T* base = p + o * U * inner;
      if (inner == 1) {
        for (int64_t u = 0; u < U; ++u) {
          const A v = load(base, u);
          alive[u] |= v > 0;
          bad[u] |= v != v;
        }
      } else {
        for (int64_t u = 0; u < U; ++u) {
          const T* q = base + u * inner;
          uint8_t al = 0, nn = 0;
          for (int64_t i = 0; i < inner; ++i) {
            const A v = load(q, i);
            al |= v > 0;
            nn |= v != v;
          }
          alive[u] |= al;
          bad[u] |= nn;
        }
      }
    }
    int64_t dead = 0;
    for (int64_t u = 0; u < U; ++u) dead += (!alive[u] || bad[u]) ? 1 : 0;
    row[3] = static_cast<float>(dead);
  }
}

// Each activation's [sum, L2 norm, saturated count, dead units] into the 4 floats at
// base + 4 * rows[i] (rows null: base + 4 * i).
void act_into(const std::vector<at::Tensor>& acts, const std::vector<int64_t>& fam,
              const std::vector<int64_t>& unit_dim, bool detail, float* base,
              const int64_t* rows) {
  const int64_t n = static_cast<int64_t>(acts.size());
  int64_t total = 0;
  for (const auto& a : acts) total += a.numel();
  auto work = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* row = base + 4 * (rows != nullptr ? rows[i] : i);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts[i].scalar_type(), "act", [&] {
        act_one<scalar_t>(acts[i], fam[i], unit_dim[i], detail, row);
      });
    }
  };
  if (total < kSerialBelow || n < 2) {
    work(0, n);
  } else {
    at::parallel_for(0, n, 1, work);
  }
}

// (n, 4) float32 per activation: [sum, L2 norm, saturated count, dead units] (NaN where a
// column does not apply, or outside detail steps).
at::Tensor act_stats(const std::vector<at::Tensor>& acts, const std::vector<int64_t>& fam,
                     const std::vector<int64_t>& unit_dim, bool detail) {
  const int64_t n = static_cast<int64_t>(acts.size());
  TORCH_CHECK(static_cast<int64_t>(fam.size()) == n && static_cast<int64_t>(unit_dim.size()) == n,
              "act_stats: one family and one unit dimension per activation");
  for (const auto& a : acts) check_plain(a, "act_stats");
  at::Tensor out = at::empty({n, 4}, at::kFloat);
  act_into(acts, fam, unit_dim, detail, out.data_ptr<float>(), nullptr);
  return out;
}

// Rows `rows` of the (rows, 4) buffer as one flat (n * 4) float32 tensor, with the norm column
// squared, and the saturated and dead-unit columns NaN outside detail steps.
at::Tensor act_rows(const at::Tensor& buf, const std::vector<int64_t>& rows, bool detail) {
  TORCH_CHECK(buf.device().is_cpu() && buf.scalar_type() == at::kFloat && buf.is_contiguous() &&
                  buf.dim() == 2 && buf.size(1) == 4,
              "act_rows: expected a contiguous (rows, 4) float32 CPU buffer");
  const int64_t n = static_cast<int64_t>(rows.size());
  at::Tensor out = at::empty({4 * n}, at::kFloat);
  const float* b = buf.const_data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(rows[i] >= 0 && rows[i] < buf.size(0), "act_rows: row out of range");
    const float* r = b + 4 * rows[i];
    o[4 * i] = r[0];
    o[4 * i + 1] = r[1] * r[1];
    o[4 * i + 2] = detail ? r[2] : nan;
    o[4 * i + 3] = detail ? r[3] : nan;
  }
  return out;
}

// A step's kept activations as a plan: their rows, sizes, families and unit dimensions.
// run() reduces a later step's kept activations straight into their rows of the (rows, 4)
// buffer when they repeat the plan: the same rows in the same order, the same sizes, none
// changed in place since it was kept. That is the steady state of training, and it then
// costs no Python per activation. False when they do not repeat it (nothing is written).
struct ActPlan {
  std::vector<int64_t> rows, fam, unit_dim;
  std::vector<std::vector<int64_t>> sizes;
  bool detail;

  ActPlan(std::vector<int64_t> rows_, const std::vector<at::Tensor>& acts,
          std::vector<int64_t> fam_, std::vector<int64_t> unit_dim_, bool detail_)
      : rows(std::move(rows_)), fam(std::move(fam_)), unit_dim(std::move(unit_dim_)),
        detail(detail_) {
    const size_t n = rows.size();
    TORCH_CHECK(acts.size() == n && fam.size() == n && unit_dim.size() == n,
                "ActPlan: one tensor, family and unit dimension per row");
    for (const auto& a : acts) {
      check_plain(a, "ActPlan");
      sizes.emplace_back(a.sizes().begin(), a.sizes().end());
    }
  }

  // pend: [(row, tensor, its version when kept)]; buf: the (rows, 4) float32 CPU buffer.
  bool run(const py::list& pend, bool detail_now, at::Tensor& buf) const {
    const size_t n = rows.size();
    if (detail_now != detail || py::len(pend) != n || !buf.device().is_cpu() ||
        buf.scalar_type() != at::kFloat || !buf.is_contiguous() || buf.dim() != 2 ||
        buf.size(1) != 4) {
      return false;
    }
    std::vector<at::Tensor> acts;
    acts.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const py::handle item = pend[i];
      if (!PyTuple_Check(item.ptr()) || PyTuple_GET_SIZE(item.ptr()) != 3) return false;
      PyObject* t = PyTuple_GET_ITEM(item.ptr(), 1);
      if (PyLong_AsLongLong(PyTuple_GET_ITEM(item.ptr(), 0)) != rows[i] ||
          rows[i] < 0 || rows[i] >= buf.size(0) || !THPVariable_Check(t)) {
        PyErr_Clear();
        return false;
      }
      const at::Tensor& a = THPVariable_Unpack(t);
      const int64_t version = PyLong_AsLongLong(PyTuple_GET_ITEM(item.ptr(), 2));
      if (PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
      if (a.sizes() != at::IntArrayRef(sizes[i]) || a._version() != version ||
          a.layout() != at::kStrided || !a.is_contiguous() || !a.device().is_cpu() ||
          !at::isFloatingType(a.scalar_type())) {
        return false;
      }
      acts.push_back(a);
    }
    act_into(acts, fam, unit_dim, detail, buf.data_ptr<float>(), rows.data());
    return true;
  }
};

}  // namespace
