#include "../src/io/state_dict.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/error.h"

namespace trainloop::io {
namespace {

using json = nlohmann::json;
using testing::HasSubstr;
using testing::ThrowsMessage;
using testing_support::read_text;

std::string pickled(const c10::Dict<std::string, torch::Tensor>& dict) {
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  return std::string(bytes.begin(), bytes.end());
}

// Python's name of a dtype, e.g. "float32".
std::string python_dtype(torch::ScalarType type) {
  static const std::map<torch::ScalarType, std::string> names = {
      {torch::kFloat, "float32"}, {torch::kDouble, "float64"}, {torch::kHalf, "float16"},
      {torch::kBFloat16, "bfloat16"}, {torch::kLong, "int64"}, {torch::kInt, "int32"},
      {torch::kShort, "int16"}, {torch::kChar, "int8"}, {torch::kByte, "uint8"},
      {torch::kBool, "bool"}};
  const auto found = names.find(type);
  return found == names.end() ? c10::toString(type) : found->second;
}

std::map<std::string, StateEntry> by_name(const std::vector<StateEntry>& entries) {
  std::map<std::string, StateEntry> out;
  for (const auto& entry : entries) out[entry.name] = entry;
  return out;
}

TEST(StateDictTest, WhatPickleSaveWritesReadsBack) {
  c10::Dict<std::string, torch::Tensor> dict;
  const torch::Tensor base = torch::arange(24, torch::kFloat).reshape({4, 6});
  dict.insert("float", torch::randn({3, 2}));
  dict.insert("double", torch::randn({5}, torch::kDouble));
  dict.insert("long", torch::tensor(std::vector<int64_t>{-7, 0, int64_t{1} << 40}));
  dict.insert("bool", torch::tensor({true, false, true}));
  dict.insert("half", torch::randn({2}).to(torch::kHalf));
  dict.insert("scalar", torch::tensor(1.5));
  dict.insert("column", base.select(1, 2));  // a strided view
  const std::vector<StateEntry> entries = read_state_dict(pickled(dict));
  ASSERT_EQ(entries.size(), dict.size());
  for (const auto& entry : entries) {
    EXPECT_EQ(entry.problem, "") << entry.name;
    const torch::Tensor expected = dict.at(entry.name);
    EXPECT_EQ(entry.tensor.scalar_type(), expected.scalar_type()) << entry.name;
    EXPECT_TRUE(torch::equal(entry.tensor, expected)) << entry.name;
  }
}

// Files Python's torch.save wrote (tests/python/write_state_dicts.py), each
// against the values Python read back from it.
TEST(StateDictTest, WhatPythonWritesReadsAsPythonReadsIt) {
  const testing_support::TempDir scratch;
  const auto written = testing_support::run_command(fmt::format(
      "'{}' '{}/tests/python/write_state_dicts.py' '{}' 2>&1", TRAINLOOP_PYTHON,
      TRAINLOOP_SOURCE_DIR, scratch.path.string()));
  ASSERT_EQ(written.status, 0) << written.output;
  for (const char* name : {"module_state_dict", "one_entry", "parameters", "views", "dtypes"}) {
    SCOPED_TRACE(name);
    const json expected = json::parse(read_text(scratch.path / (std::string(name) + ".json")));
    const auto entries =
        by_name(read_state_dict(read_text(scratch.path / (std::string(name) + ".pt"))));
    ASSERT_EQ(entries.size(), expected.size());
    for (const auto& [entry, value] : expected.items()) {
      SCOPED_TRACE(entry);
      ASSERT_EQ(entries.count(entry), 1u);
      const StateEntry& read = entries.at(entry);
      ASSERT_EQ(read.problem, "");
      EXPECT_EQ(read.tensor.sizes().vec(), value["shape"].get<std::vector<int64_t>>());
      EXPECT_EQ(python_dtype(read.tensor.scalar_type()), value["dtype"].get<std::string>());
      const torch::Tensor values = read.tensor.to(torch::kDouble).flatten().contiguous();
      const auto expected_values = value["values"].get<std::vector<double>>();
      ASSERT_EQ(values.numel(), static_cast<int64_t>(expected_values.size()));
      for (size_t i = 0; i < expected_values.size(); ++i) {
        EXPECT_EQ(values[static_cast<int64_t>(i)].item<double>(), expected_values[i])
            << "element " << i;
      }
    }
  }
  EXPECT_THAT([&] { read_state_dict(read_text(scratch.path / "calls_system.pt")); },
              ThrowsMessage<Error>(HasSubstr("calls posix.system at byte")));
  EXPECT_THAT([&] { read_state_dict(read_text(scratch.path / "a_list.pt")); },
              ThrowsMessage<Error>(
                  HasSubstr("holds a value of another type, expected a dict of tensors")));
  EXPECT_THAT([&] { read_state_dict(read_text(scratch.path / "integer_keys.pt")); },
              ThrowsMessage<Error>(HasSubstr("holds a dict whose keys are not all strings")));
  const auto mixed = by_name(read_state_dict(read_text(scratch.path / "an_integer.pt")));
  EXPECT_EQ(mixed.at("weight").problem, "");
  EXPECT_EQ(mixed.at("epoch").problem, "is an int, expected a tensor");
}

// fuzz/corpus/weights/python_state_dict.pt with the weight's shape made
// [0, 3] and its offset 255: LibTorch's as_strided threw from inside when
// given the empty view (fuzz/weights_fuzzer); it reads nothing, so it is fine.
TEST(StateDictTest, AnEmptyViewAnywhereIsEmpty) {
  const auto entries = by_name(read_state_dict(
      read_text(TRAINLOOP_SOURCE_DIR "/tests/data/weights_empty_view_past_storage.pt")));
  EXPECT_EQ(entries.at("weight").problem, "");
  EXPECT_EQ(entries.at("weight").tensor.sizes().vec(), (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(torch::equal(entries.at("bias").tensor, torch::ones({2})));
}

TEST(StateDictTest, QuantizedAndSparseTensorsAreNamedNotRead) {
  c10::Dict<std::string, torch::Tensor> dict;
  dict.insert("quantized", torch::quantize_per_tensor(torch::randn({2, 4}), 0.1, 0, torch::kQInt8));
  dict.insert("sparse", torch::zeros({2}).to_sparse());
  const auto entries = by_name(read_state_dict(pickled(dict)));
  EXPECT_EQ(entries.at("quantized").problem, "is a quantized QInt8 tensor, expected a dense one");
  EXPECT_EQ(entries.at("sparse").problem, "is a sparse tensor, expected a dense one");
}

TEST(StateDictTest, ArchivesThatAreNoStateDict) {
  EXPECT_THAT([] { read_state_dict("not a zip"); },
              ThrowsMessage<Error>(HasSubstr("no end-of-central-directory record")));
  // A TorchScript archive: its data.pkl makes a module object (NEWOBJ).
  torch::serialize::OutputArchive archive;
  archive.write("step", torch::tensor(7));
  std::ostringstream out;
  archive.save_to(out);
  EXPECT_THAT([&] { read_state_dict(out.str()); },
              ThrowsMessage<Error>(HasSubstr("opcode 0x81 at byte 23 has no place in a state dict")));
}

}  // namespace
}  // namespace trainloop::io
