// Sampler: greedy, temperature/top-k/top-p/min-p semantics, repetition penalty, determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "sdtp/error.h"
#include "sdtp/generate.h"

namespace sdtp {
namespace {

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(l.data(), 4, {}), 1);
}

TEST(Sampler, FrequenciesFollowSoftmaxAtTemperature) {
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.seed = 42;
  Sampler s(p);
  std::vector<float> l = {1.0f, 0.5f, -0.3f, 0.0f};
  std::vector<double> want(4);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += (want[i] = std::exp(l[i] / 0.7));
  std::map<int, int> count;
  const int draws = 40000;
  for (int i = 0; i < draws; ++i) ++count[s.sample(l.data(), 4, {})];
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(count[i] / double(draws), want[i] / z, 0.01) << "token " << i;
}

TEST(Sampler, TopKAndTopPAndMinPTruncate) {
  // Probabilities at T=1: about 0.5, 0.3, 0.15, 0.05.
  std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  const auto support = [&](SamplingParams p) {
    p.seed = 7;
    p.temperature = 1.0f;
    Sampler s(p);
    std::map<int, int> c;
    for (int i = 0; i < 5000; ++i) ++c[s.sample(l.data(), 4, {})];
    return c;
  };
  SamplingParams k2;
  k2.top_k = 2;
  k2.top_p = 1.0f;
  auto c = support(k2);
  EXPECT_EQ(c.size(), 2u);
  EXPECT_TRUE(c.count(0) && c.count(1));

  SamplingParams p7;
  p7.top_k = 0;
  p7.top_p = 0.7f;  // 0.5 + 0.3 reaches 0.7: ids 0 and 1 survive
  c = support(p7);
  EXPECT_EQ(c.size(), 2u);

  SamplingParams m;
  m.top_k = 0;
  m.top_p = 1.0f;
  m.min_p = 0.25f;  // floor 0.125: ids 0, 1, 2
  c = support(m);
  EXPECT_EQ(c.size(), 3u);
  EXPECT_FALSE(c.count(3));
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingParams p;
  p.temperature = 0;
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  // Token 0 (2.0 -> 1.0) loses to token 2 (1.5, not in history).
  std::vector<float> l = {2.0f, -2.0f, 1.5f};
  EXPECT_EQ(s.sample(l.data(), 3, {0, 1}), 2);
  EXPECT_EQ(s.sample(l.data(), 3, {}), 0);
}

TEST(Sampler, SameSeedSameDraws) {
  SamplingParams p;
  p.seed = 123;
  p.top_k = 0;
  std::vector<float> l(50);
  for (int i = 0; i < 50; ++i) l[i] = std::sin(i * 1.3f);
  Sampler a(p), b(p);
  p.seed = 124;
  Sampler c(p);
  int diff = 0;
  for (int i = 0; i < 200; ++i) {
    const int x = a.sample(l.data(), 50, {}), y = b.sample(l.data(), 50, {}), z = c.sample(l.data(), 50, {});
    EXPECT_EQ(x, y);
    diff += x != z;
  }
  EXPECT_GT(diff, 0);
}

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_THROW(Sampler{p}, UsageError);
  p = {};
  p.temperature = -1;
  EXPECT_THROW(Sampler{p}, UsageError);
  p = {};
  p.repeat_penalty = 0;
  EXPECT_THROW(Sampler{p}, UsageError);
  p = {};
  p.top_k = -3;
  EXPECT_THROW(Sampler{p}, UsageError);
}

}  // namespace
}  // namespace sdtp
