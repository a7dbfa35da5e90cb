// The SDTP prediction module (see include/sdtp/predictor.h): model identity, scoring, random
// initialisation, and the predictor file (safetensors with F32 stage tensors
// and the model identity, plan and provenance as string values in __metadata__).
#include "sdtp/predictor.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "backend/cpu/ops.h"
#include "formats/safetensors.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "util/json.h"

namespace sdtp {

namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "sdtp-predictor";
constexpr const char* kVersion = "1";
constexpr int kFingerprintCols = 16;
// Token-embedding rows of the fingerprint (Fibonacci numbers: spread over the vocabulary's start,
// where every tokenizer has real tokens), clipped to the vocabulary.
constexpr int kFingerprintRows[16] = {1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597};
// Same model in another precision: Q4_1 vs f32 differ by ~0.1 relative; two different models by ~1.4.
constexpr double kFingerprintTolerance = 0.25;
constexpr float kNormEps = 1e-6f;
constexpr int64_t kScoreChunkRows = 512;  // bounds the scratch of score() for long prompts

std::string describe(const ModelIdentity& m) {
  return (m.name.empty() ? std::string("an unnamed model") : m.name) + " (" + m.arch + ", " +
         std::to_string(m.n_layer) + " layers, " + std::to_string(m.n_embd) + " wide, vocabulary " +
         std::to_string(m.n_vocab) + ")";
}

// Shortest text that reads back as the same float.
std::string float_text(float v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

std::string float_array_text(const std::vector<float>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + float_text(v[i]);
  return s + "]";
}

std::string int_array_text(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// exact GELU: x·Φ(x) (PyTorch's F.gelu with approximate='none')
inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

// --- reading the metadata of a predictor file ---

class MetaReader {
 public:
  MetaReader(const std::map<std::string, std::string>& meta, const std::string& path) : meta_(meta), path_(path) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw FormatError(path_ + ": __metadata__ '" + key + "' " + why);
  }

  const std::string& text(const std::string& key) const {
    auto it = meta_.find(key);
    if (it == meta_.end()) throw FormatError(path_ + ": __metadata__ has no '" + key + "' (not a predictor file?)");
    return it->second;
  }

  int integer(const std::string& key, int lo, int hi) const {
    const std::string& s = text(key);
    int v = 0;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size()) fail(key, "is not an integer: '" + s + "'");
    if (v < lo || v > hi) fail(key, "= " + s + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
  }

  json array(const std::string& key) const {
    json j = parse_untrusted_json(text(key), path_ + ": __metadata__ '" + key + "'", 2);
    if (!j.is_array()) fail(key, "is not a JSON array");
    return j;
  }

  std::vector<int> int_array(const std::string& key) const {
    std::vector<int> out;
    for (const json& e : array(key)) {
      if (!e.is_number_integer() || e.get<int64_t>() < INT32_MIN || e.get<int64_t>() > INT32_MAX)
        fail(key, "holds " + e.dump() + ", not an integer");
      out.push_back(static_cast<int>(e.get<int64_t>()));
    }
    return out;
  }

  std::vector<float> float_array(const std::string& key) const {
    std::vector<float> out;
    for (const json& e : array(key)) {
      if (!e.is_number()) fail(key, "holds " + e.dump() + ", not a number");
      const double v = e.get<double>();
      if (!std::isfinite(v) || std::fabs(v) > 3.4e38) fail(key, "holds a non-finite value " + e.dump());
      out.push_back(static_cast<float>(v));
    }
    return out;
  }

 private:
  const std::map<std::string, std::string>& meta_;
  const std::string& path_;
};

// Copies an F32 tensor of exactly `shape`, checking every value is finite.
std::vector<float> read_tensor(const SafetensorsFile& f, const std::string& name, const std::vector<int64_t>& shape,
                               std::set<std::string>& used) {
  const std::string& path = f.path();
  const RawTensor* t = f.find_tensor(name);
  if (!t) throw FormatError(path + ": missing tensor '" + name + "'");
  used.insert(name);
  if (t->dtype != DType::F32) throw FormatError(path + ": tensor '" + name + "' is not F32");
  if (t->shape != shape) {
    std::string got, want;
    for (int64_t d : t->shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    for (int64_t d : shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
    throw FormatError(path + ": tensor '" + name + "' has shape [" + got + "], expected [" + want + "]");
  }
  std::vector<float> v(static_cast<size_t>(t->numel()));
  if (!v.empty()) std::memcpy(v.data(), t->data, v.size() * sizeof(float));  // nbytes validated by the reader
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i]))
      throw FormatError(path + ": tensor '" + name + "' holds a non-finite value at index " + std::to_string(i));
  }
  return v;
}

