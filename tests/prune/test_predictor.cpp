// The SDTP predictor: scores against PyTorch (tests/fixtures/predictor, written by
// scripts/fixtures/gen_predictor.py) and against a double-precision reference written here; the
// file round trip; corrupt files as FormatError; model identity checks; and
// pruned prefills with the `sdtp` and `saliency` selectors (the latter against token_saliency).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>

#include <unistd.h>

#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "sdtp/predictor.h"
#include "sdtp/session.h"
#include "sdtp/train.h"
#include "testing/fixtures.h"
#include "train/saliency.h"

namespace sdtp {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A per-process folder for the files these tests write, removed at exit.
fs::path scratch(const std::string& name) {
  struct Dir {
    fs::path path = fs::temp_directory_path() / ("sdtp_predictor_test_" + std::to_string(::getpid()));
    Dir() { fs::create_directories(path); }
    ~Dir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static Dir dir;
  return dir.path / name;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_bytes(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }

// The tiny llama fixture (GQA, 2 layers) stacked to 6 layers by repeating its blocks.
std::unique_ptr<Model> six_layer_model() {
  auto m = load_model(testing::fixture_path("tiny/llama_gqa"));
  const auto base = m->weights.layers;
  while (m->weights.layers.size() < 6) m->weights.layers.push_back(base[m->weights.layers.size() % base.size()]);
  m->config.n_layer = 6;
  return m;
}

std::vector<int32_t> prompt(int n, int vocab) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 37 + 11) % vocab;
  return ids;
}

PrunePlan make_plan(const std::string& method, std::vector<int> layers, std::vector<float> ratios, int keep_first) {
  PrunePlan p;
  p.method = method;
  p.layers = std::move(layers);
  p.keep_ratios = std::move(ratios);
  p.keep_first = keep_first;
  return p;
}

// score = w2 · gelu(W1 · rmsnorm(h) + b1) + b2, everything in double.
std::vector<double> reference_scores(const Predictor& p, int stage, const std::vector<float>& hidden) {
  const PredictorStage& s = p.stages[stage];
  const int64_t d = p.n_embd, h = p.n_hidden, n = static_cast<int64_t>(hidden.size()) / d;
  std::vector<double> out(n);
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(hidden[r * d + j]) * hidden[r * d + j];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-6);
    double acc = s.b2;
    for (int64_t k = 0; k < h; ++k) {
      double a = s.b1[k];
      for (int64_t j = 0; j < d; ++j) a += static_cast<double>(s.w1[k * d + j]) * hidden[r * d + j] * inv;
      acc += s.w2[k] * 0.5 * a * (1.0 + std::erf(a / std::sqrt(2.0)));
    }
    out[r] = acc;
  }
  return out;
}

