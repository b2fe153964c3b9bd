// Reduction codes of the loss ops (the schema's `int reduction`), shared by host and device code.
#pragma once
#include <cstdint>

namespace marsops {

enum Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2, kWeightedMean = 3 };

}  // namespace marsops