std::string stage_name(size_t s, const char* what) { return "stage." + std::to_string(s) + "." + what; }

}  // namespace

// ---------------------------------------------------------------- identity

ModelIdentity ModelIdentity::of(const Model& model) {
  const ModelConfig& c = model.config;
  ModelIdentity id;
  id.arch = c.arch;
  id.name = c.name;
  id.n_layer = c.n_layer;
  id.n_embd = c.n_embd;
  id.n_vocab = c.n_vocab;
  const Tensor& e = model.weights.tok_embd;
  if (c.n_vocab <= 0 || c.n_embd <= 0 || e.numel() != static_cast<int64_t>(c.n_vocab) * c.n_embd)
    throw Error("model identity: token embedding of " + std::to_string(e.numel()) + " values does not match " +
                std::to_string(c.n_vocab) + " x " + std::to_string(c.n_embd));
  const int cols = std::min(kFingerprintCols, c.n_embd);
  std::vector<float> values(static_cast<size_t>(c.n_embd));
  for (int r : kFingerprintRows) {
    const int64_t row = std::min(r, c.n_vocab - 1);
    weight_rows(e, row, 1, values.data());
    for (int j = 0; j < cols; ++j) id.fingerprint.push_back(values[static_cast<size_t>(j)]);
  }
  return id;
}

void ModelIdentity::check_matches(const ModelIdentity& model, const std::string& what) const {
  const std::string head = what + " was trained for " + describe(*this) + ", not for this model " + describe(model);
  if (arch != model.arch) throw UsageError(head + ": the architecture differs");
  if (n_layer != model.n_layer) throw UsageError(head + ": the layer count differs");
  if (n_embd != model.n_embd) throw UsageError(head + ": the hidden size differs");
  if (n_vocab != model.n_vocab) throw UsageError(head + ": the vocabulary size differs");
  if (fingerprint.size() != model.fingerprint.size())
    throw UsageError(head + ": the embedding fingerprints have different lengths");
  // Relative L2 distance of the two embedding slices, relative to this (the predictor's) one.
  double diff = 0, norm = 0;
  for (size_t i = 0; i < fingerprint.size(); ++i) {
    const double a = model.fingerprint[i], b = fingerprint[i];
    diff += (a - b) * (a - b);
    norm += b * b;
  }
  const double rel = norm > 0 ? std::sqrt(diff / norm) : (diff > 0 ? HUGE_VAL : 0.0);
  if (!(rel < kFingerprintTolerance)) {
    std::ostringstream os;
    os << head << ": the token embeddings differ (relative distance " << rel << ", tolerance "
       << kFingerprintTolerance << ")";
    throw UsageError(os.str());
  }
}

// ---------------------------------------------------------------- predictor

Predictor Predictor::random(const Model& model, const PrunePlan& plan, uint64_t seed, int n_hidden) {
  Predictor p = random(model.config, plan, seed, n_hidden);
  p.model = ModelIdentity::of(model);
  return p;
}

Predictor Predictor::random(const ModelConfig& c, const PrunePlan& plan, uint64_t seed, int n_hidden) {
  Predictor p;
  p.model.arch = c.arch;
  p.model.name = c.name;
  p.model.n_layer = c.n_layer;
  p.model.n_embd = c.n_embd;
  p.model.n_vocab = c.n_vocab;
  p.plan = plan;
  p.plan.method = "sdtp";
  p.plan.predictor.reset();
  p.plan.validate(c);
  if (!p.plan.enabled()) throw UsageError("a predictor needs a plan with at least one pruning layer");
  if (n_hidden < 0) throw UsageError("predictor hidden size must be >= 0, got " + std::to_string(n_hidden));
  p.n_embd = c.n_embd;
  p.n_hidden = n_hidden > 0 ? n_hidden : std::max(1, c.n_embd / 4);
  std::mt19937_64 rng(seed);
  // torch.nn.Linear's default init: kaiming_uniform_(a=√5) gives U(-1/√fan_in, 1/√fan_in) for the
  // weight, and the bias uses the same bound.
  const auto fill = [&rng](std::vector<float>& v, size_t n, int fan_in) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    std::uniform_real_distribution<float> u(-bound, bound);
    v.resize(n);
    for (float& x : v) x = u(rng);
  };
  for (int layer : p.plan.layers) {
    PredictorStage s;
    s.layer = layer;
    fill(s.w1, static_cast<size_t>(p.n_hidden) * p.n_embd, p.n_embd);
    fill(s.b1, static_cast<size_t>(p.n_hidden), p.n_embd);
    fill(s.w2, static_cast<size_t>(p.n_hidden), p.n_hidden);
    std::vector<float> b2;
    fill(b2, 1, p.n_hidden);
    s.b2 = b2[0];
    p.stages.push_back(std::move(s));
  }
  return p;
}

