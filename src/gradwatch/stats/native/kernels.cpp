// gradwatch's compiled hot path (CPU): fused reductions over lists of tensors, and a C++
// gradient hook for the back-propagated norm. Built once per machine by
// gradwatch.stats.native (torch.utils.cpp_extension), cached; the Python path is the fallback.
//
// Every reduction reads each tensor once. Squares and sums are accumulated in 16 float lanes
// over blocks of 1024 elements (the lanes vectorise without -ffast-math), and the blocks are
// added in double: float32 precision where the fused torch kernels have it, and better over
// long tensors. float64 tensors accumulate in double throughout. float32 tensors take the
// explicit vector loops of simd.h where the CPU has AVX2 or AVX-512 (the same precision).
//
// common.h holds what the reductions share, activations.h the activation statistics.

#include <torch/csrc/autograd/python_variable.h>

#include "activations.h"
#include "common.h"

namespace {

// Per tensor: the L2 norm (float32) and, with with_max, max |x|; and the total sum of squares
// (a Python float: whether every entry is finite is known without another pass).
std::tuple<at::Tensor, double> sumsq_max(const std::vector<at::Tensor>& ts, bool with_max) {
  for (const auto& t : ts) check_plain(t, "sumsq_max");
  int64_t total = 0;
  const auto tasks = split(ts, total);
  std::vector<double> ss(tasks.size()), mx(tasks.size());
  run_tasks(static_cast<int64_t>(tasks.size()), total, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const Task& tk = tasks[k];
      const at::Tensor& t = ts[tk.t];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "sumsq", [&] {
        const scalar_t* p = t.const_data_ptr<scalar_t>() + tk.start;
        if (with_max) {
          sumsq_max_range<scalar_t, true>(p, tk.len, ss[k], mx[k]);
        } else {
          sumsq_max_range<scalar_t, false>(p, tk.len, ss[k], mx[k]);
        }
      });
    }
  });
  const int64_t P = static_cast<int64_t>(ts.size());
  at::Tensor out = at::zeros({with_max ? 2 * P : P}, at::kFloat);
  float* o = out.data_ptr<float>();
  std::vector<double> per(P, 0.0), pmax(P, 0.0);
  for (size_t k = 0; k < tasks.size(); ++k) {
    per[tasks[k].t] += ss[k];
    pmax[tasks[k].t] = std::max(pmax[tasks[k].t], mx[k]);
  }
  double sum = 0.0;
  for (int64_t i = 0; i < P; ++i) {
    sum += per[i];
    o[i] = static_cast<float>(std::sqrt(per[i]));
    if (with_max) {
      // a NaN entry makes the sum of squares NaN; max |x| says so too (as torch.amax does)
      o[P + i] = std::isnan(per[i]) ? std::numeric_limits<float>::quiet_NaN()
                                    : static_cast<float>(pmax[i]);
    }
  }
  return {out, sum};
}

// The gradients of a fixed list of parameters, read in C++ (no Python list of P gradients,
// no conversion per call): sumsq_max of their .grad, or None when one has no gradient.
struct ParamGrads {
  std::vector<at::Tensor> params;

  explicit ParamGrads(std::vector<at::Tensor> ps) : params(std::move(ps)) {}

  py::object sumsq_max_of(bool with_max) const {
    std::vector<at::Tensor> grads;
    grads.reserve(params.size());
    for (const auto& p : params) {
      const at::Tensor& g = p.grad();
      if (!g.defined()) return py::none();
      grads.push_back(g);
    }
    auto [out, total] = sumsq_max(grads, with_max);
    return py::make_tuple(out, total);
  }
};

// Copy every tensor into the flat buffer `snap` (same dtype), one after the other.
void snapshot_take(const std::vector<at::Tensor>& ts, at::Tensor& snap) {
  int64_t total = 0;
  const auto tasks = split(ts, total);
  TORCH_CHECK(snap.numel() == total && snap.is_contiguous(), "snapshot: wrong buffer");
  std::vector<int64_t> off(ts.size() + 1, 0);
  for (size_t i = 0; i < ts.size(); ++i) {
    check_plain(ts[i], "snapshot_take");
    TORCH_CHECK(ts[i].scalar_type() == snap.scalar_type(), "snapshot: dtype differs");
    off[i + 1] = off[i] + ts[i].numel();
  }
  const int64_t item = snap.element_size();
  char* dst = static_cast<char*>(snap.data_ptr());
  // a snapshot larger than a core's cache is read once, after the optimizer step: its stores
  // bypass the cache, so that they neither read its lines first nor evict the weights
  const bool stream = total * item >= gw_simd::kStreamBytes;
  run_tasks(static_cast<int64_t>(tasks.size()), total, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const Task& tk = tasks[k];
      const char* src = static_cast<const char*>(ts[tk.t].const_data_ptr());
      gw_simd::copy(dst + (off[tk.t] + tk.start) * item, src + tk.start * item, tk.len * item,
                    stream);
    }
  });
}

