// Progress text of long evaluation runs (format_eval_progress in include/sdtp/eval.h).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "sdtp/eval.h"

namespace sdtp {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%lds", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  return buf;
}

std::string format_progress_bar(int done, int total, int width) {
  const double frac = total > 0 ? std::min(1.0, static_cast<double>(done) / total) : 1.0;
  const int filled = static_cast<int>(frac * width);
  std::string bar(static_cast<size_t>(width), ' ');
  for (int i = 0; i < filled; ++i) bar[i] = '=';
  if (filled < width) bar[filled] = '>';
  return bar;
}

std::string format_eta(double elapsed_s, int done, int total) {
  return done > 0 ? format_duration(elapsed_s / done * (total - done)) : "?";
}

std::string format_eval_progress(int done, int total, double elapsed_s, int width) {
  return "eval [" + format_progress_bar(done, total, width) + "] " + std::to_string(done) + "/" +
         std::to_string(total) + "  elapsed " + format_duration(elapsed_s) + "  ETA " +
         format_eta(elapsed_s, done, total);
}

}  // namespace sdtp
