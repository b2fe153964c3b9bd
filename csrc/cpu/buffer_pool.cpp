#include "buffer_pool.h"

#include <torch/csrc/stable/c/shim.h>
#include <torch/csrc/stable/macros.h>

#include <map>
#include <mutex>

namespace marsops::cpu {
namespace {

constexpr size_t kPoolMinBytes = size_t{1} << 20;
constexpr size_t kCachedBuffers = 8;  // idle buffers kept; more are freed

// Memory from torch's own allocator (so its accounting and profiler see it), handed out as tensors
// over it whose deleter brings it back here instead of freeing it.
struct Block {
  Tensor memory;  // uint8, `bytes` long
  size_t bytes;
};

struct Pool {
  std::mutex mutex;
  std::multimap<size_t, Block*> idle;
};

// Never destroyed: tensors may be freed (and call back here) while the process exits.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

#ifdef TORCH_DYNAMIC_VERSION_CALL  // headers of torch >= 2.14 (see buffer_pool.h)
void give_back(void* /*data*/, void* ctx) {
  Block* block = static_cast<Block*>(ctx);
  Block* dropped = nullptr;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.idle.size() >= kCachedBuffers) {  // drop the smallest
      dropped = p.idle.begin()->second;
      p.idle.erase(p.idle.begin());
    }
    p.idle.emplace(block->bytes, block);
  }
  delete dropped;  // outside the lock: frees its memory through torch
}

Block* take(size_t bytes) {
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.idle.find(bytes);
    if (it != p.idle.end()) {
      Block* block = it->second;
      p.idle.erase(it);
      return block;
    }
  }
  return new Block{st::empty({static_cast<int64_t>(bytes)}, ScalarType::Byte, std::nullopt,
                             st::Device(torch::headeronly::DeviceType::CPU)),
                   bytes};
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
#endif

}  // namespace

Tensor pooled_empty(const std::vector<int64_t>& sizes, ScalarType dtype) {
  const auto cpu = st::Device(torch::headeronly::DeviceType::CPU);
#ifndef TORCH_DYNAMIC_VERSION_CALL
  // Built with the headers of a torch older than 2.14, which cannot call torch_from_blob only where
  // the running torch has it: no cache.
  return st::empty(sizes, dtype, std::nullopt, cpu);
#else
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * element_size(dtype);
  if (nbytes < kPoolMinBytes || aoti_torch_abi_version() < TORCH_VERSION_2_11_0) {
    return st::empty(sizes, dtype, std::nullopt, cpu);  // small, or torch 2.10: no deleters, so no cache
  }
  Block* block = take(nbytes);
  const int64_t bytes = static_cast<int64_t>(nbytes), one = 1;
  AtenTensorHandle handle = nullptr;
  const AOTITorchError err = TORCH_DYNAMIC_VERSION_CALL(
      TORCH_VERSION_2_11_0, torch_from_blob, from_blob_unavailable, block->memory.mutable_data_ptr(), 1, &bytes, &one,
      0, aoti_torch_dtype_uint8(), aoti_torch_device_type_cpu(), -1, &handle, aoti_torch_layout_strided(), nullptr, 0,
      &give_back, block);
  if (err != TORCH_SUCCESS) {
    delete block;
    return st::empty(sizes, dtype, std::nullopt, cpu);
  }
  return st::view(st::view(Tensor(handle), dtype), sizes);
#endif
}

void empty_pool() {
  std::multimap<size_t, Block*> dropped;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    dropped.swap(p.idle);
  }
  for (auto& [bytes, block] : dropped) delete block;
}

STABLE_TORCH_LIBRARY_IMPL(marsops, CompositeExplicitAutograd, m) { m.impl("empty_cache", TORCH_BOX(&empty_pool)); }

}  // namespace marsops::cpu