void Predictor::score(int stage, const float* hidden, int64_t n, float* scores) const {
  if (stage < 0 || stage >= static_cast<int>(stages.size()))
    throw UsageError("predictor has no stage " + std::to_string(stage) + " (it has " +
                     std::to_string(stages.size()) + ")");
  if (n < 0) throw UsageError("predictor: negative row count " + std::to_string(n));
  const PredictorStage& s = stages[stage];
  const int64_t d = n_embd, h = n_hidden;
  if (d <= 0 || h <= 0 || s.w1.size() != static_cast<size_t>(h * d) || s.b1.size() != static_cast<size_t>(h) ||
      s.w2.size() != static_cast<size_t>(h))
    throw Error("predictor stage " + std::to_string(stage) + " has weights of the wrong size for " +
                std::to_string(h) + " x " + std::to_string(d));
  std::vector<float> normed(static_cast<size_t>(std::min(n, kScoreChunkRows) * d));
  std::vector<float> act(static_cast<size_t>(std::min(n, kScoreChunkRows) * h));
  for (int64_t r0 = 0; r0 < n; r0 += kScoreChunkRows) {
    const int64_t rows = std::min(kScoreChunkRows, n - r0);
    // Parameter-free RMS norm: h / sqrt(mean(h²) + ε).
    for (int64_t i = 0; i < rows; ++i) {
      const float* x = hidden + (r0 + i) * d;
      double ss = 0;
      for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(x[j]) * x[j];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(d) + kNormEps));
      float* y = normed.data() + i * d;
      for (int64_t j = 0; j < d; ++j) y[j] = x[j] * inv;
    }
    cpu::matmul(normed.data(), rows, d, s.w1.data(), h, s.b1.data(), act.data());
    for (int64_t i = 0; i < rows; ++i) {
      const float* a = act.data() + i * h;
      float acc = s.b2;
      for (int64_t j = 0; j < h; ++j) acc += s.w2[j] * gelu(a[j]);
      scores[r0 + i] = acc;
    }
  }
}

void Predictor::check_plan(const PrunePlan& p) const {
  std::string have;
  for (const PredictorStage& s : stages) have += (have.empty() ? "" : ", ") + std::to_string(s.layer);
  for (int layer : p.layers) {
    const bool found =
        std::any_of(stages.begin(), stages.end(), [layer](const PredictorStage& s) { return s.layer == layer; });
    if (!found)
      throw UsageError("the predictor has no module for pruning layer " + std::to_string(layer) +
                       " (it was trained for layers " + have + ")");
  }
}

// ---------------------------------------------------------------- file