template <typename T>
void diff_range(const T* w, const T* s, int64_t n, double& dw_out, double& w_out) {
  if constexpr (std::is_same_v<T, float>) {
    if (gw_simd::diff(w, s, n, dw_out, w_out)) return;
  }
  using A = acc_t<T>;
  double dsum = 0.0, wsum = 0.0;
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    A d[kLanes] = {}, q[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= m; j += kLanes) {
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        const A a = load(w, i + j + k), b = load(s, i + j + k);
        d[k] += (b - a) * (b - a);
        q[k] += a * a;
      }
    }
    for (; j < m; ++j) {
      const A a = load(w, i + j), b = load(s, i + j);
      d[0] += (b - a) * (b - a);
      q[0] += a * a;
    }
    for (int64_t k = 0; k < kLanes; ++k) {
      dsum += static_cast<double>(d[k]);
      wsum += static_cast<double>(q[k]);
    }
  }
  dw_out = dsum;
  w_out = wsum;
}

// (2P,) float32: ||snapshot_p - w_p|| for each tensor, then ||w_p||; one read of each.
at::Tensor update_norms(const std::vector<at::Tensor>& ts, const at::Tensor& snap) {
  int64_t total = 0;
  const auto tasks = split(ts, total);
  TORCH_CHECK(snap.numel() == total && snap.is_contiguous(), "update_norms: wrong buffer");
  std::vector<int64_t> off(ts.size() + 1, 0);
  for (size_t i = 0; i < ts.size(); ++i) {
    check_plain(ts[i], "update_norms");
    TORCH_CHECK(ts[i].scalar_type() == snap.scalar_type(), "update_norms: dtype differs");
    off[i + 1] = off[i] + ts[i].numel();
  }
  std::vector<double> dw(tasks.size()), w(tasks.size());
  run_tasks(static_cast<int64_t>(tasks.size()), total, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const Task& tk = tasks[k];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, snap.scalar_type(), "update", [&] {
        const scalar_t* p = ts[tk.t].const_data_ptr<scalar_t>() + tk.start;
        const scalar_t* s = snap.const_data_ptr<scalar_t>() + off[tk.t] + tk.start;
        diff_range<scalar_t>(p, s, tk.len, dw[k], w[k]);
      });
    }
  });
  const int64_t P = static_cast<int64_t>(ts.size());
  std::vector<double> pd(P, 0.0), pw(P, 0.0);
  for (size_t k = 0; k < tasks.size(); ++k) {
    pd[tasks[k].t] += dw[k];
    pw[tasks[k].t] += w[k];
  }
  at::Tensor out = at::empty({2 * P}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < P; ++i) {
    o[i] = static_cast<float>(std::sqrt(pd[i]));
    o[P + i] = static_cast<float>(std::sqrt(pw[i]));
  }
  return out;
}

double sumsq_one(const at::Tensor& g) {
  double ss = 0.0, mx = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bp", [&] {
    sumsq_max_range<scalar_t, false>(g.const_data_ptr<scalar_t>(), g.numel(), ss, mx);
  });
  return ss;
}

// Hang a C++ hook on `out`: during backward it adds ||d loss / d out||^2 into sq[li] (set
// instead of added at the layer's first call of step `step`, which `stamp[li]` records). No
// Python runs in the backward pass for it. Gradients that are not dense floating CPU tensors
// are skipped (the caller takes those on its Python path).
void check_slots(const at::Tensor& sq, const at::Tensor& stamp, int64_t li) {
  TORCH_CHECK(sq.device().is_cpu() && sq.scalar_type() == at::kFloat && sq.is_contiguous() &&
                  stamp.scalar_type() == at::kLong && stamp.is_contiguous() &&
                  li >= 0 && li < sq.numel() && li < stamp.numel(),
              "hook_sumsq: expected float32 sums and int64 stamps on the CPU");
}

