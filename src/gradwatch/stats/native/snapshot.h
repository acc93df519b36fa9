// The weight snapshot of the update ratio kept from one update to the next (included by
// kernels.cpp, inside its namespace, after update_norms).
//
// At consecutive detail steps, the update norms read every weight right after the optimizer
// step: update_norms_keep copies each block over the snapshot as it reads it, and notes each
// tensor's version. At the next step's snapshot, snapshot_sync copies only the tensors that
// changed since (a new version, or other bits in any of kProbes entries spread over it): the
// pass that copied every weight before each optimizer step is gone when nothing moved them.

// The bits of kProbes entries spread evenly over t and over its copy at off agree.
inline bool same_probes(const at::Tensor& t, const at::Tensor& snap, int64_t off) {
  const int64_t n = t.numel();
  if (n == 0) return true;
  const int64_t item = t.element_size();
  const char* p = static_cast<const char*>(t.const_data_ptr());
  const char* s = static_cast<const char*>(snap.const_data_ptr()) + off * item;
  for (int k = 0; k < kProbes; ++k) {
    const int64_t j = (n - 1) * k / (kProbes - 1);
    if (std::memcmp(p + j * item, s + j * item, item) != 0) return false;
  }
  return true;
}

void check_versions(const std::vector<at::Tensor>& ts, const at::Tensor& versions) {
  TORCH_CHECK(versions.device().is_cpu() && versions.scalar_type() == at::kLong &&
                  versions.is_contiguous() &&
                  versions.numel() == static_cast<int64_t>(ts.size()),
              "snapshot: expected one int64 version per tensor");
}

at::Tensor update_norms(const std::vector<at::Tensor>& ts, const at::Tensor& snap) {
  return update_norms_impl(ts, snap, false);
}

// update_norms; afterwards snap holds the weights and versions[i] the version of ts[i].
at::Tensor update_norms_keep(const std::vector<at::Tensor>& ts, at::Tensor snap,
                             at::Tensor versions) {
  check_versions(ts, versions);
  at::Tensor out = update_norms_impl(ts, snap, true);
  int64_t* v = versions.data_ptr<int64_t>();
  for (size_t i = 0; i < ts.size(); ++i) v[i] = ts[i]._version();
  return out;
}

// The snapshot of the weights before the optimizer step, from one kept by update_norms_keep:
// each tensor at the version noted there, with the same bits in the probed entries, is
// already in it; the others are copied. Returns how many were copied.
int64_t snapshot_sync(const std::vector<at::Tensor>& ts, at::Tensor snap,
                      const at::Tensor& versions) {
  check_versions(ts, versions);
  TORCH_CHECK(snap.is_contiguous() && snap.device().is_cpu(), "snapshot: wrong buffer");
  const int64_t* v = versions.const_data_ptr<int64_t>();
  const int64_t item = snap.element_size();
  char* dst = static_cast<char*>(snap.data_ptr());
  int64_t off = 0, copied = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const at::Tensor& t = ts[i];
    check_plain(t, "snapshot_sync");
    TORCH_CHECK(t.scalar_type() == snap.scalar_type(), "snapshot: dtype differs");
    TORCH_CHECK(off + t.numel() <= snap.numel(), "snapshot: wrong buffer");
    if (v[i] != static_cast<int64_t>(t._version()) || !same_probes(t, snap, off)) {
      std::memcpy(dst + off * item, t.const_data_ptr(), t.numel() * item);
      ++copied;
    }
    off += t.numel();
  }
  TORCH_CHECK(off == snap.numel(), "snapshot: wrong buffer");
  return copied;
}

void bind_snapshot(py::module& m) {
  m.def("update_norms", &update_norms, "||snapshot - w|| and ||w|| per tensor");
  m.def("update_norms_keep", &update_norms_keep,
        "update_norms, then the snapshot holds the weights (their versions noted)");
  m.def("snapshot_sync", &snapshot_sync,
        "copy into the snapshot only the tensors that changed since it was kept");
}
