// Constructors of the concrete tasks (synthetic ones in tasks_synthetic.cpp, text-file ones in
// tasks_text.cpp); only tasks.cpp's registry calls them.
#pragma once

#include <memory>
#include <string>

#include "eval/tasks.h"

namespace sdtp::eval {

enum class NiahVariant { single, multikey, multivalue };

std::unique_ptr<Task> make_passkey_task();
std::unique_ptr<Task> make_niah_task(NiahVariant variant, const TaskSources& sources);
std::unique_ptr<Task> make_vt_task();
std::unique_ptr<Task> make_cwe_task(const TaskSources& sources);
std::unique_ptr<Task> make_mdqa_task(const TaskSources& sources);
std::unique_ptr<Task> make_ppl_task(const TaskSources& sources);
std::unique_ptr<Task> make_longbench_task(const TaskSources& sources);

// Reads a whole text file of at most 256 MiB; throws UsageError naming `what` and the path.
std::string read_task_file(const std::string& path, const std::string& what);

// Sample `index` of `task` at target `length`, answered in at most max_new_tokens and scored by
// `metric`: the fields every task's samples start from.
EvalSample new_sample(const std::string& task, int length, int index, int max_new_tokens, const std::string& metric);

// Depth of sample `index` of `n`: evenly spaced over [0, 1] (0.5 for a single sample).
double sample_depth(int index, int n);

}  // namespace sdtp::eval
