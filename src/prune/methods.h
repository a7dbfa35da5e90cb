// The engine-side half of the pruning-method registry (the table and its public lookups are in
// sdtp/prune.h, defined in methods.cpp).
#pragma once

#include <string>

#include "sdtp/prune.h"

namespace sdtp {

// The registered method of that name, or nullptr (where an unknown name is not an error yet).
const PruneMethod* lookup_prune_method(const std::string& name);

}  // namespace sdtp
