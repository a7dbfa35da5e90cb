// The BPE merge loop shared by both tokenizer kinds, and GPT-2's byte <-> unicode alphabet.
//
// A word starts as a chain of symbols (one per byte for byte-level BPE, one per character for
// SentencePiece-style BPE). The pair with the best priority is merged first (lowest merge rank, or
// highest SentencePiece score, which callers turn into a lower priority value); ties go to the
// leftmost pair, as in Hugging Face tokenizers and llama.cpp. A doubly linked list plus a binary
// heap with lazy deletion makes a word of n symbols cost O(n log n).
#pragma once

#include <cstdint>
#include <queue>
#include <string>
#include <vector>

namespace sdtp {

struct BpeSymbol {
  int32_t id;      // token id, or -1 when the symbol's text is not a token
  uint32_t start;  // byte range in the word
  uint32_t len;    // 0 once merged into its left neighbour
  int32_t prev, next;
};

struct BpeCandidate {
  double priority;  // lower merges first
  int32_t left;     // symbol index
  uint32_t left_len, right_len;
  int32_t merged_id;
  bool operator>(const BpeCandidate& o) const {
    return priority != o.priority ? priority > o.priority : left > o.left;
  }
};

using BpeQueue = std::priority_queue<BpeCandidate, std::vector<BpeCandidate>, std::greater<BpeCandidate>>;

// Merges `syms` (a chain linked by prev/next in index order) in place. find(l, r) inspects symbols
// l and r and returns false, or true with the merge's priority and resulting token id.
template <class Find>
void bpe_merge(std::vector<BpeSymbol>& syms, BpeQueue& queue, Find&& find) {
  queue = BpeQueue();
  auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    double priority;
    int32_t merged;
    if (find(syms[l], syms[r], priority, merged)) queue.push({priority, l, syms[l].len, syms[r].len, merged});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i, i + 1);
  while (!queue.empty()) {
    const BpeCandidate c = queue.top();
    queue.pop();
    BpeSymbol& l = syms[c.left];
    if (l.len != c.left_len || l.next < 0) continue;  // stale: left symbol changed
    BpeSymbol& r = syms[l.next];
    if (r.len != c.right_len) continue;  // stale: right symbol changed
    l.len += r.len;
    l.id = c.merged_id;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.left;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }
}

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the rest to U+0100 onwards.
uint32_t byte_to_unicode(uint8_t b);
// Inverse; returns -1 for code points outside the 256-character alphabet.
int unicode_to_byte(uint32_t cp);

}  // namespace sdtp