void save_predictor(const Predictor& p, const std::string& path) {
  const std::string what = "save predictor " + path;
  if (p.stages.size() != p.plan.layers.size() || p.plan.layers.size() != p.plan.keep_ratios.size())
    throw Error(what + ": " + std::to_string(p.stages.size()) + " stages for a plan of " +
                std::to_string(p.plan.layers.size()) + " layers and " + std::to_string(p.plan.keep_ratios.size()) +
                " keep ratios");
  if (p.n_embd <= 0 || p.n_hidden <= 0) throw Error(what + ": empty predictor");

  json meta = json::object();
  meta["format"] = kFormat;
  meta["version"] = kVersion;
  meta["model.arch"] = p.model.arch;
  meta["model.name"] = p.model.name;
  meta["model.n_layer"] = std::to_string(p.model.n_layer);
  meta["model.n_embd"] = std::to_string(p.model.n_embd);
  meta["model.n_vocab"] = std::to_string(p.model.n_vocab);
  meta["model.fingerprint"] = float_array_text(p.model.fingerprint);
  meta["plan.layers"] = int_array_text(p.plan.layers);
  meta["plan.keep_ratios"] = float_array_text(p.plan.keep_ratios);
  meta["plan.keep_first"] = std::to_string(p.plan.keep_first);
  meta["plan.keep_recent"] = float_text(p.plan.keep_recent);
  meta["n_hidden"] = std::to_string(p.n_hidden);
  for (const auto& [k, v] : p.info) meta["info." + k] = v;

  json header = json::object();
  header["__metadata__"] = meta;
  std::vector<std::pair<std::string, const std::vector<float>*>> order;
  std::vector<std::vector<float>> b2(p.stages.size());
  uint64_t offset = 0;
  const auto add = [&](const std::string& name, const std::vector<float>& v, std::vector<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    if (static_cast<int64_t>(v.size()) != numel)
      throw Error(what + ": tensor '" + name + "' has " + std::to_string(v.size()) + " values, expected " +
                  std::to_string(numel));
    for (float x : v)
      if (!std::isfinite(x)) throw Error(what + ": tensor '" + name + "' holds a non-finite value");
    const uint64_t bytes = v.size() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    order.emplace_back(name, &v);
  };
  for (size_t s = 0; s < p.stages.size(); ++s) {
    const PredictorStage& st = p.stages[s];
    if (st.layer != p.plan.layers[s])
      throw Error(what + ": stage " + std::to_string(s) + " is for layer " + std::to_string(st.layer) +
                  " but the plan says " + std::to_string(p.plan.layers[s]));
    b2[s] = {st.b2};
    add(stage_name(s, "fc1.weight"), st.w1, {p.n_hidden, p.n_embd});
    add(stage_name(s, "fc1.bias"), st.b1, {p.n_hidden});
    add(stage_name(s, "fc2.weight"), st.w2, {1, p.n_hidden});
    add(stage_name(s, "fc2.bias"), b2[s], {1});
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the reference writer does

  namespace fs = std::filesystem;
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(what + ": cannot open " + tmp + " for writing");
    const uint64_t len = text.size();
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(len >> (8 * i));
    out.write(reinterpret_cast<const char*>(le), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, v] : order)
      out.write(reinterpret_cast<const char*>(v->data()), static_cast<std::streamsize>(v->size() * sizeof(float)));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ec;
      fs::remove(tmp, ec);
      throw Error(what + ": write failed");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ec2;
    fs::remove(tmp, ec2);
    throw Error(what + ": cannot rename " + tmp + ": " + ec.message());
  }
}

