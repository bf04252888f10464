#include "trainloop/data/standardizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

#include <limits>
#include <string>

#include "../error_text.h"
#include "trainloop/error.h"

namespace trainloop::data {
namespace {


}  // namespace

Standardizer::Standardizer(const torch::Tensor& features) { fit(features); }

Standardizer& Standardizer::fit(const torch::Tensor& features) {
  if (!features.defined() || features.dim() != 2 || features.size(0) < 1 ||
      !torch::isFloatingType(features.scalar_type())) {
    throw Error(fmt::format(
        "Standardizer::fit: features {}, expected floating-point [N, F] with N >= 1",
        features.defined()
            ? fmt::format("{} {}", c10::toString(features.scalar_type()), trainloop::detail::sizes_text(features.sizes()))
            : std::string("undefined")));
  }
  const torch::Tensor x = features.to(torch::kCPU, torch::kDouble);
  if (!torch::isfinite(x).all().item<bool>()) {
    throw Error("Standardizer::fit: features hold NaN or infinite values, expected finite ones");
  }
  const auto n = static_cast<double>(x.size(0));
  // Two passes, as scikit-learn: the mean, then the mean squared deviation
  // from it, which loses far less precision than E[x²] - E[x]².
  torch::Tensor mean = x.mean(0);
  torch::Tensor variance = (x - mean).square().mean(0);
  // A column whose variance is within the rounding error of the two-pass
  // computation is constant: scale 1 instead of dividing by noise.
  constexpr double kEps = std::numeric_limits<double>::epsilon();
  const torch::Tensor bound = n * kEps * variance + (n * kEps * mean).square();
  scale_ = torch::where(variance <= bound, torch::ones_like(variance), variance.sqrt());
  mean_ = mean;
  return *this;
}

torch::Tensor Standardizer::checked(const torch::Tensor& features, const char* who) const {
  if (!fitted()) {
    throw Error(fmt::format("Standardizer::{}: not fitted, expected fit() or load() first", who));
  }
  const int64_t width = mean_.size(0);
  if (!features.defined() || features.dim() != 2 || features.size(1) != width ||
      !torch::isFloatingType(features.scalar_type())) {
    throw Error(fmt::format(
        "Standardizer::{}: features {}, expected floating-point [N, {}] as fitted", who,
        features.defined()
            ? fmt::format("{} {}", c10::toString(features.scalar_type()), trainloop::detail::sizes_text(features.sizes()))
            : std::string("undefined"),
        width));
  }
  return features;
}

torch::Tensor Standardizer::transform(const torch::Tensor& features) const {
  checked(features, "transform");
  const auto options = torch::TensorOptions().device(features.device()).dtype(torch::kDouble);
  // In float64, then rounded once to the input's type.
  return ((features.to(torch::kDouble) - mean_.to(options)) / scale_.to(options))
      .to(features.scalar_type());
}

TensorDataset Standardizer::transform(const TensorDataset& dataset) const {
  return TensorDataset(transform(dataset.inputs), dataset.targets);
}

torch::Tensor Standardizer::inverse_transform(const torch::Tensor& features) const {
  checked(features, "inverse_transform");
  const auto options = torch::TensorOptions().device(features.device()).dtype(torch::kDouble);
  return (features.to(torch::kDouble) * scale_.to(options) + mean_.to(options))
      .to(features.scalar_type());
}

void Standardizer::save(torch::serialize::OutputArchive& archive, const std::string& key) const {
  if (!fitted()) {
    throw Error(fmt::format("Standardizer::save: not fitted, nothing to save under \"{}\"", key));
  }
  torch::serialize::OutputArchive nested;
  nested.write("mean", mean_);
  nested.write("scale", scale_);
  archive.write(key, nested);
}

void Standardizer::load(torch::serialize::InputArchive& archive, const std::string& key) {
  torch::serialize::InputArchive nested;
  torch::Tensor mean;
  torch::Tensor scale;
  if (!archive.try_read(key, nested) || !nested.try_read("mean", mean) ||
      !nested.try_read("scale", scale)) {
    throw Error(fmt::format("Standardizer::load: no standardizer under \"{}\", expected the "
                            "\"mean\" and \"scale\" that save() writes",
                            key));
  }
  if (mean.dim() != 1 || scale.sizes() != mean.sizes() || mean.scalar_type() != torch::kDouble ||
      scale.scalar_type() != torch::kDouble || !torch::isfinite(mean).all().item<bool>() ||
      !(scale > 0).all().item<bool>() || !torch::isfinite(scale).all().item<bool>()) {
    throw Error(fmt::format("Standardizer::load: \"{}\" holds mean {} and scale {}, expected "
                            "float64 [F] each, finite, with positive scales",
                            key, trainloop::detail::sizes_text(mean.sizes()), trainloop::detail::sizes_text(scale.sizes())));
  }
  mean_ = mean.to(torch::kCPU);
  scale_ = scale.to(torch::kCPU);
}

}  // namespace trainloop::data
