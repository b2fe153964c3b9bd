#include "buffer_pool.h"

#include <torch/csrc/stable/c/shim.h>
#include <torch/csrc/stable/macros.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace marsops::cpu {
namespace {

constexpr size_t kPoolMinBytes = size_t{1} << 20;
constexpr size_t kCachedBuffers = 8;  // idle buffers kept; more are freed
constexpr size_t kAlignment = 64;

struct Pool {
  std::mutex mutex;
  std::multimap<size_t, void*> idle;  // capacity -> memory no tensor uses
};

// Never destroyed: tensors may be freed (and call back here) while the process exits.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

void give_back(void* data, void* capacity) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  if (p.idle.size() >= kCachedBuffers) {
    std::free(p.idle.begin()->second);  // drop the smallest
    p.idle.erase(p.idle.begin());
  }
  p.idle.emplace(reinterpret_cast<size_t>(capacity), data);
}

void* take(size_t capacity) {
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.idle.find(capacity);
    if (it != p.idle.end()) {
      void* data = it->second;
      p.idle.erase(it);
      return data;
    }
  }
  return std::aligned_alloc(kAlignment, capacity);
}

// The signature of torch_from_blob (torch 2.11); called instead where the running torch lacks it.
AOTITorchError from_blob_unavailable(void*, int64_t, const int64_t*, const int64_t*, int64_t, int32_t, int32_t,
                                     int32_t, AtenTensorHandle*, int32_t, const uint8_t*, int64_t,
                                     void (*)(void*, void*), void*) {
  return TORCH_FAILURE;
}

size_t element_size(ScalarType t) {
  switch (t) {
    case ScalarType::Double: case ScalarType::Long: return 8;
    case ScalarType::Float: case ScalarType::Int: return 4;
    case ScalarType::Half: case ScalarType::BFloat16: case ScalarType::Short: return 2;
    default: return 1;
  }
}

}  // namespace

Tensor pooled_empty(const std::vector<int64_t>& sizes, ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * element_size(dtype);
  const auto cpu = st::Device(torch::headeronly::DeviceType::CPU);
  if (nbytes < kPoolMinBytes) return st::empty(sizes, dtype, std::nullopt, cpu);
  const size_t capacity = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  void* data = take(capacity);
  MARSOPS_CHECK(data != nullptr, "marsops: out of memory allocating ", capacity, " bytes");
  const int64_t bytes = static_cast<int64_t>(nbytes), one = 1;
  AtenTensorHandle handle = nullptr;
  const AOTITorchError err = TORCH_DYNAMIC_VERSION_CALL(
      TORCH_VERSION_2_11_0, torch_from_blob, from_blob_unavailable, data, 1, &bytes, &one, 0,
      aoti_torch_dtype_uint8(), aoti_torch_device_type_cpu(), -1, &handle, aoti_torch_layout_strided(), nullptr, 0,
      &give_back, reinterpret_cast<void*>(capacity));
  if (err != TORCH_SUCCESS) {  // torch 2.10: no deleters, so no cache
    std::free(data);
    return st::empty(sizes, dtype, std::nullopt, cpu);
  }
  return st::view(st::view(Tensor(handle), dtype), sizes);
}

void empty_pool() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  for (auto& [capacity, data] : p.idle) std::free(data);
  p.idle.clear();
}

STABLE_TORCH_LIBRARY_IMPL(marsops, CompositeExplicitAutograd, m) { m.impl("empty_cache", TORCH_BOX(&empty_pool)); }

}  // namespace marsops::cpu