Predictor load_predictor(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file;
  try {
    file = std::make_unique<SafetensorsFile>(path);
  } catch (const UnsupportedError& e) {
    // Every tensor of a predictor is F32; another dtype means this is not one of our files.
    throw FormatError(std::string(e.what()) + " (predictor files hold F32 tensors only)");
  } catch (const FormatError& e) {
    throw FormatError(path + " is not an sdtp predictor file (a safetensors file from `sdtp train-predictor`): " +
                      e.what());
  }
  const SafetensorsFile& f = *file;
  const MetaReader meta(f.metadata(), path);
  if (f.metadata().find("format") == f.metadata().end() || meta.text("format") != kFormat)
    throw FormatError(path + ": not an sdtp predictor file (__metadata__ 'format' is not '" + kFormat + "')");
  if (meta.text("version") != kVersion)
    throw FormatError(path + ": predictor format version '" + meta.text("version") + "' is not supported (expected " +
                      kVersion + ")");

  Predictor p;
  p.model.arch = meta.text("model.arch");
  p.model.name = meta.text("model.name");
  p.model.n_layer = meta.integer("model.n_layer", 1, 1 << 20);
  p.model.n_embd = meta.integer("model.n_embd", 1, 1 << 24);
  p.model.n_vocab = meta.integer("model.n_vocab", 1, 1 << 30);
  p.model.fingerprint = meta.float_array("model.fingerprint");
  if (p.model.fingerprint.empty()) meta.fail("model.fingerprint", "is empty");

  PrunePlan& plan = p.plan;
  plan.method = "sdtp";
  plan.layers = meta.int_array("plan.layers");
  plan.keep_ratios = meta.float_array("plan.keep_ratios");
  plan.keep_first = meta.integer("plan.keep_first", 0, 1 << 30);
  // Files written before the recent tail existed have no key: no tail.
  if (f.metadata().count("plan.keep_recent")) {
    const std::string text = meta.text("plan.keep_recent");
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !(v >= 0.0 && v < 1.0)) meta.fail("plan.keep_recent", "= '" + text + "' is not in [0, 1)");
    plan.keep_recent = static_cast<float>(v);
  }
  if (plan.layers.empty()) meta.fail("plan.layers", "is empty");
  if (plan.layers.size() != plan.keep_ratios.size())
    meta.fail("plan.keep_ratios", "has " + std::to_string(plan.keep_ratios.size()) + " entries for " +
                                      std::to_string(plan.layers.size()) + " layers");
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    if (plan.layers[i] < 1 || plan.layers[i] >= p.model.n_layer || (i > 0 && plan.layers[i] <= plan.layers[i - 1]))
      meta.fail("plan.layers", "= " + meta.text("plan.layers") + " is not increasing inside [1, " +
                                   std::to_string(p.model.n_layer) + ")");
    if (!(plan.keep_ratios[i] > 0.0f && plan.keep_ratios[i] <= 1.0f))
      meta.fail("plan.keep_ratios", "= " + meta.text("plan.keep_ratios") + " has a ratio outside (0, 1]");
  }
  p.n_embd = p.model.n_embd;
  p.n_hidden = meta.integer("n_hidden", 1, 1 << 24);
  for (const auto& [k, v] : f.metadata())
    if (k.rfind("info.", 0) == 0) p.info[k.substr(5)] = v;

  // Shapes are checked against the tensors the reader validated against the file size, so nothing
  // here allocates more than the file holds.
  std::set<std::string> used;
  for (size_t s = 0; s < plan.layers.size(); ++s) {
    PredictorStage st;
    st.layer = plan.layers[s];
    st.w1 = read_tensor(f, stage_name(s, "fc1.weight"), {p.n_hidden, p.n_embd}, used);
    st.b1 = read_tensor(f, stage_name(s, "fc1.bias"), {p.n_hidden}, used);
    // fc2 has one output (the score) or the paper's two (keep, drop logits): the score is then
    // keep − drop, folded into one row here.
    const RawTensor* fc2 = f.find_tensor(stage_name(s, "fc2.weight"));
    const int64_t outs = fc2 && fc2->shape.size() == 2 && fc2->shape[0] == 2 ? 2 : 1;
    st.w2 = read_tensor(f, stage_name(s, "fc2.weight"), {outs, p.n_hidden}, used);
    const std::vector<float> b2 = read_tensor(f, stage_name(s, "fc2.bias"), {outs}, used);
    st.b2 = b2[0];
    if (outs == 2) {
      for (int64_t j = 0; j < p.n_hidden; ++j) st.w2[j] -= st.w2[p.n_hidden + j];
      st.w2.resize(static_cast<size_t>(p.n_hidden));
      st.b2 -= b2[1];
    }
    p.stages.push_back(std::move(st));
  }
  for (const RawTensor& t : f.tensors()) {
    if (!used.count(t.name))
      throw FormatError(path + ": unexpected tensor '" + t.name + "' (the plan has " +
                        std::to_string(plan.layers.size()) + " stages)");
  }
  return p;
}

std::vector<std::string> find_predictors_for(const Model& model, const std::vector<std::string>& dirs) {
  namespace fs = std::filesystem;
  const ModelIdentity id = ModelIdentity::of(model);
  std::vector<std::string> found;
  for (const std::string& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<std::string> files;
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (e.is_regular_file(ec) && name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0)
        files.push_back(e.path().string());
    }
    const auto preferred = [](const std::string& p) {
      static const std::string tail = ".sdtp.safetensors";
      return p.size() >= tail.size() && p.compare(p.size() - tail.size(), tail.size(), tail) == 0;
    };
    std::sort(files.begin(), files.end(), [&](const std::string& a, const std::string& b) {
      return preferred(a) != preferred(b) ? preferred(a) : a < b;
    });
    for (const std::string& f : files) {
      try {
        load_predictor(f).model.check_matches(id, "predictor " + f);
        found.push_back(f);
      } catch (const Error&) {
        // another model's predictor, or not a predictor file at all
      }
    }
  }
  return found;
}

}  // namespace sdtp