double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::fabs(got[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return diff / scale;
}

// The fixture's two stages score its hidden rows (64 wide) as PyTorch's float64 reference does,
// in one batch and one row at a time.
void expect_reference_scores(const Predictor& p, const json& ref) {
  const std::vector<float> hidden = ref["hidden"].get<std::vector<float>>();
  const int64_t n = static_cast<int64_t>(hidden.size()) / 64;
  for (int s = 0; s < 2; ++s) {
    const std::vector<double> want = ref["scores_f64"][s].get<std::vector<double>>();
    std::vector<float> got(n);
    p.score(s, hidden.data(), n, got.data());
    EXPECT_LT(max_rel(got, want), 1e-5) << "stage " << s;
    for (int64_t r = 0; r < n; ++r) {
      float one = 0;
      p.score(s, hidden.data() + r * 64, 1, &one);
      EXPECT_NEAR(one, want[r], 1e-5 * std::max(1.0, std::fabs(want[r]))) << "stage " << s << " row " << r;
    }
  }
}

// ---------------------------------------------------------------- scores

TEST(Predictor, LoadsPyTorchFixtureAndMatchesItsScores) {
  const std::string path = testing::fixture_path("predictor/predictor.safetensors");
  const json ref = testing::read_json(testing::fixture_path("predictor/reference.json"));
  const Predictor p = load_predictor(path);
  EXPECT_EQ(p.model.arch, "llama");
  EXPECT_EQ(p.model.name, "predictor-fixture");
  EXPECT_EQ(p.model.n_layer, 8);
  EXPECT_EQ(p.model.n_embd, 64);
  EXPECT_EQ(p.model.n_vocab, 1000);
  EXPECT_EQ(p.model.fingerprint.size(), 256u);
  EXPECT_EQ(p.plan.method, "sdtp");
  EXPECT_EQ(p.plan.layers, (std::vector<int>{2, 5}));
  EXPECT_EQ(p.plan.keep_ratios, (std::vector<float>{0.7f, 0.5f}));
  EXPECT_EQ(p.plan.keep_first, 4);
  EXPECT_EQ(p.n_embd, 64);
  EXPECT_EQ(p.n_hidden, 16);
  ASSERT_EQ(p.stages.size(), 2u);
  EXPECT_EQ(p.stages[1].layer, 5);
  EXPECT_EQ(p.info.at("source"), "scripts/fixtures/gen_predictor.py");

  expect_reference_scores(p, ref);
}

// The paper's two-way module (fc2 to keep and drop logits, as scripts/train/sdtp_train.py writes
// it): the engine folds fc2 to keep − drop; its scores equal PyTorch's out[0] − out[1].
TEST(Predictor, LoadsTwoWayPyTorchFixtureAsKeepMinusDrop) {
  const Predictor p = load_predictor(testing::fixture_path("predictor/predictor_2way.safetensors"));
  const json ref = testing::read_json(testing::fixture_path("predictor/reference_2way.json"));
  EXPECT_EQ(p.plan.layers, (std::vector<int>{2, 5}));
  EXPECT_FLOAT_EQ(p.plan.keep_recent, 0.1f);
  ASSERT_EQ(p.stages.size(), 2u);
  EXPECT_EQ(p.stages[0].w2.size(), 16u);
  expect_reference_scores(p, ref);
  const std::vector<float> hidden = ref["hidden"].get<std::vector<float>>();
  const int64_t n = static_cast<int64_t>(hidden.size()) / 64;
  // Saved again, it is the one-output module with the same scores and the same recent tail.
  const std::string path = scratch("folded.safetensors").string();
  save_predictor(p, path);
  const Predictor q = load_predictor(path);
  EXPECT_FLOAT_EQ(q.plan.keep_recent, 0.1f);
  std::vector<float> a(n), b(n);
  p.score(1, hidden.data(), n, a.data());
  q.score(1, hidden.data(), n, b.data());
  EXPECT_EQ(a, b);
}

TEST(Predictor, ScoreMatchesDoubleReferenceForAnyRowCount) {
  auto m = six_layer_model();
  const Predictor p = Predictor::random(*m, make_plan("random", {2, 4}, {0.5f, 0.5f}, 0), 11, 24);
  EXPECT_EQ(p.plan.method, "sdtp");
  EXPECT_EQ(p.n_hidden, 24);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t n : {1, 2, 7, 512, 513, 1100}) {
    std::vector<float> hidden(static_cast<size_t>(n * p.n_embd));
    for (float& v : hidden) v = g(rng);
    for (int64_t r = 0; r < n; ++r) hidden[r * p.n_embd + 5] *= 100.0f;  // a massive-activation channel
    for (int s = 0; s < 2; ++s) {
      std::vector<float> got(static_cast<size_t>(n));
      p.score(s, hidden.data(), n, got.data());
      EXPECT_LT(max_rel(got, reference_scores(p, s, hidden)), 1e-5) << "n " << n << " stage " << s;
    }
  }
  float dummy = 0;
  EXPECT_THROW(p.score(2, &dummy, 1, &dummy), UsageError);
  EXPECT_NO_THROW(p.score(0, nullptr, 0, nullptr));
}

