#include "trainloop/data/standardizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "trainloop/error.h"

namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::Standardizer;
using trainloop::data::TensorDataset;

// Tolerances against scikit-learn. float64: the two implementations sum in
// different orders, so means differ by a few ulps of the data (1e-12
// relative), and a standardized value by that error over the scale: 1e-12 ×
// (1 + |mean| / scale). float32 inputs: one float32 rounding here, two in
// scikit-learn (it subtracts, then divides, in place): 1e-6 absolute on
// values of order 1.
constexpr double kRelative = 1e-12;
constexpr double kFloat32Absolute = 1e-6;

nlohmann::json load_goldens() {
  const std::string path =
      std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/standardizer_goldens.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

torch::Tensor matrix(const nlohmann::json& rows) {
  std::vector<double> flat;
  for (const auto& row : rows) {
    for (const double v : row) flat.push_back(v);
  }
  const auto n = static_cast<int64_t>(rows.size());
  return torch::tensor(flat, torch::kDouble).reshape({n, -1});
}

torch::Tensor vector_of(const nlohmann::json& values) {
  return torch::tensor(values.get<std::vector<double>>(), torch::kDouble);
}

// Largest |got - want| / allowed, so the failure message says by how much.
double worst(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& allowed) {
  return ((got.to(torch::kDouble) - want).abs() / allowed).max().item<double>();
}

TEST(StandardizerTest, MatchesScikitLearnInFloat64) {
  const nlohmann::json goldens = load_goldens();
  ASSERT_EQ(goldens["cases"].size(), 3u);
  for (const auto& c : goldens["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const torch::Tensor train = matrix(c["train"]);
    const torch::Tensor test = matrix(c["test"]);
    const Standardizer standardizer(train);
    const torch::Tensor mean = vector_of(c["mean"]);
    const torch::Tensor scale = vector_of(c["scale"]);
    EXPECT_LE(worst(standardizer.mean(), mean, kRelative * (1 + mean.abs())), 1.0);
    EXPECT_LE(worst(standardizer.scale(), scale, kRelative * scale), 1.0);
    const auto constant = c["constant"].get<std::vector<bool>>();
    for (size_t f = 0; f < constant.size(); ++f) {
      EXPECT_EQ(standardizer.scale()[f].item<double>() == 1.0, constant[f]) << "column " << f;
    }
    const torch::Tensor allowed = kRelative * (1 + mean.abs() / scale);
    const torch::Tensor train_out = standardizer.transform(train);
    EXPECT_EQ(train_out.scalar_type(), torch::kDouble);
    EXPECT_LE(worst(train_out, matrix(c["train_transformed"]), allowed.expand_as(train)), 1.0);
    EXPECT_LE(worst(standardizer.transform(test), matrix(c["test_transformed"]),
                    allowed.expand_as(test)),
              1.0);
    EXPECT_LE(worst(standardizer.inverse_transform(train_out), train,
                    kRelative * (1 + train.abs())),
              1.0);
  }
}

TEST(StandardizerTest, MatchesScikitLearnOnFloat32) {
  const nlohmann::json goldens = load_goldens();
  ASSERT_EQ(goldens["cases"].size(), 3u);
  for (const auto& c : goldens["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const torch::Tensor train = matrix(c["train"]).to(torch::kFloat32);
    const torch::Tensor test = matrix(c["test"]).to(torch::kFloat32);
    const Standardizer standardizer(train);
    const torch::Tensor mean = vector_of(c["mean_float32_input"]);
    const torch::Tensor scale = vector_of(c["scale_float32_input"]);
    // The statistics come from the same float32 values, in float64.
    EXPECT_LE(worst(standardizer.mean(), mean, kRelative * (1 + mean.abs())), 1.0);
    EXPECT_LE(worst(standardizer.scale(), scale, kRelative * scale), 1.0);
    const torch::Tensor out = standardizer.transform(test);
    EXPECT_EQ(out.scalar_type(), torch::kFloat32);
    EXPECT_LE((out.to(torch::kDouble) - matrix(c["test_transformed_float32"])).abs().max().item<double>(),
              kFloat32Absolute);
    EXPECT_LE((standardizer.transform(train).to(torch::kDouble) -
               matrix(c["train_transformed_float32"])).abs().max().item<double>(),
              kFloat32Absolute);
  }
}

TEST(StandardizerTest, TransformsDatasetsKeepingTargets) {
  const TensorDataset data(torch::tensor({{1.0f, 10.0f}, {3.0f, 10.0f}}), torch::tensor({1, 0}));
  const TensorDataset out = Standardizer(data.inputs).transform(data);
  EXPECT_TRUE(torch::equal(out.inputs, torch::tensor({{-1.0f, 0.0f}, {1.0f, 0.0f}})));
  EXPECT_TRUE(torch::equal(out.targets, data.targets));
}

TEST(StandardizerTest, SavesAndLoadsBesideAModel) {
  torch::manual_seed(0);
  torch::nn::Linear model(3, 2);
  const torch::Tensor train = torch::randn({20, 3}) * 5 + 2;
  const Standardizer fitted(train);
  std::stringstream file;
  {
    torch::serialize::OutputArchive archive;
    model->save(archive);
    fitted.save(archive);
    archive.save_to(file);
  }
  torch::serialize::InputArchive archive;
  archive.load_from(file);
  torch::nn::Linear loaded_model(3, 2);
  loaded_model->load(archive);
  Standardizer loaded;
  EXPECT_FALSE(loaded.fitted());
  loaded.load(archive);
  EXPECT_TRUE(loaded.fitted());
  EXPECT_TRUE(torch::equal(loaded.mean(), fitted.mean()));
  EXPECT_TRUE(torch::equal(loaded.scale(), fitted.scale()));
  EXPECT_TRUE(torch::equal(loaded_model->weight, model->weight));
  EXPECT_TRUE(torch::equal(loaded.transform(train), fitted.transform(train)));
  EXPECT_THAT([&] { loaded.load(archive, "other"); },
              ThrowsMessage<Error>(HasSubstr(
                  "Standardizer::load: no standardizer under \"other\", expected the \"mean\" "
                  "and \"scale\" that save() writes")));
}

TEST(StandardizerTest, LoadRejectsBadTensors) {
  torch::serialize::OutputArchive nested;
  nested.write("mean", torch::zeros({3}, torch::kDouble));
  nested.write("scale", torch::tensor({1.0, 0.0, 2.0}, torch::kDouble));
  torch::serialize::OutputArchive archive;
  archive.write("standardizer", nested);
  std::stringstream file;
  archive.save_to(file);
  torch::serialize::InputArchive input;
  input.load_from(file);
  Standardizer standardizer;
  EXPECT_THAT([&] { standardizer.load(input); },
              ThrowsMessage<Error>(HasSubstr(
                  "\"standardizer\" holds mean [3] and scale [3], expected float64 [F] each, "
                  "finite, with positive scales")));
  EXPECT_FALSE(standardizer.fitted());
}

TEST(StandardizerTest, BadInput) {
  Standardizer unfitted;
  EXPECT_THAT([&] { unfitted.transform(torch::zeros({2, 2})); },
              ThrowsMessage<Error>(HasSubstr(
                  "Standardizer::transform: not fitted, expected fit() or load() first")));
  torch::serialize::OutputArchive archive;
  EXPECT_THAT([&] { unfitted.save(archive); },
              ThrowsMessage<Error>(HasSubstr("Standardizer::save: not fitted")));
  EXPECT_THAT([&] { Standardizer(torch::zeros({0, 3})); },
              ThrowsMessage<Error>(HasSubstr(
                  "Standardizer::fit: features Float [0, 3], expected floating-point [N, F] with "
                  "N >= 1")));
  EXPECT_THAT([&] { Standardizer(torch::zeros({4}, torch::kFloat)); },
              ThrowsMessage<Error>(HasSubstr("features Float [4], expected")));
  EXPECT_THAT([&] { Standardizer(torch::zeros({2, 2}, torch::kLong)); },
              ThrowsMessage<Error>(HasSubstr("features Long [2, 2], expected floating-point")));
  EXPECT_THAT([&] { Standardizer(torch::tensor({{1.0, std::nan("")}})); },
              ThrowsMessage<Error>(HasSubstr("features hold NaN or infinite values")));
  const Standardizer fitted(torch::randn({5, 3}));
  EXPECT_THAT([&] { fitted.transform(torch::zeros({2, 4})); },
              ThrowsMessage<Error>(HasSubstr(
                  "Standardizer::transform: features Float [2, 4], expected floating-point [N, 3] "
                  "as fitted")));
  EXPECT_THAT([&] { fitted.inverse_transform(torch::zeros({2, 3}, torch::kInt)); },
              ThrowsMessage<Error>(HasSubstr("Standardizer::inverse_transform: features Int [2, 3]")));
}

}  // namespace
