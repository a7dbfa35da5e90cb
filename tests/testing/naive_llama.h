// The naive llama reference the pruning tests hold the Session to: double precision, one row at a
// time, written from the definitions (RMSNorm, RoPE at original positions, causal softmax attention
// with grouped KV heads, SwiGLU). It is stateful and stepwise, so that it follows dynamic pruning
// (lazyllm) as well as pruned prefill: each call names, per layer, the tokens computed there; a
// layer's K/V entries only grow, and a token computed at layer l starts from its hidden state
// entering l, which layer l-1 produced in this call or an earlier one.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "sdtp/model.h"

namespace sdtp::testing {

// The tiny llama fixture (tests/fixtures/tiny/llama_gqa: GQA, 2 layers) stacked to 6 layers by
// repeating its blocks: deep enough for several pruning stages.
std::unique_ptr<Model> six_layer_model();

class NaiveLlama {
 public:
  // Reads the host weights of `model` (which must outlive this); no RoPE scaling.
  explicit NaiveLlama(const Model& model);

  // Appends `ids` at positions n_past()..n_past()+ids.size()-1, then runs layer by layer: at layer
  // l, the tokens computed[l] (ascending positions, new or earlier ones) get q, k, v from their
  // hidden state entering l; all their K/V join layer l's entries first, then each of them attends
  // to the entries of layer l at positions <= its own. Returns the last new token's logits.
  // Throws std::logic_error when computed.size() != n_layer, positions are not ascending, a
  // token is computed twice at one layer, has no hidden state entering the layer (it was not
  // computed at l-1: pruning must be progressive), a new token is not computed at layer 0, or the
  // last new token is not computed at every layer.
  std::vector<double> forward(const std::vector<int32_t>& ids,
                              const std::vector<std::vector<int32_t>>& computed);

  int n_past() const { return n_past_; }
  // Positions with K/V entries at `layer`, ascending.
  std::vector<int32_t> positions(int layer) const;

  // The attention the last new token of the last call paid at `layer` to each entry there
  // (ascending positions), averaged over heads: what lazyllm and attn score tokens with.
  struct RowAttention {
    std::vector<int32_t> positions;
    std::vector<double> probs;
  };
  const RowAttention& last_attention(int layer) const { return last_attention_.at(layer); }

 private:
  struct Entry {
    std::vector<double> k, v;  // after RoPE (k), one row of every KV head
  };
  const Model& model_;
  int n_past_ = 0;
  std::vector<std::map<int32_t, Entry>> entries_;               // [layer]: position -> K/V
  std::vector<std::map<int32_t, std::vector<double>>> hidden_;  // [layer]: position -> state entering it
  std::vector<RowAttention> last_attention_;
};

}  // namespace sdtp::testing