TEST(Predictor, RandomInitIsTorchLinearLikeAndSeeded) {
  auto m = six_layer_model();
  const PrunePlan plan = make_plan("sdtp", {1, 3, 5}, {0.7f, 0.7f, 0.7f}, 4);
  const Predictor a = Predictor::random(*m, plan, 1), b = Predictor::random(*m, plan, 1), c = Predictor::random(*m, plan, 2);
  EXPECT_EQ(a.n_hidden, m->config.n_embd / 4);
  ASSERT_EQ(a.stages.size(), 3u);
  EXPECT_EQ(a.stages[0].w1, b.stages[0].w1);
  EXPECT_NE(a.stages[0].w1, c.stages[0].w1);
  const float bound1 = 1.0f / std::sqrt(static_cast<float>(a.n_embd)), bound2 = 1.0f / std::sqrt(static_cast<float>(a.n_hidden));
  for (const PredictorStage& s : a.stages) {
    EXPECT_EQ(s.w1.size(), static_cast<size_t>(a.n_hidden * a.n_embd));
    float mx = 0;
    for (float v : s.w1) mx = std::max(mx, std::fabs(v));
    EXPECT_LE(mx, bound1);
    EXPECT_GT(mx, 0.9f * bound1);  // uniform over the whole range
    for (float v : s.w2) EXPECT_LE(std::fabs(v), bound2);
    EXPECT_LE(std::fabs(s.b2), bound2);
  }
  EXPECT_THROW(Predictor::random(*m, make_plan("sdtp", {0}, {0.5f}, 0), 1), UsageError);
  EXPECT_THROW(Predictor::random(*m, make_plan("sdtp", {}, {}, 0), 1), UsageError);
}

// ---------------------------------------------------------------- file round trip and corruption

Predictor sample_predictor(const Model& m) {
  Predictor p = Predictor::random(m, make_plan("sdtp", {2, 4}, {0.7f, 1.0f / 3.0f}, 3), 42);
  p.info["command"] = "sdtp train-predictor -m \"x\" --steps 10";
  p.info["unicode"] = "Grüße ✓";
  return p;
}

TEST(Predictor, SaveLoadRoundTripIsBitExact) {
  auto m = six_layer_model();
  const Predictor p = sample_predictor(*m);
  const std::string path = scratch("round_trip.safetensors").string();
  save_predictor(p, path);
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));
  const Predictor q = load_predictor(path);
  EXPECT_EQ(q.model.arch, p.model.arch);
  EXPECT_EQ(q.model.name, p.model.name);
  EXPECT_EQ(q.model.n_layer, p.model.n_layer);
  EXPECT_EQ(q.model.n_embd, p.model.n_embd);
  EXPECT_EQ(q.model.n_vocab, p.model.n_vocab);
  ASSERT_EQ(q.model.fingerprint.size(), p.model.fingerprint.size());
  EXPECT_EQ(std::memcmp(q.model.fingerprint.data(), p.model.fingerprint.data(), 4 * p.model.fingerprint.size()), 0);
  EXPECT_EQ(q.plan.method, "sdtp");
  EXPECT_EQ(q.plan.layers, p.plan.layers);
  EXPECT_EQ(q.plan.keep_ratios, p.plan.keep_ratios);  // 1/3 as a float reads back exactly
  EXPECT_EQ(q.plan.keep_first, 3);
  EXPECT_EQ(q.n_embd, p.n_embd);
  EXPECT_EQ(q.n_hidden, p.n_hidden);
  EXPECT_EQ(q.info, p.info);
  ASSERT_EQ(q.stages.size(), p.stages.size());
  for (size_t s = 0; s < p.stages.size(); ++s) {
    EXPECT_EQ(q.stages[s].layer, p.stages[s].layer);
    EXPECT_EQ(q.stages[s].w1, p.stages[s].w1);
    EXPECT_EQ(q.stages[s].b1, p.stages[s].b1);
    EXPECT_EQ(q.stages[s].w2, p.stages[s].w2);
    EXPECT_EQ(q.stages[s].b2, p.stages[s].b2);
  }
  // Saving again gives the same bytes; overwriting an existing file works.
  save_predictor(q, path);
  const std::string again = scratch("again.safetensors").string();
  save_predictor(q, again);
  EXPECT_EQ(slurp(path), slurp(again));
  // Saving into a folder that does not exist is an error, not a crash.
  EXPECT_THROW(save_predictor(p, scratch("no/such/dir/p.safetensors").string()), Error);
}

