// Ranking-loss training of the SDTP predictors (see predictor_train.h).
#include "train/predictor_train.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "prune/selector.h"
#include "sdtp/error.h"
#include "train/saliency.h"

namespace sdtp::train {

namespace {

constexpr float kNormEps = 1e-6f;  // the predictor's parameter-free RMS norm (sdtp/predictor.h)

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t mix(uint64_t a, uint64_t b) { return splitmix(a ^ splitmix(b)); }

size_t stage_params(int n_embd, int n_hidden) {
  return static_cast<size_t>(n_hidden) * n_embd + 2 * static_cast<size_t>(n_hidden) + 1;
}

double softplus(double x) { return x > 30 ? x : std::log1p(std::exp(x)); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Forward of one stage's module on n rows: normalised inputs xn [n x d], pre-activations a [n x H],
// activations g [n x H] and scores p [n].
struct StageForward {
  std::vector<float> xn, a, g, p;
};

void stage_forward(const PredictorStage& st, int d, int h, const float* x, int64_t n, StageForward& f) {
  f.xn.resize(static_cast<size_t>(n * d));
  f.a.resize(static_cast<size_t>(n * h));
  f.g.resize(f.a.size());
  f.p.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    double ss = 0;
    for (int j = 0; j < d; ++j) ss += static_cast<double>(xi[j]) * xi[j];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / d + kNormEps));
    float* o = f.xn.data() + i * d;
    for (int j = 0; j < d; ++j) o[j] = xi[j] * inv;
  }
  for (int64_t i = 0; i < n; ++i) std::memcpy(f.a.data() + i * h, st.b1.data(), sizeof(float) * h);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), h, d, 1.0f, f.xn.data(), d,
              st.w1.data(), d, 1.0f, f.a.data(), h);
  for (size_t k = 0; k < f.a.size(); ++k) {
    const double a = f.a[k];
    f.g[k] = static_cast<float>(0.5 * a * (1.0 + std::erf(a * M_SQRT1_2)));
  }
  for (int64_t i = 0; i < n; ++i) {
    double acc = st.b2;
    const float* gi = f.g.data() + i * h;
    for (int k = 0; k < h; ++k) acc += static_cast<double>(gi[k]) * st.w2[k];
    f.p[i] = static_cast<float>(acc);
  }
}

// Rows whose rank matters: not the first keep_first, not the last keep_last (the recent tail).
std::vector<int64_t> candidate_rows(int64_t n, int keep_first, int64_t keep_last) {
  std::vector<int64_t> rows;
  for (int64_t i = std::min<int64_t>(keep_first, n); i + keep_last < n; ++i) rows.push_back(i);
  return rows;
}

void write_all(std::ofstream& f, const void* p, size_t bytes) { f.write(static_cast<const char*>(p), static_cast<std::streamsize>(bytes)); }

}  // namespace

SaliencyExample make_example(const Model& model, const std::vector<int32_t>& ids, const std::vector<int>& layers,
                             std::string source) {
  SaliencyOptions o;
  o.keep_hidden = true;
  SaliencyResult r = token_saliency(model, ids, layers, o);
  SaliencyExample ex;
  ex.n = static_cast<int64_t>(ids.size());
  ex.source = std::move(source);
  // token_saliency returns the layers sorted and deduplicated; the plan's layers are increasing.
  if (r.layers != layers) throw Error("make_example: pruning layers must be strictly increasing");
  ex.hidden = std::move(r.hidden);
  ex.saliency = std::move(r.per_token);
  return ex;
}

