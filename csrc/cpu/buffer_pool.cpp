#include "buffer_pool.h"

#include <torch/library.h>

#include <mutex>
#include <vector>

namespace marsops::cpu {
namespace {

constexpr int64_t kPoolMinBytes = 1 << 20;
constexpr size_t kPoolSlots = 8;

std::mutex pool_mutex;
std::vector<at::Tensor> pool;  // flat byte buffers, most recently used last

bool idle(const at::Tensor& t) { return t.use_count() == 1 && t.storage().use_count() == 1; }

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t nbytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  if (nbytes < kPoolMinBytes) return at::empty(sizes, options);
  std::lock_guard<std::mutex> lock(pool_mutex);
  at::Tensor buffer;
  for (auto it = pool.begin(); it != pool.end(); ++it) {
    if (it->numel() == nbytes && idle(*it)) {
      buffer = *it;
      pool.erase(it);
      break;
    }
  }
  if (!buffer.defined()) {
    buffer = at::empty({nbytes}, options.dtype(at::kByte));
    if (pool.size() >= kPoolSlots) {  // evict an idle buffer, else the least recently used
      auto victim = std::find_if(pool.begin(), pool.end(), idle);
      pool.erase(victim != pool.end() ? victim : pool.begin());
    }
  }
  pool.push_back(buffer);
  return buffer.view(options.dtype().toScalarType()).view(sizes);
}

void empty_pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  pool.clear();
}

TORCH_LIBRARY_IMPL(marsops, CompositeExplicitAutograd, m) { m.impl("empty_cache", &empty_pool); }

}  // namespace marsops::cpu