// A predictor file as header JSON + data, to corrupt one piece at a time.
struct StFile {
  json header;
  std::string data;
  std::string bytes() const {
    const std::string h = header.dump();
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    return out + h + data;
  }
};

StFile parse_st(const std::string& bytes) {
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<uint8_t>(bytes[i]);
  return {json::parse(bytes.substr(8, len)), bytes.substr(8 + len)};
}

void expect_format_error(const std::string& bytes, const std::string& what) {
  static int counter = 0;
  const std::string path = scratch("bad" + std::to_string(counter++) + ".safetensors").string();
  write_bytes(path, bytes);
  try {
    load_predictor(path);
    ADD_FAILURE() << what << ": loaded without error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << what << ": message does not name the file: " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw something other than FormatError: " << e.what();
  }
}

TEST(Predictor, CorruptFilesAreFormatErrors) {
  auto m = six_layer_model();
  const std::string good_path = scratch("good.safetensors").string();
  save_predictor(sample_predictor(*m), good_path);
  const std::string good = slurp(good_path);
  ASSERT_NO_THROW(load_predictor(good_path));

  // Truncations everywhere: in the length, the header, the data.
  for (size_t len : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{40}, good.size() / 2,
                     good.size() - 5, good.size() - 1})
    expect_format_error(good.substr(0, len), "truncated to " + std::to_string(len));
  expect_format_error("this is not a safetensors file at all\n", "text file");
  {
    // A file that is not safetensors at all (a README given as --predictor) says what it is not.
    const std::string text_path = scratch("readme.md").string();
    std::ofstream(text_path) << "# A readme\n\nIt is long enough to have a header length.\n";
    try {
      load_predictor(text_path);
      ADD_FAILURE() << "a text file loaded as a predictor";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("is not an sdtp predictor file"), std::string::npos) << e.what();
    }
  }
  expect_format_error(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "huge header length");

  const StFile base = parse_st(good);
  const auto mutate = [&](const std::string& what, const std::function<void(StFile&)>& f) {
    StFile s = base;
    f(s);
    expect_format_error(s.bytes(), what);
  };
  mutate("wrong dtype", [](StFile& s) { s.header["stage.0.fc1.bias"]["dtype"] = "I32"; });
  mutate("F16 tensor", [](StFile& s) {
    // Same bytes read as twice the F16 elements: a valid safetensors file, but not F32.
    auto& t = s.header["stage.1.fc2.bias"];
    t["dtype"] = "F16";
    t["shape"] = {2};
  });
  mutate("unknown dtype", [](StFile& s) { s.header["stage.0.fc1.bias"]["dtype"] = "F99"; });
  mutate("wrong shape", [](StFile& s) {
    auto& t = s.header["stage.0.fc1.weight"];
    const int64_t a = t["shape"][0], b = t["shape"][1];
    t["shape"] = {b, a};
  });
  mutate("missing stage tensor", [](StFile& s) { s.header.erase("stage.1.fc2.bias"); });
  mutate("extra stage", [](StFile& s) {
    s.header["stage.2.fc2.bias"] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {s.data.size(), s.data.size() + 4}}};
    s.data += std::string(4, '\0');
  });
  mutate("stage count differs from plan", [](StFile& s) { s.header["__metadata__"]["plan.layers"] = "[2,4,5]"; });
  mutate("plan ratios count", [](StFile& s) { s.header["__metadata__"]["plan.keep_ratios"] = "[0.5]"; });
  mutate("plan ratio out of range", [](StFile& s) { s.header["__metadata__"]["plan.keep_ratios"] = "[1.5,0.5]"; });
  mutate("plan layers not increasing", [](StFile& s) { s.header["__metadata__"]["plan.layers"] = "[4,2]"; });
  mutate("plan layer past the model", [](StFile& s) { s.header["__metadata__"]["plan.layers"] = "[2,6]"; });
  mutate("plan layers not JSON", [](StFile& s) { s.header["__metadata__"]["plan.layers"] = "[2,"; });
  mutate("plan layers deep JSON", [](StFile& s) { s.header["__metadata__"]["plan.layers"] = "[[[[[[[[2]]]]]]]]"; });
  mutate("fingerprint not numbers", [](StFile& s) { s.header["__metadata__"]["model.fingerprint"] = "[\"a\"]"; });
  mutate("fingerprint empty", [](StFile& s) { s.header["__metadata__"]["model.fingerprint"] = "[]"; });
  mutate("n_hidden not a number", [](StFile& s) { s.header["__metadata__"]["n_hidden"] = "12abc"; });
  mutate("n_hidden differs from tensors", [](StFile& s) { s.header["__metadata__"]["n_hidden"] = "9"; });
  mutate("n_embd huge", [](StFile& s) { s.header["__metadata__"]["model.n_embd"] = "99999999999"; });
  mutate("keep_first negative", [](StFile& s) { s.header["__metadata__"]["plan.keep_first"] = "-1"; });
  mutate("wrong format", [](StFile& s) { s.header["__metadata__"]["format"] = "something-else"; });
  mutate("future version", [](StFile& s) { s.header["__metadata__"]["version"] = "2"; });
  mutate("no metadata", [](StFile& s) { s.header.erase("__metadata__"); });
  mutate("metadata value not a string", [](StFile& s) { s.header["__metadata__"]["n_hidden"] = 8; });
  mutate("missing model.arch", [](StFile& s) { s.header["__metadata__"].erase("model.arch"); });
  mutate("offsets outside data", [](StFile& s) { s.header["stage.0.fc1.bias"]["data_offsets"] = {0, 1u << 30}; });
  mutate("overlapping tensors", [](StFile& s) {
    s.header["stage.1.fc2.bias"]["data_offsets"] = s.header["stage.0.fc2.bias"]["data_offsets"];
  });
  const auto poison = [&](const std::string& name, float value) {
    StFile s = base;
    const size_t off = s.header[name]["data_offsets"][0].get<size_t>();
    std::memcpy(s.data.data() + off, &value, 4);
    expect_format_error(s.bytes(), name + " holds " + std::to_string(value));
  };
  poison("stage.0.fc1.weight", std::nanf(""));
  poison("stage.1.fc1.bias", INFINITY);
  poison("stage.1.fc2.bias", -INFINITY);

  // Random byte flips in the header: either still a valid predictor or a FormatError, never a crash.
  const uint64_t header_end = 8 + base.header.dump().size();
  std::mt19937_64 rng(9);
  int loaded = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = good;
    for (int k = 0; k < 3; ++k) bytes[8 + rng() % (header_end - 8)] = static_cast<char>(rng() % 256);
    const std::string path = scratch("flip.safetensors").string();
    write_bytes(path, bytes);
    try {
      load_predictor(path);
      ++loaded;
    } catch (const FormatError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "byte flips, trial " << trial << ": not a FormatError: " << e.what();
    }
  }
  EXPECT_LT(loaded, 300);
  EXPECT_THROW(load_predictor(scratch("does_not_exist.safetensors").string()), FormatError);
  EXPECT_THROW(load_predictor(scratch("").string()), FormatError);  // a folder
}

