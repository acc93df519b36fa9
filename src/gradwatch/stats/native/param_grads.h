// ParamGrads: the gradients of a fixed list of parameters, read in C++ (included by
// kernels.cpp, inside its namespace, after the reductions it uses).
//
// sumsq_max() reads every parameter's .grad at the step's gradient pass: no Python list of P
// gradients, no conversion per call. With hook(), each parameter's gradient is also read the
// moment backward has accumulated it, while it is still in the cache, by a C++ post hook on
// the parameter's AccumulateGrad node (no Python in the backward pass): armed for a step, the
// hook keeps the sum of squares (and max |x|) with the gradient's identity, its version and
// the bits of a few entries spread over it. At the gradient pass, a gradient that is still
// that tensor, at that version, with those entries (nothing replaced it or changed it in place
// since: the entries catch the in-place kernels that leave the version as it was, such as
// GradScaler's unscaling) takes the kept values, equal to a fresh read (the same chunks, added
// in the same order); every other one is read again. So the pass reads only what the hooks
// could not, and the figures are those of the gradients as they are at the pass.

constexpr int kProbes = 9;  // entries compared at the pass: evenly spread, the last included

// The bits of kProbes entries spread evenly over g (contiguous, at most 8 bytes an entry).
inline std::array<uint64_t, kProbes> probe(const at::Tensor& g) {
  std::array<uint64_t, kProbes> out{};
  const int64_t n = g.numel();
  const int64_t item = g.element_size();
  if (n == 0) return out;
  const char* p = static_cast<const char*>(g.const_data_ptr());
  for (int k = 0; k < kProbes; ++k) {
    const int64_t j = (n - 1) * k / (kProbes - 1);
    std::memcpy(&out[k], p + j * item, item);
  }
  return out;
}

struct GradSlots {
  std::vector<at::Tensor> params;
  std::vector<double> ss, mx;
  std::vector<at::Tensor> read;              // the gradient the hook read (held: its address
                                             // cannot be reused until the step is over)
  std::vector<uint32_t> version;             // ... at this version
  std::vector<int64_t> stamp;                // ... at this armed step (-1: none)
  std::vector<uint8_t> has_max;              // ... with max |x|
  std::vector<std::array<uint64_t, kProbes>> probes;  // ... holding these entries (bits)
  int64_t step = -1;                         // the armed step; -1: the hooks read nothing
  bool with_max = false;
};

inline bool hook_readable(const at::Tensor& g) {
  return g.defined() && g.device().is_cpu() && g.layout() == at::kStrided && g.is_contiguous() &&
         at::isFloatingType(g.scalar_type()) && !g.is_inference();
}

struct AccGradHook : torch::autograd::FunctionPostHook {
  std::shared_ptr<GradSlots> s;
  size_t i;

  AccGradHook(std::shared_ptr<GradSlots> s_, size_t i_) : s(std::move(s_)), i(i_) {}

  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    GradSlots& S = *s;
    if (S.step < 0) return outputs;
    const at::Tensor& g = S.params[i].grad();
    if (!hook_readable(g)) {
      S.stamp[i] = -1;
      S.read[i].reset();
      return outputs;
    }
    one_tensor(g, S.with_max, S.ss[i], S.mx[i]);
    S.read[i] = g;
    S.version[i] = g._version();
    S.stamp[i] = S.step;
    S.has_max[i] = S.with_max;
    S.probes[i] = probe(g);
    return outputs;
  }

  // Under compiled autograd the hook is not taken into the graph: it does not run, its slot
  // keeps an older step's stamp, and the pass reads that gradient itself.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs&) const override {}
};

struct ParamGrads {
  std::shared_ptr<GradSlots> s;
  std::vector<c10::intrusive_ptr<torch::autograd::Node>> nodes;  // kept alive while hooked
  std::vector<uintptr_t> keys;
  int64_t n_cached = 0;

  explicit ParamGrads(std::vector<at::Tensor> ps) : s(std::make_shared<GradSlots>()) {
    const size_t P = ps.size();
    s->params = std::move(ps);
    s->ss.assign(P, 0.0);
    s->mx.assign(P, 0.0);
    s->read.assign(P, at::Tensor());
    s->version.assign(P, 0);
    s->stamp.assign(P, -1);
    s->has_max.assign(P, 0);
    s->probes.assign(P, {});
  }

  ~ParamGrads() { unhook(); }

  // A post hook on each parameter's AccumulateGrad node; False (and none) when a parameter
  // is not a leaf that requires grad.
  bool hook() {
    if (!nodes.empty()) return true;
    for (const auto& p : s->params) {
      if (!p.requires_grad() || !p.is_leaf()) return false;
    }
    for (size_t i = 0; i < s->params.size(); ++i) {
      auto node = torch::autograd::impl::grad_accumulator(s->params[i]);
      if (!node) {
        unhook();
        return false;
      }
      keys.push_back(node->add_post_hook(std::make_unique<AccGradHook>(s, i)));
      nodes.push_back(std::move(node));
    }
    return true;
  }

  void unhook() {
    for (size_t i = 0; i < nodes.size(); ++i) nodes[i]->del_post_hook(keys[i]);
    nodes.clear();
    keys.clear();
    arm(-1, false);
  }

  // The hooks read at step `step` (-1: they read nothing); what they read before is let go.
  void arm(int64_t step, bool with_max) {
    for (auto& t : s->read) t.reset();
    s->step = step;
    s->with_max = with_max;
  }

  int64_t cached() const { return n_cached; }

  py::object sumsq_max_of(bool with_max) {
    GradSlots& S = *s;
    const size_t P = S.params.size();
    std::vector<at::Tensor> todo;
    std::vector<size_t> where;
    std::vector<double> per(P, 0.0), pmax(P, 0.0);
    n_cached = 0;
    for (size_t i = 0; i < P; ++i) {
      const at::Tensor& g = S.params[i].grad();
      if (!g.defined()) return py::none();
      if (S.step >= 0 && S.stamp[i] == S.step && S.read[i].defined() &&
          S.read[i].unsafeGetTensorImpl() == g.unsafeGetTensorImpl() &&
          (S.has_max[i] || !with_max) && !g.is_inference() && S.version[i] == g._version() &&
          S.probes[i] == probe(g)) {
        per[i] = S.ss[i];
        pmax[i] = S.mx[i];
        ++n_cached;
      } else {
        todo.push_back(g);
        where.push_back(i);
      }
    }
    if (!todo.empty()) {
      std::vector<double> tp, tm;
      per_tensor(todo, with_max, tp, tm);
      for (size_t k = 0; k < where.size(); ++k) {
        per[where[k]] = tp[k];
        pmax[where[k]] = tm[k];
      }
    }
    auto [out, total] = pack(per, pmax, with_max);
    return py::make_tuple(out, total);
  }
};

void bind_param_grads(py::module& m) {
  py::class_<ParamGrads>(m, "ParamGrads")
      .def(py::init<std::vector<at::Tensor>>())
      .def("sumsq_max", &ParamGrads::sumsq_max_of,
           "sumsq_max of every parameter's .grad, or None if one has none")
      .def("hook", &ParamGrads::hook, "read each gradient when it is accumulated (C++ hooks)")
      .def("arm", &ParamGrads::arm, "arm(step, with_max): the hooks read at step; -1: off")
      .def("unhook", &ParamGrads::unhook, "remove the hooks")
      .def("cached", &ParamGrads::cached, "how many gradients the last call read from hooks");
}