StepReport stage_loss_and_grad(const PredictorStage& st, int d, int h, const float* hidden, const float* saliency,
                               int64_t n, int keep_first, const TrainOptions& opt, uint64_t pair_seed,
                               std::vector<float>* grad, int64_t keep_last) {
  StepReport rep;
  const std::vector<int64_t> rows = candidate_rows(n, keep_first, keep_last);
  if (rows.size() < 2) return rep;
  StageForward f;
  stage_forward(st, d, h, hidden, n, f);

  std::vector<double> logt(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) logt[i] = std::log(std::fabs(static_cast<double>(saliency[i])) + 1e-30);

  std::vector<double> dp(static_cast<size_t>(n), 0.0);
  // Pairwise ranking term.
  std::mt19937_64 rng(pair_seed);
  std::uniform_int_distribution<size_t> pick(0, rows.size() - 1);
  int used = 0;
  double rank = 0;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  pairs.reserve(static_cast<size_t>(opt.pairs));
  for (int attempt = 0; attempt < 8 * opt.pairs && static_cast<int>(pairs.size()) < opt.pairs; ++attempt) {
    const int64_t i = rows[pick(rng)], j = rows[pick(rng)];
    if (std::fabs(logt[i] - logt[j]) > opt.margin) pairs.emplace_back(i, j);
  }
  used = static_cast<int>(pairs.size());
  if (used > 0) {
    const double inv = 1.0 / used;
    for (auto [i, j] : pairs) {
      const double y = logt[i] > logt[j] ? 1.0 : -1.0;
      const double diff = static_cast<double>(f.p[i]) - f.p[j];
      rank += softplus(-y * diff) * inv;
      const double s = sigmoid(-y * diff) * inv;  // d softplus(-y·diff)/d diff = -y·σ(-y·diff)
      dp[i] += -y * s;
      dp[j] += y * s;
    }
  }
  // Auxiliary pointwise term: scores towards the standardised log-saliency.
  double mse = 0;
  if (opt.mse_weight > 0) {
    double mean = 0, var = 0;
    for (int64_t i : rows) mean += logt[i];
    mean /= static_cast<double>(rows.size());
    for (int64_t i : rows) var += (logt[i] - mean) * (logt[i] - mean);
    const double sd = std::sqrt(var / static_cast<double>(rows.size())) + 1e-12;
    const double inv = 1.0 / static_cast<double>(rows.size());
    for (int64_t i : rows) {
      const double e = f.p[i] - (logt[i] - mean) / sd;
      mse += e * e * inv;
      dp[i] += opt.mse_weight * 2.0 * e * inv;
    }
  }
  rep.rank_loss = rank;
  rep.mse_loss = mse;
  rep.loss = rank + opt.mse_weight * mse;
  if (!grad) return rep;

  // Backward through fc2, GELU, fc1 (the norm has no parameters; its input gets no gradient).
  grad->assign(stage_params(d, h), 0.0f);
  float* gw1 = grad->data();
  float* gb1 = gw1 + static_cast<size_t>(h) * d;
  float* gw2 = gb1 + h;
  float* gb2 = gw2 + h;
  std::vector<float> da(static_cast<size_t>(n * h), 0.0f);
  double db2 = 0;
  std::vector<double> dw2(static_cast<size_t>(h), 0.0), db1(static_cast<size_t>(h), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    if (dp[i] == 0.0) continue;
    db2 += dp[i];
    const float* gi = f.g.data() + i * h;
    const float* ai = f.a.data() + i * h;
    float* dai = da.data() + i * h;
    for (int k = 0; k < h; ++k) {
      dw2[k] += dp[i] * gi[k];
      const double a = ai[k];
      const double dgelu = 0.5 * (1.0 + std::erf(a * M_SQRT1_2)) + a * std::exp(-0.5 * a * a) * 0.3989422804014327;
      const double v = dp[i] * st.w2[k] * dgelu;
      dai[k] = static_cast<float>(v);
      db1[k] += v;
    }
  }
  // dW1 [h x d] = da^T [h x n] · xn [n x d]
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, h, d, static_cast<int>(n), 1.0f, da.data(), h, f.xn.data(),
              d, 0.0f, gw1, d);
  for (int k = 0; k < h; ++k) {
    gb1[k] = static_cast<float>(db1[k]);
    gw2[k] = static_cast<float>(dw2[k]);
  }
  *gb2 = static_cast<float>(db2);
  return rep;
}