// ---------------------------------------------------------------- identity and plans

// Q4_1 round trip of each block of 32 values: 16 levels between the block's min and max.
void quantise_q4_1(std::vector<float>& v) {
  for (size_t b = 0; b + 32 <= v.size(); b += 32) {
    const auto [lo, hi] = std::minmax_element(v.begin() + b, v.begin() + b + 32);
    const float mn = *lo, d = (*hi - *lo) / 15.0f;
    for (size_t i = b; i < b + 32; ++i) v[i] = d > 0 ? mn + d * std::round((v[i] - mn) / d) : mn;
  }
}

TEST(Predictor, ModelIdentityAcceptsSameModelInLowPrecisionAndRefusesOthers) {
  auto m = six_layer_model();
  const ModelIdentity id = ModelIdentity::of(*m);
  EXPECT_EQ(id.arch, "llama");
  EXPECT_EQ(id.n_layer, 6);
  EXPECT_EQ(id.n_embd, m->config.n_embd);
  EXPECT_EQ(id.n_vocab, m->config.n_vocab);
  EXPECT_EQ(id.fingerprint.size(), 16u * std::min(16, m->config.n_embd));
  EXPECT_EQ(id.fingerprint[0], m->weights.tok_embd.data[static_cast<size_t>(1 * m->config.n_embd)]);  // row 1, column 0
  EXPECT_NO_THROW(id.check_matches(id, "p.safetensors"));

  auto q = six_layer_model();
  quantise_q4_1(q->weights.tok_embd.data);
  q->config.name = "another name";  // informational only
  EXPECT_NO_THROW(id.check_matches(ModelIdentity::of(*q), "p.safetensors"));

  auto other = six_layer_model();
  std::mt19937_64 rng(1);
  float scale = 0;
  for (float v : other->weights.tok_embd.data) scale = std::max(scale, std::fabs(v));
  std::uniform_real_distribution<float> u(-scale, scale);
  for (float& v : other->weights.tok_embd.data) v = u(rng);
  try {
    id.check_matches(ModelIdentity::of(*other), "p.safetensors");
    ADD_FAILURE() << "a different embedding matched";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("p.safetensors was trained for"), std::string::npos) << e.what();
  }
  ModelIdentity deeper = id;
  deeper.n_layer = 30;
  EXPECT_THROW(deeper.check_matches(id, "p"), UsageError);
  ModelIdentity wider = id;
  wider.n_embd += 1;
  EXPECT_THROW(wider.check_matches(id, "p"), UsageError);
  ModelIdentity qwen = id;
  qwen.arch = "qwen2";
  EXPECT_THROW(qwen.check_matches(id, "p"), UsageError);
  auto qm = load_model(testing::fixture_path("tiny/qwen2_bias"));
  EXPECT_THROW(id.check_matches(ModelIdentity::of(*qm), "p"), UsageError);
}

