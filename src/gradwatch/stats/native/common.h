// gradwatch compiled kernels: what the reductions share (constants, the portable lane loop
// of sums of squares, the split of tensors into parallel tasks). Included by kernels.cpp.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace {


constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 1024;         // elements per float block
constexpr int64_t kChunk = 1 << 16;      // elements per parallel task
constexpr int64_t kSerialBelow = 1 << 16;  // total elements under which one thread works

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
inline acc_t<T> load(const T* p, int64_t i) {
  return static_cast<acc_t<T>>(p[i]);
}

// Sum of squares (double) and, with WithMax, max |x| over p[0..n).
template <typename T, bool WithMax>
void sumsq_max_range(const T* p, int64_t n, double& ss_out, double& mx_out) {
  if constexpr (std::is_same_v<T, float>) {
    if (gw_simd::sumsq_max(p, n, WithMax, ss_out, mx_out)) return;
  }
  using A = acc_t<T>;
  double ss = 0.0;
  A mx = 0;
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    A acc[kLanes] = {};
    A mxl[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= m; j += kLanes) {
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        const A v = load(p, i + j + k);
        acc[k] += v * v;
        if constexpr (WithMax) {
          const A a = std::fabs(v);
          mxl[k] = a > mxl[k] ? a : mxl[k];
        }
      }
    }
    for (; j < m; ++j) {
      const A v = load(p, i + j);
      acc[0] += v * v;
      if constexpr (WithMax) {
        const A a = std::fabs(v);
        mxl[0] = a > mxl[0] ? a : mxl[0];
      }
    }
    double s = 0.0;
    for (int64_t k = 0; k < kLanes; ++k) {
      s += static_cast<double>(acc[k]);
      if constexpr (WithMax) mx = mxl[k] > mx ? mxl[k] : mx;
    }
    ss += s;
  }
  ss_out = ss;
  mx_out = static_cast<double>(mx);
}

struct Task {
  int64_t t, start, len;
};

std::vector<Task> split(const std::vector<at::Tensor>& ts, int64_t& total) {
  std::vector<Task> tasks;
  total = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(ts.size()); ++i) {
    const int64_t n = ts[i].numel();
    total += n;
    for (int64_t s = 0; s < n; s += kChunk) tasks.push_back({i, s, std::min(kChunk, n - s)});
  }
  return tasks;
}

template <typename F>
void run_tasks(int64_t ntasks, int64_t total, const F& f) {
  if (total < kSerialBelow || ntasks < 2) {
    f(0, ntasks);
  } else {
    at::parallel_for(0, ntasks, 1, f);
  }
}

void check_plain(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided && t.is_contiguous() &&
                  at::isFloatingType(t.scalar_type()),
              what, ": expected contiguous real floating CPU tensors");
}

}  // namespace
