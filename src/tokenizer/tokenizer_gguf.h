// Builds a TokenizerSpec from a GGUF file's tokenizer.ggml.* metadata (and tokenizer.chat_template).
#pragma once

#include "sdtp/tokenizer.h"

namespace sdtp {

class GGUFFile;

// Reads tokenizer.ggml.model/pre/tokens/scores/token_type/merges, the special token ids, add_bos_token,
// add_space_prefix and tokenizer.chat_template. Throws FormatError naming the file on missing or
// inconsistent fields; the Tokenizer constructor validates the rest.
TokenizerSpec tokenizer_spec_from_gguf(const GGUFFile& f);

// Adds to spec.eot_ids the end-of-turn tokens found by their text (<|eot_id|>, <|im_end|>,
// <|endoftext|>, ...) as llama.cpp does, since converters do not always record them. Shared by the
// GGUF and tokenizer.json loaders.
void add_end_of_turn_ids(TokenizerSpec& spec);

}  // namespace sdtp