// ---------------------------------------------------------------- pruned prefill

TEST(Predictor, SessionRefusesMissingOrMismatchedPredictor) {
  auto m = six_layer_model();
  SessionOptions o;
  o.prune = make_plan("sdtp", {2, 4}, {0.5f, 0.5f}, 0);
  EXPECT_THROW(Session(*m, o), UsageError);  // no predictor
  o.prune.predictor = std::make_shared<const Predictor>(Predictor::random(*m, o.prune, 1));
  EXPECT_NO_THROW(Session(*m, o));
  o.prune.layers = {4};
  o.prune.keep_ratios = {0.3f};  // a subset of the trained layers, another ratio: fine
  EXPECT_NO_THROW(Session(*m, o));
  o.prune.layers = {3};
  EXPECT_THROW(Session(*m, o), UsageError);  // no module for layer 3
  // A predictor for another model (the fixture predictor: 8 layers, 64 wide).
  o.prune.layers = {2};
  o.prune.predictor =
      std::make_shared<const Predictor>(load_predictor(testing::fixture_path("predictor/predictor.safetensors")));
  EXPECT_THROW(Session(*m, o), UsageError);
}

TEST(Predictor, SdtpPrunedPrefillKeepsTheTopPredictedTokens) {
  auto m = six_layer_model();
  const auto ids = prompt(30, m->config.n_vocab);
  PrunePlan plan = make_plan("sdtp", {2, 4}, {0.5f, 0.5f}, 2);
  auto predictor = std::make_shared<const Predictor>(Predictor::random(*m, plan, 7));
  plan.predictor = predictor;
  SessionOptions o;
  o.prune = plan;
  o.decode_q8 = false;
  o.kv_type = "f32";
  Session s(*m, o);
  s.prefill(ids);
  const ForwardStats& st = s.last_stats();
  EXPECT_EQ(st.alive_per_layer, (std::vector<int>{30, 30, 15, 15, 8, 8}));
  ASSERT_EQ(st.kept_positions.size(), 2u);
  // Stage 0 sees the dense hidden state entering layer 2: the kept rows are the first 2, the last,
  // and the predictor's top scores among the rest. The dense state comes from token_saliency's
  // float32 forward, which may round differently from the session's: compare sets with a margin.
  SaliencyOptions so;
  so.keep_gradients = true;
  const SaliencyResult dense = token_saliency(*m, ids, {2}, so);
  std::vector<float> scores(ids.size());
  predictor->score(0, dense.hidden[0].data(), static_cast<int64_t>(ids.size()), scores.data());
  std::vector<int> order;
  for (int i = 2; i < 29; ++i) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] > scores[b]; });
  std::set<int32_t> want = {0, 1, 29};
  for (int i = 0; static_cast<int>(want.size()) < 15; ++i) want.insert(order[i]);
  const std::set<int32_t> got(st.kept_positions[0].begin(), st.kept_positions[0].end());
  EXPECT_EQ(got, want);
  // Decoding continues after a pruned prefill.
  EXPECT_EQ(s.decode(5).size(), static_cast<size_t>(m->config.n_vocab));
}