Agreement ranking_agreement(const Predictor& p, const std::vector<SaliencyExample>& examples) {
  Agreement a;
  int count = 0;
  std::vector<float> scores;
  for (size_t e = 0; e < examples.size(); ++e) {
    const SaliencyExample& ex = examples[e];
    for (size_t s = 0; s < p.stages.size() && s < ex.hidden.size(); ++s) {
      const std::vector<int64_t> rows = candidate_rows(ex.n, p.plan.keep_first, p.plan.kept_tail(ex.n));
      if (rows.size() < 2) continue;
      scores.resize(static_cast<size_t>(ex.n));
      p.score(static_cast<int>(s), ex.hidden[s].data(), ex.n, scores.data());
      const float* sal = ex.saliency[s].data();
      const int64_t m = static_cast<int64_t>(rows.size());
      const int64_t k = keep_count(p.plan.keep_ratios[s], m);
      auto top = [&](auto key) {
        std::vector<int64_t> order = rows;
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return key(x) > key(y); });
        order.resize(static_cast<size_t>(k));
        std::sort(order.begin(), order.end());
        return order;
      };
      const auto by_score = top([&](int64_t i) { return scores[i]; });
      const auto by_sal = top([&](int64_t i) { return std::fabs(sal[i]); });
      std::vector<int64_t> both;
      std::set_intersection(by_score.begin(), by_score.end(), by_sal.begin(), by_sal.end(), std::back_inserter(both));
      a.topk_overlap += static_cast<double>(both.size()) / static_cast<double>(k);

      std::mt19937_64 rng(mix(e, s));
      std::uniform_int_distribution<int64_t> pick(0, m - 1);
      int64_t conc = 0, disc = 0;
      for (int t = 0; t < 20000; ++t) {
        const int64_t i = rows[pick(rng)], j = rows[pick(rng)];
        const double ds = static_cast<double>(scores[i]) - scores[j];
        const double dt = std::fabs(static_cast<double>(sal[i])) - std::fabs(static_cast<double>(sal[j]));
        if (ds == 0 || dt == 0) continue;
        ((ds > 0) == (dt > 0) ? conc : disc)++;
      }
      a.kendall_tau += conc + disc > 0 ? static_cast<double>(conc - disc) / static_cast<double>(conc + disc) : 0.0;
      ++count;
    }
  }
  if (count > 0) {
    a.topk_overlap /= count;
    a.kendall_tau /= count;
  }
  return a;
}

PredictorTrainer::PredictorTrainer(Predictor predictor, const TrainOptions& options)
    : pred_(std::move(predictor)), opt_(options) {
  if (opt_.steps < 1 || opt_.batch < 1 || opt_.pairs < 1 || !(opt_.lr > 0)) {
    throw UsageError("predictor training needs steps, batch, pairs >= 1 and a positive learning rate");
  }
  const size_t total = stage_params(pred_.n_embd, pred_.n_hidden) * pred_.stages.size();
  m_.assign(total, 0.0f);
  v_.assign(total, 0.0f);
}

StepReport PredictorTrainer::step(const std::vector<SaliencyExample>& train) {
  if (train.empty()) throw UsageError("predictor training: no training sequences");
  const int d = pred_.n_embd, h = pred_.n_hidden;
  const size_t per_stage = stage_params(d, h);
  std::vector<float> grad(per_stage * pred_.stages.size(), 0.0f), g;
  StepReport rep;
  std::mt19937_64 rng(mix(opt_.seed, static_cast<uint64_t>(step_)));
  std::uniform_int_distribution<size_t> pick(0, train.size() - 1);
  const double inv_batch = 1.0 / opt_.batch;
  for (int b = 0; b < opt_.batch; ++b) {
    const SaliencyExample& ex = train[pick(rng)];
    for (size_t s = 0; s < pred_.stages.size(); ++s) {
      const StepReport r =
          stage_loss_and_grad(pred_.stages[s], d, h, ex.hidden[s].data(), ex.saliency[s].data(), ex.n,
                              pred_.plan.keep_first, opt_, mix(rng(), s), &g, pred_.plan.kept_tail(ex.n));
      rep.loss += r.loss * inv_batch;
      rep.rank_loss += r.rank_loss * inv_batch;
      rep.mse_loss += r.mse_loss * inv_batch;
      if (!g.empty())
        for (size_t k = 0; k < per_stage; ++k) grad[s * per_stage + k] += static_cast<float>(g[k] * inv_batch);
    }
  }
  // AdamW with 5% linear warm-up and cosine decay to lr/10.
  const double t = step_ + 1;
  const double warm = std::max(1.0, 0.05 * opt_.steps);
  const double progress = std::min(1.0, step_ / static_cast<double>(opt_.steps));
  double lr = opt_.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * progress)));
  if (t < warm) lr *= t / warm;
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
  size_t k = 0;
  for (PredictorStage& st : pred_.stages) {
    auto update = [&](float& w, bool decay) {
      const double gk = grad[k];
      m_[k] = static_cast<float>(b1 * m_[k] + (1 - b1) * gk);
      v_[k] = static_cast<float>(b2 * v_[k] + (1 - b2) * gk * gk);
      double nw = w - lr * (m_[k] / c1) / (std::sqrt(v_[k] / c2) + eps);
      if (decay) nw -= lr * opt_.weight_decay * w;
      w = static_cast<float>(nw);
      ++k;
    };
    for (float& w : st.w1) update(w, true);
    for (float& w : st.b1) update(w, false);
    for (float& w : st.w2) update(w, true);
    update(st.b2, false);
  }
  ++step_;
  rep.step = step_;
  return rep;
}