void hang_sumsq(const at::Tensor& out, const at::Tensor& sq, const at::Tensor& stamp, int64_t li,
                int64_t step) {
  out.register_hook([sq, stamp, li, step](const at::TensorBase& grad) {
    if (!grad.defined() || !grad.device().is_cpu() || grad.layout() != at::kStrided ||
        !at::isFloatingType(grad.scalar_type())) {
      return;
    }
    const at::Tensor g = at::Tensor(grad).contiguous();
    const double ss = sumsq_one(g);
    float* s = sq.data_ptr<float>();
    int64_t* st = stamp.data_ptr<int64_t>();
    if (st[li] != step) {
      s[li] = static_cast<float>(ss);
      st[li] = step;
    } else {
      s[li] += static_cast<float>(ss);
    }
  });
}

void hook_sumsq(const at::Tensor& out, at::Tensor sq, at::Tensor stamp, int64_t li,
                int64_t step) {
  check_slots(sq, stamp, li);
  hang_sumsq(out, sq, stamp, li, step);
}

// The slots of hook_sumsq written at step `step`: (their indices, their sums as float32).
py::tuple stamped(const at::Tensor& sq, const at::Tensor& stamp, int64_t step) {
  check_slots(sq, stamp, 0);
  const int64_t n = std::min(sq.numel(), stamp.numel());
  const int64_t* st = stamp.const_data_ptr<int64_t>();
  const float* s = sq.const_data_ptr<float>();
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; ++i) {
    if (st[i] == step) idx.push_back(i);
  }
  at::Tensor vals = at::empty({static_cast<int64_t>(idx.size())}, at::kFloat);
  float* v = vals.data_ptr<float>();
  for (size_t k = 0; k < idx.size(); ++k) v[k] = s[idx[k]];
  return py::make_tuple(py::cast(idx), vals);
}

// The layer-output listener of the back-propagated norm, called as fn(li, out) by the
// per-layer forward hook: a dense real floating CPU tensor that requires grad (grad mode on)
// gets the C++ gradient hook of hook_sumsq with no Python frame; one that does not require
// grad is left; anything else (a tuple, another device or layout) goes to `fallback(li, out)`.
struct LayerOutputHook {
  at::Tensor sq, stamp;
  int64_t step = -1;
  py::object fallback;

  LayerOutputHook(at::Tensor sq_, at::Tensor stamp_, py::object fallback_)
      : sq(std::move(sq_)), stamp(std::move(stamp_)), fallback(std::move(fallback_)) {
    check_slots(sq, stamp, 0);
  }

  void call(int64_t li, py::handle out) {
    if (THPVariable_Check(out.ptr())) {
      const at::Tensor& t = THPVariable_Unpack(out.ptr());
      if (!at::GradMode::is_enabled() || !t.requires_grad()) return;
      if (t.device().is_cpu() && t.layout() == at::kStrided &&
          at::isFloatingType(t.scalar_type()) && li >= 0 && li < sq.numel()) {
        hang_sumsq(t, sq, stamp, li, step);
        return;
      }
    }
    fallback(li, out);
  }
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gradwatch's compiled hot path (see gradwatch.stats.native)";
  m.def("sumsq_max", &sumsq_max, "per-tensor L2 norms (and max |x|), and the total of squares");
  m.def("snapshot_take", &snapshot_take, "copy tensors into one flat buffer");
  m.def("update_norms", &update_norms, "||snapshot - w|| and ||w|| per tensor");
  m.def("act_stats", &act_stats, "[sum, norm, saturated, dead units] per activation");
  m.def("hook_sumsq", &hook_sumsq, "a C++ gradient hook adding ||grad||^2 into a slot");
  m.def("stamped", &stamped, "(indices, float32 sums) of the hook slots stamped with a step");
  m.def("isa", &gw_simd::isa, "the float32 vector code in use: 0 portable, 1 AVX2, 2 AVX-512");
  m.def("set_isa", &gw_simd::set_isa, "use at most this vector code (0, 1, 2); returns it");
  py::class_<ParamGrads>(m, "ParamGrads")
      .def(py::init<std::vector<at::Tensor>>())
      .def("sumsq_max", &ParamGrads::sumsq_max_of,
           "sumsq_max of every parameter's .grad, or None if one has none");
  m.def("act_rows", &act_rows, "rows of the activation buffer, flat, norms squared");
  py::class_<ActPlan>(m, "ActPlan")
      .def(py::init<std::vector<int64_t>, const std::vector<at::Tensor>&, std::vector<int64_t>,
                    std::vector<int64_t>, bool>())
      .def("run", &ActPlan::run,
           "reduce a step's kept activations into their rows if they repeat the plan");
  py::class_<LayerOutputHook>(m, "LayerOutputHook")
      .def(py::init<at::Tensor, at::Tensor, py::object>())
      .def_readwrite("step", &LayerOutputHook::step)
      .def("__call__", &LayerOutputHook::call, "fn(li, out): hang the C++ hook on out");
}