TEST(Predictor, SaliencyPrunedPrefillKeepsTopAbsoluteSaliency) {
  auto m = six_layer_model();
  const auto ids = prompt(26, m->config.n_vocab);
  SessionOptions o;
  o.prune = make_plan("saliency", {2, 4}, {0.5f, 0.6f}, 0);
  EXPECT_THROW(Session(*m, o), UsageError);  // no oracle
  o.prune.saliency_oracle = make_saliency_oracle(*m);
  Session s(*m, o);
  s.prefill(ids);
  const ForwardStats& st = s.last_stats();
  EXPECT_EQ(st.alive_per_layer, (std::vector<int>{26, 26, 13, 13, 8, 8}));
  ASSERT_EQ(st.kept_positions.size(), 2u);

  const SaliencyResult sal = token_saliency(*m, ids, {2, 4});
  // Top-k by |saliency| among the candidates, the last token always in: a plain sort, written here.
  const auto top = [](const std::vector<float>& s, std::vector<int32_t> candidates, size_t k) {
    const int32_t last = candidates.back();
    candidates.pop_back();
    std::sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return std::fabs(s[a]) != std::fabs(s[b]) ? std::fabs(s[a]) > std::fabs(s[b]) : a < b;
    });
    std::vector<int32_t> out(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(k - 1));
    out.push_back(last);
    std::sort(out.begin(), out.end());
    return out;
  };
  std::vector<int32_t> all(ids.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i);
  const std::vector<int32_t> stage0 = top(sal.per_token[0], all, 13);
  EXPECT_EQ(st.kept_positions[0], stage0);
  EXPECT_EQ(st.kept_positions[1], top(sal.per_token[1], stage0, 8));
  // The ranking is by magnitude: some kept token has a negative saliency here.
  bool negative_kept = false;
  for (int32_t p : stage0) negative_kept |= sal.per_token[0][p] < 0;
  EXPECT_TRUE(negative_kept);
  // A second prefill after cached tokens (n_past > 0) prunes too, without error.
  EXPECT_NO_THROW(s.prefill(prompt(6, m->config.n_vocab)));
  EXPECT_EQ(s.last_stats().alive_per_layer.back(), 2);
}

}  // namespace
}  // namespace sdtp
