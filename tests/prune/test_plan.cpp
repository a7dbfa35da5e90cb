// The plan defaults (src/prune/plan.cpp): default_sdtp_plan's depth scaling, and
// complete_prune_plan filling what a plan leaves open from its predictor and from the model, the
// same for every front end.
#include <gtest/gtest.h>

#include <memory>

#include "sdtp/error.h"
#include "sdtp/model.h"
#include "sdtp/predictor.h"
#include "sdtp/prune.h"

namespace sdtp {
namespace {

ModelConfig config_of_depth(int n_layer) {
  ModelConfig c;
  c.n_layer = n_layer;
  c.n_embd = 8;
  return c;
}

PrunePlan open_plan(const std::string& method) {
  PrunePlan p;
  p.method = method;
  p.keep_first = PrunePlan::kKeepFirstUnset;
  p.keep_recent = PrunePlan::kKeepRecentUnset;
  return p;
}

// The SDTP paper's schedule (arXiv 2504.04514 §4: on 32-layer models, ten stages from layer 4,
// every 3 layers, keep 0.9 each, the first 4 and the last 10% kept), scaled to other depths.
TEST(PrunePlanDefaults, DefaultSdtpPlanIsThePapersScaledWithDepth) {
  ModelConfig c;
  const auto layers = [&](int n) {
    c.n_layer = n;
    return default_sdtp_plan(c).layers;
  };
  EXPECT_EQ(layers(32), (std::vector<int>{4, 7, 10, 13, 16, 19, 22, 25, 28, 31}));  // the paper's
  EXPECT_EQ(layers(30), (std::vector<int>{4, 7, 10, 13, 16, 19, 22, 25, 28}));      // SmolLM2
  EXPECT_EQ(layers(24), (std::vector<int>{3, 6, 9, 12, 15, 18, 21}));
  EXPECT_EQ(layers(80), (std::vector<int>{10, 18, 26, 34, 42, 50, 58, 66, 74}));  // ceil(240/32) = 8
  EXPECT_EQ(layers(6), (std::vector<int>{1, 2, 3, 4, 5}));
  EXPECT_EQ(layers(2), (std::vector<int>{1}));
  EXPECT_TRUE(layers(1).empty());
  c.n_layer = 32;
  const PrunePlan p = default_sdtp_plan(c);
  EXPECT_EQ(p.method, "sdtp");
  EXPECT_EQ(p.keep_ratios, std::vector<float>(10, 0.9f));
  EXPECT_EQ(p.keep_first, 4);
  EXPECT_FLOAT_EQ(p.keep_recent, 0.1f);
  EXPECT_NEAR(p.final_keep_fraction(), 0.3487, 1e-4);  // 0.9^10: the paper's "65% pruned"
  for (int n = 2; n <= 100; ++n) {
    c.n_layer = n;
    PrunePlan q = default_sdtp_plan(c);
    q.method = "random";
    EXPECT_NO_THROW(q.validate(c)) << n << " layers";
  }
}

TEST(PrunePlanDefaults, QuartersScheduleScalesWithDepth) {
  ModelConfig c;
  const auto layers = [&](int n) {
    c.n_layer = n;
    return quarters_prune_plan(c).layers;
  };
  EXPECT_EQ(layers(32), (std::vector<int>{8, 16, 24}));
  EXPECT_EQ(layers(30), (std::vector<int>{8, 15, 23}));
  EXPECT_EQ(layers(24), (std::vector<int>{6, 12, 18}));
  EXPECT_EQ(layers(6), (std::vector<int>{2, 3, 5}));
  EXPECT_EQ(layers(4), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(layers(3), (std::vector<int>{1, 2}));
  EXPECT_EQ(layers(2), (std::vector<int>{1}));
  EXPECT_TRUE(layers(1).empty());
  c.n_layer = 30;
  const PrunePlan p = quarters_prune_plan(c);
  EXPECT_EQ(p.keep_ratios, (std::vector<float>{0.7f, 0.7f, 0.7f}));
  EXPECT_EQ(p.keep_first, 4);
  EXPECT_EQ(p.keep_recent, 0.0f);
  EXPECT_EQ(named_prune_schedule("quarters", c).layers, p.layers);
  EXPECT_EQ(named_prune_schedule("paper", c).layers, default_sdtp_plan(c).layers);
  EXPECT_EQ(named_prune_schedule("lazyllm", c).keep_ratios, default_lazyllm_plan(c).keep_ratios);
  try {
    named_prune_schedule("steep", c);
    ADD_FAILURE() << "no error for an unknown schedule";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "unknown pruning schedule 'steep' (expected paper, quarters or lazyllm)");
  }
}

TEST(PrunePlanDefaults, FromTheModel) {
  const ModelConfig c = config_of_depth(30);
  const std::vector<int> paper = {4, 7, 10, 13, 16, 19, 22, 25, 28};
  PrunePlan p = open_plan("random");
  complete_prune_plan(c, p);
  EXPECT_EQ(p.layers, paper);
  EXPECT_EQ(p.keep_ratios, std::vector<float>(9, 0.9f));
  EXPECT_EQ(p.keep_first, 4);
  EXPECT_FLOAT_EQ(p.keep_recent, 0.1f);

  p = open_plan("lazyllm");
  complete_prune_plan(c, p);
  EXPECT_EQ(p.layers, (std::vector<int>{8, 15, 23}));
  EXPECT_EQ(p.keep_recent, 0.0f);  // LazyLLM keeps no recent tail

  p = open_plan("attn");
  p.layers = {5, 10};
  complete_prune_plan(c, p);
  EXPECT_EQ(p.keep_ratios, (std::vector<float>{0.9f, 0.9f}));

  p = open_plan("attn");
  p.keep_recent = 1.0f;  // the whole prompt always kept is no plan
  EXPECT_THROW(complete_prune_plan(c, p), UsageError);

  p = open_plan("attn");
  p.layers = {5, 10, 20};
  p.keep_ratios = {0.5f};  // one ratio for every stage
  p.keep_first = 0;        // given: kept
  p.keep_recent = 0.0f;
  complete_prune_plan(c, p);
  EXPECT_EQ(p.keep_ratios, (std::vector<float>{0.5f, 0.5f, 0.5f}));
  EXPECT_EQ(p.keep_first, 0);
  EXPECT_EQ(p.keep_recent, 0.0f);  // given: kept

  p = open_plan("random");
  p.keep_ratios = {0.4f};  // the default layers, this ratio
  complete_prune_plan(c, p);
  EXPECT_EQ(p.layers, paper);
  EXPECT_EQ(p.keep_ratios, std::vector<float>(9, 0.4f));

  PrunePlan dense;
  complete_prune_plan(c, dense);  // "none" is left as is
  EXPECT_TRUE(dense.layers.empty());
  EXPECT_FALSE(dense.enabled());
}

TEST(PrunePlanDefaults, FromThePredictor) {
  const ModelConfig c = config_of_depth(6);
  PrunePlan trained = open_plan("sdtp");
  trained.layers = {2, 4};
  trained.keep_ratios = {0.6f, 0.5f};
  trained.keep_first = 3;
  trained.keep_recent = 0.25f;
  const auto predictor = std::make_shared<const Predictor>(Predictor::random(c, trained, 1));

  PrunePlan p = open_plan("sdtp");
  p.predictor = predictor;
  complete_prune_plan_from_predictor(p);  // needs no model
  EXPECT_EQ(p.layers, (std::vector<int>{2, 4}));
  EXPECT_EQ(p.keep_ratios, (std::vector<float>{0.6f, 0.5f}));
  EXPECT_EQ(p.keep_first, 3);
  EXPECT_FLOAT_EQ(p.keep_recent, 0.25f);  // not given: the predictor's
  complete_prune_plan(c, p);  // nothing left to fill
  EXPECT_EQ(p.layers, (std::vector<int>{2, 4}));

  p = open_plan("sdtp");
  p.predictor = predictor;
  p.layers = {4};  // a subset of the trained layers: its trained ratio
  complete_prune_plan(c, p);
  EXPECT_EQ(p.keep_ratios, (std::vector<float>{0.5f}));
  EXPECT_EQ(p.keep_first, 3);

  p = open_plan("sdtp");
  p.predictor = predictor;
  p.layers = {3};  // no module there
  EXPECT_THROW(complete_prune_plan_from_predictor(p), UsageError);
  EXPECT_THROW(complete_prune_plan(c, p), UsageError);

  p = open_plan("sdtp");  // no predictor (a speed run): the model's defaults
  complete_prune_plan(c, p);
  EXPECT_EQ(p.layers, (std::vector<int>{1, 2, 3, 4, 5}));
  EXPECT_EQ(p.keep_first, 4);
}

TEST(PrunePlanDefaults, Refusals) {
  PrunePlan p = open_plan("random");
  try {
    complete_prune_plan(config_of_depth(1), p);
    ADD_FAILURE() << "no error for a model with no layer to prune at";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "pruning method 'random': a 1-layer model has no layer to prune at");
  }
  p = open_plan("bogus");
  EXPECT_THROW(complete_prune_plan(config_of_depth(8), p), UsageError);
  p = open_plan("random");
  p.layers = {2, 9};  // validated against the model
  EXPECT_THROW(complete_prune_plan(config_of_depth(8), p), UsageError);
}

}  // namespace
}  // namespace sdtp
