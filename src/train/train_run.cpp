// The predictor-training pipeline behind `sdtp train-predictor` (include/sdtp/train.h): training
// sequences, their saliency (cached on disk), the ranking-loss loop, held-out agreement,
// checkpoints.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backend/cpu/ops.h"
#include "eval/task_impls.h"
#include "eval/tasks.h"
#include "sdtp/error.h"
#include "sdtp/train.h"
#include "train/predictor_train.h"

namespace sdtp {

namespace {

using train::SaliencyExample;

struct Sequence {
  std::vector<int32_t> ids;     // the prompt (what a prefill prunes)
  std::vector<int32_t> answer;  // what follows it: a task's expected answer, the text's next tokens
  std::string source;
};

// The end of an assistant turn: the tokenizer's first end-of-turn token, else its eos (or none).
int32_t end_of_turn(const Tokenizer& tok) {
  if (!tok.spec().eot_ids.empty()) return tok.spec().eot_ids.front();
  return tok.eos_id();
}

// An instruction-style sample over real text (the substitute for the paper's Dolly-15K, which
// cannot be had here): `n_lines` consecutive lines of the text, numbered, then an instruction to
// quote one of them; the answer is that line. Lines are the text's own (KJV: one verse each).
bool instruction_sample(const std::vector<std::string>& lines, size_t lo, size_t hi, int max_tokens,
                        std::mt19937_64& rng, const eval::PromptFormat& format, Sequence& s) {
  if (hi <= lo + 8) return false;
  std::uniform_int_distribution<size_t> start(lo, hi - 8);
  const size_t at = start(rng);
  std::string body;
  std::vector<std::string> used;
  for (size_t i = at; i < hi; ++i) {
    const std::string line = "[" + std::to_string(used.size() + 1) + "] " + lines[i] + "\n";
    // ~4 characters per token; keep room for the instruction and the answer
    if (static_cast<int>((body.size() + line.size()) / 4) > max_tokens - 96) break;
    body += line;
    used.push_back(lines[i]);
  }
  if (used.size() < 4) return false;
  std::uniform_int_distribution<size_t> pick(0, used.size() - 1);
  const size_t k = pick(rng);
  const std::string ask = "Here is a numbered passage.\n\n" + body + "\nQuote line [" + std::to_string(k + 1) +
                          "] of the passage exactly.";
  s.ids = format.encode(format.render(ask, "Line [" + std::to_string(k + 1) + "]:"));
  s.answer = format.tokenizer->encode(" " + used[k], false, false);
  s.source = "instruct@" + std::to_string(at);
  return static_cast<int>(s.ids.size() + s.answer.size()) <= max_tokens + 64;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t hash_bytes(const std::string& s) {  // FNV-1a
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

// Training and held-out sequences. Text windows for training come from the first 90% of the data's
// tokens, held-out windows from the rest; generated tasks use disjoint seed ranges.
void build_sequences(const Model& model, const TrainPredictorOptions& o, const std::string& text,
                     const std::vector<std::string>& lines, std::vector<Sequence>& train_seqs,
                     std::vector<Sequence>& heldout) {
  const Tokenizer& tok = model.tokenizer;
  std::vector<int32_t> tokens = tok.encode(text, false, false);
  const int64_t split = static_cast<int64_t>(tokens.size()) * 9 / 10;
  if (split < o.max_tokens || static_cast<int64_t>(tokens.size()) - split < o.max_tokens) {
    throw UsageError("train-predictor: the data has " + std::to_string(tokens.size()) +
                     " tokens; it needs at least " + std::to_string(10 * o.max_tokens) +
                     " so that training and held-out windows of --max-tokens fit");
  }
  eval::TaskSources sources;
  sources.haystack_text = text;
  sources.haystack_name = o.data.front();
  std::vector<std::unique_ptr<eval::Task>> tasks;
  for (const std::string& name : eval::expand_task_names(o.tasks)) {
    if (name == "ppl" || name == "longbench") throw UsageError("train-predictor: task '" + name + "' cannot be generated");
    tasks.push_back(eval::make_task(name, sources));
  }
  eval::PromptFormat format;
  format.tokenizer = &tok;
  format.chat = true;

  std::mt19937_64 rng(o.seed ^ 0x5d7e11a9c3b2f401ULL);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::uniform_int_distribution<int> len(o.min_tokens, o.max_tokens);
  const int32_t bos = tok.spec().add_bos ? tok.bos_id() : -1;
  const int total = o.sequences + o.heldout;
  for (int i = 0; i < total; ++i) {
    const bool held = i >= o.sequences;
    const int n = len(rng);
    const bool task = !tasks.empty() && u(rng) < o.task_fraction;
    Sequence s;
    if (task) {
      const eval::Task& t = *tasks[static_cast<size_t>(i) % tasks.size()];
      // Seeds far from the evaluation's (which uses small seeds with its own salt per task).
      const uint64_t seed = (held ? 0x4e1dULL << 40 : 0x7a11ULL << 40) + o.seed * 100003ULL + static_cast<uint64_t>(i);
      std::vector<eval::EvalSample> samples = t.generate(seed, n, 1, format);
      // A task whose template does not fit this length (vt needs a few hundred tokens) falls back
      // to a text window.
      if (!samples.empty() && samples[0].skip_reason.empty() && samples[0].prompt_ids.size() >= 16) {
        s.ids = std::move(samples[0].prompt_ids);
        s.source = t.name() + "@" + std::to_string(s.ids.size());
        std::string expected;
        for (const std::string& e : samples[0].expected) expected += (expected.empty() ? " " : ", ") + e;
        s.answer = tok.encode(expected, false, false);
        if (end_of_turn(tok) >= 0) s.answer.push_back(end_of_turn(tok));
      }
    }
    // Instruction-style samples only when asked for, so that the other sequences of a seed stay
    // what they were.
    if (s.ids.empty() && o.instruct_fraction > 0 && u(rng) < o.instruct_fraction && !lines.empty()) {
      const size_t line_split = lines.size() * 9 / 10;
      // A passage that came out longer than asked (its tokens are estimated from its characters)
      // is dropped for a text window.
      if (!instruction_sample(lines, held ? line_split : 0, held ? lines.size() : line_split, n, rng, format, s) ||
          static_cast<int>(s.ids.size()) < 16)
        s = Sequence{};
    }
    if (s.ids.empty()) {
      const int64_t lo = held ? split : 0, hi = (held ? static_cast<int64_t>(tokens.size()) : split) - n;
      std::uniform_int_distribution<int64_t> start(lo, hi);
      const int64_t at = start(rng);
      if (bos >= 0) s.ids.push_back(bos);
      s.ids.insert(s.ids.end(), tokens.begin() + at, tokens.begin() + at + n - (bos >= 0 ? 1 : 0));
      // The text's next tokens (up to 64, 1/8 of the window) are its answer.
      const int64_t end = held ? static_cast<int64_t>(tokens.size()) : split;
      const int64_t tail = std::min<int64_t>({64, n / 8, end - (at + n)});
      s.answer.assign(tokens.begin() + at + n, tokens.begin() + at + n + std::max<int64_t>(tail, 0));
      s.source = "text@" + std::to_string(at);
    }
    // Prompt and answer together stay within the model's context (prompts are at most
    // --max-tokens <= the context; an answer that would cross it is cut).
    const int64_t ctx = model.config.n_ctx_train;
    if (ctx > 0 && static_cast<int64_t>(s.ids.size() + s.answer.size()) > ctx)
      s.answer.resize(static_cast<size_t>(std::max<int64_t>(0, ctx - static_cast<int64_t>(s.ids.size()))));
    (held ? heldout : train_seqs).push_back(std::move(s));
  }
}

// --- saliency cache: key, then per example n, source, saliency floats, hidden as bf16 ---

constexpr char kCacheMagic[8] = {'S', 'D', 'T', 'P', 'S', 'A', 'L', '1'};

uint16_t to_bf16(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b += 0x7fff + ((b >> 16) & 1);
  return static_cast<uint16_t>(b >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

template <class T>
void put(std::ofstream& f, const T& v) {
  f.write(reinterpret_cast<const char*>(&v), sizeof v);
}
template <class T>
bool get(std::ifstream& f, T& v) {
  return static_cast<bool>(f.read(reinterpret_cast<char*>(&v), sizeof v));
}

void write_cache(const std::string& path, const std::string& key, const std::vector<SaliencyExample>& ex) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error("cannot write saliency cache '" + tmp + "'");
    f.write(kCacheMagic, sizeof kCacheMagic);
    put(f, static_cast<uint64_t>(key.size()));
    f.write(key.data(), static_cast<std::streamsize>(key.size()));
    put(f, static_cast<uint64_t>(ex.size()));
    std::vector<uint16_t> h;
    for (const SaliencyExample& e : ex) {
      put(f, static_cast<uint64_t>(e.n));
      put(f, static_cast<uint64_t>(e.source.size()));
      f.write(e.source.data(), static_cast<std::streamsize>(e.source.size()));
      for (size_t s = 0; s < e.saliency.size(); ++s) {
        f.write(reinterpret_cast<const char*>(e.saliency[s].data()), static_cast<std::streamsize>(4 * e.n));
        h.resize(e.hidden[s].size());
        for (size_t k = 0; k < h.size(); ++k) h[k] = to_bf16(e.hidden[s][k]);
        f.write(reinterpret_cast<const char*>(h.data()), static_cast<std::streamsize>(2 * h.size()));
      }
    }
    if (!f.flush()) throw Error("cannot write saliency cache '" + tmp + "'");
  }
  std::filesystem::rename(tmp, path);
}

// Returns false when the file is missing or was made for other options (then it is rebuilt);
// throws FormatError when it claims to match but is damaged.
bool read_cache(const std::string& path, const std::string& key, size_t n_stages, int d,
                std::vector<SaliencyExample>& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  char magic[8];
  uint64_t klen = 0, count = 0;
  if (!f.read(magic, 8) || std::memcmp(magic, kCacheMagic, 8) != 0 || !get(f, klen) || klen != key.size()) return false;
  std::string k(klen, '\0');
  if (!f.read(k.data(), static_cast<std::streamsize>(klen)) || k != key) return false;
  if (!get(f, count) || count > (1u << 20)) throw FormatError("saliency cache '" + path + "' is damaged");
  out.clear();
  std::vector<uint16_t> h;
  for (uint64_t i = 0; i < count; ++i) {
    SaliencyExample e;
    uint64_t n = 0, slen = 0;
    if (!get(f, n) || !get(f, slen) || n == 0 || slen > 4096 ||
        n * n_stages * (4 + 2 * static_cast<uint64_t>(d)) > size) {
      throw FormatError("saliency cache '" + path + "' is damaged");
    }
    e.n = static_cast<int64_t>(n);
    e.source.resize(slen);
    f.read(e.source.data(), static_cast<std::streamsize>(slen));
    e.saliency.resize(n_stages);
    e.hidden.resize(n_stages);
    for (size_t s = 0; s < n_stages; ++s) {
      e.saliency[s].resize(n);
      f.read(reinterpret_cast<char*>(e.saliency[s].data()), static_cast<std::streamsize>(4 * n));
      h.resize(n * static_cast<uint64_t>(d));
      f.read(reinterpret_cast<char*>(h.data()), static_cast<std::streamsize>(2 * h.size()));
      e.hidden[s].resize(h.size());
      for (size_t q = 0; q < h.size(); ++q) e.hidden[s][q] = from_bf16(h[q]);
    }
    if (!f) throw FormatError("saliency cache '" + path + "' is truncated");
    out.push_back(std::move(e));
  }
  return true;
}

}  // namespace

ExportDataResult export_training_data(const Model& model, const TrainPredictorOptions& o, const std::string& path) {
  if (o.data.empty()) throw UsageError("train-predictor: no --data text files");
  if (o.sequences < 1 || o.heldout < 1) throw UsageError("train-predictor: --sequences and --heldout must be >= 1");
  if (o.min_tokens < 64 || o.max_tokens < o.min_tokens)
    throw UsageError("train-predictor: need 64 <= --min-tokens <= --max-tokens");
  if (model.config.n_ctx_train > 0 && o.max_tokens > model.config.n_ctx_train) {
    throw UsageError("train-predictor: --max-tokens " + std::to_string(o.max_tokens) +
                     " is over the model's training context " + std::to_string(model.config.n_ctx_train));
  }
  if (!(o.instruct_fraction >= 0 && o.instruct_fraction <= 1))
    throw UsageError("train-predictor: --instruct-fraction must be in [0, 1]");
  std::string text;
  std::vector<std::string> lines;
  for (const std::string& file : o.data) {
    const std::string raw = eval::read_task_file(file, "train-predictor: data");
    if (!text.empty()) text += ' ';
    text += eval::clean_haystack(raw);
    std::istringstream in(raw);
    for (std::string line; std::getline(in, line);)
      if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
  }
  std::vector<Sequence> tr, he;
  build_sequences(model, o, text, lines, tr, he);

  // safetensors: ids I32 [tokens], offsets I64 [n+1], prompt_len I32 [n], heldout U8 [n].
  std::vector<int32_t> ids, prompt_len;
  std::vector<int64_t> offsets = {0};
  std::vector<uint8_t> held;
  nlohmann::json sources = nlohmann::json::array();
  ExportDataResult res;
  for (int part = 0; part < 2; ++part) {
    for (const Sequence& s : part ? he : tr) {
      if (s.answer.empty()) continue;  // nothing to score the masked model on
      ids.insert(ids.end(), s.ids.begin(), s.ids.end());
      ids.insert(ids.end(), s.answer.begin(), s.answer.end());
      offsets.push_back(static_cast<int64_t>(ids.size()));
      prompt_len.push_back(static_cast<int32_t>(s.ids.size()));
      held.push_back(static_cast<uint8_t>(part));
      sources.push_back(s.source);
      (part ? res.heldout : res.sequences)++;
      res.answer_tokens += static_cast<int64_t>(s.answer.size());
    }
  }
  res.tokens = static_cast<int64_t>(ids.size());
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "sdtp-train-data"}, {"version", "1"}, {"sources", sources.dump()},
                            {"model.name", model.config.name}};
  std::vector<std::pair<const char*, size_t>> blobs;
  uint64_t offset = 0;
  const auto add = [&](const char* name, const char* dtype, const void* data, size_t count, size_t elem) {
    header[name] = {{"dtype", dtype}, {"shape", {count}}, {"data_offsets", {offset, offset + count * elem}}};
    offset += count * elem;
    blobs.emplace_back(static_cast<const char*>(data), count * elem);
  };
  add("ids", "I32", ids.data(), ids.size(), 4);
  add("offsets", "I64", offsets.data(), offsets.size(), 8);
  add("prompt_len", "I32", prompt_len.data(), prompt_len.size(), 4);
  add("heldout", "U8", held.data(), held.size(), 1);
  std::string head = header.dump();
  head.append((8 - head.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error("cannot write training data '" + tmp + "'");
    put(f, static_cast<uint64_t>(head.size()));
    f.write(head.data(), static_cast<std::streamsize>(head.size()));
    for (const auto& [data, bytes] : blobs) f.write(data, static_cast<std::streamsize>(bytes));
    if (!f.flush()) throw Error("cannot write training data '" + tmp + "'");
  }
  std::filesystem::rename(tmp, path);
  return res;
}

TrainPredictorResult train_predictor(const Model& model, const TrainPredictorOptions& o,
                                     const std::function<void(const TrainProgress&)>& progress) {
  const ModelConfig& c = model.config;
  if (o.data.empty()) throw UsageError("train-predictor: no --data text files");
  if (o.sequences < 1 || o.heldout < 1) throw UsageError("train-predictor: --sequences and --heldout must be >= 1");
  if (o.min_tokens < 64 || o.max_tokens < o.min_tokens) {
    throw UsageError("train-predictor: need 64 <= --min-tokens <= --max-tokens, got " + std::to_string(o.min_tokens) +
                     " and " + std::to_string(o.max_tokens));
  }
  if (c.n_ctx_train > 0 && o.max_tokens > c.n_ctx_train) {
    throw UsageError("train-predictor: --max-tokens " + std::to_string(o.max_tokens) +
                     " is over the model's training context " + std::to_string(c.n_ctx_train));
  }
  if (!(o.task_fraction >= 0 && o.task_fraction <= 1)) throw UsageError("train-predictor: --task-fraction must be in [0, 1]");
  if (o.n_threads > 0) cpu::set_num_threads(o.n_threads);
  PrunePlan plan = o.plan;
  plan.method = "sdtp";
  plan.predictor = nullptr;
  plan.validate(c);

  std::string text;
  for (const std::string& path : o.data) {
    if (!text.empty()) text += ' ';
    text += eval::clean_haystack(eval::read_task_file(path, "train-predictor: data"));
  }

  TrainPredictorResult res;
  std::vector<SaliencyExample> train_ex, held_ex;
  {
    std::ostringstream key;
    key << "v1 model=" << c.arch << "/" << c.n_layer << "/" << c.n_embd << "/" << c.n_vocab << "/" << c.name
        << " text=" << hash_bytes(text) << " tasks=";
    for (const std::string& t : o.tasks) key << t << ",";
    key << " frac=" << o.task_fraction << " seq=" << o.sequences << "+" << o.heldout << " len=" << o.min_tokens << "-"
        << o.max_tokens << " seed=" << o.seed << " layers=";
    for (int l : plan.layers) key << l << ",";
    std::vector<SaliencyExample> all;
    const bool cached = !o.cache.empty() && read_cache(o.cache, key.str(), plan.layers.size(), c.n_embd, all) &&
                        all.size() == static_cast<size_t>(o.sequences + o.heldout);
    if (!cached) {
      std::vector<Sequence> tr, he;
      build_sequences(model, o, text, {}, tr, he);
      tr.insert(tr.end(), std::make_move_iterator(he.begin()), std::make_move_iterator(he.end()));
      all.clear();
      const auto t0 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < tr.size(); ++i) {
        all.push_back(train::make_example(model, tr[i].ids, plan.layers, tr[i].source));
        if (progress) {
          TrainProgress p;
          p.phase = TrainProgress::Phase::saliency;
          p.done = static_cast<int>(i + 1);
          p.total = static_cast<int>(tr.size());
          p.elapsed_s = seconds_since(t0);
          progress(p);
        }
      }
      res.saliency_s = seconds_since(t0);
      if (!o.cache.empty()) write_cache(o.cache, key.str(), all);
    }
    held_ex.assign(std::make_move_iterator(all.begin() + o.sequences), std::make_move_iterator(all.end()));
    all.resize(static_cast<size_t>(o.sequences));
    train_ex = std::move(all);
  }
  for (const auto& e : train_ex) res.train_tokens += static_cast<int>(e.n);
  for (const auto& e : held_ex) res.heldout_tokens += static_cast<int>(e.n);

