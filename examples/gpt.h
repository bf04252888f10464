#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace trainloop::examples {

/// Size of a `Gpt`.
struct GptConfig {
  int64_t vocabulary = 256;  ///< token ids 0..vocabulary-1
  int64_t context = 128;     ///< longest input, in tokens
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t embedding = 128;  ///< divisible by heads
  double dropout = 0.0;
};

/// Multi-head self-attention in which position t sees positions 0..t only.
struct CausalSelfAttentionImpl : torch::nn::Module {
  explicit CausalSelfAttentionImpl(const GptConfig& config)
      : heads(config.heads),
        qkv(register_module("qkv", torch::nn::Linear(config.embedding, 3 * config.embedding))),
        proj(register_module("proj", torch::nn::Linear(config.embedding, config.embedding))),
        attention_dropout(register_module("attention_dropout", torch::nn::Dropout(config.dropout))),
        output_dropout(register_module("output_dropout", torch::nn::Dropout(config.dropout))),
        // A buffer, so it follows the model to its device; not a parameter.
        allowed(register_buffer(
            "allowed", torch::ones({config.context, config.context}, torch::kBool).tril())) {}

  /// `x` [B, T, C] -> [B, T, C].
  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t b = x.size(0), t = x.size(1), c = x.size(2), d = c / heads;
    // [B, T, 3C] -> three [B, H, T, D]
    const auto parts = qkv(x).view({b, t, 3, heads, d}).permute({2, 0, 3, 1, 4});
    const torch::Tensor q = parts[0], k = parts[1], v = parts[2];
    torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(d));
    scores = scores.masked_fill(allowed.narrow(0, 0, t).narrow(1, 0, t).logical_not(),
                                -std::numeric_limits<float>::infinity());
    const torch::Tensor weights = attention_dropout(torch::softmax(scores, -1));
    const torch::Tensor y = torch::matmul(weights, v).transpose(1, 2).reshape({b, t, c});
    return output_dropout(proj(y));
  }

  int64_t heads;
  torch::nn::Linear qkv, proj;
  torch::nn::Dropout attention_dropout, output_dropout;
  torch::Tensor allowed;
};
TORCH_MODULE(CausalSelfAttention);

/// Pre-LayerNorm transformer block: x + attention(ln(x)), then x + mlp(ln(x)).
struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(const GptConfig& config)
      : ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.embedding})))),
        attention(register_module("attention", CausalSelfAttention(config))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.embedding})))),
        fc(register_module("fc", torch::nn::Linear(config.embedding, 4 * config.embedding))),
        proj(register_module("proj", torch::nn::Linear(4 * config.embedding, config.embedding))),
        dropout(register_module("dropout", torch::nn::Dropout(config.dropout))) {}

  torch::Tensor forward(torch::Tensor x) {
    x = x + attention(ln1(x));
    return x + dropout(proj(torch::gelu(fc(ln2(x)))));
  }

  torch::nn::LayerNorm ln1;
  CausalSelfAttention attention;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc, proj;
  torch::nn::Dropout dropout;
};
TORCH_MODULE(Block);

/// A small GPT: token and learned position embeddings, `layers` pre-LN
/// blocks, a final LayerNorm and a linear head to logits over the
/// vocabulary. Weights start as GPT-2's: normal(0, 0.02) for linear and
/// embedding weights, zero biases, and the projections back into the
/// residual stream scaled by 1/sqrt(2 * layers). The head is not tied to the
/// token embedding.
struct GptImpl : torch::nn::Module {
  explicit GptImpl(const GptConfig& config)
      : config(config),
        token_embedding(register_module("token_embedding",
                                        torch::nn::Embedding(config.vocabulary, config.embedding))),
        position_embedding(register_module(
            "position_embedding", torch::nn::Embedding(config.context, config.embedding))),
        dropout(register_module("dropout", torch::nn::Dropout(config.dropout))),
        blocks(register_module("blocks", torch::nn::ModuleList())),
        ln_final(register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.embedding})))),
        head(register_module("head", torch::nn::Linear(torch::nn::LinearOptions(
                                             config.embedding, config.vocabulary).bias(false)))) {
    for (int64_t i = 0; i < config.layers; ++i) blocks->push_back(Block(config));
    initialize();
  }

  /// Token ids `[B, T]` (T <= context) -> logits `[B, T, vocabulary]`.
  torch::Tensor forward(const torch::Tensor& ids) {
    const int64_t t = ids.size(1);
    const torch::Tensor positions = torch::arange(t, ids.options().dtype(torch::kLong));
    torch::Tensor x = dropout(token_embedding(ids) + position_embedding(positions));
    for (const auto& block : *blocks) x = block->as<Block>()->forward(x);
    return head(ln_final(x));
  }

  GptConfig config;
  torch::nn::Embedding token_embedding, position_embedding;
  torch::nn::Dropout dropout;
  torch::nn::ModuleList blocks;
  torch::nn::LayerNorm ln_final;
  torch::nn::Linear head;

 private:
  void initialize() {
    torch::NoGradGuard no_grad;
    const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config.layers));
    for (const auto& item : named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
      if (auto* linear = item.value()->as<torch::nn::Linear>()) {
        const bool residual = item.key().size() >= 4 &&
                              item.key().compare(item.key().size() - 4, 4, "proj") == 0;
        linear->weight.normal_(0.0, residual ? residual_std : 0.02);
        if (linear->bias.defined()) linear->bias.zero_();
      } else if (auto* embedding = item.value()->as<torch::nn::Embedding>()) {
        embedding->weight.normal_(0.0, 0.02);
      }
    }
  }
};
TORCH_MODULE(Gpt);

}  // namespace trainloop::examples