namespace {
constexpr char kAdamMagic[8] = {'S', 'D', 'T', 'P', 'A', 'D', 'A', 'M'};
}

void PredictorTrainer::save_checkpoint(const std::string& path) const {
  Predictor p = pred_;
  p.info["train.step"] = std::to_string(step_);
  p.info["train.seed"] = std::to_string(opt_.seed);
  save_predictor(p, path);
  const std::string adam = path + ".adam", tmp = adam + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error("cannot write checkpoint '" + tmp + "'");
    const uint64_t step = static_cast<uint64_t>(step_), count = m_.size();
    write_all(f, kAdamMagic, sizeof kAdamMagic);
    write_all(f, &step, sizeof step);
    write_all(f, &count, sizeof count);
    write_all(f, m_.data(), sizeof(float) * m_.size());
    write_all(f, v_.data(), sizeof(float) * v_.size());
    if (!f.flush()) throw Error("cannot write checkpoint '" + tmp + "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, adam, ec);
  if (ec) throw Error("cannot write checkpoint '" + adam + "': " + ec.message());
}

void PredictorTrainer::load_checkpoint(const std::string& path) {
  Predictor p = load_predictor(path);
  if (p.n_embd != pred_.n_embd || p.n_hidden != pred_.n_hidden || p.plan.layers != pred_.plan.layers) {
    throw FormatError("checkpoint '" + path + "' has another predictor shape or plan than this run (" +
                      std::to_string(p.n_hidden) + " hidden units, " + std::to_string(p.stages.size()) +
                      " stages); delete it or pass the same options");
  }
  const auto it = p.info.find("train.step");
  if (it == p.info.end()) throw FormatError("checkpoint '" + path + "' has no train.step entry");
  const std::string adam = path + ".adam";
  std::ifstream f(adam, std::ios::binary);
  if (!f) throw FormatError("checkpoint '" + path + "': optimiser state '" + adam + "' is missing");
  char magic[8];
  uint64_t step = 0, count = 0;
  f.read(magic, sizeof magic);
  f.read(reinterpret_cast<char*>(&step), sizeof step);
  f.read(reinterpret_cast<char*>(&count), sizeof count);
  if (!f || std::memcmp(magic, kAdamMagic, sizeof magic) != 0 || count != m_.size() ||
      std::to_string(step) != it->second) {
    throw FormatError("checkpoint optimiser state '" + adam + "' is corrupt or does not match '" + path + "'");
  }
  std::vector<float> m(count), v(count);
  f.read(reinterpret_cast<char*>(m.data()), static_cast<std::streamsize>(sizeof(float) * count));
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(sizeof(float) * count));
  if (!f) throw FormatError("checkpoint optimiser state '" + adam + "' is truncated");
  pred_.stages = std::move(p.stages);
  m_ = std::move(m);
  v_ = std::move(v);
  step_ = static_cast<int>(step);
}

}  // namespace sdtp::train