  train::TrainOptions to;
  to.steps = o.steps;
  to.batch = o.batch;
  to.pairs = o.pairs;
  to.lr = o.lr;
  to.weight_decay = o.weight_decay;
  to.mse_weight = o.mse_weight;
  to.margin = o.margin;
  to.seed = o.seed;
  train::PredictorTrainer trainer(Predictor::random(model, plan, o.seed, o.n_hidden), to);
  if (o.resume && !o.checkpoint.empty() && std::filesystem::exists(o.checkpoint)) trainer.load_checkpoint(o.checkpoint);

  const train::Agreement a0 = train::ranking_agreement(trainer.predictor(), held_ex);
  res.initial_topk_overlap = a0.topk_overlap;
  res.initial_kendall_tau = a0.kendall_tau;
  TrainProgress p;
  p.phase = TrainProgress::Phase::training;
  p.total = o.steps;
  p.topk_overlap = a0.topk_overlap;
  p.kendall_tau = a0.kendall_tau;
  const auto t0 = std::chrono::steady_clock::now();
  const int tail = std::max(1, o.steps / 10);
  double first_sum = 0, last_sum = 0, ema = -1;
  int first_n = 0, last_n = 0;
  while (trainer.steps_done() < o.steps) {
    const train::StepReport r = trainer.step(train_ex);
    ema = ema < 0 ? r.loss : 0.9 * ema + 0.1 * r.loss;
    if (r.step <= tail) {
      first_sum += r.loss;
      ++first_n;
    }
    if (r.step > o.steps - tail) {
      last_sum += r.loss;
      ++last_n;
    }
    if (o.eval_every > 0 && (r.step % o.eval_every == 0 || r.step == o.steps)) {
      const train::Agreement a = train::ranking_agreement(trainer.predictor(), held_ex);
      p.topk_overlap = a.topk_overlap;
      p.kendall_tau = a.kendall_tau;
    }
    if (!o.checkpoint.empty() && o.checkpoint_every > 0 && (r.step % o.checkpoint_every == 0 || r.step == o.steps)) {
      trainer.save_checkpoint(o.checkpoint);
    }
    if (progress) {
      p.done = r.step;
      p.loss = ema;
      p.elapsed_s = seconds_since(t0);
      progress(p);
    }
  }
  res.train_s = seconds_since(t0);
  res.first_loss = first_n ? first_sum / first_n : 0;
  res.last_loss = last_n ? last_sum / last_n : 0;
  const train::Agreement a1 = train::ranking_agreement(trainer.predictor(), held_ex);
  res.final_topk_overlap = a1.topk_overlap;
  res.final_kendall_tau = a1.kendall_tau;
  res.predictor = trainer.predictor();
  res.predictor.info["train.steps"] = std::to_string(o.steps);
  res.predictor.info["train.sequences"] = std::to_string(o.sequences);
  res.predictor.info["train.tokens"] = std::to_string(res.train_tokens);
  res.predictor.info["heldout.topk_overlap"] = std::to_string(a1.topk_overlap);
  res.predictor.info["heldout.kendall_tau"] = std::to_string(a1.kendall_tau);
  return res;
}

}  // namespace sdtp
