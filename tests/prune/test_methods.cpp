// The pruning-method registry (src/prune/methods.cpp): every name resolves to its row, unknown names
// are one UsageError listing the table, and each row's selector agrees with what the row says.
#include <gtest/gtest.h>

#include <string>

#include "backend/backend.h"
#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "sdtp/predictor.h"

namespace sdtp {
namespace {

TEST(PruneMethods, TableNamesAndLookups) {
  const std::vector<PruneMethod>& all = prune_methods();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front().name, "none");
  EXPECT_FALSE(all.front().prunes());
  EXPECT_EQ(prune_method_names(), "none, sdtp, random, attn, lazyllm or saliency");
  for (const PruneMethod& m : all) {
    EXPECT_EQ(&find_prune_method(m.name), &m);
    EXPECT_FALSE(m.help.empty()) << m.name;
    EXPECT_EQ(m.prunes(), m.name != "none") << m.name;
  }
  EXPECT_TRUE(find_prune_method("sdtp").needs_predictor);
  EXPECT_TRUE(find_prune_method("attn").needs_last_attention);
  EXPECT_TRUE(find_prune_method("saliency").needs_saliency_oracle);
}

TEST(PruneMethods, UnknownNameListsTheTable) {
  const std::shared_ptr<Backend> cpu = make_backend("cpu");
  try {
    find_prune_method("bogus");
    ADD_FAILURE() << "no error for an unknown method";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "unknown pruning method 'bogus' (expected none, sdtp, random, attn, lazyllm or saliency)");
  }
  PrunePlan plan;
  plan.method = "Random";  // names are exact
  plan.layers = {1};
  plan.keep_ratios = {0.5f};
  ModelConfig c;
  c.n_layer = 4;
  EXPECT_THROW(plan.validate(c), UsageError);
  EXPECT_THROW(make_selector(plan, *cpu), UsageError);
}

TEST(PruneMethods, SelectorsAgreeWithTheirRow) {
  const std::shared_ptr<Backend> cpu = make_backend("cpu");
  ModelConfig c;
  c.n_layer = 4;
  c.n_embd = 8;
  PrunePlan plan;
  plan.layers = {2};
  plan.keep_ratios = {0.5f};
  plan.predictor = std::make_shared<const Predictor>(Predictor::random(c, default_sdtp_plan(c), 1));
  plan.saliency_oracle = [](const std::vector<int32_t>& ids, const std::vector<int>& layers) {
    return std::vector<std::vector<float>>(layers.size(), std::vector<float>(ids.size(), 1.0f));
  };
  for (const PruneMethod& m : prune_methods()) {
    plan.method = m.name;
    if (!m.prunes()) {
      EXPECT_FALSE(plan.enabled());
      EXPECT_THROW(make_selector(plan, *cpu), UsageError);
      continue;
    }
    EXPECT_TRUE(plan.enabled()) << m.name;
    const std::unique_ptr<TokenSelector> s = make_selector(plan, *cpu);
    EXPECT_EQ(&s->method(), &m);
    EXPECT_EQ(s->needs_last_attention(), m.needs_last_attention) << m.name;
  }
  // What a row says it needs, its selector asks for.
  plan.method = "sdtp";
  plan.predictor.reset();
  EXPECT_THROW(make_selector(plan, *cpu), UsageError);
  plan.method = "saliency";
  plan.saliency_oracle = nullptr;
  EXPECT_THROW(make_selector(plan, *cpu), UsageError);
}

}  // namespace
}  // namespace sdtp
